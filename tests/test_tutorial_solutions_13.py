"""Notebook 13's exercise: the cross-entropy with label smoothing, its solution and its checker.

The solution in ``tutorials/solutions/nb13_label_smoothing.py`` is compared
with an independent float64 formula, with ``F.cross_entropy(...,
label_smoothing=eps)`` and with its closed-form gradient, and gradient-checked.
``check_label_smoothing`` must pass it and fail the mistakes a learner makes,
each without a traceback: the smoothing spread over the K - 1 wrong classes,
a backward that forgets the smoothing, a sum instead of a mean, eps given to
every class without dividing by K, the uniform term left out, and a softmax
without the log-sum-exp trick.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import miniran
import miniran.functional as F
from miniran import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tutorials"))

import checks  # noqa: E402
from solutions.nb13_label_smoothing import LabelSmoothedCrossEntropy, label_smoothed_cross_entropy  # noqa: E402


def _reference(z, y, eps):
    """-mean_n sum_k q_nk log softmax(z)_nk in float64, q = (1 - eps) onehot + eps / K."""
    z = np.asarray(z, dtype=np.float64)
    n, k = z.shape
    m = z.max(axis=1, keepdims=True)
    log_p = z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))
    q = np.full((n, k), eps / k)
    q[np.arange(n), y] += 1 - eps
    return -(q * log_p).sum() / n


# --------------------------------------------------------------------------- the solution


@pytest.mark.parametrize("n,k,eps", [(1, 2, 0.1), (5, 10, 0.1), (7, 3, 0.3), (4, 10, 0.0)])
def test_forward_matches_reference_and_library(n, k, eps, rng):
    z, y = rng.standard_normal((n, k)) * 3, rng.integers(0, k, n)
    out = label_smoothed_cross_entropy(Tensor(z), y, eps)
    np.testing.assert_allclose(out.data, _reference(z, y, eps), rtol=1e-12)
    np.testing.assert_allclose(out.data, F.cross_entropy(Tensor(z), y, label_smoothing=eps).data, rtol=1e-12)


@pytest.mark.parametrize("n,k,eps", [(1, 2, 0.2), (5, 10, 0.1), (6, 4, 0.5)])
def test_gradcheck(n, k, eps, rng):
    z, y = rng.standard_normal((n, k)) * 2, rng.integers(0, k, n)
    assert miniran.gradcheck(lambda t: LabelSmoothedCrossEntropy(eps)(t, y), [z], mode="elementwise")


def test_backward_is_softmax_minus_smoothed_target(rng):
    n, k, eps = 6, 10, 0.1
    z, y, gy = rng.standard_normal((n, k)), rng.integers(0, k, n), 0.7
    t = Tensor(z.copy(), requires_grad=True)
    label_smoothed_cross_entropy(t, y, eps).backward(np.array(gy))
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    q = np.full((n, k), eps / k)
    q[np.arange(n), y] += 1 - eps
    np.testing.assert_allclose(t.grad, (p - q) * gy / n, rtol=1e-12, atol=1e-15)


def test_smallest_loss_is_the_entropy_of_the_target():
    # exercise 1's question: with eps = 0.1 and K = 10 the loss cannot go below 0.50, reached at softmax(z) = q
    n, k, eps = 3, 10, 0.1
    y = np.array([0, 4, 9])
    q = np.full((n, k), eps / k)
    q[np.arange(n), y] += 1 - eps
    t = Tensor(np.log(q), requires_grad=True)
    loss = label_smoothed_cross_entropy(t, y, eps)
    loss.backward()
    entropy = -(0.91 * np.log(0.91) + 9 * 0.01 * np.log(0.01))
    np.testing.assert_allclose(loss.data, entropy, rtol=1e-12)
    assert round(float(loss.data), 2) == 0.50
    np.testing.assert_allclose(t.grad, 0.0, atol=1e-15)
    # larger logits on the true class (the hard-target optimum) cost more, not less
    z = np.where(q > 0.5, 20.0, 0.0)
    assert float(label_smoothed_cross_entropy(Tensor(z), y, eps).data) > float(loss.data) + 1


def test_forward_is_finite_for_huge_logits():
    z, y = np.array([[1000.0, 0.0, -1000.0], [-1000.0, 1000.0, 0.0]]), np.array([0, 2])
    out = label_smoothed_cross_entropy(Tensor(z), y, 0.1)
    np.testing.assert_allclose(out.data, _reference(z, y, 0.1), rtol=1e-12)


def test_solution_passes_the_checker(capsys):
    assert checks.check_label_smoothing(LabelSmoothedCrossEntropy) is True
    out = capsys.readouterr().out
    assert "=> all checks passed" in out and "WRONG" not in out
    assert "(5, 2), eps=0.2" in out and "logits of +-1000" in out


# --------------------------------------------------------------------------- wrong answers a learner writes


class _Smoothed(miniran.Function):
    """A right forward/backward with the target q built by ``target(n, k, labels, eps, xp)``, for the variants."""

    def __init__(self, eps):
        self.eps = eps

    def target(self, n, k, labels, eps, xp):
        q = xp.full((n, k), eps / k)
        q[xp.arange(n), labels] += 1 - eps
        return q

    def forward(self, logits, labels):
        xp = miniran.get_array_module(logits)
        n, k = logits.shape
        shifted = logits - logits.max(axis=1, keepdims=True)
        self.log_p = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
        self.q = self.target(n, k, labels, self.eps, xp)
        return -(self.q * self.log_p).sum() / n

    def backward(self, gy):
        n = self.log_p.shape[0]
        return (np.exp(self.log_p) - self.q) * (gy / n), None


class OverTheOthers(_Smoothed):
    """eps spread over the K - 1 wrong classes only: 1 - eps on the true class (another convention)."""

    def target(self, n, k, labels, eps, xp):
        q = xp.full((n, k), eps / (k - 1))
        q[xp.arange(n), labels] = 1 - eps
        return q


class EpsPerClass(_Smoothed):
    """eps given to every class, not eps / K: the target no longer sums to 1."""

    def target(self, n, k, labels, eps, xp):
        q = xp.full((n, k), eps)
        q[xp.arange(n), labels] += 1 - eps
        return q


class NoUniformTerm(_Smoothed):
    """(1 - eps) times the plain cross-entropy: the eps / K part left out."""

    def target(self, n, k, labels, eps, xp):
        q = xp.zeros((n, k))
        q[xp.arange(n), labels] = 1 - eps
        return q


class HardTargetBackward(_Smoothed):
    """Right forward, but the backward of the plain cross-entropy (softmax - onehot)."""

    def backward(self, gy):
        n, k = self.log_p.shape
        onehot = (self.q > self.eps / k + 1e-12).astype(float) if self.eps else self.q
        return (np.exp(self.log_p) - onehot) * (gy / n), None


class SumNotMean(_Smoothed):
    """The sum over the batch, forward and backward."""

    def forward(self, logits, labels):
        return super().forward(logits, labels) * logits.shape[0]

    def backward(self, gy):
        g, _ = super().backward(gy)
        return g * self.log_p.shape[0], None


class NoLogSumExp(_Smoothed):
    """softmax straight from exp(z): overflows (inf / inf = NaN) for logits of 1000."""

    def forward(self, logits, labels):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            e = np.exp(logits)
            self.log_p = np.log(e / e.sum(axis=1, keepdims=True))
        n, k = logits.shape
        self.q = self.target(n, k, labels, self.eps, np)
        with np.errstate(invalid="ignore"):
            return -(self.q * self.log_p).sum() / n


def test_the_harness_class_itself_passes(capsys):
    assert checks.check_label_smoothing(_Smoothed) is True


@pytest.mark.parametrize("cls,where", [
    (OverTheOthers, "forward (5, 2), eps=0.2 vs F.cross_entropy"),
    (EpsPerClass, "forward (6, 10), eps=0.1 vs F.cross_entropy"),
    (NoUniformTerm, "forward (6, 10), eps=0.1 vs F.cross_entropy"),
    (HardTargetBackward, "logits (6, 10), eps=0.1, gradient of input 0"),
    (SumNotMean, "forward (6, 10), eps=0.1 vs F.cross_entropy"),
    (NoLogSumExp, "forward, logits of +-1000, eps=0.1: your result holds NaN or inf"),
], ids=lambda v: v.__name__ if isinstance(v, type) else "")
def test_wrong_answers_fail(cls, where, capsys):
    assert checks.check_label_smoothing(cls) is False
    out = capsys.readouterr().out
    wrong = [line for line in out.splitlines() if "WRONG" in line]
    assert any(where in line for line in wrong), out
    assert "=> some checks FAILED" in out and "Traceback" not in out


def test_skeleton_is_not_solved_yet(capsys):
    class Skeleton(miniran.Function):
        def __init__(self, eps):
            self.eps = eps

        def forward(self, logits, labels):
            raise NotImplementedError

        def backward(self, gy):
            raise NotImplementedError

    assert checks.check_label_smoothing(Skeleton) is False
    out = capsys.readouterr().out
    assert "not solved yet" in out and "WRONG" not in out


def test_an_exception_is_one_line(capsys):
    class Broken(_Smoothed):
        def forward(self, logits, labels):
            return logits[:, labels.max() + 100].sum()

    assert checks.check_label_smoothing(Broken) is False
    out = capsys.readouterr().out
    assert "your code raised IndexError" in out and "Traceback" not in out
