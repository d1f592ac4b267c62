"""The GPU twin of :class:`~miniran.functional.conv.Conv2dFunction`: fused im2col/col2im kernels, batched products.

On a GPU every array operation costs a launch, so the convolution there uses
a per-image layout, ``col`` of shape ``(N, C*KH*KW, OH*OW)``, and *batched*
products that broadcast the weight::

    y    (N, O, OH*OW)   = w (O, CKK) @ col (N, CKK, OH*OW)    # already NCHW
    gcol (N, CKK, OH*OW) = w.T @ gy (N, O, OH*OW)             -> col2im
    gw   (O, CKK)        = sum over n of gy[n] @ col[n].T

so no transposing copy is needed. Each product is ONE cuBLAS
strided-batched GEMM (:mod:`miniran.fast.gemm_gpu`): the shared weight has a
batch stride of 0 and its transpose is a flag, so neither ``cupy.matmul``'s
pointer-array kernels nor its copies of transposed operands are issued.
im2col is one ElementwiseKernel with one
thread per ``col`` element; col2im is a *gather* with one thread per input
pixel, which sums its contributions itself (no atomics, so the result is
deterministic). A 1x1 kernel with stride 1 and no padding needs no im2col:
``x`` is its own ``col``. ``docs/gpu.md`` counts the launches.
"""

from __future__ import annotations

from miniran import backend, kernels
from miniran.backend import get_array_module
from miniran.fast import gemm_gpu
from miniran.fast.slots import gradient_slot
from miniran.functional._dispatch import twin_of
from miniran.functional.conv import Conv2dFunction

__all__ = ["Conv2dGPU"]

# The per-image layout of the GPU convolution: col (N, C, KH, KW, OH, OW),
# i.e. (N, C*KH*KW, OH*OW), so that y = w @ col is a batched product that is
# already in (N, O, OH, OW) order. Note: `i` (the thread's element index) and
# `n` are reserved names in ElementwiseKernel code, so the batch index is `b`.
_IM2COL_BATCHED_KERNEL = kernels.elementwise_kernel(
    "miniran_im2col_batched",
    "raw T img, int32 batch, int32 channels, int32 h, int32 w, int32 kh, int32 kw, "
    "int32 out_h, int32 out_w, int32 sy, int32 sx, int32 ph, int32 pw",
    "T col",
    """
    // one thread per element of col (N, C, KH, KW, OH, OW), last axis first
    ptrdiff_t rest = i;
    const int ox = rest % out_w;     rest /= out_w;
    const int oy = rest % out_h;     rest /= out_h;
    const int kx = rest % kw;        rest /= kw;
    const int ky = rest % kh;        rest /= kh;
    const int c  = rest % channels;  rest /= channels;
    const int b  = rest;
    const int y  = oy * sy - ph + ky;
    const int xx = ox * sx - pw + kx;
    if (0 <= y && y < h && 0 <= xx && xx < w) {
        col = img[(((ptrdiff_t)b * channels + c) * h + y) * w + xx];
    } else {
        col = (T)0;  // zero padding
    }
    """,
)
_COL2IM_BATCHED_KERNEL = kernels.elementwise_kernel(
    "miniran_col2im_batched",
    "raw T col, int32 batch, int32 channels, int32 h, int32 w, int32 kh, int32 kw, "
    "int32 out_h, int32 out_w, int32 sy, int32 sx, int32 ph, int32 pw",
    "T img",
    """
    // one thread per pixel of img (N, C, H, W), gathering from col
    // (N, C, KH, KW, OH, OW): fixed summation order, no atomics
    ptrdiff_t rest = i;
    const int xx = rest % w;         rest /= w;
    const int y  = rest % h;         rest /= h;
    const int c  = rest % channels;  rest /= channels;
    const int b  = rest;
    T acc = (T)0;
    for (int ky = 0; ky < kh; ++ky) {
        const int ty = y + ph - ky;
        if (ty < 0 || ty % sy != 0) continue;
        const int oy = ty / sy;
        if (oy >= out_h) continue;
        for (int kx = 0; kx < kw; ++kx) {
            const int tx = xx + pw - kx;
            if (tx < 0 || tx % sx != 0) continue;
            const int ox = tx / sx;
            if (ox >= out_w) continue;
            acc += col[((((ptrdiff_t)b * channels + c) * kh + ky) * kw + kx) * out_h * out_w
                       + (ptrdiff_t)oy * out_w + ox];
        }
    }
    img = acc;
    """,
)


def _product(a, b, out, trans_a=False, trans_b=False):
    """``out[i] = op(a[i]) @ op(b[i])``: one cuBLAS call, or ``cupy.matmul`` for dtypes cuBLAS's strided GEMM lacks."""
    if gemm_gpu.supported(a, b, out):
        return gemm_gpu.batched_matmul(a, b, out, trans_a=trans_a, trans_b=trans_b)
    cp = get_array_module(a)
    return cp.matmul(a.swapaxes(-1, -2) if trans_a else a, b.swapaxes(-1, -2) if trans_b else b, out=out)


@twin_of(Conv2dFunction)
class Conv2dGPU(Conv2dFunction):
    """The convolution on CuPy arrays, in the per-image layout of the module docstring."""

    @classmethod
    def suits(cls, arrays, params, grad):
        return backend.is_cupy_array(arrays[0])

    @property
    def pointwise(self):
        """A 1x1 kernel with stride 1 and no padding: x is its own col."""
        return self.w.shape[2:] == (1, 1) and tuple(self.stride) == (1, 1) and tuple(self.padding) == (0, 0)

    def forward(self, x, w, b=None):
        cp = get_array_module(x)
        x, w, (oh, ow) = self._prepare(x, w, b)
        n, c, h, wd = x.shape
        o, _, kh, kw = w.shape
        (sy, sx), (ph, pw) = self.stride, self.padding
        x = cp.ascontiguousarray(x)
        if self.pointwise:
            col = x.reshape(n, c, h * wd)  # a 1x1 kernel: x is its own col (a view)
        else:
            col = cp.empty((n, c * kh * kw, oh * ow), dtype=x.dtype)
            _IM2COL_BATCHED_KERNEL(x, n, c, h, wd, kh, kw, oh, ow, sy, sx, ph, pw, col)
        self.col3d = col if self.needs_input_grad[1] else None
        y = _product(w.reshape(o, c * kh * kw), col, cp.empty((n, o, oh * ow), dtype=x.dtype))  # (N, O, OH*OW)
        if b is not None:
            y += b.astype(y.dtype, copy=False)[:, None]
        return y.reshape(n, o, oh, ow)

    def backward(self, gy):
        cp = get_array_module(gy)
        n, c, h, wd = self.x_shape
        o, _, kh, kw = self.w.shape
        oh, ow = gy.shape[2:]
        (sy, sx), (ph, pw) = self.stride, self.padding
        gy3 = cp.ascontiguousarray(gy.astype(self.w.dtype, copy=False)).reshape(n, o, oh * ow)
        needs = self.needs_input_grad
        gx = gw = gb = None
        if needs[0]:
            gcol = _product(self.w.reshape(o, c * kh * kw), gy3, cp.empty((n, c * kh * kw, oh * ow), gy3.dtype),
                            trans_a=True)  # w.T @ gy3: (N, CKK, OH*OW)
            if self.pointwise:
                gx = gcol.reshape(n, c, h, wd)
            else:
                gx = cp.empty((n, c, h, wd), dtype=gcol.dtype)
                _COL2IM_BATCHED_KERNEL(gcol, n, c, h, wd, kh, kw, oh, ow, sy, sx, ph, pw, gx)
            gx = gx.astype(self.dtypes[0], copy=False)
        if needs[1]:
            # one batched product gy3 @ col.T (N, O, CKK), then the sum over the batch
            per_image = _product(gy3, self.col3d, cp.empty((n, o, c * kh * kw), gy3.dtype), trans_b=True)
            slot = gradient_slot(self, 1, gy3) if self.dtypes[1] == gy3.dtype else None
            # the batch sum straight into the weight's slot of a flat gradient buffer, if it has one
            gw = per_image.sum(axis=0, out=None if slot is None else slot.reshape(o, c * kh * kw))
            gw = gw.reshape(self.w.shape).astype(self.dtypes[1], copy=False)
        if len(needs) == 3 and needs[2]:
            gb = gy3.sum(axis=(0, 2)).astype(self.dtypes[2], copy=False)
        return (gx, gw) if len(needs) == 2 else (gx, gw, gb)
