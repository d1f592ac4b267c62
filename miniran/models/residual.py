"""The pre-activation bottleneck residual unit (He et al., *Identity Mappings*, ECCV 2016).

The Residual Attention Network builds its trunk, its mask branch and the
units between stages from this one unit (paper section 3, Table 2; official
Caffe model, see docs/sources.md). Layer order, exactly as the Caffe model::

    a   = ReLU(BN(x))                     # pre-activation, shared by both paths
    out = Conv1x1(a)          -> out/4 channels
    out = Conv3x3(ReLU(BN(out)), stride)  (the stride sits in the 3x3 conv)
    out = Conv1x1(ReLU(BN(out))) -> out channels
    y   = out + shortcut

    shortcut = x                      when the shape is kept (identity, raw input)
             = Conv1x1(a, stride)     when channels or size change (projection)

No convolution has a bias (BN follows each one), and the projection is only
built when it is used, so every parameter receives a gradient.
"""

from __future__ import annotations

from miniran import nn


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck unit: (N, in_channels, H, W) -> (N, out_channels, H/stride, W/stride).

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output; the bottleneck width is out_channels // 4.
        stride: stride of the 3x3 convolution (and of the projection shortcut).
        rng: a ``numpy.random.Generator`` for reproducible He initialisation.
    """

    def __init__(self, in_channels, out_channels, stride=1, rng=None):
        super().__init__()
        if out_channels % 4:
            raise ValueError(f"out_channels must be divisible by 4 (bottleneck width), got {out_channels}")
        width = out_channels // 4
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False, rng=rng)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False, rng=rng)
        self.bn3 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False, rng=rng)
        if in_channels != out_channels or stride != 1:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False, rng=rng)
        else:
            self.shortcut = None  # identity: no parameters are created

    def forward(self, x):
        # bn(..., relu=True) is ReLU(BN(.)) as one function: the same numbers,
        # computed in the same passes over memory on the GPU
        a = self.bn1(x, relu=True)
        out = self.conv1(a)
        out = self.conv2(self.bn2(out, relu=True))
        out = self.conv3(self.bn3(out, relu=True))
        residual = x if self.shortcut is None else self.shortcut(a)
        return out + residual

    def extra_repr(self):
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


def residual_stack(channels, count, rng=None) -> nn.Sequential:
    """``count`` shape-preserving units in a row (``count`` may be 0: the identity)."""
    return nn.Sequential(*[PreActBottleneck(channels, channels, rng=rng) for _ in range(count)])
