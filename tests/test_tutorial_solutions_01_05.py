"""The exercise solutions of tutorial notebooks 01-05 (``tutorials/solutions/nb0[1-5]_*.py``).

Each backward pass is gradient-checked in float64 with a random upstream
gradient (``miniran.gradcheck``), and each forward pass is compared with an
independent reference: a formula in float64, a naive loop, or the library.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import miniran
import miniran.functional as F
from miniran import Tensor, models

from function_cases import naive_conv2d

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tutorials"))

from solutions.nb01_arrays import logsumexp  # noqa: E402
from solutions.nb02_autograd import SigmoidSolution, sigmoid_solution  # noqa: E402
from solutions.nb03_convolution import Conv2dSolution, conv2d_solution, conv_weight_grad  # noqa: E402
from solutions.nb04_pooling import MaxPool2dSolution, max_pool2d_solution  # noqa: E402
from solutions.nb05_residual import (  # noqa: E402
    ReLUSolution,
    ResidualAddSolution,
    relu_solution,
    residual_add_solution,
)


def _away_from_zero(rng, shape, low=0.1):
    """Values with |v| in [low, 1] and random signs: no ReLU kink within a finite-difference step."""
    return rng.uniform(low, 1.0, size=shape) * rng.choice([-1.0, 1.0], size=shape)


def _distinct(rng, shape):
    """A shuffled linspace: all values distinct, so every max-pool window has one clear winner."""
    values = np.linspace(-1.0, 1.0, int(np.prod(shape)))
    return rng.permutation(values).reshape(shape)


# --------------------------------------------------------------------------- 01: logsumexp


def test_logsumexp_matches_the_naive_formula(rng):
    x = rng.standard_normal((4, 7))
    for axis in (0, 1, -1):
        np.testing.assert_allclose(logsumexp(x, axis=axis), np.log(np.exp(x).sum(axis=axis)), rtol=1e-12)
    assert logsumexp(x, axis=1, keepdims=True).shape == (4, 1)


def test_logsumexp_is_stable_and_keeps_float32():
    big = np.array([[1000.0, 1000.0], [-1000.0, -1000.0], [0.0, -np.inf]], dtype=np.float32)
    out = logsumexp(big, axis=1)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [1000 + np.log(2), -1000 + np.log(2), 0.0], rtol=1e-6)


@pytest.mark.gpu
def test_logsumexp_cupy_matches_numpy(cp, rng):
    x = rng.standard_normal((5, 6)).astype(np.float32)
    out = logsumexp(cp.asarray(x), axis=1)
    assert isinstance(out, cp.ndarray)
    np.testing.assert_allclose(cp.asnumpy(out), logsumexp(x, axis=1), rtol=1e-5)


# --------------------------------------------------------------------------- 02: sigmoid


def test_sigmoid_solution_forward(rng):
    x = rng.standard_normal((3, 5)) * 4
    y = sigmoid_solution(Tensor(x))
    np.testing.assert_allclose(y.data, 1 / (1 + np.exp(-x)), rtol=1e-12)
    # no overflow at the extremes, float32 kept
    ext = sigmoid_solution(Tensor(np.array([-1000.0, 0.0, 1000.0], dtype=np.float32)))
    assert ext.dtype == np.float32
    np.testing.assert_array_equal(ext.data, [0.0, 0.5, 1.0])


def test_sigmoid_solution_gradcheck(rng):
    x = rng.standard_normal((3, 4)) * 3
    assert miniran.gradcheck(lambda t: SigmoidSolution()(t), [x], mode="elementwise")


# --------------------------------------------------------------------------- 03: convolution


@pytest.mark.parametrize("stride,padding", [(1, 0), (1, 1), (2, 1)])
def test_conv2d_solution_forward(rng, stride, padding):
    x = rng.standard_normal((2, 3, 6, 5))
    w = rng.standard_normal((4, 3, 3, 3))
    b = rng.standard_normal(4)
    y = conv2d_solution(Tensor(x), Tensor(w), Tensor(b), stride, padding)
    np.testing.assert_allclose(y.data, naive_conv2d(x, w, b, stride=stride, padding=padding), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(y.data, F.conv2d(x, w, b, stride, padding).data, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("stride,padding", [(1, 0), (1, 1), (2, 1)])
def test_conv2d_solution_gradcheck(rng, stride, padding):
    x = rng.standard_normal((2, 3, 5, 5))
    w = rng.standard_normal((2, 3, 3, 3))
    b = rng.standard_normal(2)
    assert miniran.gradcheck(
        lambda x_, w_, b_: Conv2dSolution(stride, padding)(x_, w_, b_), [x, w, b], mode="elementwise"
    )


def test_conv_weight_grad_matches_the_library(rng):
    x = Tensor(rng.standard_normal((2, 3, 6, 6)))
    w = Tensor(rng.standard_normal((4, 3, 3, 3)), requires_grad=True)
    y = F.conv2d(x, w, padding=1)
    gy = rng.uniform(-1, 1, size=y.shape)
    y.backward(gy)
    col2d = F.im2col(x.data, 3, 1, 1).reshape(3 * 9, -1)
    np.testing.assert_allclose(conv_weight_grad(gy, col2d, w.shape), w.grad, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- 04: max pooling


@pytest.mark.parametrize("k", [2, 3])
def test_max_pool2d_solution_forward(rng, k):
    x = _distinct(rng, (2, 3, 2 * k, 3 * k))
    y = max_pool2d_solution(Tensor(x), k)
    np.testing.assert_array_equal(y.data, F.max_pool2d(x, k).data)
    # naive reference: the max of each window by loops
    n, c, oh, ow = y.shape
    expected = np.array([[[[x[a, b, i * k:(i + 1) * k, j * k:(j + 1) * k].max() for j in range(ow)]
                           for i in range(oh)] for b in range(c)] for a in range(n)])
    np.testing.assert_array_equal(y.data, expected)


@pytest.mark.parametrize("k", [2, 3])
def test_max_pool2d_solution_gradcheck(rng, k):
    x = _distinct(rng, (2, 2, 2 * k, 2 * k))
    assert miniran.gradcheck(lambda t: MaxPool2dSolution(k)(t), [x], mode="elementwise")


def test_max_pool2d_solution_routes_to_the_argmax():
    x = Tensor(np.array([[[[1.0, 5.0], [3.0, 2.0]]]]), requires_grad=True)
    max_pool2d_solution(x, 2).backward(np.array([[[[7.0]]]]))
    np.testing.assert_array_equal(x.grad, [[[[0.0, 7.0], [0.0, 0.0]]]])


def test_max_pool2d_solution_rejects_ragged_sizes():
    with pytest.raises(ValueError, match="divisible"):
        max_pool2d_solution(Tensor(np.zeros((1, 1, 5, 4))), 2)


# --------------------------------------------------------------------------- 05: ReLU and residual add


def test_relu_solution_forward_and_gradcheck(rng):
    x = _away_from_zero(rng, (3, 4, 5))
    np.testing.assert_array_equal(relu_solution(Tensor(x)).data, np.maximum(x, 0))
    assert miniran.gradcheck(lambda t: ReLUSolution()(t), [x], mode="elementwise")


def test_residual_add_solution_forward_and_gradcheck(rng):
    a, b = rng.standard_normal((2, 3, 4, 4)), rng.standard_normal((2, 3, 4, 4))
    np.testing.assert_array_equal(residual_add_solution(Tensor(a), Tensor(b)).data, a + b)
    assert miniran.gradcheck(lambda s, t: ResidualAddSolution()(s, t), [a, b], mode="elementwise")
    with pytest.raises(ValueError, match="shapes differ"):
        residual_add_solution(Tensor(a), Tensor(b[:, :2]))


def test_residual_unit_built_from_the_solutions_gradcheck(rng):
    """A pre-activation unit whose ReLUs and addition are the solutions: same output, correct grads."""

    class Unit(models.PreActBottleneck):
        def forward(self, x):
            a = ReLUSolution()(self.bn1(x))
            out = self.conv1(a)
            out = self.conv2(ReLUSolution()(self.bn2(out)))
            out = self.conv3(ReLUSolution()(self.bn3(out)))
            return ResidualAddSolution()(out, x)

    unit = Unit(8, 8, rng=np.random.default_rng(0)).astype(np.float64)
    reference = models.PreActBottleneck(8, 8, rng=np.random.default_rng(0)).astype(np.float64)
    x = rng.standard_normal((2, 8, 4, 4))
    np.testing.assert_allclose(unit(Tensor(x)).data, reference(Tensor(x)).data, rtol=1e-12, atol=1e-12)
    assert miniran.gradcheck(lambda t, *ps: unit(t), [x, *unit.parameters()], mode="directional")


# --------------------------------------------------------------------------- the notebooks themselves


NOTEBOOKS = {
    "01_arrays_and_backends": "nb01_arrays",
    "02_autograd_and_gradcheck": "nb02_autograd",
    "03_convolution_by_hand": "nb03_convolution",
    "04_batchnorm_pooling_interpolation": "nb04_overlapping_pool",
    "05_residual_units": "nb05_residual",
}


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_is_stored_clean_and_offers_its_solution(name):
    """Valid nbformat 4, no outputs, ends with Summary/Exercises and a cell that offers its solution on request."""
    nbformat = pytest.importorskip("nbformat")
    path = Path(__file__).resolve().parents[1] / "tutorials" / f"{name}.ipynb"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code), "notebook stored with outputs"
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "## Summary" in markdown and "## Exercises" in markdown
    assert f'show_solution("{NOTEBOOKS[name]}")' in nb.cells[-1].source
    assert not any("from solutions" in c.source for c in code), "a code cell runs a solution"
