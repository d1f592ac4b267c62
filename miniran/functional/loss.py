"""Softmax, log-softmax and the cross-entropy loss."""

from __future__ import annotations

import numpy as np

from miniran.autograd import Function, Tensor, as_array
from miniran.backend import device_of, get_array_module


def _log_softmax_array(x, axis):
    # subtract the max so exp never overflows (log-sum-exp trick)
    xp = get_array_module(x)
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


class Softmax(Function):
    def __init__(self, axis):
        self.axis = axis

    def forward(self, x):
        xp = get_array_module(x)
        self.y = xp.exp(_log_softmax_array(x, self.axis))
        return self.y

    def backward(self, gy):
        # J^T gy = y * (gy - <gy, y>)
        y = self.y
        return y * (gy - (gy * y).sum(axis=self.axis, keepdims=True))


class LogSoftmax(Function):
    def __init__(self, axis):
        self.axis = axis

    def forward(self, x):
        self.y = _log_softmax_array(x, self.axis)
        return self.y

    def backward(self, gy):
        xp = get_array_module(gy)
        return gy - xp.exp(self.y) * gy.sum(axis=self.axis, keepdims=True)


def softmax(x, axis=1) -> Tensor:
    """exp(x) / sum(exp(x)) along ``axis`` (default 1: the class axis of (N, K) logits)."""
    return Softmax(axis)(x)


def log_softmax(x, axis=1) -> Tensor:
    """log(softmax(x)), computed stably with the log-sum-exp trick."""
    return LogSoftmax(axis)(x)


class CrossEntropy(Function):
    """Mean negative log-likelihood of integer labels under softmax(logits).

    logits (N, K), labels (N,). The target of example n is the distribution
    ``q_n = (1 - eps) * onehot(labels[n]) + eps / K`` (label smoothing,
    Szegedy et al. 2016, section 7; ``eps = 0`` is the plain one-hot target):

        loss = -mean_n sum_k q_nk * log_softmax(logits)[n, k]
             = (1 - eps) * NLL(labels) - eps * mean_n mean_k log_softmax(logits)[n, k]

    and the gradient of the logits is ``(softmax(logits) - q) * gy / N``.
    """

    def __init__(self, label_smoothing=0.0):
        self.eps = label_smoothing

    def forward(self, logits, labels):
        xp = get_array_module(logits)
        n, k = logits.shape
        self.log_p = _log_softmax_array(logits, 1)
        # labels % K equals labels exactly when every label lies in [0, K); the
        # wrapped labels index safely, and a label out of range poisons the loss
        # (NaN) instead of raising: checking on the host would make the GPU wait
        # every step, and the training loop's NaN check stops the run
        self.labels = labels % k
        loss = -self.log_p[xp.arange(n), self.labels].mean()
        if self.eps:
            loss = (1 - self.eps) * loss - self.eps * self.log_p.mean()
        out_of_range = (self.labels != labels).any()
        return xp.where(out_of_range, loss.dtype.type(np.nan), loss)

    def backward(self, gy):
        xp = get_array_module(gy)
        n, k = self.log_p.shape
        g = xp.exp(self.log_p)
        if self.eps:
            g -= self.eps / k
        g[xp.arange(n), self.labels] -= 1 - self.eps
        return g * (gy / n), None


def cross_entropy(logits, labels, label_smoothing=0.0) -> Tensor:
    """Softmax cross-entropy, averaged over the batch.

    Args:
        logits: (N, K) unnormalised class scores.
        labels: (N,) integer class indices in ``[0, K)`` (array or Tensor).
        label_smoothing: ``eps`` in ``[0, 1)``: the target puts ``1 - eps``
            on the label and spreads ``eps`` evenly over all K classes, so
            the network is not pushed towards ever larger logits
            (see :class:`CrossEntropy`).

    Returns:
        A scalar tensor. Computed from log-softmax, so it stays finite for
        logits of any magnitude.
    """
    labels_arr = labels.data if isinstance(labels, Tensor) else as_array(labels, like=getattr(logits, "data", None))
    if logits.ndim != 2:
        raise ValueError(f"cross_entropy: logits must be (N, K), got shape {logits.shape}")
    if labels_arr.ndim != 1 or labels_arr.shape[0] != logits.shape[0]:
        raise ValueError(
            f"cross_entropy: labels must have shape ({logits.shape[0]},), got {labels_arr.shape}"
        )
    if labels_arr.dtype.kind not in "iu":
        raise ValueError(f"cross_entropy: labels must be integer class indices, got dtype {labels_arr.dtype}")
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float, np.floating)) \
            or not 0 <= label_smoothing < 1:
        raise ValueError(f"cross_entropy: label_smoothing must be a number in [0, 1), got {label_smoothing!r}")
    k = logits.shape[1]
    # range check on the CPU only: on the GPU it would force a sync every step
    # (there an out-of-range label makes the loss NaN; see CrossEntropy.forward)
    if device_of(labels_arr) == "cpu" and labels_arr.size and (int(labels_arr.min()) < 0 or int(labels_arr.max()) >= k):
        raise ValueError(f"cross_entropy: labels must lie in [0, {k}), got range "
                         f"[{int(labels_arr.min())}, {int(labels_arr.max())}]")
    return CrossEntropy(float(label_smoothing))(logits, Tensor(labels_arr))
