"""Pooling layers: MaxPool2d, AvgPool2d and GlobalAvgPool2d (no parameters)."""

from __future__ import annotations

from miniran import functional as F
from miniran.functional._args import _pair
from miniran.nn.module import Module


def _check_pool_layer(cls, kernel_size, stride, padding):
    """Refuse at construction what the forward pass would refuse (float sizes, stride 0, ...)."""
    k = _pair(kernel_size, f"{cls}: kernel_size")
    s = k if stride is None else _pair(stride, f"{cls}: stride")
    p = _pair(padding, f"{cls}: padding")
    for name, pair, least in (("kernel_size", k, 1), ("stride", s, 1), ("padding", p, 0)):
        if min(pair) < least:
            raise ValueError(f"{cls}: {name} must be >= {least}, got {pair}")


class MaxPool2d(Module):
    """Max pooling over (N, C, H, W); see :func:`miniran.functional.max_pool2d`.

    ``stride`` defaults to ``kernel_size``; ``padding`` counts as minus infinity.
    """

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False):
        super().__init__()
        _check_pool_layer("MaxPool2d", kernel_size, stride, padding)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode = bool(ceil_mode)

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode)

    def extra_repr(self):
        stride = self.kernel_size if self.stride is None else self.stride
        return (
            f"kernel_size={self.kernel_size}, stride={stride}, padding={self.padding}, "
            f"ceil_mode={self.ceil_mode}"
        )


class AvgPool2d(Module):
    """Average pooling over (N, C, H, W); see :func:`miniran.functional.avg_pool2d`."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
        super().__init__()
        _check_pool_layer("AvgPool2d", kernel_size, stride, padding)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode, self.count_include_pad = bool(ceil_mode), bool(count_include_pad)

    def forward(self, x):
        return F.avg_pool2d(
            x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad
        )

    def extra_repr(self):
        stride = self.kernel_size if self.stride is None else self.stride
        return (
            f"kernel_size={self.kernel_size}, stride={stride}, padding={self.padding}, "
            f"ceil_mode={self.ceil_mode}, count_include_pad={self.count_include_pad}"
        )


class GlobalAvgPool2d(Module):
    """(N, C, H, W) -> (N, C): the mean of each channel over H and W."""

    def forward(self, x):
        return F.global_avg_pool2d(x)
