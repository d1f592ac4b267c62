"""Solution to exercise 1 of notebook 10: the backward pass of sigmoid(batch norm(x)), derived.

This is the mask head with ``mask_bn=True`` (section 4 of the notebook): a
training-mode batch norm right before the sigmoid. Per channel, over its M
values (all images and positions)::

    mu = mean(x),  var = mean((x - mu)^2),  s = sqrt(var + eps)
    xhat = (x - mu) / s,  z = gamma * xhat + beta,  y = sigmoid(z)

Derivation, with ``gy = dL/dy`` and sums over the M values of a channel:

1. Through the sigmoid: ``gz = gy * y * (1 - y)``.
2. Through the affine map: ``dL/dbeta = sum gz``, ``dL/dgamma = sum gz * xhat``,
   ``gxhat = gamma * gz``.
3. Through the normalisation. xhat depends on x directly and through mu and
   s, both functions of every x of the channel::

       dxhat_k/dx_i = (delta_ki - 1/M - xhat_k * xhat_i / M) / s

   (from dmu/dx_i = 1/M and ds/dx_i = xhat_i / (M s)). Summing over k::

       dL/dx_i = (gxhat_i - mean(gxhat) - xhat_i * mean(gxhat * xhat)) / s

The order matters: the sigmoid's factor ``y (1 - y)`` multiplies *before*
the mean and the projection on xhat are subtracted. Applying it after
(``y (1 - y) * BN_backward(gy)``) is wrong, and so is dropping either of the
two subtracted terms (the mean term keeps sum dL/dx = 0, the xhat term keeps
dL/dx orthogonal to xhat).
"""

from __future__ import annotations

import numpy as np

from miniran import Function


class BNSigmoidSolution(Function):
    """sigmoid(gamma * xhat + beta) with training-mode batch norm; inputs x (N, C, ...), gamma (C,), beta (C,)."""

    def __init__(self, eps=1e-5):
        self.eps = eps

    def forward(self, x, gamma, beta):
        self.axes = (0,) + tuple(range(2, x.ndim))
        self.bshape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
        mean = x.mean(axis=self.axes).reshape(self.bshape)
        var = ((x - mean) ** 2).mean(axis=self.axes).reshape(self.bshape)
        self.inv_std = 1.0 / np.sqrt(var + self.eps)
        self.xhat = (x - mean) * self.inv_std
        self.gamma = gamma
        z = gamma.reshape(self.bshape) * self.xhat + beta.reshape(self.bshape)
        self.y = (np.tanh(z * 0.5) + 1) * 0.5  # sigmoid without overflow
        return self.y

    def backward(self, gy):
        gz = gy * self.y * (1 - self.y)                                    # 1. sigmoid
        gbeta = gz.sum(axis=self.axes)                                     # 2. affine
        ggamma = (gz * self.xhat).sum(axis=self.axes)
        gxhat = gz * self.gamma.reshape(self.bshape)
        mean_g = gxhat.mean(axis=self.axes, keepdims=True)                 # 3. normalisation
        mean_gx = (gxhat * self.xhat).mean(axis=self.axes, keepdims=True)
        gx = (gxhat - mean_g - self.xhat * mean_gx) * self.inv_std
        return gx, ggamma, gbeta
