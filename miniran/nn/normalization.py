"""Batch normalisation layer (running statistics kept as buffers)."""

from __future__ import annotations

import numpy as np

from miniran import functional as F
from miniran.functional._args import _count
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
        momentum: weight of the new batch statistic in the running update, or
            None for a cumulative average of every batch seen (PyTorch's meaning;
            a ``num_batches_tracked`` buffer then counts them).

    Attributes:
        weight: gamma (C,), initialised to ones.
        bias: beta (C,), initialised to zeros.
        running_mean, running_var: buffers (C,) (float32), zeros and ones.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.num_features = _count(num_features, "BatchNorm2d: num_features")
        if not eps > 0:
            raise ValueError(f"BatchNorm2d: eps must be > 0, got {eps}")
        if momentum is not None and not 0 <= momentum <= 1:
            raise ValueError(f"BatchNorm2d: momentum must be in [0, 1] or None (cumulative average), got {momentum}")
        self.eps = float(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.weight = Parameter(np.ones(self.num_features, dtype=np.float32))
        self.bias = Parameter(np.zeros(self.num_features, dtype=np.float32))
        self.register_buffer("running_mean", np.zeros(self.num_features, dtype=np.float32))
        self.register_buffer("running_var", np.ones(self.num_features, dtype=np.float32))
        if self.momentum is None:  # the cumulative average needs the count of batches seen
            self.register_buffer("num_batches_tracked", np.zeros((), dtype=np.int64))

    #: sync batch norm: the processes of a data-parallel run (``miniran.distributed.world()``)
    #: over whose shards the training statistics are taken; None: this process's batch
    comm = None

    def forward(self, x, relu=False):
        """``relu=True`` returns ``relu(bn(x))``, fused (:func:`miniran.functional.batch_norm_relu`)."""
        if x.ndim != 4:
            raise ValueError(f"BatchNorm2d: x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"BatchNorm2d: x has {x.shape[1]} channels (shape {tuple(x.shape)}) "
                f"but num_features is {self.num_features}"
            )
        momentum = self.momentum
        if momentum is None:  # PyTorch's momentum=None: running = average of every batch so far
            if self.training:
                self.num_batches_tracked = self.num_batches_tracked + 1
            momentum = 1.0 / max(float(self.num_batches_tracked), 1.0)
        fn = F.batch_norm_relu if relu else F.batch_norm
        return fn(
            x, self.running_mean, self.running_var, self.weight, self.bias,
            training=self.training, momentum=momentum, eps=self.eps, comm=self.comm,
        )

    def extra_repr(self):
        momentum = "None" if self.momentum is None else f"{self.momentum:g}"
        return f"{self.num_features}, eps={self.eps:g}, momentum={momentum}"
