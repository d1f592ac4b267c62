"""The exercise solutions of tutorial notebooks 06-08 (``tutorials/solutions/nb06_*``, ``nb07_*``, ``nb08_*``).

Each solution is a ``miniran.Function`` written by hand. We check its
forward pass against the library (the reference implementation) and its
backward pass with ``miniran.gradcheck``: float64 central differences and a
random upstream gradient, so a backward that is only right for ``gy = 1``
(or for the plain sum of the outputs) fails.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import miniran
import miniran.functional as F
from miniran import Tensor

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
if str(TUTORIALS) not in sys.path:
    sys.path.insert(0, str(TUTORIALS))

from solutions.nb06_upsample_axis import UpsampleLastAxisSolution, upsample_last_axis_solution  # noqa: E402
from solutions.nb07_fusion import AttentionFusionSolution, attention_fusion_solution  # noqa: E402
from solutions.nb08_attention_activations import (  # noqa: E402
    ChannelL2NormalizeSolution,
    SpatialSigmoidSolution,
    channel_l2_normalize_solution,
    spatial_sigmoid_solution,
)


# --------------------------------------------------------------------------- notebook 06


@pytest.mark.parametrize("n, out", [(4, 8), (4, 7), (3, 9), (5, 5), (1, 4), (8, 3), (6, 1)])
def test_upsample_last_axis_matches_interpolate_bilinear(n, out, rng):
    x = rng.standard_normal((2, 3, 4, n))
    ours = upsample_last_axis_solution(Tensor(x), out).data
    # resizing only the width with the library's 2-D bilinear resize is the same operation
    ref = F.interpolate_bilinear(Tensor(x), (4, out), align_corners=True).data
    assert ours.shape == (2, 3, 4, out)
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-12)


def test_upsample_last_axis_2_to_4_by_hand():
    # align corners: sources 0, 1/3, 2/3, 1 between the two input values
    y = upsample_last_axis_solution(Tensor(np.array([[0.0, 3.0]])), 4).data
    np.testing.assert_allclose(y, [[0.0, 1.0, 2.0, 3.0]], atol=1e-12)


@pytest.mark.parametrize("n, out", [(4, 8), (3, 7), (8, 3), (1, 4)])
def test_upsample_last_axis_gradcheck(n, out, rng):
    x = rng.standard_normal((2, 3, 2, n))
    assert miniran.gradcheck(lambda t: UpsampleLastAxisSolution(out)(t), [x])


# --------------------------------------------------------------------------- notebook 07


@pytest.mark.parametrize("residual", [True, False])
def test_fusion_forward_matches_the_attention_module_formula(residual, rng):
    m = rng.uniform(0, 1, (2, 4, 3, 3))
    t = rng.standard_normal((2, 4, 3, 3))
    ours = attention_fusion_solution(Tensor(m), Tensor(t), residual=residual).data
    ref = ((1 + Tensor(m)) * Tensor(t) if residual else Tensor(m) * Tensor(t)).data
    np.testing.assert_allclose(ours, ref, rtol=0, atol=0)


@pytest.mark.parametrize("residual", [True, False])
def test_fusion_gradcheck(residual, rng):
    m = rng.uniform(0, 1, (2, 4, 3, 3))
    t = rng.standard_normal((2, 4, 3, 3))
    assert miniran.gradcheck(lambda a, b: AttentionFusionSolution(residual)(a, b), [m, t])


def test_fusion_trunk_gradient_is_filtered_by_the_mask(rng):
    # Eq. 2: dL/dT = gy * (1 + M) for ARL, gy * M for NAL
    m = rng.uniform(0, 1, (1, 2, 3, 3))
    t = rng.standard_normal((1, 2, 3, 3))
    gy = rng.uniform(-1, 1, (1, 2, 3, 3))
    for residual, factor in ((True, 1 + m), (False, m)):
        tm, tt = Tensor(m, requires_grad=True), Tensor(t, requires_grad=True)
        AttentionFusionSolution(residual)(tm, tt).backward(gy)
        np.testing.assert_allclose(tt.grad, gy * factor, atol=1e-15)
        np.testing.assert_allclose(tm.grad, gy * t, atol=1e-15)


def test_fusion_rejects_different_shapes(rng):
    with pytest.raises(ValueError, match="shape"):
        attention_fusion_solution(Tensor(rng.uniform(0, 1, (1, 2, 3, 3))), Tensor(rng.standard_normal((1, 2, 3, 4))))


# --------------------------------------------------------------------------- notebook 08


def test_channel_l2_normalize_forward_matches_the_library(rng):
    x = rng.standard_normal((2, 5, 3, 4))
    ours = channel_l2_normalize_solution(Tensor(x)).data
    np.testing.assert_allclose(ours, F.channel_l2_normalize(Tensor(x)).data, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.sqrt((ours ** 2).sum(axis=1)), 1.0, rtol=1e-12)


def test_channel_l2_normalize_gradcheck(rng):
    x = rng.standard_normal((2, 5, 3, 3))
    assert miniran.gradcheck(lambda t: ChannelL2NormalizeSolution()(t), [x])


def test_spatial_sigmoid_forward_matches_the_library(rng):
    x = rng.standard_normal((2, 3, 5, 4)) * 3 + 1
    ours = spatial_sigmoid_solution(Tensor(x)).data
    np.testing.assert_allclose(ours, F.spatial_sigmoid(Tensor(x)).data, rtol=1e-12, atol=1e-14)


def test_spatial_sigmoid_gradcheck(rng):
    x = rng.standard_normal((2, 3, 4, 4)) * 2
    assert miniran.gradcheck(lambda t: SpatialSigmoidSolution()(t), [x])


def test_normalisation_gradchecks_catch_a_backward_that_ignores_the_coupling(rng):
    # the classic bug: differentiate y = x / n as if n were a constant; the random
    # upstream gradient of gradcheck must catch it
    class Wrong(ChannelL2NormalizeSolution):
        def backward(self, gy):
            return gy / self.n

    x = rng.standard_normal((1, 4, 2, 2))
    with pytest.raises(miniran.GradcheckError):
        miniran.gradcheck(lambda t: Wrong()(t), [x])


# --------------------------------------------------------------------------- exercise 2 of 07 is not given away


def _code_cells(name):
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(TUTORIALS / name, as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "code"]


def test_attention_forward_source_is_shown_only_after_its_check():
    """06 and 07 draw Fig. 2 instead of printing the forward passes that 07's exercise 2 asks for."""
    for name in ("06_soft_mask_branch.ipynb", "07_attention_residual_learning.ipynb"):
        cells = _code_cells(name)
        check = next((i for i, s in enumerate(cells) if "check_attention_forward(my_attention_forward)" in s),
                     len(cells))
        for i, s in enumerate(cells[:check + 1]):
            assert "getsource" not in s, f"{name}: code cell {i} prints library source before the check"
    cells = _code_cells("07_attention_residual_learning.ipynb")
    check = next(i for i, s in enumerate(cells) if "check_attention_forward(my_attention_forward)" in s)
    reveal = cells[check + 1]
    assert "if passed:" in reveal and "getsource(AttentionModule.forward)" in reveal
    assert any("diagrams.attention_module" in s for s in cells[:check])


def test_no_heading_marker_inside_a_line():
    """A '###' in the middle of a markdown line renders as text, not as a heading."""
    nbformat = pytest.importorskip("nbformat")
    for name in ("04_batchnorm_pooling_interpolation.ipynb", "06_soft_mask_branch.ipynb",
                 "07_attention_residual_learning.ipynb"):
        nb = nbformat.read(TUTORIALS / name, as_version=4)
        for c in nb.cells:
            if c.cell_type == "markdown":
                for line in c.source.splitlines():
                    assert " ### " not in line and not line.rstrip().endswith(" ###"), f"{name}: {line[:80]}"
