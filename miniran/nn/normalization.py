"""Batch normalisation layer (running statistics kept as buffers)."""

from __future__ import annotations

import numpy as np

from miniran import functional as F
from miniran.nn.module import Module, Parameter


class BatchNorm2d(Module):
    """Batch norm over the channels of (N, C, H, W) inputs, as ``torch.nn.BatchNorm2d``.

    In training mode (``module.train()``, the default) each channel is
    normalised with the statistics of the current batch, and the running
    estimates are updated in place; in evaluation mode (``module.eval()``)
    the running estimates are used. See :func:`miniran.functional.batch_norm`.

    Args:
        num_features: C, the number of channels.
        eps: added to the variance before the square root.
        momentum: weight of the new batch statistic in the running update.

    Attributes:
        weight: gamma (C,), initialised to ones.
        bias: beta (C,), initialised to zeros.
        running_mean, running_var: buffers (C,) (float32), zeros and ones.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.num_features = int(num_features)
        self.eps, self.momentum = float(eps), float(momentum)
        self.weight = Parameter(np.ones(self.num_features, dtype=np.float32))
        self.bias = Parameter(np.zeros(self.num_features, dtype=np.float32))
        self.register_buffer("running_mean", np.zeros(self.num_features, dtype=np.float32))
        self.register_buffer("running_var", np.ones(self.num_features, dtype=np.float32))

    def forward(self, x):
        if x.ndim != 4:
            raise ValueError(f"BatchNorm2d: x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"BatchNorm2d: x has {x.shape[1]} channels (shape {tuple(x.shape)}) "
                f"but num_features is {self.num_features}"
            )
        return F.batch_norm(
            x, self.weight, self.bias, self.running_mean, self.running_var,
            training=self.training, momentum=self.momentum, eps=self.eps,
        )

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps:g}, momentum={self.momentum:g}"
