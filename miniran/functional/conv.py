"""2-D convolution by im2col: unfold the input, then one matrix product.

Notation (used in every docstring of this module)::

    N            batch size
    C, O         input and output channels
    H, W         input height and width
    KH, KW       kernel height and width
    SY, SX       stride (rows, columns)
    PH, PW       zero padding added on each side (rows, columns)
    OH, OW       output height and width:
                     OH = (H + 2*PH - KH) // SY + 1
                     OW = (W + 2*PW - KW) // SX + 1

A convolution (strictly a cross-correlation, as in PyTorch) computes::

    y[n, o, i, j] = b[o] + sum_{c, ky, kx} w[o, c, ky, kx] * xpad[n, c, i*SY + ky, j*SX + kx]

**im2col** copies every input value that a kernel tap ``(ky, kx)`` sees into a
matrix ``col`` whose rows are indexed by ``(c, ky, kx)`` and whose columns by
``(n, i, j)``. The whole convolution is then *one* matrix product::

    y (O, N*OH*OW) = w (O, C*KH*KW) @ col (C*KH*KW, N*OH*OW)

The layout of ``col``, shape ``(C, KH, KW, N, OH, OW)``, is chosen so that
both reshapes above are free (no copy) and the product is a single
contiguous GEMM, the fastest thing NumPy (BLAS) or CuPy (cuBLAS) can do.
The price is one small copy at the end, (O, N, ...) -> (N, O, ...).

The backward pass reuses the same two pieces (Chainer's scheme)::

    gw  = gy (O, N*OH*OW) @ col.T            -> (O, C*KH*KW)
    gx  = col2im(w.T (C*KH*KW, O) @ gy)      -> (N, C, H, W)
    gb  = gy.sum over (N, OH, OW)

``gw`` is a product of two short, wide matrices over a very long inner
dimension (N*OH*OW: 65,536 in the first stage of a CIFAR network at batch 64).
When ``col`` has more rows than ``gy`` (C*KH*KW > O, true of every 3x3 conv)
it is computed as ``(col @ gy.T).T`` instead. It is the same single product
with the same result. OpenBLAS runs it 1.2-1.4x faster on one thread, and
with two threads it avoids stalls that the other order showed. Transposing
the small (C*KH*KW, O) result back costs almost nothing. docs/performance.md
has the figures.

``col2im`` is the adjoint of ``im2col``: it adds every column entry back onto
the input pixel it was copied from.

On the CPU, im2col and col2im loop only over the KH*KW kernel taps, each
step a strided slice copy (or add) over the whole batch at once. On the GPU
they are CuPy ElementwiseKernels: im2col with one thread per ``col`` element,
col2im as a *gather* with one thread per input pixel, which sums its
contributions itself (no atomics, so the result is deterministic).

**The GPU layout.** On a GPU every array operation costs a launch, so the
convolution there uses a per-image layout, ``col`` of shape
``(N, C*KH*KW, OH*OW)``, and *batched* products that broadcast the weight::

    y  (N, O, OH*OW)   = w (O, CKK) @ col (N, CKK, OH*OW)    # already NCHW
    gcol (N, CKK, OH*OW) = w.T @ gy (N, O, OH*OW)           -> col2im
    gw (O, CKK)        = sum over n of gy[n] @ col[n].T

so no transposing copy is needed: a 3x3 convolution costs 2 launches forward
and 4 backward, a 1x1 convolution (no im2col at all) 1 and 3. The CPU path
above stays the reference the GPU path is tested against.
"""

from __future__ import annotations

import numpy as np

from miniran import backend, kernels, threads
from miniran.functional import _dispatch
from miniran.autograd import Function, Tensor, as_tensor
from miniran.backend import get_array_module
from miniran.functional import winograd
from miniran.functional._args import _pair

# --------------------------------------------------------------------------- sizes and arguments


def conv_output_size(size: int, k: int, s: int, p: int) -> int:
    """Output length of a convolution along one axis: ``(size + 2p - k) // s + 1``.

    The last window starts at ``(out - 1) * s`` and must end inside the padded
    input, so ``(out - 1) * s + k <= size + 2p < out * s + k``.

    Args:
        size: input length (H or W).
        k: kernel length (KH or KW).
        s: stride, >= 1.
        p: zero padding on each side, >= 0.

    Returns:
        The output length (OH or OW), at least 1.

    Raises:
        ValueError: if the stride is not positive, the padding is negative, or
            the kernel does not fit in the padded input.
    """
    if s < 1:
        raise ValueError(f"conv_output_size: stride must be >= 1, got {s}")
    if p < 0:
        raise ValueError(f"conv_output_size: padding must be >= 0, got {p}")
    if k > size + 2 * p:
        raise ValueError(
            f"conv_output_size: kernel size {k} is larger than the padded input size {size} + 2*{p}"
        )
    return (size + 2 * p - k) // s + 1


# --------------------------------------------------------------------------- im2col / col2im


def im2col(x, kernel_size, stride=1, padding=0):
    """Unfold the input windows of a convolution into a matrix (raw arrays, no autograd).

    ``col[c, ky, kx, n, i, j] = xpad[n, c, i*SY + ky, j*SX + kx]``, where
    ``xpad`` is ``x`` with PH (PW) zero rows (columns) added on each side.

    Args:
        x: raw NumPy or CuPy array of shape (N, C, H, W).
        kernel_size: KH (= KW) or the pair (KH, KW).
        stride: SY (= SX) or the pair (SY, SX).
        padding: PH (= PW) or the pair (PH, PW).

    Returns:
        ``col`` of shape (C, KH, KW, N, OH, OW), contiguous, same dtype and
        array module as ``x``; ``col.reshape(C*KH*KW, N*OH*OW)`` is free.
    """
    kh, kw = _pair(kernel_size, "kernel_size")
    (sy, sx), (ph, pw) = _pair(stride, "stride"), _pair(padding, "padding")
    n, c, h, w = x.shape
    oh, ow = conv_output_size(h, kh, sy, ph), conv_output_size(w, kw, sx, pw)
    xp = get_array_module(x)
    if xp is not np:
        return _im2col_gpu(x, kh, kw, sy, sx, ph, pw, oh, ow)

    # Channel-major view (C, N, H, W): with it, each tap's slice has exactly
    # the shape of its destination col[:, ky, kx] (no transposes).
    x_cn = x.transpose(1, 0, 2, 3)
    col = xp.empty((c, kh, kw, n, oh, ow), dtype=x.dtype)
    _unfold_taps(_zero_pad(x_cn, ph, pw), col, sy, sx)
    return col


def _unfold_taps(xpad, col, sy, sx):
    """The loop of im2col: ``col[a, ky, kx, b] = xpad[a, b, ky::SY, kx::SX]`` for every kernel tap.

    ``xpad`` is a zero-padded (A, B, Hp, Wp) array and ``col`` an
    (A, KH, KW, B, OH, OW) array or view, written in place: (A, B) is
    (C, N) for :func:`im2col`'s layout, (N, C) for the fast CPU path's.
    """
    _, kh, kw, _, oh, ow = col.shape
    for ky in range(kh):
        # rows ky, ky+SY, ..., ky+(OH-1)*SY: the rows tap ky sees for the OH outputs.
        # Ending the slice exactly there (not at ky + OH*SY) is why, unlike
        # Chainer, no extra SY-1 rows of padding are needed.
        rows = slice(ky, ky + (oh - 1) * sy + 1, sy)
        for kx in range(kw):
            cols = slice(kx, kx + (ow - 1) * sx + 1, sx)
            col[:, ky, kx] = xpad[:, :, rows, cols]  # one strided copy for the whole batch


def _fold_taps(col, img, sy, sx):
    """The loop of col2im, the adjoint of :func:`_unfold_taps`: ``img[a, b, ky::SY, kx::SX] += col[a, ky, kx, b]``."""
    _, kh, kw, _, oh, ow = col.shape
    for ky in range(kh):
        rows = slice(ky, ky + (oh - 1) * sy + 1, sy)
        for kx in range(kw):
            cols = slice(kx, kx + (ow - 1) * sx + 1, sx)
            img[:, :, rows, cols] += col[:, ky, kx]  # += : overlapping windows add up


def col2im(col, x_shape, stride=1, padding=0):
    """Fold a ``col`` matrix back onto the input: the adjoint (transpose) of :func:`im2col`.

    Every entry ``col[c, ky, kx, n, i, j]`` is *added* to the pixel
    ``x[n, c, i*SY + ky - PH, j*SX + kx - PW]`` it came from (entries that fall
    in the padding are dropped). Overlapping windows therefore sum up, which is
    exactly the gradient of im2col.

    Args:
        col: raw array of shape (C, KH, KW, N, OH, OW).
        x_shape: the shape (N, C, H, W) of the image ``col`` was built from
            (H and W cannot be recovered from OH and OW when SY or SX > 1).
        stride: SY (= SX) or the pair (SY, SX).
        padding: PH (= PW) or the pair (PH, PW).

    Returns:
        A contiguous array of shape (N, C, H, W).
    """
    (sy, sx), (ph, pw) = _pair(stride, "stride"), _pair(padding, "padding")
    n, c, h, w = x_shape
    c_, kh, kw, n_, oh, ow = col.shape
    if (c_, n_) != (c, n) or (oh, ow) != (conv_output_size(h, kh, sy, ph), conv_output_size(w, kw, sx, pw)):
        raise ValueError(f"col2im: col of shape {col.shape} does not match x_shape {tuple(x_shape)}")
    xp = get_array_module(col)
    if xp is not np:
        return _col2im_gpu(col, n, c, h, w, sy, sx, ph, pw)

    # accumulate in the padded, channel-major image, the mirror of im2col
    img = xp.zeros((c, n, h + 2 * ph, w + 2 * pw), dtype=col.dtype)
    _fold_taps(col, img, sy, sx)
    # drop the padding and return to (N, C, H, W)
    return xp.ascontiguousarray(img[:, :, ph:ph + h, pw:pw + w].transpose(1, 0, 2, 3))


def _zero_pad(a, ph, pw):
    """Zero-pad the last two axes of a 4-D array (or view) into a new contiguous array; ``a`` itself without padding."""
    if not (ph or pw):
        return a
    xp = get_array_module(a)
    d0, d1, h, w = a.shape
    out = xp.zeros((d0, d1, h + 2 * ph, w + 2 * pw), dtype=a.dtype)
    out[:, :, ph:ph + h, pw:pw + w] = a
    return out


def _weight_grad_of_images(unfolded, g3):
    """``sum over i of g3[i] @ unfolded[i].T`` (O, K): one group of images' part of the weight gradient.

    ``unfolded`` (n, K, L) is the input as the product saw it (x itself for a
    1x1 kernel, im2col's col otherwise), ``g3`` (n, O, L) the output gradient.
    As in the reference, the side with more rows goes on the left of the
    products (faster in BLAS), then the (K, O) result is transposed back.
    """
    if unfolded.shape[1] > g3.shape[1]:
        return np.matmul(unfolded, g3.transpose(0, 2, 1)).sum(axis=0).T
    return np.matmul(g3, unfolded.transpose(0, 2, 1)).sum(axis=0)


def _im2col_images(x, stride, padding, col):
    """im2col in the per-image layout: ``col[n, c, ky, kx, i, j] = xpad[n, c, i*SY + ky, j*SX + kx]``.

    ``x`` (n, C, H, W), ``col`` a preallocated (n, C, KH, KW, OH, OW) array
    (written in place). The fast CPU path calls it for a few images at a time.
    """
    (sy, sx), (ph, pw) = stride, padding
    # viewed as (n, KH, KW, C, OH, OW), col has the layout _unfold_taps fills from (n, C, ...)
    _unfold_taps(_zero_pad(x, ph, pw), col.transpose(0, 2, 3, 1, 4, 5), sy, sx)


def _col2im_images(col, stride, padding, out):
    """The adjoint of :func:`_im2col_images`: fold ``col`` (n, C, KH, KW, OH, OW) into ``out`` (n, C, H, W)."""
    (sy, sx), (ph, pw) = stride, padding
    n, c, h, w = out.shape
    img = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=col.dtype) if (ph or pw) else out
    if img is out:
        out[...] = 0
    _fold_taps(col.transpose(0, 2, 3, 1, 4, 5), img, sy, sx)
    if img is not out:
        out[...] = img[:, :, ph:ph + h, pw:pw + w]


# --------------------------------------------------------------------------- GPU kernels


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

def _im2col_gpu(x, kh, kw, sy, sx, ph, pw, oh, ow):
    """:func:`im2col` on the GPU: the convolution's per-image kernel, then the
    documented (C, KH, KW, N, OH, OW) layout (one transposing copy)."""
    cp = backend.cupy_module()
    n, c, h, w = x.shape
    x = cp.ascontiguousarray(x)  # the kernel indexes the raw buffer as (N, C, H, W)
    col = cp.empty((n, c, kh, kw, oh, ow), dtype=x.dtype)
    _IM2COL_BATCHED_KERNEL(x, n, c, h, w, kh, kw, oh, ow, sy, sx, ph, pw, col)
    return cp.ascontiguousarray(col.transpose(1, 2, 3, 0, 4, 5))


def _col2im_gpu(col, n, c, h, w, sy, sx, ph, pw):
    """:func:`col2im` on the GPU: back to the per-image layout, then the kernel."""
    cp = backend.cupy_module()
    _, kh, kw, _, oh, ow = col.shape
    col = cp.ascontiguousarray(col.transpose(3, 0, 1, 2, 4, 5))  # (N, C, KH, KW, OH, OW)
    img = cp.empty((n, c, h, w), dtype=col.dtype)
    _COL2IM_BATCHED_KERNEL(col, n, c, h, w, kh, kw, oh, ow, sy, sx, ph, pw, img)
    return img


# --------------------------------------------------------------------------- the Function


class Conv2dFunction(Function):
    """y = conv2d(x, w) + b on raw arrays; see the module docstring for the scheme."""

    def __init__(self, stride, padding):
        self.stride, self.padding = stride, padding

    def forward(self, x, w, b=None):
        xp = get_array_module(x)
        # compute in the common dtype (float32 stays float32); grads go back in each input's dtype
        dtype = xp.result_type(x.dtype, w.dtype, *([] if b is None else [b.dtype]))
        self.dtypes = (x.dtype, w.dtype, None if b is None else b.dtype)
        x, w = x.astype(dtype, copy=False), w.astype(dtype, copy=False)
        n, c, h, wd = x.shape  # wd: the width (w is the weight)
        o, _, kh, kw = w.shape
        (sy, sx), (ph, pw) = self.stride, self.padding
        oh, ow = conv_output_size(h, kh, sy, ph), conv_output_size(wd, kw, sx, pw)
        self.x_shape, self.w = x.shape, w

        # A 1x1 kernel with stride 1 and no padding needs no unfolding: each
        # output pixel is a plain matrix product over channels, so col is just
        # x in channel-major order (C, N*H*W).
        self.pointwise = (kh, kw, sy, sx, ph, pw) == (1, 1, 1, 1, 0, 0)
        if xp is not np:
            return self._forward_gpu(x, w, b, oh, ow)
        self.path = "reference"
        if (not _dispatch.reference_active()):
            if (kh, kw, ph, pw) == (1, 1, 0, 0):
                return self._forward_pointwise_cpu(x, w, b)
            if self._winograd_pays(x.shape, w.shape, oh, ow):
                return self._forward_winograd_cpu(x, w, b, oh, ow)
            return self._forward_batched_cpu(x, w, b, oh, ow)

        # the reference CPU path (the fast paths are tested against it)
        if self.pointwise:
            col2d = xp.ascontiguousarray(x.transpose(1, 0, 2, 3)).reshape(c, n * h * wd)
        else:
            col2d = im2col(x, (kh, kw), self.stride, self.padding).reshape(c * kh * kw, n * oh * ow)
        # the weight gradient needs col; keep it only if someone asked for that gradient
        self.col2d = col2d if self.needs_input_grad[1] else None

        y = w.reshape(o, c * kh * kw) @ col2d  # THE product: (O, CKK) @ (CKK, N*OH*OW)
        if b is not None:
            y += b.astype(dtype, copy=False)[:, None]
        # (O, N, OH, OW) -> (N, O, OH, OW); a copy so later layers get a contiguous array
        return xp.ascontiguousarray(y.reshape(o, n, oh, ow).transpose(1, 0, 2, 3))

    def backward(self, gy):
        xp = get_array_module(gy)
        if xp is not np:
            return self._backward_gpu(gy)
        if self.path == "pointwise":
            return self._backward_pointwise_cpu(gy)
        if self.path == "batched":
            return self._backward_batched_cpu(gy)
        if self.path == "winograd":
            return self._backward_winograd_cpu(gy)
        n, c, h, wd = self.x_shape
        o, _, kh, kw = self.w.shape
        oh, ow = gy.shape[2:]
        gy = gy.astype(self.w.dtype, copy=False)
        # gy in the same (O, N*OH*OW) layout as the forward product's output
        gy2d = xp.ascontiguousarray(gy.transpose(1, 0, 2, 3)).reshape(o, n * oh * ow)
        needs = self.needs_input_grad
        gx = gw = gb = None
        if needs[0]:
            # transposed convolution: w.T @ gy gives d(loss)/d(col); col2im folds it onto x
            gcol = self.w.reshape(o, c * kh * kw).T @ gy2d  # (CKK, N*OH*OW)
            if self.pointwise:
                gx = xp.ascontiguousarray(gcol.reshape(c, n, h, wd).transpose(1, 0, 2, 3))
            else:
                gx = col2im(gcol.reshape(c, kh, kw, n, oh, ow), self.x_shape, self.stride, self.padding)
            gx = gx.astype(self.dtypes[0], copy=False)
        if needs[1]:
            # the same product either way; BLAS is faster with the taller matrix on the left
            if self.col2d.shape[0] > o:
                gw = xp.ascontiguousarray((self.col2d @ gy2d.T).T)  # (CKK, O) -> (O, CKK)
            else:
                gw = gy2d @ self.col2d.T  # (O, CKK)
            gw = gw.reshape(self.w.shape).astype(self.dtypes[1], copy=False)
        if len(needs) == 3 and needs[2]:
            # = gy.sum(axis=(0, 2, 3)), but summing the contiguous rows of gy2d is faster
            gb = gy2d.sum(axis=1).astype(self.dtypes[2], copy=False)
        return (gx, gw) if len(needs) == 2 else (gx, gw, gb)

    # ------------------------------------------------------------------ fast CPU paths

    def _winograd_pays(self, x_shape, w_shape, oh, ow):
        """Whether Winograd beats im2col here (measured; docs/performance.md has the figures).

        Winograd does fewer multiplies and moves fewer bytes, but as many small
        NumPy calls, which on several threads wait for each other (the GIL):
        on one thread it wins for forward + backward at every map size and for
        the forward alone from 16x16 maps on; on several threads only for
        forward + backward on maps of 16x16 and up (its backward is what
        gains), never for a forward pass alone. With few input channels (the 3
        of an RGB stem) im2col's col is small and Winograd's output
        transforms dominate: im2col there.
        """
        if x_shape[1] < 8 or not winograd.winograd_supported(x_shape, w_shape, self.stride, self.padding):
            return False
        training = any(self.needs_input_grad)
        if threads.cpu_threads() == 1:
            return training or oh * ow >= 256
        return training and oh * ow >= 256

    def _forward_pointwise_cpu(self, x, w, b):
        """A 1x1 kernel (any stride, no padding) as one *batched* product per image.

        ``y (N, O, OH*OW) = w (O, C) @ x (N, C, OH*OW)``, the GPU layout of the
        module docstring: no im2col, and no transposing copy before or after
        the product (the reference path makes two), since the result is
        already in (N, O, OH, OW) order. A stride only picks every SY-th row
        and SX-th column first.
        """
        self.path = "pointwise"
        (sy, sx) = self.stride
        if (sy, sx) != (1, 1):
            x = x[:, :, ::sy, ::sx]
        x = np.ascontiguousarray(x)
        n, c, oh, ow = x.shape
        o = w.shape[0]
        x3 = x.reshape(n, c, oh * ow)
        self.x3 = x3 if self.needs_input_grad[1] else None
        w2 = w.reshape(o, c)
        y = np.empty((n, o, oh * ow), dtype=x.dtype)

        def product(a_, b_):  # images a_:b_, on one of the CPU threads
            np.matmul(w2, x3[a_:b_], out=y[a_:b_])  # (O, C) @ (n, C, OH*OW)
            if b is not None:
                y[a_:b_] += b.astype(y.dtype, copy=False)[:, None]
        threads.parallel_chunks(n, product, y.size + x3.size, blas=True)
        return y.reshape(n, o, oh, ow)

    def _backward_pointwise_cpu(self, gy):
        n, c, h, wd = self.x_shape
        o = self.w.shape[0]
        (sy, sx) = self.stride
        oh, ow = gy.shape[2:]
        gy3 = np.ascontiguousarray(gy.astype(self.w.dtype, copy=False)).reshape(n, o, oh * ow)
        w2 = self.w.reshape(o, c)
        needs = self.needs_input_grad
        gx = None
        g_sub = np.empty((n, c, oh * ow), dtype=gy3.dtype) if needs[0] else None

        def products(a_, b_):  # images a_:b_: their part of gx, their sum of the weight gradient
            if needs[0]:
                np.matmul(w2.T, gy3[a_:b_], out=g_sub[a_:b_])  # (C, O) @ (n, O, OH*OW)
            return _weight_grad_of_images(self.x3[a_:b_], gy3[a_:b_]) if needs[1] else None
        parts = threads.parallel_chunks(n, products, gy3.size * 2 + n * c * oh * ow, blas=True)
        if needs[0]:
            g_sub = g_sub.reshape(n, c, oh, ow)
            if (sy, sx) == (1, 1):
                gx = g_sub
            else:  # the pixels the stride skipped get no gradient
                gx = np.zeros((n, c, h, wd), dtype=g_sub.dtype)
                gx[:, :, ::sy, ::sx] = g_sub
            gx = gx.astype(self.dtypes[0], copy=False)
        return self._with_weight_and_bias_grads(gx, parts, gy3)

    def _with_weight_and_bias_grads(self, gx, parts, gy3):
        """(gx, gw[, gb]) of a fast CPU path: gw summed over the groups' ``parts``, gb from gy3 (N, O, L)."""
        needs = self.needs_input_grad
        gw = gb = None
        if needs[1]:
            gw = parts[0] if len(parts) == 1 else np.sum(parts, axis=0)
            gw = np.ascontiguousarray(gw).reshape(self.w.shape).astype(self.dtypes[1], copy=False)
        if len(needs) == 3 and needs[2]:
            gb = gy3.sum(axis=(0, 2)).astype(self.dtypes[2], copy=False)
        return (gx, gw) if len(needs) == 2 else (gx, gw, gb)

    def _forward_winograd_cpu(self, x, w, b, oh, ow):
        """3x3, stride 1: Winograd F(2x2, 3x3) (:mod:`miniran.functional.winograd`) per group of images.

        Each of miniran's CPU threads transforms, multiplies and transforms
        back its own images; the transformed input V is kept (per group) for
        the weight gradient only.
        """
        self.path = "winograd"
        n, o = x.shape[0], w.shape[0]
        keep = bool(self.needs_input_grad[1])
        y = np.empty((n, o, oh, ow), dtype=x.dtype)

        def part(a_, b_):
            _, saved = winograd.conv3x3_winograd_forward(x[a_:b_], w, self.padding, keep=keep, out=y[a_:b_])
            if b is not None:
                y[a_:b_] += b.astype(y.dtype, copy=False)[:, None, None]
            return a_, b_, saved
        pieces = threads.parallel_chunks(n, part, x.size * 4, blas=True)
        self.pieces = pieces if any(self.needs_input_grad) else None
        return y

    def _backward_winograd_cpu(self, gy):
        needs = self.needs_input_grad
        gy = gy.astype(self.w.dtype, copy=False)
        gx = np.empty(self.x_shape, dtype=self.dtypes[0]) if needs[0] else None

        def part(i, j):  # pieces i:j of the forward pass
            gw_sum = None
            for a_, b_, saved in self.pieces[i:j]:
                _, gw_ab = winograd.conv3x3_winograd_backward(saved, gy[a_:b_], need_gx=needs[0],
                                                              need_gw=needs[1],
                                                              gx_out=gx[a_:b_] if needs[0] else None)
                if needs[1]:
                    gw_sum = gw_ab if gw_sum is None else gw_sum + gw_ab
            return gw_sum
        parts = threads.parallel_chunks(len(self.pieces), part, gy.size * 4 * len(self.pieces), blas=True)
        return self._with_weight_and_bias_grads(gx, parts, gy.reshape(gy.shape[0], gy.shape[1], -1))

    def _forward_batched_cpu(self, x, w, b, oh, ow):
        """Any other kernel: im2col in the per-image layout of the GPU path, split over threads.

        Each thread unfolds its own images into ``col`` (N, C*KH*KW, OH*OW)
        and multiplies them, ``y[i] = w (O, CKK) @ col[i]``, so the result is
        already in (N, O, OH, OW) order and the matrix products run on all
        cores without BLAS's own threads (see threads.parallel_chunks).
        """
        self.path = "batched"
        n, c, h, wd = x.shape
        o, _, kh, kw = w.shape
        w2 = w.reshape(o, c * kh * kw)
        col = np.empty((n, c, kh, kw, oh, ow), dtype=x.dtype)
        y = np.empty((n, o, oh * ow), dtype=x.dtype)

        def unfold_and_multiply(a_, b_):
            _im2col_images(x[a_:b_], self.stride, self.padding, col[a_:b_])
            np.matmul(w2, col[a_:b_].reshape(b_ - a_, c * kh * kw, oh * ow), out=y[a_:b_])
            if b is not None:
                y[a_:b_] += b.astype(y.dtype, copy=False)[:, None]
        threads.parallel_chunks(n, unfold_and_multiply, col.size + y.size, blas=True)
        self.col3 = col.reshape(n, c * kh * kw, oh * ow) if self.needs_input_grad[1] else None
        return y.reshape(n, o, oh, ow)

    def _backward_batched_cpu(self, gy):
        n, c, h, wd = self.x_shape
        o, _, kh, kw = self.w.shape
        oh, ow = gy.shape[2:]
        ckk = c * kh * kw
        gy3 = np.ascontiguousarray(gy.astype(self.w.dtype, copy=False)).reshape(n, o, oh * ow)
        w2 = self.w.reshape(o, ckk)
        needs = self.needs_input_grad
        gx = np.empty(self.x_shape, dtype=gy3.dtype) if needs[0] else None

        def products(a_, b_):  # images a_:b_: their gx, their part of the weight gradient
            g3 = gy3[a_:b_]
            if needs[0]:
                gcol = np.matmul(w2.T, g3)  # (n, CKK, OH*OW)
                _col2im_images(gcol.reshape(b_ - a_, c, kh, kw, oh, ow), self.stride, self.padding,
                               gx[a_:b_])
            return _weight_grad_of_images(self.col3[a_:b_], g3) if needs[1] else None
        parts = threads.parallel_chunks(n, products, gy3.size + n * ckk * oh * ow, blas=True)
        if needs[0]:
            gx = gx.astype(self.dtypes[0], copy=False)
        return self._with_weight_and_bias_grads(gx, parts, gy3)

    # ------------------------------------------------------------------ GPU path

    def _forward_gpu(self, x, w, b, oh, ow):
        """The GPU scheme of the module docstring: batched products, no transposes."""
        cp = get_array_module(x)
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
        y = cp.matmul(w.reshape(o, c * kh * kw), col)  # (N, O, OH*OW)
        if b is not None:
            y += b.astype(y.dtype, copy=False)[:, None]
        return y.reshape(n, o, oh, ow)

    def _backward_gpu(self, gy):
        cp = get_array_module(gy)
        n, c, h, wd = self.x_shape
        o, _, kh, kw = self.w.shape
        oh, ow = gy.shape[2:]
        (sy, sx), (ph, pw) = self.stride, self.padding
        gy3 = cp.ascontiguousarray(gy.astype(self.w.dtype, copy=False)).reshape(n, o, oh * ow)
        needs = self.needs_input_grad
        gx = gw = gb = None
        if needs[0]:
            gcol = cp.matmul(self.w.reshape(o, c * kh * kw).T, gy3)  # (N, CKK, OH*OW)
            if self.pointwise:
                gx = gcol.reshape(n, c, h, wd)
            else:
                gx = cp.empty((n, c, h, wd), dtype=gcol.dtype)
                _COL2IM_BATCHED_KERNEL(gcol, n, c, h, wd, kh, kw, oh, ow, sy, sx, ph, pw, gx)
            gx = gx.astype(self.dtypes[0], copy=False)
        if needs[1]:
            # one batched product (N, O, CKK), then the sum over the batch
            gw = cp.matmul(gy3, self.col3d.transpose(0, 2, 1)).sum(axis=0)
            gw = gw.reshape(self.w.shape).astype(self.dtypes[1], copy=False)
        if len(needs) == 3 and needs[2]:
            gb = gy3.sum(axis=(0, 2)).astype(self.dtypes[2], copy=False)
        return (gx, gw) if len(needs) == 2 else (gx, gw, gb)


def conv2d(x, weight, bias=None, stride=1, padding=0) -> Tensor:
    """2-D convolution (cross-correlation, zero padding), PyTorch semantics.

    Notation: N batch, C input channels, O output channels, H x W input,
    KH x KW kernel, (SY, SX) stride, (PH, PW) padding, and the output size
    ``OH = (H + 2*PH - KH) // SY + 1``, ``OW = (W + 2*PW - KW) // SX + 1``
    (:func:`conv_output_size`).

    Args:
        x: input of shape (N, C, H, W).
        weight: kernels of shape (O, C, KH, KW).
        bias: (O,) or None.
        stride: SY (= SX) or the pair (SY, SX); each >= 1.
        padding: PH (= PW) or the pair (PH, PW); each >= 0.

    Returns:
        A tensor of shape (N, O, OH, OW).

    Raises:
        ValueError: on a bad shape or argument; the message names it.
    """
    x, weight = as_tensor(x), as_tensor(weight)
    stride, padding = _pair(stride, "stride"), _pair(padding, "padding")
    if x.ndim != 4:
        raise ValueError(f"conv2d: x must be 4-D (N, C, H, W), got shape {x.shape}")
    if weight.ndim != 4:
        raise ValueError(f"conv2d: weight must be 4-D (O, C, KH, KW), got shape {weight.shape}")
    if x.shape[1] != weight.shape[1]:
        raise ValueError(
            f"conv2d: x has {x.shape[1]} channels (shape {x.shape}) but weight expects "
            f"{weight.shape[1]} (shape {weight.shape})"
        )
    if min(stride) < 1:
        raise ValueError(f"conv2d: stride must be >= 1, got {stride}")
    if min(padding) < 0:
        raise ValueError(f"conv2d: padding must be >= 0, got {padding}")
    padded = (x.shape[2] + 2 * padding[0], x.shape[3] + 2 * padding[1])
    if weight.shape[2] > padded[0] or weight.shape[3] > padded[1]:
        raise ValueError(
            f"conv2d: kernel {weight.shape[2:]} (weight shape {weight.shape}) is larger than "
            f"the padded input {padded} (x shape {x.shape}, padding {padding})"
        )
    if bias is None:
        return Conv2dFunction(stride, padding)(x, weight)
    bias = as_tensor(bias)
    if tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"conv2d: bias must have shape ({weight.shape[0]},), got {bias.shape}")
    return Conv2dFunction(stride, padding)(x, weight, bias)
