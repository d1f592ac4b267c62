"""Solutions to the exercises of notebook 05: ReLU and the residual addition as Functions.

* ReLU: ``y = max(x, 0)``; its derivative is 1 where ``x > 0`` and 0 where
  ``x < 0`` (at exactly 0 we take 0, as miniran does). Gradient checks must
  keep the inputs away from 0, where central differences straddle the kink.
* The residual addition ``y = F(x) + x``: the derivative of a sum with
  respect to each term is the identity, so the upstream gradient goes to
  *both* inputs unchanged. That unchanged copy travelling down the shortcut
  is what keeps gradients alive in deep residual networks.
"""

from __future__ import annotations

from miniran import Function


class ReLUSolution(Function):
    """y = max(x, 0)."""

    def forward(self, x):
        self.mask = x > 0  # which inputs let their gradient through
        return x * self.mask

    def backward(self, gy):
        return gy * self.mask


class ResidualAddSolution(Function):
    """y = residual + shortcut, two inputs of the same shape (no broadcasting)."""

    def forward(self, residual, shortcut):
        if residual.shape != shortcut.shape:
            raise ValueError(
                f"ResidualAddSolution: shapes differ, {residual.shape} and {shortcut.shape}; "
                "a projection shortcut must make them equal"
            )
        return residual + shortcut

    def backward(self, gy):
        return gy, gy  # d(a + b)/da = d(a + b)/db = identity


def relu_solution(x):
    return ReLUSolution()(x)


def residual_add_solution(residual, shortcut):
    return ResidualAddSolution()(residual, shortcut)
