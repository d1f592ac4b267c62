"""The operators and methods of :class:`~miniran.autograd.Tensor`, installed by the functional layer.

``a + b``, ``a @ b``, ``x[i]``, ``x.sum()``, ``x.reshape(...)`` and the other
differentiable methods of a tensor are operations of this layer. Autograd
defines the ``Tensor`` class without them (it imports nothing above itself);
:func:`install` attaches them when :mod:`miniran.functional` is imported, which
``import miniran`` (or importing any part of it) always does first.
"""

from __future__ import annotations

from miniran.autograd import Tensor
from miniran.functional import basic as B


def _reshape(self, *shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return B.reshape(self, shape)


def _transpose(self, *axes):
    if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
        axes = tuple(axes[0])
    return B.transpose(self, axes or None)


METHODS = {
    "__add__": lambda self, other: B.add(self, other),
    "__radd__": lambda self, other: B.add(other, self),
    "__sub__": lambda self, other: B.sub(self, other),
    "__rsub__": lambda self, other: B.sub(other, self),
    "__mul__": lambda self, other: B.mul(self, other),
    "__rmul__": lambda self, other: B.mul(other, self),
    "__truediv__": lambda self, other: B.div(self, other),
    "__rtruediv__": lambda self, other: B.div(other, self),
    "__neg__": lambda self: B.neg(self),
    "__pow__": lambda self, exponent: B.pow(self, exponent),
    "__matmul__": lambda self, other: B.matmul(self, other),
    "__rmatmul__": lambda self, other: B.matmul(other, self),
    "__getitem__": lambda self, index: B.getitem(self, index),
    "sum": lambda self, axis=None, keepdims=False: B.sum(self, axis, keepdims),
    "mean": lambda self, axis=None, keepdims=False: B.mean(self, axis, keepdims),
    "max": lambda self, axis=None, keepdims=False: B.max(self, axis, keepdims),
    "reshape": _reshape,
    "transpose": _transpose,
    "T": property(lambda self: B.transpose(self, None)),
    "flatten": lambda self, start_dim=1: B.flatten(self, start_dim),
    "astype": lambda self, dtype: B.cast(self, dtype),
    "exp": lambda self: B.exp(self),
    "log": lambda self: B.log(self),
    "tanh": lambda self: B.tanh(self),
    "sigmoid": lambda self: B.sigmoid(self),
    "relu": lambda self: B.relu(self),
}


def install() -> None:
    """Attach :data:`METHODS` to ``Tensor`` (idempotent)."""
    for name, method in METHODS.items():
        if callable(method):
            method.__name__ = name
            method.__qualname__ = f"Tensor.{name}"
        setattr(Tensor, name, method)
