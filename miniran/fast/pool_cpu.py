"""CPU twins of the pooling Functions of :mod:`miniran.functional.pooling`.

* :class:`MaxPool2dCPU`: the reference's max/argmax array code on groups of
  images, on miniran's CPU threads; its backward sends all the gradients in
  one scatter-add (``np.bincount``) instead of a loop over the offsets.
* :class:`AvgPool2dCPU`: the reference's array code, forward and backward, on
  groups of images on the threads.
* :class:`GlobalAvgPool2dCPU`: the mean as one BLAS product of the
  (image, channel) rows with a vector of 1/(H*W).

Each takes NumPy arrays (``type(x) is np.ndarray``) and gives the reference's
numbers, up to float rounding (the scatter-add sums in float64).
"""

from __future__ import annotations

import numpy as np

from miniran import threads
from miniran.functional._dispatch import twin_of
from miniran.functional.pooling import AvgPool2dFunction, GlobalAvgPool2dFunction, MaxPool2dFunction


def _by_image_groups(fn, out, *inputs):
    """``out[a:b] = fn(*(x[a:b] for x in inputs))`` for groups of images on miniran's CPU threads; ``out``."""
    def part(a, b):
        out[a:b] = fn(*(x[a:b] for x in inputs))
    threads.parallel_chunks(out.shape[0], part, out.size)
    return out


@twin_of(MaxPool2dFunction)
class MaxPool2dCPU(MaxPool2dFunction):
    """Max pooling by groups of images on the CPU threads; a one-pass scatter-add backward."""

    @classmethod
    def suits(cls, arrays, params, grad):
        return type(arrays[0]) is np.ndarray

    def forward(self, x):
        self._remember(x)
        track = self.needs_input_grad[0]  # inference needs no argmax
        n, c = x.shape[:2]
        best = np.empty((n, c) + self.out, dtype=x.dtype)
        arg = np.empty((n, c) + self.out, dtype=self._offset_dtype()) if track else None

        def part(a, b):
            best[a:b], arg_ab = self._max_and_argmax(x[a:b], track)
            if track:
                arg[a:b] = arg_ab
        threads.parallel_chunks(n, part, x.size)
        self.arg = arg
        return best

    def backward(self, gy):
        return _by_image_groups(self._scatter_gradients, np.empty(self.in_shape, dtype=gy.dtype), gy, self.arg)

    def _scatter_gradients(self, gy, arg):
        """The input gradient of the images in ``gy``, ``arg`` their argmax offsets.

        Every argmax becomes a flat index into the padded input, and all the
        gradients are added in one scatter-add: ``np.bincount`` with weights
        (``out[index] += values`` would keep only one of the repeated indices,
        and ``np.add.at`` is much slower). bincount sums in float64.
        """
        n, c = gy.shape[:2]
        hp, wp = self._padded_size()
        (kh, kw), (sh, sw), (oh, ow) = self.kernel, self.stride, self.out
        # flat position of offset k = i*KW + j inside a window: i*Wp + j
        offsets = np.asarray([(k // kw) * wp + k % kw for k in range(kh * kw)], dtype=np.int64)
        # flat position of every window's top-left corner: ((n*C + c)*Hp + oh*SH)*Wp + ow*SW
        corner = (np.arange(oh) * (sh * wp))[:, None] + np.arange(ow) * sw
        plane = (np.arange(n * c, dtype=np.int64) * (hp * wp)).reshape(n, c, 1, 1)
        flat = (plane + corner) + offsets[arg]
        gpad = np.bincount(flat.ravel(), weights=gy.ravel(), minlength=n * c * hp * wp)
        # cut the padding off first: astype then copies only the real pixels
        return self._unpad(gpad.reshape(n, c, hp, wp)).astype(gy.dtype)


@twin_of(AvgPool2dFunction)
class AvgPool2dCPU(AvgPool2dFunction):
    """Average pooling, the reference's array code on groups of images on the CPU threads."""

    @classmethod
    def suits(cls, arrays, params, grad):
        return type(arrays[0]) is np.ndarray

    def forward(self, x):
        self._remember(x)
        self.divisor = self._divisor(np, x.dtype)
        return _by_image_groups(self._average, np.empty(x.shape[:2] + self.out, dtype=x.dtype), x)

    def backward(self, gy):
        return _by_image_groups(self._spread, np.empty(self.in_shape, dtype=gy.dtype), gy)


@twin_of(GlobalAvgPool2dFunction)
class GlobalAvgPool2dCPU(GlobalAvgPool2dFunction):
    """The mean over H and W as a matrix-vector product: BLAS reads each row once
    (faster than NumPy's mean over two axes)."""

    @classmethod
    def suits(cls, arrays, params, grad):
        return type(arrays[0]) is np.ndarray

    def forward(self, x):
        self.in_shape = x.shape
        n, c, h, w = x.shape
        rows = np.ascontiguousarray(x).reshape(n * c, h * w)
        return (rows @ np.full(h * w, 1.0 / (h * w), dtype=x.dtype)).reshape(n, c)
