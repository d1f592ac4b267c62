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

The arguments are valid when OH >= 1 (PyTorch's check). Without ceil_mode
that means the kernel fits in the padded input (KH <= H + 2*PH); with
ceil_mode a window may run past the padded edge, by up to SH - 1 rows
(``max_pool2d`` of a 1x1 map with a 2x2 kernel and stride 2 is that pixel).
Such a window is clipped to the padded edge: it always holds a real pixel
(it starts inside the input or its left padding, and PH <= KH / 2), and
average pooling divides by its clipped size.

How it is computed: we never loop over the batch or over pixels. Output
pixel (oh, ow) reads the padded input at rows ``oh*SH + i`` and columns
``ow*SW + j`` for kernel offsets ``0 <= i < KH``, ``0 <= j < KW``. For one
fixed offset (i, j), those rows and columns for *every* output pixel form a
strided slice of the padded input, ``xpad[:, :, i::SH, j::SW]`` (cut to
OH x OW). So a pooling layer is a loop over the KH*KW offsets, each step one
whole-array operation on a (N, C, OH, OW) slice. The backward pass walks the
same slices and *adds* into them, so pixels shared by overlapping windows
accumulate their gradients: average pooling sends every pixel of a window an
equal share, max pooling remembers which offset won in each window and sends
the gradient there only.

The same code runs on NumPy and CuPy arrays. Faster twins (threads over the
images, a scatter-add backward, one CUDA kernel per pass) are in
:mod:`miniran.fast.pool_cpu` and :mod:`miniran.fast.pool_gpu`.
"""

from __future__ import annotations

import numpy as np

from miniran.autograd import Function, Tensor
from miniran.backend import get_array_module
from miniran.functional import _dispatch
from miniran.functional._args import _pair


def pool_output_size(size, kernel, stride, padding, ceil_mode=False):
    """Output length of pooling along one dimension (PyTorch's rule).

    ``floor`` (or ``ceil``) of ``(size + 2*padding - kernel) / stride``, plus 1;
    with ``ceil_mode`` a last window that would start in the right padding
    (at or after ``size + padding``) is dropped. The division rounds towards
    minus infinity, so a kernel larger than the padded input gives 0 or less
    (no window), except in ceil mode when it is larger by at most
    ``stride - 1``: then 1.
    """
    span = size + 2 * padding - kernel
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def _check_pool_args(fname, x, kernel_size, stride, padding, ceil_mode=False):
    """Validate the arguments; return them as pairs: (KH, KW), (SH, SW), (PH, PW).

    As PyTorch: the padding is at most half the kernel, and the output has
    at least one window along each dimension (:func:`pool_output_size`).
    """
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
    if h == 0 or w == 0:
        raise ValueError(f"{fname}: x has no pixels: shape {tuple(x.shape)}")
    if min(pool_output_size(size, k[d], s[d], p[d], ceil_mode) for d, size in enumerate((h, w))) < 1:
        padded = (h + 2 * p[0], w + 2 * p[1])
        if not ceil_mode:
            raise ValueError(
                f"{fname}: kernel_size {k} is larger than the padded input "
                f"{padded} (x of shape {tuple(x.shape)}, padding {p})"
            )
        d = 0 if k[0] > padded[0] + s[0] - 1 else 1
        raise ValueError(
            f"{fname}: kernel_size {k} is larger than the padded input {padded} by more than "
            f"stride - 1 = {s[d] - 1} (ceil_mode=True; x of shape {tuple(x.shape)}, padding {p}, stride {s})"
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


class _Pool2d(Function):
    """What max and average pooling share: the settings (as pairs), the output size, the padding."""

    def __init__(self, kernel, stride, padding, ceil_mode):
        self.kernel, self.stride, self.pad, self.ceil_mode = kernel, stride, padding, ceil_mode

    def _remember(self, x):
        """Save the input shape and the output size (OH, OW) of x (N, C, H, W)."""
        self.in_shape = x.shape
        self.out = tuple(
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
    """Max pooling: ``y[n, c, oh, ow]`` = the max of its window.

    Forward also saves ``arg`` (N, C, OH, OW): the kernel offset
    ``k = i*KW + j`` at which each window found its max. Backward sends
    ``gy[n, c, oh, ow]`` to that one pixel; the other pixels of the window get 0.
    """

    def forward(self, x):
        self._remember(x)
        # inference needs no argmax (no backward will come)
        y, self.arg = self._max_and_argmax(x, track=self.needs_input_grad[0])
        return y

    def _offset_dtype(self):
        """The dtype of ``arg``: one byte while the kernel has at most 256 offsets."""
        return np.uint8 if self.kernel[0] * self.kernel[1] <= 256 else np.int32

    def _max_and_argmax(self, x, track):
        """The max of every window of x (N, C, H, W), and (if ``track``) its offset ``arg``, else None."""
        xp = get_array_module(x)
        kh, kw = self.kernel
        # padding must never win a max: fill it with -inf (every window holds
        # at least one real pixel, because padding <= kernel / 2)
        xpad = _padded(x, self.pad, self.out, self.kernel, self.stride, -np.inf)
        best = _window(xpad, 0, 0, self.out, self.stride).copy()
        arg = xp.zeros(best.shape, dtype=self._offset_dtype()) if track else None
        for k in range(1, kh * kw):
            # one strided copy, then every pass below runs on contiguous memory
            win = xp.ascontiguousarray(_window(xpad, k // kw, k % kw, self.out, self.stride))
            if track:
                # strictly greater: on ties the first offset wins, as in PyTorch
                beats = win > best
                # "arg = k where beats": every offset stored so far is < k, so a
                # max does it (plain ufuncs, faster than a masked copy); both
                # operands in arg's dtype, so no type-promotion rule is involved
                xp.maximum(arg, beats.astype(arg.dtype) * arg.dtype.type(k), out=arg)
            xp.maximum(best, win, out=best)
        if track and max(self.pad) > 0:
            self._point_minus_inf_windows_at_a_real_pixel(best, arg)
        return best, arg

    def _point_minus_inf_windows_at_a_real_pixel(self, best, arg):
        """A window whose real pixels are all -inf ties with its -inf padding,
        and offset 0 may lie in the padding: as in PyTorch, its gradient goes
        to its first *real* pixel instead (``arg`` is changed in place)."""
        xp = get_array_module(arg)
        (ph, pw), (sh, sw), kw = self.pad, self.stride, self.kernel[1]
        first_row = xp.maximum(ph - xp.arange(self.out[0]) * sh, 0)[:, None]
        first_col = xp.maximum(pw - xp.arange(self.out[1]) * sw, 0)[None, :]
        first_real = (first_row * kw + first_col).astype(arg.dtype)
        xp.copyto(arg, xp.broadcast_to(first_real, arg.shape), where=(best == -np.inf) & (arg == 0))

    def backward(self, gy):
        """gx: each window adds its ``gy`` into the pixel at its offset ``arg``.

        The same loop over the KH*KW offsets as the forward: for offset k, the
        windows whose max sat at k add their ``gy`` into the strided slice of
        the padded gradient that offset k sees. A pixel shared by overlapping
        windows (stride < kernel) receives the sum of their gradients.
        """
        xp = get_array_module(gy)
        kw = self.kernel[1]
        gpad = xp.zeros(gy.shape[:2] + self._padded_size(), dtype=gy.dtype)
        zero = gy.dtype.type(0)
        # last offset first: each pixel then adds its windows in row-major
        # order (a different order would only change the float rounding)
        for k in reversed(range(self.kernel[0] * kw)):
            _window(gpad, k // kw, k % kw, self.out, self.stride)[...] += xp.where(self.arg == k, gy, zero)
        return self._unpad(gpad)


class AvgPool2dFunction(_Pool2d):
    """Average pooling: ``y[n, c, oh, ow]`` = the sum of its window / the window's divisor."""

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
        self._remember(x)
        self.divisor = self._divisor(get_array_module(x), x.dtype)
        return self._average(x)

    def _average(self, x):
        """The window averages of the images in x (N, C, H, W): sum over the offsets, then divide."""
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
        return self._spread(gy)

    def _spread(self, gy):
        """gx of the images in ``gy``: every pixel of a window gets an equal share of its gradient."""
        xp = get_array_module(gy)
        kw = self.kernel[1]
        g = gy / self.divisor
        gpad = xp.zeros(gy.shape[:2] + self._padded_size(), dtype=gy.dtype)
        for k in range(self.kernel[0] * kw):
            _window(gpad, k // kw, k % kw, self.out, self.stride)[...] += g
        return self._unpad(gpad)


class GlobalAvgPool2dFunction(Function):
    """(N, C, H, W) -> (N, C): ``y[n, c]`` = the mean over H and W; ``gx = gy / (H*W)`` everywhere."""

    def forward(self, x):
        self.in_shape = x.shape
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
            docstring for the exact rule); a window may then run past the
            padded edge (a 2x2 window, stride 2, on a 1x1 map gives 1x1).

    Returns:
        Tensor (N, C, OH, OW), ``OH = floor((H + 2*PH - KH) / SH) + 1``
        (ceil with ``ceil_mode``). The gradient of each output pixel goes to
        the input pixel that was its window's maximum (the first one on ties).
    """
    x = x if isinstance(x, Tensor) else Tensor(x)
    k, s, p = _check_pool_args("max_pool2d", x, kernel_size, stride, padding, ceil_mode)
    return _dispatch.apply(MaxPool2dFunction, x, kernel=k, stride=s, padding=p, ceil_mode=bool(ceil_mode))


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
    k, s, p = _check_pool_args("avg_pool2d", x, kernel_size, stride, padding, ceil_mode)
    return _dispatch.apply(AvgPool2dFunction, x, kernel=k, stride=s, padding=p, ceil_mode=bool(ceil_mode),
                           count_include_pad=bool(count_include_pad))


def global_avg_pool2d(x) -> Tensor:
    """Mean over the spatial axes: (N, C, H, W) -> (N, C)."""
    x = x if isinstance(x, Tensor) else Tensor(x)
    if x.ndim != 4:
        raise ValueError(f"global_avg_pool2d: x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    return _dispatch.apply(GlobalAvgPool2dFunction, x)

