"""2-D max and average pooling, and global average pooling (PyTorch semantics).

Notation:
    N: batch size, C: channels, H, W: input height and width.
    KH, KW: kernel size; SH, SW: stride; PH, PW: padding (each side).
    OH, OW: output height and width.

Output size, per spatial dimension (shown for H)::

    OH = floor((H + 2*PH - KH) / SH) + 1                   # ceil_mode=False
    OH = ceil((H + 2*PH - KH) / SH) + 1                    # ceil_mode=True, then
    if (OH - 1) * SH >= H + PH: OH -= 1                    # the last window must start
                                                           # inside the input or left padding

How it is computed: we never loop over the batch or over pixels. Output
pixel (oh, ow) reads the padded input at rows ``oh*SH + i`` and columns
``ow*SW + j`` for kernel offsets ``0 <= i < KH``, ``0 <= j < KW``. For one
fixed offset (i, j), those rows and columns for *every* output pixel form a
strided slice of the padded input, ``xpad[:, :, i::SH, j::SW]`` (cut to
OH x OW). So a pooling layer is a loop over the KH*KW offsets, each step one
whole-array operation on a (N, C, OH, OW) slice. The backward pass walks the
same slices for average pooling and *adds* into them, so pixels shared by
overlapping windows accumulate their gradients. Max pooling remembers which
offset won in each window and sends the gradients back with one scatter-add.
"""

from __future__ import annotations

import numpy as np

from miniran import backend, kernels, threads
from miniran.functional import _dispatch
from miniran.autograd import Function, Tensor
from miniran.backend import get_array_module
from miniran.functional._args import _pair


def pool_output_size(size, kernel, stride, padding, ceil_mode=False):
    """Output length of pooling along one dimension (PyTorch's rule).

    ``floor`` (or ``ceil``) of ``(size + 2*padding - kernel) / stride``, plus 1;
    with ``ceil_mode`` a last window that would start in the right padding
    (at or after ``size + padding``) is dropped.
    """
    span = size + 2 * padding - kernel
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def _check_pool_args(fname, x, kernel_size, stride, padding):
    """Validate the arguments; return them as pairs: (KH, KW), (SH, SW), (PH, PW)."""
    if x.ndim != 4:
        raise ValueError(f"{fname}: x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    k = _pair(kernel_size, "kernel_size")
    s = k if stride is None else _pair(stride, "stride")
    p = _pair(padding, "padding")
    if min(k) <= 0:
        raise ValueError(f"{fname}: kernel_size must be positive, got {k}")
    if min(s) <= 0:
        raise ValueError(f"{fname}: stride must be positive, got {s}")
    if min(p) < 0:
        raise ValueError(f"{fname}: padding must be non-negative, got {p}")
    if 2 * p[0] > k[0] or 2 * p[1] > k[1]:
        raise ValueError(f"{fname}: padding {p} must be at most half of kernel_size {k}")
    h, w = x.shape[2], x.shape[3]
    if k[0] > h + 2 * p[0] or k[1] > w + 2 * p[1]:
        raise ValueError(
            f"{fname}: kernel_size {k} is larger than the padded input "
            f"({h + 2 * p[0]}, {w + 2 * p[1]}) (x of shape {tuple(x.shape)}, padding {p})"
        )
    return k, s, p


def _padded(x, pad, out, kernel, stride, fill):
    """Copy x into a (N, C, Hp, Wp) array filled with ``fill`` around it.

    ``pad`` is added on the top/left; the bottom/right get ``pad`` or more,
    whatever the last window (ceil_mode) reaches. Returns x itself when no
    padding is needed.
    """
    xp = get_array_module(x)
    n, c, h, w = x.shape
    hp = max(h + 2 * pad[0], (out[0] - 1) * stride[0] + kernel[0])
    wp = max(w + 2 * pad[1], (out[1] - 1) * stride[1] + kernel[1])
    if pad == (0, 0) and hp == h and wp == w:
        return x
    xpad = xp.full((n, c, hp, wp), fill, dtype=x.dtype)
    xpad[:, :, pad[0]:pad[0] + h, pad[1]:pad[1] + w] = x
    return xpad


def _window(a, i, j, out, stride):
    """The strided (N, C, OH, OW) view of ``a`` seen by kernel offset (i, j)."""
    return a[:, :, i:i + stride[0] * (out[0] - 1) + 1:stride[0], j:j + stride[1] * (out[1] - 1) + 1:stride[1]]


def _scatter_add(index, values, size):
    """out = zeros(size); out[index[m]] += values[m] for every m, repeats included.

    ``out[index] += values`` would keep only one of the repeated indices.
    NumPy: ``np.bincount`` with weights (fast; ``np.add.at`` is much slower),
    which sums in float64. CuPy: ``cupyx.scatter_add`` (atomic adds on the GPU).
    """
    xp = get_array_module(values)
    if xp is np:
        return np.bincount(index, weights=values, minlength=size)
    import cupyx  # only reached with CuPy arrays

    out = xp.zeros(size, dtype=values.dtype)
    cupyx.scatter_add(out, index, values)
    return out


def _by_image_groups(fn, out, *inputs):
    """``out[a:b] = fn(*(x[a:b] for x in inputs))`` for groups of images on miniran's CPU threads; ``out``.

    The pooling functions' fast CPU path: their array code, unchanged, per group of images.
    """
    def part(a, b):
        out[a:b] = fn(*(x[a:b] for x in inputs))
    threads.parallel_chunks(out.shape[0], part, out.size)
    return out


class _Pool2d(Function):
    def __init__(self, kernel, stride, padding, ceil_mode):
        self.kernel, self.stride, self.pad, self.ceil_mode = kernel, stride, padding, ceil_mode

    def _out_size(self, x):
        return tuple(
            pool_output_size(x.shape[2 + d], self.kernel[d], self.stride[d], self.pad[d], self.ceil_mode)
            for d in range(2)
        )

    def _unpad(self, gpad):
        """Cut the gradient of the padded input back to the input's (H, W)."""
        (ph, pw), (h, w) = self.pad, self.in_shape[2:]
        return gpad[:, :, ph:ph + h, pw:pw + w]

    def _padded_size(self):
        """(Hp, Wp) of the padded input, the same as :func:`_padded` makes."""
        return tuple(
            max(self.in_shape[2 + d] + 2 * self.pad[d], (self.out[d] - 1) * self.stride[d] + self.kernel[d])
            for d in range(2)
        )


class MaxPool2dFunction(_Pool2d):
    """Max pooling; saves the argmax offset of every window for backward."""

    def forward(self, x):
        xp = get_array_module(x)
        self.in_shape, self.out = x.shape, self._out_size(x)
        kh, kw = self.kernel
        if xp is not np:
            return self._forward_gpu(x)
        track = self.needs_input_grad[0]  # inference needs no argmax
        if (not _dispatch.reference_active()):
            # the array code below, on groups of images in miniran's CPU threads
            n, c = x.shape[:2]
            best = np.empty((n, c) + self.out, dtype=x.dtype)
            arg = np.empty((n, c) + self.out, dtype=np.uint8 if kh * kw <= 256 else np.int32) if track else None

            def part(a, b):
                best[a:b], arg_ab = self._forward_arrays(x[a:b], track)
                if track:
                    arg[a:b] = arg_ab
            threads.parallel_chunks(n, part, x.size)
        else:
            best, arg = self._forward_arrays(x, track)
        self.arg = arg
        return best

    def _forward_arrays(self, x, track):
        """The max and (if ``track``) the argmax offset of every window of NumPy ``x``."""
        xp = np
        kh, kw = self.kernel
        # padding must never win a max: fill it with -inf (every window holds
        # at least one real pixel, because padding <= kernel / 2)
        xpad = _padded(x, self.pad, self.out, self.kernel, self.stride, -np.inf)
        best = _window(xpad, 0, 0, self.out, self.stride).copy()
        # arg[n, c, oh, ow] = kernel offset k = i*KW + j of the window's max
        arg = xp.zeros(best.shape, dtype=np.uint8 if kh * kw <= 256 else np.int32) if track else None
        for k in range(1, kh * kw):
            # one strided copy, then every pass below runs on contiguous memory
            win = xp.ascontiguousarray(_window(xpad, k // kw, k % kw, self.out, self.stride))
            if track:
                # strictly greater: on ties the first offset wins, as in PyTorch
                beats = win > best
                # "arg = k where beats": every offset stored so far is < k, so a
                # max does it (plain ufuncs, much faster than a masked copy)
                xp.maximum(arg, beats * arg.dtype.type(k), out=arg)
            xp.maximum(best, win, out=best)
        if track and max(self.pad) > 0:
            # a window whose real pixels are all -inf ties with its -inf padding; as
            # in PyTorch its gradient goes to its first *real* pixel, not the padding
            (ph, pw), (sh, sw) = self.pad, self.stride
            first_row = xp.maximum(ph - xp.arange(self.out[0]) * sh, 0)[:, None]
            first_col = xp.maximum(pw - xp.arange(self.out[1]) * sw, 0)[None, :]
            first_real = (first_row * kw + first_col).astype(arg.dtype)
            xp.copyto(arg, xp.broadcast_to(first_real, arg.shape), where=(best == -np.inf) & (arg == 0))
        return best, arg

    def _forward_gpu(self, x):
        """One kernel: every output pixel scans its window for the max and
        records where it was (the same tie and -inf rules as the array code)."""
        cp = get_array_module(x)
        x = cp.ascontiguousarray(x)
        n, c, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw), (oh, ow) = self.kernel, self.stride, self.pad, self.out
        y = cp.empty((n, c, oh, ow), dtype=x.dtype)
        self.arg = cp.empty((n, c, oh, ow), dtype=np.int32)  # flat y*W + x inside the plane
        _MAX_POOL_FORWARD_KERNEL(x, h, w, kh, kw, sh, sw, ph, pw, oh, ow, -np.inf, y, self.arg)
        return y

    def _backward_gpu(self, gy):
        """One kernel: every input pixel gathers the gradients of the windows
        whose max it was (deterministic, no atomics)."""
        cp = get_array_module(gy)
        n, c, h, w = self.in_shape
        (kh, kw), (sh, sw), (ph, pw), (oh, ow) = self.kernel, self.stride, self.pad, self.out
        gx = cp.empty((n, c, h, w), dtype=gy.dtype)
        _MAX_POOL_BACKWARD_KERNEL(cp.ascontiguousarray(gy), self.arg, h, w, kh, kw, sh, sw, ph, pw,
                                  oh, ow, gx)
        return gx

    def backward(self, gy):
        if get_array_module(gy) is not np:
            return self._backward_gpu(gy)
        if (not _dispatch.reference_active()):
            return _by_image_groups(self._backward_arrays, np.empty(self.in_shape, dtype=gy.dtype), gy, self.arg)
        return self._backward_arrays(gy, self.arg)

    def _backward_arrays(self, gy, arg):
        """The input gradient of the images in NumPy ``gy``, ``arg`` their argmax offsets."""
        # Each window sends its gradient to its argmax, a scatter-add: pixels
        # shared by overlapping windows (stride < kernel) receive several.
        # We turn every argmax into a flat index into the padded input and add
        # all the gradients in one scatter (much faster than a loop of strided
        # `+=` over the kernel offsets).
        xp = np
        n, c = gy.shape[:2]
        hp, wp = self._padded_size()
        (kh, kw), (sh, sw), (oh, ow) = self.kernel, self.stride, self.out
        # flat position of offset k = i*KW + j inside a window: i*Wp + j
        offsets = xp.asarray([(k // kw) * wp + k % kw for k in range(kh * kw)], dtype=np.int64)
        # flat position of every window's top-left corner: ((n*C + c)*Hp + oh*SH)*Wp + ow*SW
        corner = (xp.arange(oh) * (sh * wp))[:, None] + xp.arange(ow) * sw
        plane = (xp.arange(n * c, dtype=np.int64) * (hp * wp)).reshape(n, c, 1, 1)
        flat = (plane + corner) + offsets[arg]
        gpad = _scatter_add(flat.ravel(), gy.ravel(), n * c * hp * wp)
        # cut the padding off first: astype then copies only the real pixels
        return self._unpad(gpad.reshape(n, c, hp, wp)).astype(gy.dtype)


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


class AvgPool2dFunction(_Pool2d):
    """Average pooling; the divisor of each output pixel is precomputed."""

    def __init__(self, kernel, stride, padding, ceil_mode, count_include_pad):
        super().__init__(kernel, stride, padding, ceil_mode)
        self.count_include_pad = count_include_pad

    def _divisor(self, xp, dtype):
        """(OH, OW) array: how many values each window averages.

        With count_include_pad the zero padding counts, but a window that runs
        past the padded edge (possible with ceil_mode) is clipped to it; without,
        only real input pixels count. Separable: rows times columns.
        """
        sizes = []
        for d in range(2):
            size, k, s, p = self.in_shape[2 + d], self.kernel[d], self.stride[d], self.pad[d]
            out = self.out[d]
            start = np.arange(out) * s - p  # window start in input coordinates
            end = np.minimum(start + k, size + p)  # clipped to the padded edge
            if not self.count_include_pad:
                start, end = np.maximum(start, 0), np.minimum(end, size)
            sizes.append(end - start)
        return xp.asarray(np.outer(sizes[0], sizes[1]), dtype=dtype)

    def forward(self, x):
        xp = get_array_module(x)
        self.in_shape, self.out = x.shape, self._out_size(x)
        self.divisor = self._divisor(xp, x.dtype)
        if xp is np and (not _dispatch.reference_active()):
            return _by_image_groups(self._forward_arrays, np.empty(x.shape[:2] + self.out, dtype=x.dtype), x)
        return self._forward_arrays(x)

    def _forward_arrays(self, x):
        """The window averages of the images in ``x``."""
        xp = get_array_module(x)
        kw = self.kernel[1]
        xpad = _padded(x, self.pad, self.out, self.kernel, self.stride, 0)
        total = None
        for k in range(self.kernel[0] * kw):
            win = _window(xpad, k // kw, k % kw, self.out, self.stride)
            total = win.copy() if total is None else xp.add(total, win, out=total)
        total /= self.divisor
        return total

    def backward(self, gy):
        if get_array_module(gy) is np and (not _dispatch.reference_active()):
            return _by_image_groups(self._backward_arrays, np.empty(self.in_shape, dtype=gy.dtype), gy)
        return self._backward_arrays(gy)

    def _backward_arrays(self, gy):
        """The input gradient of the images in ``gy``."""
        xp = get_array_module(gy)
        kw = self.kernel[1]
        g = gy / self.divisor  # every pixel of a window gets an equal share
        gpad = xp.zeros(gy.shape[:2] + self._padded_size(), dtype=gy.dtype)
        for k in range(self.kernel[0] * kw):
            _window(gpad, k // kw, k % kw, self.out, self.stride)[...] += g
        return self._unpad(gpad)


class GlobalAvgPool2dFunction(Function):
    """(N, C, H, W) -> (N, C): the mean over H and W."""

    def forward(self, x):
        self.in_shape = x.shape
        if type(x) is np.ndarray and (not _dispatch.reference_active()):
            # each (image, channel) row times a vector of 1/(H*W): BLAS reads
            # the rows once, about 7x faster than NumPy's mean over two axes
            n, c, h, w = x.shape
            rows = np.ascontiguousarray(x).reshape(n * c, h * w)
            return (rows @ np.full(h * w, 1.0 / (h * w), dtype=x.dtype)).reshape(n, c)
        return x.mean(axis=(2, 3))

    def backward(self, gy):
        xp = get_array_module(gy)
        n, c, h, w = self.in_shape
        return xp.broadcast_to((gy / (h * w))[:, :, None, None], self.in_shape)


def max_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False) -> Tensor:
    """2-D max pooling.

    Args:
        x: tensor (N, C, H, W).
        kernel_size: int or (KH, KW).
        stride: int or (SH, SW); defaults to ``kernel_size``.
        padding: int or (PH, PW), added on both sides as minus infinity; at
            most half the kernel size.
        ceil_mode: round the output size up instead of down (see the module
            docstring for the exact rule).

    Returns:
        Tensor (N, C, OH, OW), ``OH = floor((H + 2*PH - KH) / SH) + 1``
        (ceil with ``ceil_mode``). The gradient of each output pixel goes to
        the input pixel that was its window's maximum (the first one on ties).
    """
    x = x if isinstance(x, Tensor) else Tensor(x)
    k, s, p = _check_pool_args("max_pool2d", x, kernel_size, stride, padding)
    return MaxPool2dFunction(k, s, p, bool(ceil_mode))(x)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True) -> Tensor:
    """2-D average pooling.

    Args:
        x: tensor (N, C, H, W).
        kernel_size: int or (KH, KW).
        stride: int or (SH, SW); defaults to ``kernel_size``.
        padding: int or (PH, PW) zeros on both sides; at most half the kernel size.
        ceil_mode: round the output size up instead of down.
        count_include_pad: divide by the window size including the zero
            padding (True, PyTorch's default) or by the number of real pixels.
            A ``ceil_mode`` window that runs past the padded edge is divided by
            its clipped size either way, as PyTorch does.

    Returns:
        Tensor (N, C, OH, OW), same output size as :func:`max_pool2d`.
    """
    x = x if isinstance(x, Tensor) else Tensor(x)
    k, s, p = _check_pool_args("avg_pool2d", x, kernel_size, stride, padding)
    return AvgPool2dFunction(k, s, p, bool(ceil_mode), bool(count_include_pad))(x)


def global_avg_pool2d(x) -> Tensor:
    """Mean over the spatial axes: (N, C, H, W) -> (N, C)."""
    x = x if isinstance(x, Tensor) else Tensor(x)
    if x.ndim != 4:
        raise ValueError(f"global_avg_pool2d: x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    return GlobalAvgPool2dFunction()(x)

