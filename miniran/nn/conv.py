"""Conv2d: the convolution layer, a thin module around :func:`miniran.functional.conv2d`."""

from __future__ import annotations

import numpy as np

from miniran import functional as F
from miniran.functional._args import _count, _pair
from miniran.nn import init
from miniran.nn.module import Module, Parameter


class Conv2d(Module):
    """2-D convolution layer: x (N, C, H, W) -> y (N, O, OH, OW).

    Notation: C = ``in_channels``, O = ``out_channels``, KH x KW the kernel,
    and ``OH = (H + 2*PH - KH) // SY + 1`` (likewise OW), as in
    :func:`miniran.functional.conv2d`.

    Initialisation: the weight (O, C, KH, KW) is drawn from He/Kaiming normal
    N(0, 2 / fan_out) with **fan_out = O * KH * KW** (the paper initialises
    "following [9]", He et al. 2015). Fan-out keeps the variance of the
    *gradients* constant from layer to layer in the backward pass, which is
    what lets very deep ReLU networks such as Attention-92 train from scratch;
    it is also what the ResNet reference code and torchvision use. The bias
    starts at zero.

    Args:
        in_channels: C, channels of the input.
        out_channels: O, channels of the output (number of kernels).
        kernel_size: KH (= KW) or the pair (KH, KW).
        stride: SY (= SX) or the pair (SY, SX).
        padding: zero padding PH (= PW) or the pair (PH, PW) on each side.
        bias: add a learnable bias (O,) if True. Set it to False when a
            batch norm follows, since the norm's shift makes it redundant.
        rng: a ``numpy.random.Generator`` for reproducible initialisation.

    Attributes:
        weight: Parameter of shape (O, C, KH, KW).
        bias: Parameter of shape (O,), or None.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, rng=None):
        super().__init__()
        self.in_channels = _count(in_channels, "Conv2d: in_channels")
        self.out_channels = _count(out_channels, "Conv2d: out_channels")
        self.kernel_size = _pair(kernel_size, "Conv2d: kernel_size")
        self.stride = _pair(stride, "Conv2d: stride")
        self.padding = _pair(padding, "Conv2d: padding")
        for name, pair, least in (("kernel_size", self.kernel_size, 1), ("stride", self.stride, 1),
                                  ("padding", self.padding, 0)):
            if min(pair) < least:
                raise ValueError(f"Conv2d: {name} must be >= {least}, got {pair}")
        shape = (self.out_channels, self.in_channels) + self.kernel_size
        self.weight = Parameter(init.kaiming_normal(shape, mode="fan_out", rng=rng))
        self.bias = Parameter(np.zeros(self.out_channels, dtype=self.weight.dtype)) if bias else None

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)

    def extra_repr(self):
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}"
        )
