"""Differentiable operations on tensors (the ``F`` of ``import miniran.functional as F``).

Every operation here has a hand-written forward and backward pass on raw
NumPy/CuPy arrays; see the module of each group for the details. Each
Function here is the *reference* algorithm, one code path for NumPy and CuPy:
the textbook. Faster twins live in :mod:`miniran.fast` (the engine), chosen
at one dispatch point, :mod:`miniran.functional._dispatch`; with
``reference_only()`` every operation runs the code of this package.
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
from miniran.functional.attention import channel_l2_normalize, spatial_sigmoid
from miniran.functional.interpolation import interpolate_bilinear
from miniran.functional.conv import col2im, conv2d, conv_output_size, im2col
from miniran.functional.loss import cross_entropy, log_softmax, softmax
from miniran.functional.normalization import batch_norm, batch_norm_relu
from miniran.functional.pooling import avg_pool2d, global_avg_pool2d, max_pool2d, pool_output_size
from miniran.functional import tensor_methods
from miniran.functional._dispatch import reference_only

tensor_methods.install()  # Tensor's operators (a + b, x.sum(), ...) are operations of this layer

__all__ = [
    "avg_pool2d", "batch_norm", "batch_norm_relu", "global_avg_pool2d", "max_pool2d", "pool_output_size",
    "col2im", "conv2d", "conv_output_size", "im2col",
    "channel_l2_normalize", "interpolate_bilinear", "spatial_sigmoid",
    "add", "cast", "concat", "cross_entropy", "div", "exp", "flatten", "getitem", "linear",
    "log", "log_softmax", "matmul", "max", "mean", "mul", "neg", "pow", "relu", "reshape",
    "sigmoid", "softmax", "sub", "sum", "tanh", "transpose", "reference_only",
]
