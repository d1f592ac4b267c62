"""Attention-mask activations (paper Eq. 5 and 6): naive references, properties, gradient checks.

These are normalisations, where a gradient check through ``sum(outputs)`` is
blind to whole classes of wrong backward passes; the tests below show two
such backward passes slipping through a sum-style check and being caught by
:func:`miniran.gradcheck` (random upstream gradient).
"""

import numpy as np
import pytest

import miniran.functional as F
from miniran import GradcheckError, Tensor, gradcheck
from miniran.functional.attention import ChannelL2Normalize, SpatialSigmoid

SHAPES = [(2, 3, 4, 5), (1, 5, 3, 3), (3, 1, 2, 4), (2, 4, 1, 1)]


def naive_channel_l2(x, eps):
    """Eq. 5 one position at a time: x_i / ||x_i|| over the channel vector x_i = x[n, :, h, w]."""
    y = np.empty_like(x)
    n, _, h, w = x.shape
    for a in range(n):
        for i in range(h):
            for j in range(w):
                v = x[a, :, i, j]
                y[a, :, i, j] = v / np.sqrt(np.sum(v * v) + eps)
    return y


def naive_spatial_sigmoid(x, eps):
    """Eq. 6 one feature map at a time: sigmoid((x - mean_c) / std_c) over the H x W map of (n, c)."""
    y = np.empty_like(x)
    for a in range(x.shape[0]):
        for c in range(x.shape[1]):
            m = x[a, c]
            z = (m - m.mean()) / np.sqrt(m.var() + eps)  # np.var: population variance (ddof=0)
            y[a, c] = 1 / (1 + np.exp(-z))
    return y


# scalar losses of the output, with their gradient with respect to the output
SUM = (lambda y: y.sum(), np.ones_like)  # L = sum(y): upstream all ones
HALF_SQUARED = (lambda y: 0.5 * (y * y).sum(), lambda y: y)  # L = sum(y^2) / 2: upstream y


def sum_style_check(fn, x, loss, eps=1e-6):
    """The weak check: the backward for ONE fixed loss of the output vs its central differences.

    ``loss`` is a (value, gradient) pair such as :data:`SUM`. Returns True when
    the analytic gradient of ``loss(fn(x))`` matches the numerical one.
    """
    value, grad = loss
    t = Tensor(x.copy(), requires_grad=True)
    y = fn(t)
    y.backward(grad(y.data))
    numeric = np.zeros_like(x)
    for k in range(x.size):
        plus, minus = x.copy(), x.copy()
        plus.reshape(-1)[k] += eps
        minus.reshape(-1)[k] -= eps
        numeric.reshape(-1)[k] = (value(fn(Tensor(plus)).data) - value(fn(Tensor(minus)).data)) / (2 * eps)
    return np.allclose(t.grad, numeric, atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------- channel attention (Eq. 5)


@pytest.mark.parametrize("shape", SHAPES)
def test_channel_l2_normalize_forward(shape, rng):
    x = rng.standard_normal(shape)
    y = F.channel_l2_normalize(Tensor(x))
    np.testing.assert_allclose(y.data, naive_channel_l2(x, 1e-12), rtol=1e-12)
    # unit L2 norm across the channels at every (sample, position): exactly with eps = 0,
    # and sqrt(s / (s + eps)) with the default eps inside the square root (s = squared norm)
    y0 = F.channel_l2_normalize(Tensor(x), eps=0.0).data
    np.testing.assert_allclose(np.sqrt((y0 ** 2).sum(axis=1)), 1.0, rtol=1e-14)
    s = (x ** 2).sum(axis=1)
    np.testing.assert_allclose(np.sqrt((y.data ** 2).sum(axis=1)), np.sqrt(s / (s + 1e-12)), rtol=1e-14)


def test_channel_l2_normalize_by_hand():
    # the channel vector (3, 4) at one position has norm 5 -> (0.6, 0.8); (0, -2) -> (0, -1)
    x = np.array([[3.0, 0.0], [4.0, -2.0]]).reshape(1, 2, 1, 2)
    y = F.channel_l2_normalize(Tensor(x), eps=0.0).data
    np.testing.assert_allclose(y.reshape(2, 2), [[0.6, 0.0], [0.8, -1.0]], rtol=1e-15)


@pytest.mark.parametrize("shape", SHAPES)
def test_channel_l2_normalize_gradcheck(shape, rng):
    gradcheck(F.channel_l2_normalize, [rng.standard_normal(shape)])


def test_channel_l2_normalize_zero_vector_stays_finite():
    x = Tensor(np.zeros((1, 3, 2, 2), dtype=np.float32), requires_grad=True)
    y = F.channel_l2_normalize(x)
    np.testing.assert_array_equal(y.data, 0.0)
    y.backward(np.ones(y.shape, dtype=np.float32))
    assert np.isfinite(x.grad).all()


def test_channel_l2_normalize_float32(rng):
    x = rng.standard_normal((2, 8, 3, 3)).astype(np.float32)
    y = F.channel_l2_normalize(Tensor(x))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.data, naive_channel_l2(x.astype(np.float64), 1e-12), rtol=1e-5)


# --------------------------------------------------------------------------- spatial attention (Eq. 6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("eps", [1e-5, 0.1])
def test_spatial_sigmoid_forward(shape, eps, rng):
    x = rng.standard_normal(shape) * 3 + 1
    y = F.spatial_sigmoid(Tensor(x), eps=eps).data
    np.testing.assert_allclose(y, naive_spatial_sigmoid(x, eps), rtol=1e-12)
    assert (y >= 0).all() and (y <= 1).all()


def test_spatial_sigmoid_standardises_each_map(rng):
    # logit(y) = z must have mean 0 and (up to eps) unit std over every (n, c) map,
    # whatever the scale and offset of that map
    x = rng.standard_normal((2, 3, 5, 5)) * np.array([0.5, 2.0, 10.0])[:, None, None] + 4
    y = F.spatial_sigmoid(Tensor(x), eps=1e-12).data
    z = np.log(y / (1 - y))
    np.testing.assert_allclose(z.mean(axis=(2, 3)), 0.0, atol=1e-10)
    np.testing.assert_allclose(z.std(axis=(2, 3)), 1.0, rtol=1e-8)


def test_spatial_sigmoid_outputs_in_unit_interval_for_extreme_inputs():
    # one huge outlier per map: z reaches about +-sqrt(M - 1) = +-20, sigmoid must stay in [0, 1]
    x = np.zeros((1, 2, 20, 20), dtype=np.float32)
    x[0, 0, 0, 0], x[0, 1, 3, 3] = 1e6, -1e6
    y = F.spatial_sigmoid(Tensor(x)).data
    assert np.isfinite(y).all() and (y >= 0).all() and (y <= 1).all()


def test_spatial_sigmoid_constant_map_gives_half():
    x = Tensor(np.full((1, 2, 3, 3), 7.0), requires_grad=True)
    y = F.spatial_sigmoid(x)
    np.testing.assert_allclose(y.data, 0.5)
    y.backward(np.ones(y.shape))
    assert np.isfinite(x.grad).all()


@pytest.mark.parametrize("shape", SHAPES[:3])
@pytest.mark.parametrize("eps", [1e-5, 0.1])
def test_spatial_sigmoid_gradcheck(shape, eps, rng):
    # inputs of unit scale: no tiny per-map variance, where the check gets ill-conditioned
    x = rng.standard_normal(shape)
    gradcheck(lambda t: F.spatial_sigmoid(t, eps=eps), [x])


def test_mixed_attention_is_the_plain_sigmoid(rng):
    # Eq. 4 needs no new function: f1 is F.sigmoid
    x = rng.standard_normal((2, 3, 2, 2))
    np.testing.assert_allclose(F.sigmoid(Tensor(x)).data, 1 / (1 + np.exp(-x)), rtol=1e-12)


# --------------------------------------------------------------------------- why a random upstream gradient


class _L2SumOnlyBackward(ChannelL2Normalize):
    """Broken: ignores gy and returns the gradient of sum(y), i.e. assumes gy is all ones."""

    def backward(self, gy):
        return super().backward(np.ones_like(gy))


class _L2ZeroBackward(ChannelL2Normalize):
    """Broken: returns no gradient at all."""

    def backward(self, gy):
        return np.zeros_like(gy)


class _SpatialConstantStatsBackward(SpatialSigmoid):
    """Broken the classic way: treats mean_c and std_c as constants (drops their dependence on x)."""

    def backward(self, gy):
        return gy * self.y * (1 - self.y) / self.std


def test_sum_of_outputs_is_not_what_gradcheck_checks(rng):
    x = rng.standard_normal((1, 3, 2, 2))
    correct = F.channel_l2_normalize
    sum_only = lambda t: _L2SumOnlyBackward(1e-12)(t)  # noqa: E731
    zero = lambda t: _L2ZeroBackward(1e-12)(t)  # noqa: E731

    # 1. A check of L = sum(y) (upstream all ones) cannot tell the correct backward
    #    from one that ignores its upstream gradient: both pass.
    assert sum_style_check(correct, x, SUM)
    assert sum_style_check(sum_only, x, SUM)

    # 2. ||y|| = 1 everywhere, so L = sum(y^2) / 2 is a constant: its gradient is 0
    #    and a backward returning zeros passes (J^T y = 0: the direction of y itself
    #    is invisible to any backward pass of an L2 normalisation).
    assert sum_style_check(correct, x, HALF_SQUARED)
    assert sum_style_check(zero, x, HALF_SQUARED)

    # 3. gradcheck's random upstream gradient catches both, and passes the real one.
    gradcheck(correct, [x])
    for broken in (sum_only, zero):
        with pytest.raises(GradcheckError):
            gradcheck(broken, [x])


def test_gradcheck_catches_constant_statistics_bug(rng):
    x = rng.standard_normal((2, 2, 3, 3))
    with pytest.raises(GradcheckError):
        gradcheck(lambda t: _SpatialConstantStatsBackward(1e-5)(t), [x])


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("fn", [F.channel_l2_normalize, F.spatial_sigmoid])
def test_validation(fn):
    with pytest.raises(ValueError, match=r"4-D.*\(3, 4\)"):
        fn(Tensor(np.zeros((3, 4))))
    with pytest.raises(ValueError, match="eps must be >= 0"):
        fn(Tensor(np.zeros((1, 2, 2, 2))), eps=-1.0)


# --------------------------------------------------------------------------- CuPy agreement


@pytest.mark.parametrize("fn", [F.channel_l2_normalize, F.spatial_sigmoid])
def test_cupy_matches_numpy(fn, cp, rng):
    x = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    gy = rng.standard_normal(x.shape).astype(np.float32)
    t_cpu, t_gpu = Tensor(x, requires_grad=True), Tensor(cp.asarray(x), requires_grad=True)
    y_cpu, y_gpu = fn(t_cpu), fn(t_gpu)
    assert y_gpu.device == "gpu"
    y_cpu.backward(gy)
    y_gpu.backward(cp.asarray(gy))
    np.testing.assert_allclose(cp.asnumpy(y_gpu.data), y_cpu.data, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cp.asnumpy(t_gpu.grad), t_cpu.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fn", [F.channel_l2_normalize, F.spatial_sigmoid])
def test_cupy_gradcheck(fn, cp, rng):
    gradcheck(fn, [cp.asarray(rng.standard_normal((2, 3, 4, 4)))])
