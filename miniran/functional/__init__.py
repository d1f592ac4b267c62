"""Differentiable operations on tensors (the ``F`` of ``import miniran.functional as F``).

Every operation here has a hand-written forward and backward pass on raw
NumPy/CuPy arrays; see the module of each group for the details.
"""

from miniran.functional.basic import (
    add,
    cast,
    concat,
    div,
    exp,
    flatten,
    getitem,
    linear,
    log,
    matmul,
    max,
    mean,
    mul,
    neg,
    pow,
    relu,
    reshape,
    sigmoid,
    sub,
    sum,
    tanh,
    transpose,
)
from miniran.functional.loss import cross_entropy, log_softmax, softmax

__all__ = [
    "add", "cast", "concat", "cross_entropy", "div", "exp", "flatten", "getitem", "linear",
    "log", "log_softmax", "matmul", "max", "mean", "mul", "neg", "pow", "relu", "reshape",
    "sigmoid", "softmax", "sub", "sum", "tanh", "transpose",
]
