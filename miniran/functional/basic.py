"""Elementwise arithmetic, reductions and shape operations.

Each operation is a :class:`~miniran.autograd.Function` subclass with a
forward and a hand-written backward on raw arrays, plus a small wrapper
function (``add``, ``exp``, ...) that is the public API. Binary operations
broadcast like NumPy; their backward sums the gradient back to each input's
shape with :func:`~miniran.autograd.sum_to`.
"""

from __future__ import annotations

import numpy as np

from miniran.autograd import Function, Tensor, as_array, sum_to
from miniran.backend import get_array_module
from miniran.functional import _dispatch


def _normalize_axis(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of range for a tensor with {ndim} dimensions")
        out.append(a % ndim)
    return tuple(sorted(out))


# --------------------------------------------------------------------------- arithmetic


class Add(Function):
    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return a + b

    def backward(self, gy):
        sa, sb = self.shapes
        return sum_to(gy, sa), sum_to(gy, sb)


class Sub(Function):
    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return a - b

    def backward(self, gy):
        sa, sb = self.shapes
        return sum_to(gy, sa), sum_to(-gy, sb)


class Mul(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, gy):
        ga = sum_to(gy * self.b, self.a.shape) if self.needs_input_grad[0] else None
        gb = sum_to(gy * self.a, self.b.shape) if self.needs_input_grad[1] else None
        return ga, gb


class Div(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a / b

    def backward(self, gy):
        ga = sum_to(gy / self.b, self.a.shape) if self.needs_input_grad[0] else None
        gb = sum_to(-gy * self.a / (self.b * self.b), self.b.shape) if self.needs_input_grad[1] else None
        return ga, gb


class Neg(Function):
    def forward(self, x):
        return -x

    def backward(self, gy):
        return -gy


class Pow(Function):
    """x ** c for a constant exponent c."""

    def __init__(self, exponent):
        self.c = float(exponent)

    def forward(self, x):
        self.x = x
        return x ** self.c

    def backward(self, gy):
        if self.c == 0:  # d(x**0)/dx = 0 everywhere, also at x = 0 (where x**-1 is inf)
            return get_array_module(gy).zeros_like(gy)
        return gy * self.c * self.x ** (self.c - 1)


class ScalarOp(Function):
    """``x op c`` (or ``c op x`` with ``reverse``) for a Python number ``c``.

    The number stays a Python number: NumPy and CuPy take it directly as an
    operand (CuPy as a kernel argument), so ``1 + mask`` copies nothing to the
    GPU, where a constant tensor would cost a host-to-device copy every call.
    """

    def __init__(self, op, c, reverse=False):
        self.op, self.c, self.reverse = op, c, reverse

    def forward(self, x):
        c = self.c
        self.x = x
        if self.op == "add":
            return x + c
        if self.op == "sub":
            return c - x if self.reverse else x - c
        if self.op == "mul":
            return x * c
        return c / x if self.reverse else x / c  # "div"

    def backward(self, gy):
        c, x = self.c, self.x
        if self.op == "add":
            return gy
        if self.op == "sub":
            return -gy if self.reverse else gy
        if self.op == "mul":
            return gy * c
        return -gy * c / (x * x) if self.reverse else gy / c  # "div"


_SCALAR_OPS = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div"}


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, np.ndarray)


def _binary(cls, a, b):
    if isinstance(a, Tensor) and not isinstance(b, Tensor) and _is_number(b):
        return ScalarOp(_SCALAR_OPS[cls.__name__], b)(a)
    if isinstance(b, Tensor) and not isinstance(a, Tensor) and _is_number(a):
        op = _SCALAR_OPS[cls.__name__]
        return ScalarOp(op, a, reverse=op in ("sub", "div"))(b)
    # constants take the dtype and device of the tensor operand
    like = a.data if isinstance(a, Tensor) else (b.data if isinstance(b, Tensor) else None)
    if not isinstance(a, Tensor):
        a = Tensor(as_array(a, like=like))
    if not isinstance(b, Tensor):
        b = Tensor(as_array(b, like=like))
    return _dispatch.apply(cls, a, b)


def add(a, b) -> Tensor:
    """a + b with broadcasting."""
    return _binary(Add, a, b)


def sub(a, b) -> Tensor:
    """a - b with broadcasting."""
    return _binary(Sub, a, b)


def mul(a, b) -> Tensor:
    """a * b (elementwise) with broadcasting."""
    return _binary(Mul, a, b)


def div(a, b) -> Tensor:
    """a / b (elementwise) with broadcasting."""
    return _binary(Div, a, b)


def neg(x) -> Tensor:
    return Neg()(x)


def pow(x, exponent) -> Tensor:  # noqa: A001 - mirrors the operator's name
    """x ** exponent, exponent a Python number (a constant)."""
    if isinstance(exponent, Tensor):
        raise TypeError("pow: the exponent must be a Python number, not a Tensor")
    return Pow(exponent)(x)


class Cast(Function):
    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)

    def forward(self, x):
        self.in_dtype = x.dtype
        return x.astype(self.dtype)

    def backward(self, gy):
        return gy.astype(self.in_dtype)


def cast(x, dtype) -> Tensor:
    """Convert to ``dtype``; gradients flow back in the input's dtype."""
    return Cast(dtype)(x)


# --------------------------------------------------------------------------- elementwise math


class Exp(Function):
    def forward(self, x):
        self.y = get_array_module(x).exp(x)
        return self.y

    def backward(self, gy):
        return gy * self.y


class Log(Function):
    def forward(self, x):
        self.x = x
        return get_array_module(x).log(x)

    def backward(self, gy):
        return gy / self.x


class Tanh(Function):
    def forward(self, x):
        self.y = get_array_module(x).tanh(x)
        return self.y

    def backward(self, gy):
        return gy * (1 - self.y * self.y)


def stable_sigmoid(x):
    """1 / (1 + exp(-x)) on a raw array, without overflow for large |x|."""
    xp = get_array_module(x)
    # tanh form: sigmoid(x) = (1 + tanh(x / 2)) / 2, finite for every x
    return (xp.tanh(x * 0.5) + 1) * 0.5


class SigmoidFunction(Function):
    """Paper Eq. 4 (mixed attention): f1(x) = 1 / (1 + exp(-x)); the gradient is ``gy * y * (1 - y)``."""

    def forward(self, x):
        self.y = stable_sigmoid(x)
        return self.y

    def backward(self, gy):
        y = self.y
        return gy * y * (1 - y)


class ReLUFunction(Function):
    """max(x, 0). Backward keeps the output y, not a mask: y > 0 is the same test."""

    def forward(self, x):
        self.y = get_array_module(x).maximum(x, 0)
        return self.y

    def backward(self, gy):
        return gy * (self.y > 0)


def exp(x) -> Tensor:
    return Exp()(x)


def log(x) -> Tensor:
    return Log()(x)


def tanh(x) -> Tensor:
    return Tanh()(x)


def sigmoid(x) -> Tensor:
    """Logistic sigmoid (numerically stable for large |x|)."""
    return _dispatch.apply(SigmoidFunction, x)


def relu(x) -> Tensor:
    """max(x, 0); the gradient at exactly 0 is taken as 0."""
    return _dispatch.apply(ReLUFunction, x)


# --------------------------------------------------------------------------- reductions


class Sum(Function):
    def __init__(self, axis, keepdims):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, x):
        self.in_shape = x.shape
        self.axes = _normalize_axis(self.axis, x.ndim)
        return x.sum(axis=self.axes, keepdims=self.keepdims)

    def backward(self, gy):
        xp = get_array_module(gy)
        if not self.keepdims:
            gy = xp.expand_dims(gy, self.axes) if self.axes else gy
        return xp.broadcast_to(gy, self.in_shape)


class Mean(Sum):
    def forward(self, x):
        y = super().forward(x)
        self.count = int(np.prod([x.shape[a] for a in self.axes])) if self.axes else 1
        return y / self.count

    def backward(self, gy):
        return super().backward(gy) / self.count


class Max(Function):
    """Max over axes; the gradient is shared equally among tied maxima."""

    def __init__(self, axis, keepdims):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, x):
        self.axes = _normalize_axis(self.axis, x.ndim)
        y = x.max(axis=self.axes, keepdims=True)
        self.mask = x == y
        return y if self.keepdims else y.reshape([s for i, s in enumerate(y.shape) if i not in self.axes])

    def backward(self, gy):
        xp = get_array_module(gy)
        if not self.keepdims:
            gy = xp.expand_dims(gy, self.axes) if self.axes else gy
        # the count is an integer array: cast it, or float32 / int64 gives float64
        count = self.mask.sum(axis=self.axes, keepdims=True).astype(gy.dtype)
        return gy * self.mask / count


def sum(x, axis=None, keepdims=False) -> Tensor:  # noqa: A001
    """Sum over ``axis`` (int, tuple or None for all)."""
    return Sum(axis, keepdims)(x)


def mean(x, axis=None, keepdims=False) -> Tensor:
    """Mean over ``axis`` (int, tuple or None for all)."""
    return Mean(axis, keepdims)(x)


def max(x, axis=None, keepdims=False) -> Tensor:  # noqa: A001
    """Maximum over ``axis``; ties share the gradient equally."""
    return Max(axis, keepdims)(x)


# --------------------------------------------------------------------------- shape operations


class Reshape(Function):
    def __init__(self, shape):
        self.shape = tuple(shape)

    def forward(self, x):
        self.in_shape = x.shape
        try:
            return x.reshape(self.shape)
        except ValueError:
            raise ValueError(
                f"cannot reshape a tensor of shape {x.shape} ({x.size} elements) to {self.shape}"
            ) from None

    def backward(self, gy):
        return gy.reshape(self.in_shape)


class Transpose(Function):
    def __init__(self, axes):
        self.axes = None if axes is None else tuple(axes)

    def forward(self, x):
        axes = self.axes if self.axes is not None else tuple(reversed(range(x.ndim)))
        if sorted(a % x.ndim for a in axes) != list(range(x.ndim)):
            raise ValueError(f"axes {self.axes} is not a permutation of {x.ndim} dimensions")
        self.inverse = tuple(np.argsort([a % x.ndim for a in axes]))
        return x.transpose(axes)

    def backward(self, gy):
        return gy.transpose(self.inverse)


class GetItem(Function):
    """x[index] for basic and integer-array indices; backward scatter-adds."""

    def __init__(self, index):
        self.index = index

    def forward(self, x):
        self.in_shape, self.in_dtype = x.shape, x.dtype
        return x[self.index]

    def backward(self, gy):
        xp = get_array_module(gy)
        gx = xp.zeros(self.in_shape, dtype=gy.dtype)
        xp.add.at(gx, self.index, gy)  # repeated indices accumulate (gx[index] += gy would not)
        return gx


class Concat(Function):
    def __init__(self, axis):
        self.axis = axis

    def forward(self, *xs):
        xp = get_array_module(*xs)
        self.sizes = [x.shape[self.axis] for x in xs]
        return xp.concatenate(xs, axis=self.axis)

    def backward(self, gy):
        xp = get_array_module(gy)
        splits = np.cumsum(self.sizes)[:-1].tolist()
        return tuple(xp.split(gy, splits, axis=self.axis))


def reshape(x, shape) -> Tensor:
    return Reshape(shape)(x)


def transpose(x, axes=None) -> Tensor:
    """Permute axes (reverse them when ``axes`` is None)."""
    return Transpose(axes)(x)


def flatten(x, start_dim=1) -> Tensor:
    """Flatten dimensions ``start_dim..`` into one: (N, C, H, W) -> (N, C*H*W)."""
    shape = x.shape[:start_dim] + (-1,)
    return reshape(x, shape)


def getitem(x, index) -> Tensor:
    if isinstance(index, Tensor):
        index = index.data
    if isinstance(index, tuple):
        index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return GetItem(index)(x)


def concat(tensors, axis=0) -> Tensor:
    """Join tensors along ``axis`` (all other dimensions must agree)."""
    tensors = list(tensors)
    if not tensors:
        raise ValueError("concat needs at least one tensor")
    shapes = [t.shape for t in tensors]
    ref = shapes[0]
    for s in shapes[1:]:
        if len(s) != len(ref) or any(a != b for i, (a, b) in enumerate(zip(s, ref)) if i != axis % len(ref)):
            raise ValueError(f"concat: shapes {shapes} differ outside axis {axis}")
    return Concat(axis)(*tensors)


# --------------------------------------------------------------------------- linear algebra


class MatMul(Function):
    """a @ b for matrices, batches of them (broadcast) and vectors (NumPy's rules)."""

    def forward(self, a, b):
        self.a, self.b = a, b
        return a @ b

    def backward(self, gy):
        # NumPy's rule for 1-D operands: a vector a (K,) acts as a row (1, K) and
        # b (K,) as a column (K, 1), and that axis is dropped from the result.
        # Promote them the same way, work on matrices (broadcast batches summed
        # back by sum_to), and drop the axis again.
        xp = get_array_module(gy)
        a = self.a[None, :] if self.a.ndim == 1 else self.a
        b = self.b[:, None] if self.b.ndim == 1 else self.b
        if self.b.ndim == 1:
            gy = xp.expand_dims(gy, -1)
        if self.a.ndim == 1:
            gy = xp.expand_dims(gy, -2)
        ga = gb = None
        if self.needs_input_grad[0]:
            ga = sum_to(gy @ xp.swapaxes(b, -1, -2), a.shape).reshape(self.a.shape)
        if self.needs_input_grad[1]:
            gb = sum_to(xp.swapaxes(a, -1, -2) @ gy, b.shape).reshape(self.b.shape)
        return ga, gb


def matmul(a, b) -> Tensor:
    """Matrix product; ``a`` (..., n, k) and ``b`` (..., k, m)."""
    sa, sb = getattr(a, "shape", np.shape(a)), getattr(b, "shape", np.shape(b))
    if len(sa) < 1 or len(sb) < 1 or sa[-1] != sb[-2 if len(sb) > 1 else 0]:
        raise ValueError(f"matmul: inner dimensions differ, a {sa} and b {sb}")
    return _binary(MatMul, a, b)


class LinearFunction(Function):
    """y = x W^T + b, x (N, in), W (out, in), b (out,)."""

    def forward(self, x, w, b=None):
        self.x, self.w = x, w
        y = x @ w.T
        if b is not None:
            y = y + b
        return y

    def backward(self, gy):
        gx = gy @ self.w if self.needs_input_grad[0] else None
        gw = gy.T @ self.x if self.needs_input_grad[1] else None
        if len(self.needs_input_grad) == 3:
            return gx, gw, gy.sum(axis=0) if self.needs_input_grad[2] else None
        return gx, gw


def linear(x, weight, bias=None) -> Tensor:
    """Fully connected layer: x (N, in_features), weight (out, in), bias (out,) -> (N, out)."""
    if x.ndim != 2:
        raise ValueError(f"linear: x must be 2-D (N, in_features), got shape {x.shape}")
    if weight.ndim != 2 or weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"linear: weight must have shape (out_features, {x.shape[1]}), got {weight.shape}"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"linear: bias must have shape ({weight.shape[0]},), got {bias.shape}")
    args = (x, weight) if bias is None else (x, weight, bias)
    return LinearFunction()(*args)
