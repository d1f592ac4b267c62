"""The exercise solutions of tutorial notebooks 09 and 10 (``tutorials/solutions/nb09_*.py``, ``nb10_*.py``).

Each backward pass is gradient-checked in float64 with a random upstream
gradient (``miniran.gradcheck`` draws it), and each forward pass is compared
with an independent float64 formula and with the library.
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

from solutions.nb09_cross_entropy import SoftmaxCrossEntropy, softmax_cross_entropy  # noqa: E402
from solutions.nb10_batch_norm import BatchNormTrain, batch_norm_train  # noqa: E402

# --------------------------------------------------------------------------- 09: softmax cross-entropy


def _reference_cross_entropy(z, y):
    """-mean(log softmax(z)[n, y_n]) written out in float64 with the log-sum-exp trick."""
    z = np.asarray(z, dtype=np.float64)
    m = z.max(axis=1, keepdims=True)
    log_p = z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))
    return -log_p[np.arange(len(y)), y].mean()


@pytest.mark.parametrize("n,k", [(1, 2), (5, 10), (7, 3)])
def test_cross_entropy_forward_matches_reference_and_library(n, k, rng):
    z = rng.standard_normal((n, k)) * 3
    y = rng.integers(0, k, n)
    out = softmax_cross_entropy(Tensor(z), y)
    np.testing.assert_allclose(out.data, _reference_cross_entropy(z, y), rtol=1e-12)
    np.testing.assert_allclose(out.data, F.cross_entropy(Tensor(z), y).data, rtol=1e-12)


def test_cross_entropy_forward_is_finite_for_huge_logits():
    z = np.array([[1000.0, 0.0, -1000.0], [-1000.0, 1000.0, 0.0]])
    y = np.array([0, 2])
    out = softmax_cross_entropy(Tensor(z), y)
    # row 0 is right with certainty (loss 0); row 1 gives its label probability e^-1000 (loss 1000)
    np.testing.assert_allclose(out.data, 500.0, rtol=1e-12)


@pytest.mark.parametrize("n,k", [(1, 2), (5, 10), (8, 4)])
def test_cross_entropy_gradcheck(n, k, rng):
    z = rng.standard_normal((n, k)) * 2
    y = rng.integers(0, k, n)
    assert miniran.gradcheck(lambda t: SoftmaxCrossEntropy()(t, y), [z], mode="elementwise")


def test_cross_entropy_backward_matches_library_with_random_upstream_gradient(rng):
    z = rng.standard_normal((6, 10))
    y = rng.integers(0, 10, 6)
    gy = rng.uniform(-1, 1)
    grads = []
    for fn in (softmax_cross_entropy, F.cross_entropy):
        t = Tensor(z.copy(), requires_grad=True)
        fn(t, y).backward(np.array(gy))
        grads.append(t.grad)
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-12, atol=1e-15)
    # and the closed form (softmax - onehot) * gy / N
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(6), y] -= 1
    np.testing.assert_allclose(grads[0], p * gy / 6, rtol=1e-12, atol=1e-15)


def test_cross_entropy_backward_on_raw_arrays_gives_none_for_labels(rng):
    z = rng.standard_normal((3, 4))
    fn = SoftmaxCrossEntropy()
    fn.forward(z, np.array([0, 1, 3]))
    gz, gy_labels = fn.backward(np.array(2.0))
    assert gz.shape == (3, 4) and gy_labels is None
    np.testing.assert_allclose(gz.sum(axis=1), 0, atol=1e-15)  # softmax rows sum to 1, one-hot rows too


# --------------------------------------------------------------------------- 10: batch norm, training mode


def _reference_batch_norm(x, gamma, beta, eps=1e-5):
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    return gamma.reshape(shape) * (x - mean) / np.sqrt(var + eps) + beta.reshape(shape)


def _bn_inputs(rng, shape):
    c = shape[1]
    # well-conditioned: unit-scale spread per channel (no tiny variance), gamma away from 0
    x = rng.standard_normal(shape) * rng.uniform(0.5, 2.0, size=(1, c) + (1,) * (len(shape) - 2)) + 1.0
    return x, rng.uniform(0.5, 1.5, c), rng.standard_normal(c)


@pytest.mark.parametrize("shape", [(4, 3, 2, 2), (2, 2, 3, 3), (6, 5)])
def test_batch_norm_forward_matches_reference_and_library(shape, rng):
    x, gamma, beta = _bn_inputs(rng, shape)
    out = batch_norm_train(Tensor(x), Tensor(gamma), Tensor(beta))
    np.testing.assert_allclose(out.data, _reference_batch_norm(x, gamma, beta), rtol=1e-10, atol=1e-12)
    lib = F.batch_norm(Tensor(x), weight=Tensor(gamma), bias=Tensor(beta), training=True)
    np.testing.assert_allclose(out.data, lib.data, rtol=1e-10, atol=1e-12)
    # each channel of xhat has mean 0 and (biased) variance var / (var + eps), about 1
    axes = (0,) + tuple(range(2, len(shape)))
    xhat = (out.data - beta.reshape((1, -1) + (1,) * (len(shape) - 2))) / gamma.reshape((1, -1) + (1,) * (len(shape) - 2))
    np.testing.assert_allclose(xhat.mean(axis=axes), 0, atol=1e-12)
    np.testing.assert_allclose(xhat.var(axis=axes), 1, atol=1e-4)


@pytest.mark.parametrize("shape", [(4, 3, 2, 2), (2, 2, 3, 3), (6, 5)])
def test_batch_norm_gradcheck_all_inputs(shape, rng):
    x, gamma, beta = _bn_inputs(rng, shape)
    assert miniran.gradcheck(batch_norm_train, [x, gamma, beta], mode="elementwise")


def test_batch_norm_backward_matches_library(rng):
    x, gamma, beta = _bn_inputs(rng, (3, 4, 3, 3))
    gy = rng.uniform(-1, 1, size=x.shape)
    grads = []
    for fn in (batch_norm_train, lambda a, g, b: F.batch_norm(a, weight=g, bias=b, training=True)):
        ts = [Tensor(v.copy(), requires_grad=True) for v in (x, gamma, beta)]
        fn(*ts).backward(gy)
        grads.append([t.grad for t in ts])
    for mine, lib in zip(*grads):
        np.testing.assert_allclose(mine, lib, rtol=1e-9, atol=1e-12)


def test_batch_norm_gradient_is_orthogonal_to_constants_and_xhat(rng):
    """Shifting one channel's input does not change the output, so gx sums to 0 over each channel.

    Scaling it changes the output only through eps, so sum(gx * xhat) is 0 up to a term of order eps.
    """
    x, gamma, beta = _bn_inputs(rng, (4, 2, 3, 3))
    t = Tensor(x, requires_grad=True)
    fn = BatchNormTrain()
    fn(t, Tensor(gamma), Tensor(beta)).backward(rng.uniform(-1, 1, size=x.shape))
    xhat = _reference_batch_norm(x, np.ones(2), np.zeros(2))
    np.testing.assert_allclose(t.grad.sum(axis=(0, 2, 3)), 0, atol=1e-10)
    np.testing.assert_allclose((t.grad * xhat).sum(axis=(0, 2, 3)), 0, atol=1e-4)
