"""The GPU twin of :class:`~miniran.functional.pooling.MaxPool2dFunction`: one kernel per pass.

The reference walks the KH*KW kernel offsets, a few array operations each, so
on a GPU it costs several launches per offset. Here the forward is one kernel
(one thread per output pixel scans its window for the max and records where
it was, with the reference's tie and -inf rules), and the backward is one
kernel (one thread per input pixel gathers the gradients of the windows whose
max it was: deterministic, no atomics). ``arg`` is saved as the flat position
``y*W + x`` of the max inside its (H, W) plane, not as a kernel offset.
"""

from __future__ import annotations

import numpy as np

from miniran import backend, kernels
from miniran.backend import get_array_module
from miniran.functional._dispatch import twin_of
from miniran.functional.pooling import MaxPool2dFunction

__all__ = ["MaxPool2dGPU"]

# One thread per output pixel of the (N, C, OH, OW) result. Padding counts as
# -inf and never wins; on ties the first position wins (strictly greater), as
# in PyTorch; a window whose real pixels are all -inf points at its first real
# pixel; a NaN in a window makes its output NaN (np.maximum's rule).
_MAX_POOL_FORWARD_KERNEL = kernels.elementwise_kernel(
    "miniran_max_pool_forward",
    "raw T x, int32 h, int32 w, int32 kh, int32 kw, int32 sh, int32 sw, int32 ph, int32 pw, "
    "int32 out_h, int32 out_w, T neg_inf",
    "T y, int32 arg",
    """
    const int ox = i % out_w;
    const int oy = (i / out_w) % out_h;
    const ptrdiff_t plane = i / ((ptrdiff_t)out_w * out_h);  // n * C + c
    const int y0 = oy * sh - ph, x0 = ox * sw - pw;
    const int first_y = y0 > 0 ? y0 : 0, first_x = x0 > 0 ? x0 : 0;
    T best = neg_inf;  // -inf comes in as an argument: CUDA C has no portable constant
    int best_at = first_y * w + first_x;  // the first real pixel of the window
    for (int ky = 0; ky < kh; ++ky) {
        const int yy = y0 + ky;
        if (yy < 0 || yy >= h) continue;
        for (int kx = 0; kx < kw; ++kx) {
            const int xx = x0 + kx;
            if (xx < 0 || xx >= w) continue;
            const T v = x[plane * h * w + yy * w + xx];
            if (v > best) best_at = yy * w + xx;
            if (v > best || isnan(v)) best = v;
        }
    }
    y = best;
    arg = best_at;
    """,
)

# One thread per input pixel: add up gy over the windows that cover the pixel
# and chose it as their max.
_MAX_POOL_BACKWARD_KERNEL = kernels.elementwise_kernel(
    "miniran_max_pool_backward",
    "raw T gy, raw int32 arg, int32 h, int32 w, int32 kh, int32 kw, int32 sh, int32 sw, "
    "int32 ph, int32 pw, int32 out_h, int32 out_w",
    "T gx",
    """
    const int xx = i % w;
    const int yy = (i / w) % h;
    const ptrdiff_t plane = i / ((ptrdiff_t)w * h);
    const int me = yy * w + xx;
    T acc = (T)0;
    // the windows (oy, ox) whose rows and columns cover (yy, xx)
    for (int ky = 0; ky < kh; ++ky) {
        const int ty = yy + ph - ky;
        if (ty < 0 || ty % sh != 0) continue;
        const int oy = ty / sh;
        if (oy >= out_h) continue;
        for (int kx = 0; kx < kw; ++kx) {
            const int tx = xx + pw - kx;
            if (tx < 0 || tx % sw != 0) continue;
            const int ox = tx / sw;
            if (ox >= out_w) continue;
            const ptrdiff_t o = (plane * out_h + oy) * out_w + ox;
            if (arg[o] == me) acc += gy[o];
        }
    }
    gx = acc;
    """,
)


@twin_of(MaxPool2dFunction)
class MaxPool2dGPU(MaxPool2dFunction):
    """Max pooling on CuPy arrays: one forward kernel, one backward kernel."""

    @classmethod
    def suits(cls, arrays, params, grad):
        return backend.is_cupy_array(arrays[0])

    def forward(self, x):
        """Every output pixel scans its window for the max and records where it was."""
        cp = get_array_module(x)
        self._remember(x)
        x = cp.ascontiguousarray(x)
        n, c, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw), (oh, ow) = self.kernel, self.stride, self.pad, self.out
        y = cp.empty((n, c, oh, ow), dtype=x.dtype)
        self.arg = cp.empty((n, c, oh, ow), dtype=np.int32)  # flat y*W + x inside the plane
        _MAX_POOL_FORWARD_KERNEL(x, h, w, kh, kw, sh, sw, ph, pw, oh, ow, -np.inf, y, self.arg)
        return y

    def backward(self, gy):
        """Every input pixel gathers the gradients of the windows whose max it was."""
        cp = get_array_module(gy)
        n, c, h, w = self.in_shape
        (kh, kw), (sh, sw), (ph, pw), (oh, ow) = self.kernel, self.stride, self.pad, self.out
        gx = cp.empty((n, c, h, w), dtype=gy.dtype)
        _MAX_POOL_BACKWARD_KERNEL(cp.ascontiguousarray(gy), self.arg, h, w, kh, kw, sh, sw, ph, pw,
                                  oh, ow, gx)
        return gx
