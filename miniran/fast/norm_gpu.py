"""``BatchNormGPU``: the batch norm of :mod:`miniran.functional.normalization` in fused CUDA kernels.

The reference's equations (about 35 array operations) in raw CUDA kernels
that work channel by channel, each block of threads on one stretch of one
channel ``(N, C, H, W) -> N*H*W`` values, sums accumulated in double precision:

* **one block per channel** (a channel of at most ``FUSED_MAX`` values): the
  block sums the channel (sum x and sum x^2; backward sum(gy) and
  sum(gy * xhat)) with a shared-memory tree and ``__syncthreads()``, then
  normalises it (applying the ReLU, updating the running statistics), or
  computes ``gx``. **1 kernel forward, 1 backward.**
* **two stages** for a larger channel, so that many blocks share it (a
  channel of 64*32*32 values in one block would leave most of a GPU idle):
  the first kernel writes each stretch's two sums, the second combines a
  channel's stretches in every block and then normalises (or computes ``gx``
  of) its own stretch. **2 kernels forward, 2 backward.**

Evaluation mode (running statistics) normalises in one kernel. When x
already has a gradient from its other uses (a residual shortcut), the
backward kernel adds it into ``gx`` and says so (``folded``, see
:class:`~miniran.autograd.tensor.Function`), so the graph walk launches no
addition for it. The
reference, run on the same CuPy arrays under ``miniran.reference_only()``,
is what these kernels are tested against.
"""

from __future__ import annotations

import numpy as np

from miniran import backend, kernels
from miniran.backend import get_array_module
from miniran.functional._dispatch import twin_of
from miniran.fast.slots import gradient_slot
from miniran.functional.normalization import BatchNorm

#: a channel of at most this many values (N*H*W) is summed and normalised by one block
FUSED_MAX = 16384
#: the stretch of a channel one block of the two-stage kernels takes, and that block's threads
CHUNK, CHUNK_THREADS = 4096, 256

# Every kernel is declared __launch_bounds__(1024): the compiler then keeps its registers
# within what a block of 1024 threads may use (64 each), instead of the launch failing.
# The helpers every kernel shares. A channel's values are numbered j = 0 .. m-1
# (image j / plane, pixel j % plane); miniran_block_sums adds two doubles over
# the block (blockDim.x a power of two) and gives every thread the totals.
_COMMON = r"""
__device__ long long miniran_at(long long j, int c, int channels, int plane) {
    const long long img = j / plane;
    return (img * channels + c) * plane + (j - img * plane);
}
__device__ void miniran_block_sums(double& u, double& v) {
    __shared__ double su[1024], sv[1024];
    const int t = threadIdx.x;
    su[t] = u; sv[t] = v;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w /= 2) {
        if (t < w) { su[t] += su[t + w]; sv[t] += sv[t + w]; }
        __syncthreads();
    }
    u = su[0]; v = sv[0];
    __syncthreads();  // before a later call writes su and sv again
}
// this block's stretch of the channel: [*begin, *end)
__device__ void miniran_stretch(long long m, long long chunk, long long* begin, long long* end) {
    *begin = blockIdx.x * chunk;
    *end = min(m, *begin + chunk);
}
// the channel's two sums: over the block's own stretch (from_partial = 0, the
// whole channel when chunk >= m) or the stretches' partial sums (from_partial = 1)
__device__ void miniran_channel_sums(const double* partial, int from_partial, double& u, double& v) {
    const int c = blockIdx.y;
    if (from_partial) {
        u = 0; v = 0;
        for (int k = threadIdx.x; k < gridDim.x; k += blockDim.x) {
            u += partial[2 * ((long long)c * gridDim.x + k)];
            v += partial[2 * ((long long)c * gridDim.x + k) + 1];
        }
    }
    miniran_block_sums(u, v);
}
"""

# Forward, stage one (two-stage channels): sum x and sum x^2 of the block's stretch.
_PARTIAL_MOMENTS = r"""
extern "C" __global__ void __launch_bounds__(1024) NAME(const T* x, int channels, int plane, long long m, long long chunk,
                                double* partial) {
    const int c = blockIdx.y;
    long long begin, end;
    miniran_stretch(m, chunk, &begin, &end);
    double u = 0, v = 0;
    for (long long j = begin + threadIdx.x; j < end; j += blockDim.x) {
        const double xv = (double)x[miniran_at(j, c, channels, plane)];
        u += xv; v += xv * xv;
    }
    miniran_block_sums(u, v);
    if (threadIdx.x == 0) { partial[2 * ((long long)c * gridDim.x + blockIdx.x)] = u;
                            partial[2 * ((long long)c * gridDim.x + blockIdx.x) + 1] = v; }
}
"""

# Forward: the statistics (stats 0: given in mean and var; 1: this block sums the
# channel; 2: from the partial sums), then y = (x - mean) * gamma / sqrt(var + eps) + beta
# over the block's stretch, with the ReLU; block 0 of a channel writes mean and var and
# updates the running statistics (unbiased variance, as PyTorch).
_FORWARD = r"""
extern "C" __global__ void __launch_bounds__(1024) NAME(const T* x, const T* gamma, const T* beta, const double* partial,
                                T* mean, T* var, T* running_mean, T* running_var, T* y,
                                int channels, int plane, long long m, long long chunk, int stats,
                                int relu, int update, T momentum, T eps) {
    const int c = blockIdx.y;
    long long begin, end;
    miniran_stretch(m, chunk, &begin, &end);
    T mu, sigma2;
    if (stats == 0) {
        mu = mean[c]; sigma2 = var[c];
    } else {
        double u = 0, v = 0;
        for (long long j = begin + threadIdx.x; stats == 1 && j < end; j += blockDim.x) {
            const double xv = (double)x[miniran_at(j, c, channels, plane)];
            u += xv; v += xv * xv;
        }
        miniran_channel_sums(partial, stats == 2, u, v);
        mu = (T)(u / m);
        sigma2 = (T)fmax(v / m - (u / m) * (u / m), 0.0);  // biased: the one used to normalise
        if (blockIdx.x == 0 && threadIdx.x == 0) {
            mean[c] = mu; var[c] = sigma2;
            if (update) {
                running_mean[c] = (1 - momentum) * running_mean[c] + momentum * mu;
                running_var[c] = (1 - momentum) * running_var[c] + momentum * sigma2 * (T)((double)m / (m - 1));
            }
        }
    }
    const T scale = gamma[c] * rsqrt(sigma2 + eps), shift = beta[c];
    for (long long j = begin + threadIdx.x; j < end; j += blockDim.x) {
        const long long at = miniran_at(j, c, channels, plane);
        const T out = (x[at] - mu) * scale + shift;
        y[at] = (relu && out < (T)0) ? (T)0 : out;  // as np.maximum(out, 0): a NaN stays NaN
    }
}
"""

# Backward: g is gy through the ReLU (its mask recomputed with the forward's expression),
# xhat = (x - mean) / sqrt(var + eps). Stage one: sum g and sum g * xhat of the stretch.
_BACKWARD_TERMS = r"""
__device__ void miniran_bn_terms(const T* gy, const T* x, long long at, T mu, T inv_std, T gamma,
                                 T beta, int relu, T* g, T* xhat) {
    *xhat = (x[at] - mu) * inv_std;
    *g = (relu && !((x[at] - mu) * (gamma * inv_std) + beta > (T)0)) ? (T)0 : gy[at];
}
__device__ void miniran_bn_grad_sums(const T* gy, const T* x, int channels, int plane, long long begin,
                                     long long end, T mu, T inv_std, T gamma, T beta, int relu,
                                     double& u, double& v) {
    for (long long j = begin + threadIdx.x; j < end; j += blockDim.x) {
        T g, xhat;
        miniran_bn_terms(gy, x, miniran_at(j, blockIdx.y, channels, plane), mu, inv_std, gamma, beta,
                         relu, &g, &xhat);
        u += (double)g; v += (double)g * (double)xhat;
    }
}
"""

_PARTIAL_GRAD_SUMS = r"""
extern "C" __global__ void __launch_bounds__(1024) NAME(const T* gy, const T* x, const T* mean, const T* var, const T* gamma,
                                const T* beta, int channels, int plane, long long m, long long chunk,
                                int relu, T eps, double* partial) {
    const int c = blockIdx.y;
    long long begin, end;
    miniran_stretch(m, chunk, &begin, &end);
    double u = 0, v = 0;
    miniran_bn_grad_sums(gy, x, channels, plane, begin, end, mean[c], rsqrt(var[c] + eps), gamma[c],
                         beta[c], relu, u, v);
    miniran_block_sums(u, v);
    if (threadIdx.x == 0) { partial[2 * ((long long)c * gridDim.x + blockIdx.x)] = u;
                            partial[2 * ((long long)c * gridDim.x + blockIdx.x) + 1] = v; }
}
"""

# Backward: the channel's sums (from_partial 0: this block sums the channel), written
# by block 0 as the gradients of beta and gamma; then, if want_gx, gx over the stretch:
# batch statistics gx = gamma*inv_std/M * (M*g - sum(g) - xhat*sum(g*xhat)), else gamma*inv_std*g,
# plus, if add_waiting, the gradient x already has from its other uses (the addition the
# graph walk would otherwise launch).
_BACKWARD = r"""
extern "C" __global__ void __launch_bounds__(1024) NAME(const T* gy, const T* x, const T* mean, const T* var, const T* gamma,
                                const T* beta, const double* partial, const T* waiting, T* gbeta,
                                T* ggamma, T* gx, int channels, int plane, long long m, long long chunk,
                                int from_partial, int batch_stats, int relu, int want_gx, int add_waiting,
                                T eps) {
    const int c = blockIdx.y;
    long long begin, end;
    miniran_stretch(m, chunk, &begin, &end);
    const T mu = mean[c], inv_std = rsqrt(var[c] + eps), gam = gamma[c], bet = beta[c];
    double u = 0, v = 0;
    if (!from_partial) miniran_bn_grad_sums(gy, x, channels, plane, begin, end, mu, inv_std, gam, bet, relu, u, v);
    miniran_channel_sums(partial, from_partial, u, v);
    const T sum_g = (T)u, sum_gxhat = (T)v, inv_m = (T)(1.0 / m), a = gam * inv_std;
    if (blockIdx.x == 0 && threadIdx.x == 0) { gbeta[c] = sum_g; ggamma[c] = sum_gxhat; }
    for (long long j = begin + threadIdx.x; want_gx && j < end; j += blockDim.x) {
        const long long at = miniran_at(j, c, channels, plane);
        T g, xhat;
        miniran_bn_terms(gy, x, at, mu, inv_std, gam, bet, relu, &g, &xhat);
        const T own = batch_stats ? a * (g - inv_m * sum_g - xhat * (inv_m * sum_gxhat)) : a * g;
        gx[at] = add_waiting ? waiting[at] + own : own;
    }
}
"""


def _declare(name, code, preamble=_COMMON):
    """One raw kernel per dtype: ``{float32: spec, float64: spec}``, named ``name_f32`` / ``name_f64``."""
    specs = {}
    for dtype, ctype, suffix in ((np.float32, "float", "f32"), (np.float64, "double", "f64")):
        full = f"{name}_{suffix}"
        specs[dtype] = kernels.raw_kernel(full, f"typedef {ctype} T;\n" + preamble + code.replace("NAME", full))
    return specs


_K_PARTIAL_MOMENTS = _declare("miniran_bn_partial_moments", _PARTIAL_MOMENTS)
_K_FORWARD = _declare("miniran_bn_forward", _FORWARD)
_K_PARTIAL_GRAD_SUMS = _declare("miniran_bn_partial_grad_sums", _PARTIAL_GRAD_SUMS, _COMMON + _BACKWARD_TERMS)
_K_BACKWARD = _declare("miniran_bn_backward", _BACKWARD, _COMMON + _BACKWARD_TERMS)


def launch_shape(m):
    """``(chunk, stretches, threads)`` for a channel of ``m`` values: one block per channel up to ``FUSED_MAX``."""
    if m <= FUSED_MAX:
        threads = min(1024, max(32, 1 << max(0, (m - 1).bit_length() - 2)))  # about 4 values per thread
        return m, 1, threads
    return CHUNK, -(-m // CHUNK), CHUNK_THREADS


def _scalar(dtype, value):
    """A kernel's ``T`` argument: exactly T's size (a Python float would be passed as 8 bytes)."""
    return np.dtype(dtype).type(value)


@twin_of(BatchNorm)
class BatchNormGPU(BatchNorm):
    """Batch norm (and batch norm + ReLU) of CuPy arrays, (N, C, H, W) or (N, C): 1 or 2 kernels each way."""

    @classmethod
    def suits(cls, arrays, params, grad) -> bool:
        # statistics over several processes (sync batch norm) are the reference's job; raw
        # kernels are compiled for float32 and float64
        return (backend.is_cupy_array(arrays[0]) and params.get("comm") is None
                and arrays[0].dtype in (np.float32, np.float64))

    def _geometry(self, x):
        """(channels, plane, m, chunk, stretches, threads) of x's layout and the launch."""
        c = x.shape[1]
        self.m = x.size // c  # values per channel, N*H*W
        chunk, stretches, threads = launch_shape(self.m)
        return c, self.m // x.shape[0], self.m, chunk, stretches, threads

    def _vector(self, cp, v, dtype):
        """A per-channel vector as the kernels read it: contiguous, of the kernels' dtype T."""
        return cp.ascontiguousarray(v.astype(dtype, copy=False))

    def forward(self, x, gamma, beta):
        cp = get_array_module(x)
        x = cp.ascontiguousarray(x)
        dt = x.dtype.type
        c, plane, m, chunk, stretches, threads = self._geometry(x)
        gamma, beta = self._vector(cp, gamma, dt), self._vector(cp, beta, dt)
        update = self.use_batch_stats and self.running_mean is not None
        if self.use_batch_stats:
            mean, var = cp.empty(c, dtype=dt), cp.empty(c, dtype=dt)
            stats = 1 if stretches == 1 else 2
        else:
            mean, var = self._vector(cp, self.running_mean, dt), self._vector(cp, self.running_var, dt)
            stats = 0
        # the kernel updates running statistics of its own dtype; others through a copy
        rm, rv = (self.running_mean, self.running_var) if update else (mean, var)
        direct = rm.dtype == dt and rm.flags.c_contiguous and rv.dtype == dt and rv.flags.c_contiguous
        if not direct:
            rm, rv = rm.astype(dt), rv.astype(dt)
        partial = cp.empty((c, stretches, 2) if stats == 2 else 2, dtype=cp.float64)
        if stats == 2:
            _K_PARTIAL_MOMENTS[dt]((stretches, c), (threads,), (x, np.int32(c), np.int32(plane), np.int64(m),
                                                                  np.int64(chunk), partial))
        y = cp.empty_like(x)
        _K_FORWARD[dt]((stretches, c), (threads,), (
            x, gamma, beta, partial, mean, var, rm, rv, y, np.int32(c), np.int32(plane), np.int64(m),
            np.int64(chunk), np.int32(stats), np.int32(self.relu), np.int32(update),
            _scalar(dt, self.momentum), _scalar(dt, self.eps)))
        if update and not direct:
            self.running_mean[...], self.running_var[...] = rm, rv
        self.x, self.mean, self.var, self.gamma, self.beta = x, mean, var, gamma, beta
        return y

    def _waiting_gradient(self, like):
        """The gradient x already has from its other uses, if the kernel can add it in: shaped, typed and laid out as ``like``."""
        w = self.waiting[0] if self.waiting else None
        if w is None or not backend.is_cupy_array(w) or w.shape != like.shape or w.dtype != like.dtype \
                or not w.flags.c_contiguous:
            return None
        return w

    def _slot_or_empty(self, cp, index, c, gy):
        slot = gradient_slot(self, index, gy)
        return cp.empty(c, dtype=gy.dtype) if slot is None else slot

    def backward(self, gy):
        cp = get_array_module(gy)
        x = self.x
        dt = x.dtype.type
        gy = cp.ascontiguousarray(gy.astype(dt, copy=False))
        c, plane, m, chunk, stretches, threads = self._geometry(x)
        # written straight into the parameters' slots of a flat gradient buffer, if they have them
        gbeta = self._slot_or_empty(cp, 2, c, gy)
        ggamma = self._slot_or_empty(cp, 1, c, gy)
        want_gx = self.needs_input_grad[0]
        gx = cp.empty_like(x) if want_gx else gbeta  # (a pointer the kernel never writes through)
        waiting = self._waiting_gradient(gx) if want_gx else None
        self.folded = () if waiting is None else (0,)
        per_channel = (self.mean, self.var, self.gamma, self.beta)
        partial = cp.empty((c, stretches, 2) if stretches > 1 else 2, dtype=cp.float64)
        if stretches > 1:
            _K_PARTIAL_GRAD_SUMS[dt]((stretches, c), (threads,), (
                gy, x, *per_channel, np.int32(c), np.int32(plane), np.int64(m), np.int64(chunk),
                np.int32(self.relu), _scalar(dt, self.eps), partial))
        _K_BACKWARD[dt]((stretches, c), (threads,), (
            gy, x, *per_channel, partial, gx if waiting is None else waiting, gbeta, ggamma, gx, np.int32(c),
            np.int32(plane), np.int64(m), np.int64(chunk), np.int32(stretches > 1),
            np.int32(self.use_batch_stats), np.int32(self.relu), np.int32(want_gx),
            np.int32(waiting is not None), _scalar(dt, self.eps)))
        return (
            gx if want_gx else None,
            ggamma if self.needs_input_grad[1] else None,
            gbeta if self.needs_input_grad[2] else None,
        )
