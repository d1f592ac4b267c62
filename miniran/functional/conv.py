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

``col2im`` is the adjoint of ``im2col``: it adds every column entry back onto
the input pixel it was copied from.

im2col and col2im loop only over the KH*KW kernel taps, each step a strided
slice copy (or add) over the whole batch at once; the same code runs on NumPy
and CuPy arrays.

This is the reference algorithm, the same for every device. The engine
(:mod:`miniran.fast`) has faster twins of :class:`Conv2dFunction`: on the CPU
(1x1 kernels without im2col, Winograd for 3x3, im2col per image on miniran's
threads) and on the GPU (fused im2col/col2im kernels); each is tested
against this one.
"""

from __future__ import annotations

from miniran.autograd import Function, Tensor, as_tensor
from miniran.backend import get_array_module
from miniran.functional import _dispatch
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
    (C, N) for :func:`im2col`'s layout; the engine's CPU twin uses (N, C).
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


# --------------------------------------------------------------------------- the Function


class Conv2dFunction(Function):
    """y = conv2d(x, w) + b on raw arrays, by im2col and one matrix product (the module docstring).

    Inputs: ``x`` (N, C, H, W), ``w`` (O, C, KH, KW), optionally ``b`` (O,);
    output (N, O, OH, OW). The computation runs in the inputs' common dtype
    (float32 stays float32); each gradient goes back in its input's dtype.
    """

    def __init__(self, stride, padding):
        self.stride, self.padding = stride, padding

    def _prepare(self, x, w, b):
        """Cast to the common dtype; save what every backward needs. Returns x, w, (OH, OW)."""
        xp = get_array_module(x)
        dtype = xp.result_type(x.dtype, w.dtype, *([] if b is None else [b.dtype]))
        self.dtypes = (x.dtype, w.dtype, None if b is None else b.dtype)
        x, w = x.astype(dtype, copy=False), w.astype(dtype, copy=False)
        (sy, sx), (ph, pw) = self.stride, self.padding
        oh = conv_output_size(x.shape[2], w.shape[2], sy, ph)
        ow = conv_output_size(x.shape[3], w.shape[3], sx, pw)
        self.x_shape, self.w = x.shape, w
        return x, w, (oh, ow)

    def forward(self, x, w, b=None):
        xp = get_array_module(x)
        x, w, (oh, ow) = self._prepare(x, w, b)
        n = x.shape[0]
        o, c, kh, kw = w.shape
        col2d = im2col(x, (kh, kw), self.stride, self.padding).reshape(c * kh * kw, n * oh * ow)
        # the weight gradient needs col; keep it only if someone asked for that gradient
        self.col2d = col2d if self.needs_input_grad[1] else None

        y = w.reshape(o, c * kh * kw) @ col2d  # THE product: (O, CKK) @ (CKK, N*OH*OW)
        if b is not None:
            y += b.astype(y.dtype, copy=False)[:, None]
        # (O, N, OH, OW) -> (N, O, OH, OW); a copy so later layers get a contiguous array
        return xp.ascontiguousarray(y.reshape(o, n, oh, ow).transpose(1, 0, 2, 3))

    def backward(self, gy):
        xp = get_array_module(gy)
        n, c, h, wd = self.x_shape  # wd: the width (w is the weight)
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
            gx = col2im(gcol.reshape(c, kh, kw, n, oh, ow), self.x_shape, self.stride, self.padding)
            gx = gx.astype(self.dtypes[0], copy=False)
        if needs[1]:
            gw = (gy2d @ self.col2d.T).reshape(self.w.shape).astype(self.dtypes[1], copy=False)
        if len(needs) == 3 and needs[2]:
            # = gy.sum(axis=(0, 2, 3)), as a sum of the contiguous rows of gy2d
            gb = gy2d.sum(axis=1).astype(self.dtypes[2], copy=False)
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
        return _dispatch.apply(Conv2dFunction, x, weight, stride=stride, padding=padding)
    bias = as_tensor(bias)
    if tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"conv2d: bias must have shape ({weight.shape[0]},), got {bias.shape}")
    return _dispatch.apply(Conv2dFunction, x, weight, bias, stride=stride, padding=padding)
