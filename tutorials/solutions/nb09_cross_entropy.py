"""Solution to the exercise of notebook 09: softmax cross-entropy as a ``miniran.Function``.

For logits ``z`` of shape (N, K) and integer labels ``y`` of shape (N,), the
loss is the mean negative log-likelihood::

    p = softmax(z, axis=1)
    L = -(1/N) * sum_n log p[n, y_n]

Its gradient with respect to the logits has a famously simple form::

    dL/dz[n, k] = (p[n, k] - [k == y_n]) / N

(the predicted probabilities minus the one-hot labels, divided by the batch
size). With an upstream gradient ``gy`` (a scalar, since L is a scalar) the
backward pass returns ``gy * (p - onehot(y)) / N``. Labels are integers and
get no gradient (``None``).

Check it with::

    import numpy as np, miniran
    from solutions.nb09_cross_entropy import softmax_cross_entropy
    rng = np.random.default_rng(0)
    z, y = rng.standard_normal((5, 10)), rng.integers(0, 10, 5)
    miniran.gradcheck(lambda t: softmax_cross_entropy(t, y), [z])
"""

from __future__ import annotations

from miniran import Function, get_array_module


class SoftmaxCrossEntropy(Function):
    """Mean softmax cross-entropy of (N, K) logits and (N,) integer labels (paper section 4.1's loss)."""

    def forward(self, logits, labels):
        xp = get_array_module(logits)
        # log-softmax with the log-sum-exp trick: subtracting the row maximum
        # leaves the result unchanged and keeps exp() from overflowing
        shifted = logits - logits.max(axis=1, keepdims=True)
        self.log_p = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
        self.labels = labels
        n = logits.shape[0]
        return -self.log_p[xp.arange(n), labels].mean()

    def backward(self, gy):
        xp = get_array_module(self.log_p)
        n = self.log_p.shape[0]
        grad = xp.exp(self.log_p)  # p = softmax(z), a new array we may modify
        grad[xp.arange(n), self.labels] -= 1  # p - onehot(y)
        return grad * (gy / n), None  # no gradient for the integer labels


def softmax_cross_entropy(logits, labels):
    """Apply :class:`SoftmaxCrossEntropy` (a fresh Function object per call)."""
    return SoftmaxCrossEntropy()(logits, labels)
