"""gradcheck must pass correct backward passes and fail broken ones, with a useful message."""

import numpy as np
import pytest

import miniran.functional as F
from miniran import Function, GradcheckError, Tensor, gradcheck


class BrokenSoftmax(Function):
    """Forward is softmax; backward forgets the coupling term: gx = y * gy."""

    def forward(self, x):
        e = np.exp(x - x.max(axis=1, keepdims=True))
        self.y = e / e.sum(axis=1, keepdims=True)
        return self.y

    def backward(self, gy):
        return self.y * gy


class ZeroBackward(Function):
    def forward(self, x):
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def backward(self, gy):
        return np.zeros_like(gy)


class OffByOneElement(Function):
    def forward(self, x):
        return x * 2

    def backward(self, gy):
        g = gy * 2
        g.reshape(-1)[5] += 0.01
        return g


@pytest.mark.parametrize("mode", ["elementwise", "directional"])
def test_correct_backward_passes(mode, rng):
    gradcheck(lambda x: F.softmax(x), [rng.standard_normal((3, 4))], mode=mode)
    gradcheck(lambda x, w: F.tanh(x @ w), [rng.standard_normal((3, 4)), rng.standard_normal((4, 2))], mode=mode)


@pytest.mark.parametrize("mode", ["elementwise", "directional"])
@pytest.mark.parametrize("broken", [BrokenSoftmax, ZeroBackward])
def test_broken_backward_fails(broken, mode, rng):
    with pytest.raises(GradcheckError, match="input 0"):
        gradcheck(lambda x: broken()(x), [rng.standard_normal((3, 4))], mode=mode)


def test_zero_softmax_backward_would_pass_a_sum_of_outputs_check(rng):
    """Why gy must be random: d sum(softmax(x)) / dx = 0, so a zero backward looks right."""
    x = Tensor(rng.standard_normal((3, 4)), requires_grad=True)
    F.sum(F.softmax(x)).backward()
    np.testing.assert_allclose(x.grad, 0, atol=1e-12)


def test_failure_message_names_the_worst_element(rng):
    with pytest.raises(GradcheckError) as info:
        gradcheck(lambda x: OffByOneElement()(x), [rng.standard_normal((2, 4))], mode="elementwise")
    msg = str(info.value)
    assert "input 0" in msg and "(1, 1)" in msg and "analytic" in msg and "numerical" in msg


def test_return_false_instead_of_raising(rng):
    assert gradcheck(lambda x: ZeroBackward()(x), [rng.standard_normal((2, 3))], raise_exception=False) is False


def test_integer_inputs_pass_through(rng):
    labels = np.array([0, 2, 1])
    assert gradcheck(lambda z, y: F.cross_entropy(z, y), [rng.standard_normal((3, 3)), labels])


def test_second_input_is_named(rng):
    class BadSecond(Function):
        def forward(self, a, b):
            return a * b

        def backward(self, gy):
            return gy * self.b if hasattr(self, "b") else None, gy

    with pytest.raises(GradcheckError, match="input 1"):
        gradcheck(lambda a, b: F.mul(a, b) + BadSecond()(a * 0, b), [rng.standard_normal(3), rng.standard_normal(3)])


def test_auto_mode_switches_to_directional_for_large_inputs(rng):
    # 3000 elements > max_elementwise: must still run quickly and detect errors
    with pytest.raises(GradcheckError, match="directional"):
        gradcheck(lambda x: BrokenSoftmax()(x), [rng.standard_normal((100, 30))])
