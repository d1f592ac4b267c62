"""Basic layers: Linear, ReLU, Sigmoid, Flatten, Identity."""

from __future__ import annotations

from miniran import functional as F
from miniran.functional._args import _count
from miniran.nn import init
from miniran.nn.module import Module, Parameter


class Linear(Module):
    """y = x W^T + b; x (N, in_features) -> (N, out_features).

    Weights are uniform in +-1/sqrt(in_features) (the common default for a
    classifier head); pass ``rng`` (a NumPy Generator) for reproducible init.
    """

    def __init__(self, in_features, out_features, bias=True, rng=None):
        super().__init__()
        self.in_features = _count(in_features, "Linear: in_features")
        self.out_features = _count(out_features, "Linear: out_features")
        shape = (self.out_features, self.in_features)
        self.weight = Parameter(init.uniform_fan_in(shape, self.in_features, rng))
        self.bias = Parameter(init.uniform_fan_in((self.out_features,), self.in_features, rng)) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class ReLU(Module):
    def forward(self, x):
        return F.relu(x)


class Sigmoid(Module):
    def forward(self, x):
        return F.sigmoid(x)


class Flatten(Module):
    """(N, C, H, W) -> (N, C*H*W)."""

    def forward(self, x):
        return F.flatten(x, 1)


class Identity(Module):
    def forward(self, x):
        return x
