"""Solution to the earlier exercise of notebook 10: batch norm (training mode) with a closed-form backward.

Notebook 10's exercise is now sigmoid(batch norm) with no formula given (``nb10_bn_sigmoid.py``);
this closed-form batch norm (the derivation of notebook 04) is kept as a reference and is still tested.

Notation: x is (N, C, H, W) or (N, C); every per-channel statistic is taken
over the M = N*H*W (or N) values of its channel::

    mean = (1/M) sum x            var = (1/M) sum (x - mean)^2      (biased)
    xhat = (x - mean) / sqrt(var + eps)
    y    = gamma * xhat + beta

In training mode ``mean`` and ``var`` depend on every x, so the gradient
with respect to x has three terms. Writing ``g = dL/dy`` and summing over the
M values of a channel::

    dL/dbeta  = sum g
    dL/dgamma = sum g * xhat
    dL/dx     = gamma / (M * sqrt(var + eps)) * (M * g - sum g - xhat * sum g * xhat)

The last line follows from the chain rule through xhat, var and mean (the
derivation is in notebook 10). Subtracting ``sum g`` removes the part of g that
a change of ``mean`` would absorb, and subtracting ``xhat * sum(g xhat)`` the
part a change of ``var`` would absorb: the gradient is orthogonal to both.

Check it with::

    import numpy as np, miniran
    from solutions.nb10_batch_norm import batch_norm_train
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 2, 2)) * 2 + 1
    gamma, beta = rng.uniform(0.5, 1.5, 3), rng.standard_normal(3)
    miniran.gradcheck(batch_norm_train, [x, gamma, beta])
"""

from __future__ import annotations

from miniran import Function, get_array_module


class BatchNormTrain(Function):
    """Batch norm with batch statistics (training mode), no running averages.

    Inputs: ``x`` (N, C, H, W) or (N, C), ``gamma`` (C,), ``beta`` (C,).
    """

    def __init__(self, eps=1e-5):
        self.eps = eps

    def forward(self, x, gamma, beta):
        xp = get_array_module(x)
        self.axes = (0,) + tuple(range(2, x.ndim))  # every axis but the channel axis 1
        self.bshape = (1, x.shape[1]) + (1,) * (x.ndim - 2)  # (C,) -> broadcastable shape
        self.m = x.size // x.shape[1]
        mean = x.mean(axis=self.axes).reshape(self.bshape)
        var = ((x - mean) ** 2).mean(axis=self.axes).reshape(self.bshape)
        self.inv_std = 1.0 / xp.sqrt(var + self.eps)
        self.xhat = (x - mean) * self.inv_std
        self.gamma = gamma
        return gamma.reshape(self.bshape) * self.xhat + beta.reshape(self.bshape)

    def backward(self, gy):
        m, xhat = self.m, self.xhat
        gbeta = gy.sum(axis=self.axes)
        ggamma = (gy * xhat).sum(axis=self.axes)
        scale = self.gamma.reshape(self.bshape) * self.inv_std / m
        gx = scale * (m * gy - gbeta.reshape(self.bshape) - xhat * ggamma.reshape(self.bshape))
        return gx, ggamma, gbeta


def batch_norm_train(x, gamma, beta, eps=1e-5):
    """Apply :class:`BatchNormTrain` (a fresh Function object per call)."""
    return BatchNormTrain(eps)(x, gamma, beta)
