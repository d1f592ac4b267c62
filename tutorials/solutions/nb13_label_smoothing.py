"""Solution to exercise 1 of notebook 13: the cross-entropy with label smoothing, forward and backward.

The target of example n is q_n = (1 - eps) * onehot(y_n) + eps / K, and

    L = -(1/N) sum_n sum_k q_nk * log p_nk,        p_n = softmax(z_n).

With log p_nk = z_nk - logsumexp(z_n), and since each row of q sums to 1,

    -sum_k q_nk log p_nk = logsumexp(z_n) - sum_k q_nk z_nk,

whose derivative with respect to z_nk is p_nk - q_nk. So

    dL/dz = (p - q) / N,

the plain cross-entropy's gradient with the one-hot target replaced by q
(eps = 0 gives it back). The smallest loss is reached at p = q, where L is the
entropy of q: with eps = 0.1 and K = 10, -(0.91 ln 0.91 + 9 * 0.01 ln 0.01)
= 0.50, not 0: the loss stops rewarding ever larger logits.
"""

from __future__ import annotations

import miniran


class LabelSmoothedCrossEntropy(miniran.Function):
    """Mean cross-entropy of (N, K) logits and (N,) integer labels against smoothed targets."""

    def __init__(self, eps):
        self.eps = eps

    def forward(self, logits, labels):
        xp = miniran.get_array_module(logits)
        n, k = logits.shape
        shifted = logits - logits.max(axis=1, keepdims=True)          # the log-sum-exp trick
        self.log_p = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
        self.q = xp.full(logits.shape, self.eps / k, dtype=logits.dtype)
        self.q[xp.arange(n), labels] += 1 - self.eps
        return -(self.q * self.log_p).sum() / n

    def backward(self, gy):
        n = self.log_p.shape[0]
        xp = miniran.get_array_module(self.log_p)
        return (xp.exp(self.log_p) - self.q) * (gy / n), None


def label_smoothed_cross_entropy(logits, labels, eps):
    """The Function applied: ``logits`` a Tensor (N, K), ``labels`` an int array (N,)."""
    return LabelSmoothedCrossEntropy(eps)(logits, labels)
