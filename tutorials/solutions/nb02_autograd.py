"""Solution to the exercise of notebook 02: the sigmoid as a ``miniran.Function``.

``y = 1 / (1 + exp(-x))`` has the derivative ``dy/dx = y * (1 - y)``, so the
backward pass needs only the saved output ``y``, not the input. The forward
pass uses the identity ``sigmoid(x) = (1 + tanh(x / 2)) / 2``, which never
overflows (``exp(-x)`` would for ``x`` below about -88 in float32).

Check it with::

    import numpy as np, miniran
    from solutions.nb02_autograd import sigmoid_solution
    x = np.random.default_rng(0).standard_normal((3, 4))
    miniran.gradcheck(sigmoid_solution, [x])
"""

from __future__ import annotations

from miniran import Function, get_array_module


class SigmoidSolution(Function):
    """The logistic sigmoid, paper Eq. 4 (the mixed-attention mask)."""

    def forward(self, x):
        xp = get_array_module(x)
        self.y = (xp.tanh(x * 0.5) + 1) * 0.5  # = 1 / (1 + exp(-x)), overflow-free
        return self.y

    def backward(self, gy):
        # chain rule: dL/dx = dL/dy * dy/dx, with dy/dx = y * (1 - y) elementwise
        return gy * self.y * (1 - self.y)


def sigmoid_solution(x):
    """Apply :class:`SigmoidSolution` (a fresh Function object per call)."""
    return SigmoidSolution()(x)
