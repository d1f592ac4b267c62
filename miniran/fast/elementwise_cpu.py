"""CPU twins of elementwise Functions of :mod:`miniran.functional.basic`, on miniran's CPU threads.

* :class:`AddCPU`, :class:`MulCPU`: ``a + b`` and ``a * b`` of two NumPy
  arrays of one shape and dtype, large enough to split: each thread computes
  its rows (the first axis, the batch of an image array) into one output.
* :class:`SigmoidCPU`: the reference's tanh form, ``(tanh(x / 2) + 1) / 2``,
  computed in place by groups of rows, without the temporaries of the
  expression; its backward likewise.

The sums and products are exactly the reference's (each element is computed
alone); the sigmoid's backward multiplies in another order (last-bit
differences).
"""

from __future__ import annotations

import numpy as np

from miniran import threads
from miniran.functional._dispatch import twin_of
from miniran.functional.basic import Add, Mul, SigmoidFunction
from miniran.autograd import sum_to

__all__ = ["AddCPU", "MulCPU", "SigmoidCPU", "splits_on_threads", "elementwise"]


def _same_numpy_arrays(*arrays) -> bool:
    """NumPy ndarrays (not scalars, not CuPy) of one shape and dtype, with at least one axis."""
    first = arrays[0]
    return (all(type(a) is np.ndarray for a in arrays) and first.ndim >= 1
            and all(a.shape == first.shape and a.dtype == first.dtype for a in arrays))


def splits_on_threads(*arrays) -> bool:
    """Whether :func:`threads.parallel_chunks` would split these same-shape NumPy arrays over several threads."""
    if not _same_numpy_arrays(*arrays):
        return False
    first = arrays[0]
    return min(threads.cpu_threads(), first.shape[0], first.size // threads.PARALLEL_MIN_ELEMENTS) > 1


def elementwise(ufunc, a, b):
    """``a + b`` (``np.add``) or ``a * b`` (``np.multiply``) as a new array.

    Arrays that :func:`splits_on_threads` are computed by groups of rows on
    miniran's CPU threads; anything else (scalars, broadcasting, small arrays)
    takes the plain operator.
    """
    if splits_on_threads(a, b):
        out = np.empty_like(a)
        threads.parallel_chunks(a.shape[0], lambda i, j: ufunc(a[i:j], b[i:j], out=out[i:j]), a.size)
        return out
    return a + b if ufunc is np.add else a * b


@twin_of(Add)
class AddCPU(Add):
    """``a + b`` by groups of rows on the CPU threads (the backward is the reference's)."""

    @classmethod
    def suits(cls, arrays, params, grad):
        return splits_on_threads(*arrays)

    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return elementwise(np.add, a, b)


@twin_of(Mul)
class MulCPU(Mul):
    """``a * b`` by groups of rows on the CPU threads; the two backward products too."""

    @classmethod
    def suits(cls, arrays, params, grad):
        return splits_on_threads(*arrays)

    def forward(self, a, b):
        self.a, self.b = a, b
        return elementwise(np.multiply, a, b)

    def backward(self, gy):
        ga = sum_to(elementwise(np.multiply, gy, self.b), self.a.shape) if self.needs_input_grad[0] else None
        gb = sum_to(elementwise(np.multiply, gy, self.a), self.b.shape) if self.needs_input_grad[1] else None
        return ga, gb


@twin_of(SigmoidFunction)
class SigmoidCPU(SigmoidFunction):
    """The sigmoid in place, by groups of rows on the CPU threads."""

    @classmethod
    def suits(cls, arrays, params, grad):
        x = arrays[0]
        return _same_numpy_arrays(x) and np.issubdtype(x.dtype, np.floating)

    def forward(self, x):
        y = np.empty_like(x)

        def part(a, b):  # y = (tanh(x / 2) + 1) / 2, the reference's stable_sigmoid
            yb = y[a:b]
            np.multiply(x[a:b], 0.5, out=yb)
            np.tanh(yb, out=yb)
            yb += 1
            yb *= 0.5
        threads.parallel_chunks(x.shape[0], part, x.size)
        self.y = y
        return y

    def backward(self, gy):
        y = self.y
        if not _same_numpy_arrays(gy, y):
            return super().backward(gy)
        gx = np.empty_like(y)

        def part(a, b):  # gx = (1 - y) * y * gy
            gb = gx[a:b]
            np.subtract(1, y[a:b], out=gb)
            gb *= y[a:b]
            gb *= gy[a:b]
        threads.parallel_chunks(y.shape[0], part, y.size)
        return gx
