"""Batch normalisation (Ioffe & Szegedy, 2015) with PyTorch semantics.

Notation:
    N: batch size, C: channels, H, W: height and width.
    x: (N, C, H, W), or (N, C) for features without a spatial extent.
    M = N * H * W: how many values each channel's statistics are taken over.

Forward, per channel c (the reduction runs over every axis except C)::

    mean_c = mean(x[:, c])
    var_c  = mean((x[:, c] - mean_c) ** 2)          # biased: divide by M
    xhat   = (x - mean_c) / sqrt(var_c + eps)
    y      = gamma_c * xhat + beta_c

In **training** mode the batch statistics are used, and the running
estimates are updated in place::

    running_mean = (1 - momentum) * running_mean + momentum * mean_c
    running_var  = (1 - momentum) * running_var  + momentum * var_c * M / (M - 1)

(the running variance uses the *unbiased* estimate, as PyTorch does). In
**evaluation** mode ``running_mean`` / ``running_var`` replace the batch
statistics, so the layer is a fixed per-channel affine map.
"""

from __future__ import annotations

import numpy as np

from miniran import backend, kernels, threads
from miniran.functional import _dispatch
from miniran.autograd import Function, Tensor, as_array
from miniran.backend import get_array_module, is_cupy_array


def _channel_dot(a, b):
    """sum(a * b) over every axis but the channel axis 1: a (C,) vector.

    ``einsum`` multiplies and adds in one pass, without building the
    (N, C, H, W) product first.
    """
    dims = "nchw" if a.ndim == 4 else "nc"
    return get_array_module(a).einsum(f"{dims},{dims}->c", a, b)


def _row_sums(u3, v3):
    """Per (image, channel) row of (N, C, L) arrays: ``sum(u)`` and ``sum(u * v)``, (N, C) float64 each.

    Two matrix products per group of images, on the CPU threads: a product
    with a vector of ones, and a batch of dot products. BLAS reads each row
    once and accumulates in vector registers, much faster than NumPy's
    reductions over an axis.
    """
    n, c, hw = u3.shape
    ones = np.ones(hw, dtype=u3.dtype)

    def sums(a, b):
        u = u3[a:b].reshape(-1, hw)
        v = v3[a:b].reshape(-1, hw)
        dots = np.matmul(u[:, None, :], v[:, :, None])  # (rows, 1, 1)
        return (u @ ones).reshape(b - a, c), dots.reshape(b - a, c)
    parts = threads.parallel_chunks(n, sums, u3.size, blas=True)
    return (np.concatenate([p[0] for p in parts]).astype(np.float64),
            np.concatenate([p[1] for p in parts]).astype(np.float64))


def _would_cancel(mean, var) -> bool:
    """Whether E[x^2] - E[x]^2 (and the like) loses accuracy for some channel: mean^2 > 1000 * var.

    Past that ratio float32 rounding costs more than about 1e-4 of the
    variance; the fast path then works with centred values.
    """
    mean, var = np.asarray(mean, dtype=np.float64), np.asarray(var, dtype=np.float64)
    return bool(np.any(mean * mean > 1e3 * var))


def _centred_variance(x3, mean64, scratch):
    """Biased per-channel variance of (N, C, L) ``x3`` from centred values (the two-pass method).

    Used when the faster E[x^2] - E[x]^2 would cancel. ``scratch`` is an
    array of x3's shape that may be overwritten.
    """
    mean3 = mean64.astype(x3.dtype)[:, None]

    def centred(a, b):
        d = scratch[a:b]
        np.subtract(x3[a:b], mean3, out=d)
        return np.einsum("nci,nci->c", d, d, dtype=np.float64)
    parts = threads.parallel_chunks(x3.shape[0], centred, x3.size)
    return np.sum(parts, axis=0) / (x3.shape[0] * x3.shape[2])


class BatchNorm(Function):
    """Batch norm on raw arrays, optionally followed by a ReLU; see :func:`batch_norm`.

    Inputs: ``x`` (N, C, H, W) or (N, C), ``gamma`` (C,), ``beta`` (C,).
    Per-channel (C,) vectors are reshaped to ``bshape``, (1, C, 1, 1) or
    (1, C), to broadcast against x. In-place operations (``*=``, ``+=``) on
    arrays created here save a pass over memory and an allocation each.

    ``relu=True`` computes ``relu(batch_norm(x))`` (:func:`batch_norm_relu`):
    the same numbers as the two functions one after the other, in one
    function, so the GPU does both in the same passes over memory.
    """

    def __init__(self, running_mean, running_var, use_batch_stats, momentum, eps, relu=False):
        self.running_mean, self.running_var = running_mean, running_var
        self.use_batch_stats = use_batch_stats
        self.momentum, self.eps = momentum, eps
        self.relu = relu

    def forward(self, x, gamma, beta):
        xp = get_array_module(x)
        self.axes = (0,) + tuple(range(2, x.ndim))  # every axis but C: (0,) or (0, 2, 3)
        self.bshape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
        self.m = m = x.size // x.shape[1]  # values per channel, N*H*W
        if xp is not np:
            return self._forward_gpu(x, gamma, beta)
        if x.ndim == 4 and (not _dispatch.reference_active()):
            return self._forward_cpu(x, gamma, beta)

        # the reference array code (the fast CPU path below is tested against it)
        if self.use_batch_stats:
            mean = x.mean(axis=self.axes)
            xc = x - mean.reshape(self.bshape)
            var = _channel_dot(xc, xc) / m  # biased, as used for normalising
            if self.running_mean is not None:
                # in place: the caller's arrays (a module's buffers) see the update
                mom, rm, rv = self.momentum, self.running_mean, self.running_var
                unbiased = var * (m / (m - 1))
                rm[...] = (1 - mom) * rm + mom * mean.astype(rm.dtype)
                rv[...] = (1 - mom) * rv + mom * unbiased.astype(rv.dtype)
        else:
            mean = self.running_mean.astype(x.dtype)
            var = self.running_var.astype(x.dtype)
            xc = x - mean.reshape(self.bshape)

        inv_std = 1.0 / xp.sqrt(var + self.eps)
        # Keep x (the graph holds it anyway), not xhat: backward recomputes
        # xhat in one pass instead of storing a second array of x's size.
        self.x, self.mean, self.inv_std, self.gamma = x, mean, inv_std, gamma
        # y = gamma * xhat + beta = xc * (gamma * inv_std) + beta, reusing xc
        y = xc
        y *= (gamma * inv_std).reshape(self.bshape)
        y += beta.reshape(self.bshape)
        if self.relu:
            xp.maximum(y, 0, out=y)
            self.y = y  # backward needs y > 0, the ReLU's mask
        return y

    def backward(self, gy):
        if is_cupy_array(gy):
            return self._backward_gpu(gy)
        if getattr(self, "fast", False):
            return self._backward_cpu(gy)
        if self.relu:
            gy = gy * (self.y > 0)  # through the ReLU first
        bshape, m = self.bshape, self.m
        xhat = self.x - self.mean.reshape(bshape)
        xhat *= self.inv_std.reshape(bshape)
        gbeta = gy.sum(axis=self.axes)  # dL/dbeta = sum(gy)
        ggamma = _channel_dot(gy, xhat)  # dL/dgamma = sum(gy * xhat)
        gx = None
        if self.needs_input_grad[0]:
            a = self.gamma * self.inv_std  # dy/dx with the statistics held fixed
            if self.use_batch_stats:
                # mean and var depend on every x, which gives two more terms:
                #   gx = gamma*inv_std/M * (M*gy - sum(gy) - xhat*sum(gy*xhat))
                # i.e. per channel gx = a*gy + b*xhat + c, with the (C,) vectors
                b, c = -a * ggamma / m, -a * gbeta / m
                gx = xhat  # reuse the buffer: xhat is no longer needed
                gx *= b.reshape(bshape)
                gx += c.reshape(bshape)
                gx += gy * a.reshape(bshape)
            else:
                gx = gy * a.reshape(bshape)  # fixed statistics: y is affine in x
        return (
            gx,
            ggamma if self.needs_input_grad[1] else None,
            gbeta if self.needs_input_grad[2] else None,
        )

    # ------------------------------------------------------------------ fast CPU path
    # The same equations for (N, C, H, W) arrays, in fewer passes over memory
    # and split over threads by images (threads.parallel_chunks):
    #   * statistics: for every (image, channel) row of H*W values, its sum and
    #     its sum of squares, two matrix products (BLAS reads each row once, at
    #     memory speed), combined per channel in float64. E[x^2] - E[x]^2
    #     cancels when |mean| >> std; where mean^2 > 1e3 * var (a relative
    #     error above ~1e-4 in float32) the layer falls back to the two-pass
    #     centred sums of the reference, so the result is as accurate;
    #   * y = x * scale + shift (+ ReLU) with per-channel scale = gamma * inv_std
    #     and shift = beta - mean * scale;
    #   * backward: gx = a*g + b2*x + c2 with per-channel a, b2, c2 built from
    #     sum(g) and sum(g * x) (same two products), so xhat is never stored.
    # NumPy's maximum(y, 0) with a scalar 0 takes a slow loop; a row of zeros
    # broadcast along the last axis takes the vectorised one (3x faster).

    def _forward_cpu(self, x, gamma, beta):
        self.fast = True
        x = np.ascontiguousarray(x)
        n, c = x.shape[:2]
        x3 = x.reshape(n, c, -1)
        hw, m = x3.shape[2], self.m
        y = np.empty_like(x)
        y3 = y.reshape(n, c, hw)
        if self.use_batch_stats:
            sums, squares = _row_sums(x3, x3)
            mean64 = sums.sum(axis=0) / m
            var64 = np.maximum(squares.sum(axis=0) / m - mean64 * mean64, 0.0)
            if _would_cancel(mean64, var64):
                var64 = _centred_variance(x3, mean64, y3)  # y3 as scratch
            mean, var = mean64.astype(x.dtype), var64.astype(x.dtype)
            if self.running_mean is not None:
                mom, rm, rv = self.momentum, self.running_mean, self.running_var
                rm[...] = (1 - mom) * rm + mom * mean.astype(rm.dtype)
                rv[...] = (1 - mom) * rv + mom * (var * (m / (m - 1))).astype(rv.dtype)
        else:
            mean = self.running_mean.astype(x.dtype)
            var = self.running_var.astype(x.dtype)
        inv_std = 1.0 / np.sqrt(var + self.eps)
        # the backward pass's sum(g * x) - mean * sum(g) cancels the same way
        self.centred = _would_cancel(mean, var)
        scale = (gamma * inv_std).astype(x.dtype)
        shift = (beta - mean * scale).astype(x.dtype)
        scale3, shift3 = scale[:, None], shift[:, None]
        zeros = np.zeros(hw, dtype=x.dtype)

        mean3, beta3 = mean[:, None], beta.astype(x.dtype)[:, None]

        def normalise(a, b):
            yb = y3[a:b]
            if self.centred:  # (x - mean) * scale + beta: no cancellation when |mean| >> std
                np.subtract(x3[a:b], mean3, out=yb)
                yb *= scale3
                yb += beta3
            else:
                np.multiply(x3[a:b], scale3, out=yb)
                yb += shift3
            if self.relu:
                np.maximum(yb, zeros, out=yb)
        threads.parallel_chunks(n, normalise, x.size)
        self.x, self.mean, self.inv_std, self.gamma = x, mean, inv_std, gamma
        if self.relu:
            self.y = y
        return y

    def _backward_cpu(self, gy):
        gy = np.ascontiguousarray(gy)
        x3 = self.x.reshape(self.x.shape[0], self.x.shape[1], -1)
        n, c, hw = x3.shape
        gy3 = gy.reshape(n, c, hw)
        gx = np.empty_like(self.x) if self.needs_input_grad[0] or self.relu else None
        g3 = gy3
        if self.relu:  # g = gy where the ReLU passed, kept in gx's memory
            g3 = gx.reshape(n, c, hw)
            y3 = self.y.reshape(n, c, hw)

            def through_relu(a, b):
                np.multiply(gy3[a:b], y3[a:b] > 0, out=g3[a:b])
            threads.parallel_chunks(n, through_relu, gy.size)
        mean, inv_std = self.mean.astype(np.float64), self.inv_std.astype(np.float64)
        if self.centred:  # |mean| >> std: work with x - mean (one more pass), mean 0 below
            xc = np.empty_like(self.x).reshape(n, c, hw)
            mean3 = self.mean[:, None]

            def centre(a, b):
                np.subtract(x3[a:b], mean3, out=xc[a:b])
            threads.parallel_chunks(n, centre, xc.size)
            x3, mean = xc, np.zeros_like(mean)
        sum_g, sum_gx = (v.sum(axis=0) for v in _row_sums(g3, x3))
        gbeta = sum_g
        ggamma = inv_std * (sum_gx - mean * sum_g)  # sum(g * xhat)
        dtype = self.x.dtype
        if self.needs_input_grad[0]:
            a = self.gamma.astype(np.float64) * inv_std
            if self.use_batch_stats:
                # gx = a*g + b*xhat + c (see the reference) with xhat = (x - mean) * inv_std
                m = self.m
                b, cc = -a * ggamma / m, -a * gbeta / m
                b2, c2 = b * inv_std, cc - b * inv_std * mean
            else:
                b2 = c2 = a  # unused
            a3, b3, c3 = (v.astype(dtype)[:, None] for v in (a, b2, c2))

            def grad_x(a_, b_):
                gxb = gx.reshape(n, c, hw)[a_:b_]
                if not self.use_batch_stats:  # fixed statistics: gx = a * g
                    np.multiply(g3[a_:b_], a3, out=gxb)
                    return
                t = x3[a_:b_] * b3
                t += c3
                np.multiply(g3[a_:b_], a3, out=gxb)  # g3 is gx's memory (ReLU) or gy
                gxb += t
            threads.parallel_chunks(n, grad_x, gy.size)
        else:
            gx = None
        return (
            gx,
            ggamma.astype(dtype) if self.needs_input_grad[1] else None,
            gbeta.astype(dtype) if self.needs_input_grad[2] else None,
        )

    # ------------------------------------------------------------------ GPU path
    # The same equations as above in two kernels forward (one reduction for
    # the mean and variance, one elementwise pass that normalises, applies the
    # ReLU and updates the running statistics) and two backward (one reduction
    # for sum(gy) and sum(gy * xhat), one elementwise pass for gx), instead of
    # about 35 array operations. The array code above is the reference they
    # are tested against. Sums are accumulated in double precision.

    def _forward_gpu(self, x, gamma, beta):
        cp = get_array_module(x)
        x = cp.ascontiguousarray(x)
        bshape, m = self.bshape, self.m
        c = x.shape[1]
        plane = m // x.shape[0]  # H*W, the length of one channel of one image
        update = self.use_batch_stats and self.running_mean is not None
        if self.use_batch_stats:
            # both outputs passed in: CuPy's ReductionKernel returns only the first
            mean, var = cp.empty(c, dtype=x.dtype), cp.empty(c, dtype=x.dtype)
            _BN_MOMENTS(x, 1.0 / m, mean, var, axis=self.axes)
        else:
            mean = self.running_mean.astype(x.dtype, copy=False)
            var = self.running_var.astype(x.dtype, copy=False)
        # kernels need arrays for the running statistics even when none are kept
        rm, rv = (self.running_mean, self.running_var) if update else (mean, var)
        y = cp.empty_like(x)
        _BN_FORWARD(x, mean.reshape(bshape), var.reshape(bshape), gamma.reshape(bshape),
                    beta.reshape(bshape), self.eps, int(self.relu), int(update), self.momentum,
                    m / (m - 1), c, plane, y, rm, rv)
        self.x, self.mean, self.var, self.gamma, self.beta = x, mean, var, gamma, beta
        return y

    def _backward_gpu(self, gy):
        cp = get_array_module(gy)
        bshape, m = self.bshape, self.m
        gy = cp.ascontiguousarray(gy)
        per_channel = [a.reshape(bshape) for a in (self.mean, self.var, self.gamma, self.beta)]
        c = gy.shape[1]
        gbeta, ggamma = cp.empty(c, dtype=gy.dtype), cp.empty(c, dtype=gy.dtype)
        _BN_BACKWARD_SUMS(gy, self.x, *per_channel, self.eps, int(self.relu), gbeta, ggamma,
                          axis=self.axes)
        gx = None
        if self.needs_input_grad[0]:
            gx = _BN_GRAD_X(gy, self.x, *per_channel, gbeta.reshape(bshape), ggamma.reshape(bshape),
                            self.eps, 1.0 / m, int(self.use_batch_stats), int(self.relu))
        return (
            gx,
            ggamma if self.needs_input_grad[1] else None,
            gbeta if self.needs_input_grad[2] else None,
        )


# Two sums at once, accumulated in double precision: (sum x, sum x^2) forward,
# (sum gy, sum gy * xhat) backward.
_BN_PAIR_PREAMBLE = """
// (field names must not be `a` or `b`: those are the macro arguments of
// CuPy's REDUCE(a, b) and POST_MAP(a))
struct miniran_pair {
    double first, second;
    __device__ miniran_pair() : first(0), second(0) {}
    __device__ miniran_pair(double v) : first(v), second(v) {}
    __device__ miniran_pair(double u, double v) : first(u), second(v) {}
};
__device__ miniran_pair operator+(const miniran_pair& p, const miniran_pair& q) {
    return miniran_pair(p.first + q.first, p.second + q.second);
}
"""

# Per-channel vectors arrive reshaped to (1, C, 1, 1) and broadcast against x.
_BN_MOMENTS = kernels.reduction_kernel(
    "miniran_bn_moments", "T x, float64 inv_m", "T mean, T var",
    map_expr="miniran_pair((double)x, (double)x * (double)x)",
    reduce_expr="a + b",
    # biased variance E[x^2] - E[x]^2 (the one used to normalise), never below 0
    post_map_expr="mean = (T)(a.first * inv_m), "
                  "var = (T)fmax(a.second * inv_m - (a.first * inv_m) * (a.first * inv_m), 0.0)",
    identity="0", reduce_type="miniran_pair", preamble=_BN_PAIR_PREAMBLE)

_BN_FORWARD = kernels.elementwise_kernel(
    "miniran_bn_forward",
    "T x, T mean, T var, T gamma, T beta, T eps, int32 relu, int32 update, T momentum, "
    "T unbias, int32 channels, int32 plane",
    "T y, raw R running_mean, raw R running_var",
    """
    const T v = (x - mean) * (gamma * rsqrt(var + eps)) + beta;
    y = (relu && v < (T)0) ? (T)0 : v;  // np.maximum(v, 0): a NaN stays NaN
    // the first element of each channel (image 0, pixel 0) updates its running
    // statistics: unbiased variance, as PyTorch
    if (update && i < (ptrdiff_t)channels * plane && i % plane == 0) {
        const int c = i / plane;
        running_mean[c] = (R)((1 - momentum) * (T)running_mean[c] + momentum * mean);
        running_var[c] = (R)((1 - momentum) * (T)running_var[c] + momentum * var * unbias);
    }
    """)

_BN_BACKWARD_SUMS = kernels.reduction_kernel(
    "miniran_bn_backward_sums", "T gy, T x, T mean, T var, T gamma, T beta, T eps, int32 relu",
    "T gbeta, T ggamma",
    map_expr="miniran_bn_pair_of(gy, x, mean, var, gamma, beta, eps, relu)",
    reduce_expr="a + b", post_map_expr="gbeta = (T)a.first, ggamma = (T)a.second",
    identity="0", reduce_type="miniran_pair",
    preamble=_BN_PAIR_PREAMBLE + """
template <typename U>
__device__ miniran_pair miniran_bn_pair_of(U gy, U x, U mean, U var, U gamma, U beta, U eps, int relu) {
    const U inv_std = rsqrt(var + eps);
    const U xhat = (x - mean) * inv_std;
    // through the ReLU: no gradient where its output was not > 0 (the output
    // recomputed with the forward kernel's expression, so the masks agree)
    const U g = (relu && !((x - mean) * (gamma * inv_std) + beta > (U)0)) ? (U)0 : gy;
    return miniran_pair((double)g, (double)g * (double)xhat);
}
""")

_BN_GRAD_X = kernels.elementwise_kernel(
    "miniran_bn_grad_x",
    "T gy, T x, T mean, T var, T gamma, T beta, T gbeta, T ggamma, T eps, T inv_m, "
    "int32 batch_stats, int32 relu",
    "T gx",
    """
    const T inv_std = rsqrt(var + eps);
    const T xhat = (x - mean) * inv_std;
    const T g = (relu && !((x - mean) * (gamma * inv_std) + beta > (T)0)) ? (T)0 : gy;
    const T a = gamma * inv_std;  // dy/dx with the statistics held fixed
    // batch statistics: gx = a/M * (M*g - sum(g) - xhat*sum(g*xhat))
    gx = batch_stats ? a * (g - inv_m * gbeta - xhat * (inv_m * ggamma)) : a * g;
    """)


def batch_norm(
    x,
    running_mean=None,
    running_var=None,
    weight=None,
    bias=None,
    training=False,
    momentum=0.1,
    eps=1e-5,
) -> Tensor:
    """Batch normalisation over the channel axis 1 (PyTorch's semantics and argument order).

    The arguments come in the order of ``torch.nn.functional.batch_norm``:
    ``batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)``.

    Args:
        x: input tensor (N, C, H, W) or (N, C).
        running_mean, running_var: raw arrays (C,) on x's device, or both
            ``None``. In training mode they are updated **in place** with
            ``running = (1 - momentum) * running + momentum * batch_stat``
            (unbiased variance). With ``None`` the batch statistics are
            always used, in evaluation mode too.
        weight: gamma, the scale, tensor (C,) (``None``: ones, nothing learnt).
        bias: beta, the shift, tensor (C,) (``None``: zeros, nothing learnt).
        training: use the batch statistics (True) or the running ones (False,
            the default, as in PyTorch).
        momentum: weight of the new batch statistic in the running update, in
            [0, 1]. ``None`` (PyTorch's cumulative average) needs a batch count:
            :class:`miniran.nn.BatchNorm2d` keeps one.
        eps: added to the variance before the square root.

    Returns:
        Tensor of x's shape: ``weight * (x - mean) / sqrt(var + eps) + bias``.
    """
    return _batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps, relu=False)


def batch_norm_relu(
    x,
    running_mean=None,
    running_var=None,
    weight=None,
    bias=None,
    training=False,
    momentum=0.1,
    eps=1e-5,
) -> Tensor:
    """``relu(batch_norm(x, ...))`` as one function (same arguments as :func:`batch_norm`).

    The pre-activation units apply a ReLU right after every batch norm. As
    one function the two give the same numbers, but the GPU computes them in
    the same passes over memory: two kernel launches forward and two backward
    instead of four and four.
    """
    return _batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps, relu=True)


def _batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps, relu):
    """Check the arguments of :func:`batch_norm` / :func:`batch_norm_relu` and apply it."""
    gamma, beta = weight, bias
    x = x if isinstance(x, Tensor) else Tensor(x)
    if x.ndim not in (2, 4):
        raise ValueError(f"batch_norm: x must be 4-D (N, C, H, W) or 2-D (N, C), got shape {x.shape}")
    if momentum is None:
        raise ValueError("batch_norm: momentum=None (PyTorch's cumulative average) needs the count of batches "
                         "seen, which a function does not keep: use nn.BatchNorm2d(momentum=None), or a float")
    if not 0 <= momentum <= 1:
        raise ValueError(f"batch_norm: momentum must be in [0, 1], got {momentum}")
    c = x.shape[1]
    xp = get_array_module(x.data)
    gamma = Tensor(xp.ones(c, dtype=x.dtype)) if gamma is None else gamma
    beta = Tensor(xp.zeros(c, dtype=x.dtype)) if beta is None else beta
    gamma = gamma if isinstance(gamma, Tensor) else Tensor(as_array(gamma, like=x.data))
    beta = beta if isinstance(beta, Tensor) else Tensor(as_array(beta, like=x.data))
    for name, t in (("gamma", gamma), ("beta", beta)):
        if tuple(t.shape) != (c,):
            raise ValueError(
                f"batch_norm: {name} must have shape ({c},) for x of shape {x.shape}, got {tuple(t.shape)}"
            )
    if (running_mean is None) != (running_var is None):
        raise ValueError("batch_norm: give both running_mean and running_var, or neither")
    if running_mean is not None:
        for name, r in (("running_mean", running_mean), ("running_var", running_var)):
            if isinstance(r, Tensor):
                raise TypeError(f"batch_norm: {name} must be a raw array (a module buffer), not a Tensor "
                                "(the order is PyTorch's: x, running_mean, running_var, weight, bias)")
            if tuple(r.shape) != (c,):
                raise ValueError(
                    f"batch_norm: {name} must have shape ({c},) for x of shape {x.shape}, got {tuple(r.shape)}"
                )
            if is_cupy_array(r) != is_cupy_array(x.data):
                raise ValueError(
                    f"batch_norm: {name} and x are on different devices; move the module with .to()"
                )
    use_batch_stats = bool(training) or running_mean is None
    if use_batch_stats and x.size // c <= 1:
        raise ValueError(
            f"batch_norm: training needs more than 1 value per channel, got x of shape {x.shape}"
        )
    return BatchNorm(running_mean, running_var, use_batch_stats, float(momentum), float(eps),
                     relu=relu)(x, gamma, beta)
