"""``BatchNormGPU``: the batch norm of :mod:`miniran.functional.normalization` in fused CUDA kernels.

The reference's equations in two kernels forward (one reduction for the mean
and variance, one elementwise pass that normalises, applies the ReLU and
updates the running statistics) and two backward (one reduction for sum(gy)
and sum(gy * xhat), one elementwise pass for gx), instead of about 35 array
operations. The reference, run on the same CuPy arrays under
``miniran.reference_only()``, is what these kernels are tested against. Sums
are accumulated in double precision.
"""

from __future__ import annotations

from miniran import backend, kernels
from miniran.backend import get_array_module
from miniran.functional._dispatch import twin_of
from miniran.fast.slots import gradient_slot
from miniran.functional.normalization import BatchNorm

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


@twin_of(BatchNorm)
class BatchNormGPU(BatchNorm):
    """Batch norm (and batch norm + ReLU) of CuPy arrays, (N, C, H, W) or (N, C), in four kernel launches."""

    @classmethod
    def suits(cls, arrays, params, grad) -> bool:
        # statistics over several processes (sync batch norm) are the reference's job
        return backend.is_cupy_array(arrays[0]) and params.get("comm") is None

    def forward(self, x, gamma, beta):
        cp = get_array_module(x)
        x = cp.ascontiguousarray(x)
        self.axes = (0,) + tuple(range(2, x.ndim))  # every axis but C: (0,) or (0, 2, 3)
        self.bshape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
        self.m = x.size // x.shape[1]  # values per channel, N*H*W
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

    def _slot_or_empty(self, cp, index, c, gy):
        slot = gradient_slot(self, index, gy)
        return cp.empty(c, dtype=gy.dtype) if slot is None else slot

    def backward(self, gy):
        cp = get_array_module(gy)
        bshape, m = self.bshape, self.m
        gy = cp.ascontiguousarray(gy)
        per_channel = [a.reshape(bshape) for a in (self.mean, self.var, self.gamma, self.beta)]
        c = gy.shape[1]
        # written straight into the parameters' slots of a flat gradient buffer, if they have them
        gbeta = self._slot_or_empty(cp, 2, c, gy)
        ggamma = self._slot_or_empty(cp, 1, c, gy)
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
