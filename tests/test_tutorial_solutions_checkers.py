"""The exercise checkers of ``tutorials/checks.py``: every solution passes, and wrong answers fail.

For each derivation exercise (im2col/col2im and the convolution layer in 03, overlapping max pooling in
04, the depth count in 05, the attention module's forward in 07, the backward
of sigmoid(batch norm) in 10) the solution in ``tutorials/solutions/`` must
pass its checker, and deliberately wrong answers, the mistakes a learner
makes, must fail it. A checker returns False on failure and prints one line
per case with the relative error; it never lets a traceback through.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

import miniran.functional as F

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
sys.path.insert(0, str(TUTORIALS))

import checks  # noqa: E402
from solutions.nb03_convolution import Conv2dSolution  # noqa: E402
from solutions.nb03_im2col import col2im, im2col, output_size  # noqa: E402
from solutions.nb04_overlapping_pool import MaxPool3x3s2Solution  # noqa: E402
from solutions.nb05_depth import depth  # noqa: E402
from solutions.nb05_residual import ReLUSolution, ResidualAddSolution  # noqa: E402
from solutions.nb07_attention_forward import attention_forward, mask_forward  # noqa: E402
from solutions.nb10_bn_sigmoid import BNSigmoidSolution  # noqa: E402

# --------------------------------------------------------------------------- the core: check, check_grad


def test_check_reports_relative_error_on_success_and_failure(capsys):
    a = np.arange(6.0).reshape(2, 3)
    assert checks.check("same", a, a.copy())
    assert not checks.check("off", a + 1e-2, a)
    out = capsys.readouterr().out
    assert re.search(r"same: relative error 0\.0e\+00\s+ok", out)
    assert re.search(r"off: relative error 2\.0e-03\s+WRONG", out)


def test_check_wrong_shape_or_type_is_one_line(capsys):
    a = np.zeros((2, 3))
    assert not checks.check("shape", np.zeros((3, 2)), a)
    assert not checks.check("type", "not an array", a)
    assert not checks.check("nan", np.full((2, 3), np.nan), a)
    out = capsys.readouterr().out
    assert "expected shape (2, 3), got shape (3, 2)" in out
    assert "expected an array of shape (2, 3), got str" in out
    assert "NaN or inf" in out
    assert "Traceback" not in out and len(out.strip().splitlines()) == 3


def test_checkers_catch_exceptions_and_unsolved(capsys):
    def broken(*args):
        raise IndexError("index 9 is out of bounds")

    def unsolved(*args):
        raise NotImplementedError

    assert checks.check_im2col(broken, broken) is False
    out = capsys.readouterr().out
    assert "your code raised IndexError: index 9 is out of bounds" in out and "Traceback" not in out
    assert checks.check_depth(unsolved) is False
    assert "not solved yet" in capsys.readouterr().out


def test_check_grad_passes_a_right_backward_and_fails_a_wrong_one(capsys):
    x = np.random.default_rng(0).standard_normal((2, 3))
    assert checks.check_grad("tanh", lambda t: t.tanh(), [x])
    assert "relative error" in capsys.readouterr().out
    from solutions.nb02_autograd import SigmoidSolution

    class WrongSigmoid(SigmoidSolution):
        def backward(self, gy):
            return gy * self.y  # forgot the (1 - y)

    assert not checks.check_grad("wrong sigmoid", lambda t: WrongSigmoid()(t), [x])
    assert "WRONG" in capsys.readouterr().out


# --------------------------------------------------------------------------- 03: im2col and col2im


def test_im2col_solution_passes():
    assert checks.check_im2col(im2col, col2im)


def test_naive_conv_matches_the_library(rng):
    x, w, b = rng.standard_normal((2, 3, 6, 5)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    np.testing.assert_allclose(checks.naive_conv(x, w, b, 2, 1), F.conv2d(x, w, b, 2, 1).data, rtol=1e-10, atol=1e-12)


def _im2col_no_plus_one(x, k, stride=1, padding=0):
    """Off by one: OH = (H + 2P - K) // S, one window short."""
    col = im2col(x, k, stride, padding)
    return col[..., :-1, :-1]


def _im2col_ignores_stride(x, k, stride=1, padding=0):
    """Right shape, but every window advances by one pixel."""
    n, c, h, w = x.shape
    oh, ow = output_size(h, k, stride, padding), output_size(w, k, stride, padding)
    return im2col(x, k, 1, padding)[..., :oh, :ow]


def _im2col_kx_ky_swapped(x, k, stride=1, padding=0):
    return np.ascontiguousarray(im2col(x, k, stride, padding).transpose(0, 2, 1, 3, 4, 5))


def _col2im_assigns(col, x_shape, k, stride=1, padding=0):
    """'=' instead of '+=': overlapping windows overwrite each other."""
    n, c, h, w = x_shape
    oh, ow = col.shape[4], col.shape[5]
    img = np.zeros((n, c, h + 2 * padding, w + 2 * padding))
    for ky in range(k):
        for kx in range(k):
            img[:, :, ky:ky + (oh - 1) * stride + 1:stride, kx:kx + (ow - 1) * stride + 1:stride] = \
                col[:, ky, kx].transpose(1, 0, 2, 3)
    return img[:, :, padding:padding + h, padding:padding + w]


def _col2im_keeps_padding(col, x_shape, k, stride=1, padding=0):
    n, c, h, w = x_shape
    return col2im(col, (n, c, h + 2 * padding, w + 2 * padding), k, stride, 0)


@pytest.mark.parametrize("wrong", [_im2col_no_plus_one, _im2col_ignores_stride, _im2col_kx_ky_swapped])
def test_wrong_im2col_fails(wrong, capsys):
    assert checks.check_im2col(wrong, col2im) is False
    assert "WRONG" in capsys.readouterr().out


@pytest.mark.parametrize("wrong", [_col2im_assigns, _col2im_keeps_padding])
def test_wrong_col2im_fails(wrong, capsys):
    assert checks.check_im2col(im2col, wrong) is False
    out = capsys.readouterr().out
    assert "WRONG" in out and "Traceback" not in out


# --------------------------------------------------------------------------- 03: the convolution layer


def test_conv_solution_passes():
    assert checks.check_conv(Conv2dSolution)


class _ConvNoBias(Conv2dSolution):
    """Forgets the bias in the forward pass (and so its gradient is still computed)."""

    def forward(self, x, w, b):
        return super().forward(x, w, np.zeros_like(b))


class _ConvGyNotTransposed(Conv2dSolution):
    """Lays gy out as (O, P) by a plain reshape, mixing images and channels (right only for N = 1)."""

    def backward(self, gy):
        gx, gw, gb = super().backward(gy)
        o = self.w.shape[0]
        gy2d = gy.reshape(o, -1)
        return gx, (gy2d @ self.col2d.T).reshape(self.w.shape), gb


class _ConvGxAssigns(Conv2dSolution):
    """Folds the column gradient back with '=' instead of '+=': overlapping windows overwrite each other."""

    def backward(self, gy):
        _, gw, gb = super().backward(gy)
        o, _, k, _ = self.w.shape
        gcol = self.w.reshape(o, -1).T @ gy.transpose(1, 0, 2, 3).reshape(o, -1)
        return _col2im_assigns(gcol.reshape(self.col_shape), self.x_shape, k, self.stride, self.padding), gw, gb


class _ConvGbFirstImage(Conv2dSolution):
    """Sums the bias gradient over the positions of the first image only."""

    def backward(self, gy):
        gx, gw, _ = super().backward(gy)
        return gx, gw, gy[0].sum(axis=(1, 2))


class _ConvWrongShape(Conv2dSolution):
    """Returns the output as (O, N, OH, OW): the batch axis not moved to the front."""

    def forward(self, x, w, b):
        return np.ascontiguousarray(super().forward(x, w, b).transpose(1, 0, 2, 3))


class _ConvRaises(Conv2dSolution):
    def backward(self, gy):
        raise ValueError("shapes (4,27) and (12,50) not aligned")


@pytest.mark.parametrize("wrong", [_ConvNoBias, _ConvGyNotTransposed, _ConvGxAssigns, _ConvGbFirstImage,
                                   _ConvWrongShape, _ConvRaises])
def test_wrong_conv_fails(wrong, capsys):
    assert checks.check_conv(wrong) is False
    out = capsys.readouterr().out
    assert "WRONG" in out and "Traceback" not in out


def test_unsolved_conv_says_so(capsys):
    class Unsolved(Conv2dSolution):
        def backward(self, gy):
            raise NotImplementedError

    assert checks.check_conv(Unsolved) is False
    assert "not solved yet" in capsys.readouterr().out


# --------------------------------------------------------------------------- 04: overlapping max pooling


def test_max_pool_solution_passes():
    assert checks.check_max_pool(MaxPool3x3s2Solution)


class _PoolOverwrites(MaxPool3x3s2Solution):
    """'=' instead of '+=': a pixel that wins two overlapping windows keeps one gradient."""

    def backward(self, gy):
        n, c, h, w = self.x_shape
        oh, ow = self.out
        gpad = np.zeros((n, c, h + 2, w + 2))
        for tap in range(9):
            ky, kx = divmod(tap, 3)
            view = gpad[:, :, ky:ky + (oh - 1) * 2 + 1:2, kx:kx + (ow - 1) * 2 + 1:2]
            np.copyto(view, gy, where=self.arg == tap)
        return gpad[:, :, 1:1 + h, 1:1 + w]


class _PoolEveryTiedPixel(MaxPool3x3s2Solution):
    """gx[x == window max] += gy: with ties, every tied pixel receives the whole gradient."""

    def forward(self, x):
        self.x = x
        return super().forward(x)

    def backward(self, gy):
        n, c, h, w = self.x_shape
        oh, ow = self.out
        xpad = np.pad(self.x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
        best = F.max_pool2d(self.x, 3, 2, 1).data
        gpad = np.zeros_like(xpad)
        for tap in range(9):
            ky, kx = divmod(tap, 3)
            sl = (slice(None), slice(None), slice(ky, ky + (oh - 1) * 2 + 1, 2), slice(kx, kx + (ow - 1) * 2 + 1, 2))
            gpad[sl] += np.where(xpad[sl] == best, gy, 0)
        return gpad[:, :, 1:1 + h, 1:1 + w]


class _PoolNoPaddingOffset(MaxPool3x3s2Solution):
    """Backward forgets the padding: window (i, j) mapped to rows 2i + ky of x, not 2i - 1 + ky."""

    def backward(self, gy):
        n, c, h, w = self.x_shape
        oh, ow = self.out
        g = np.zeros((n, c, h + 4, w + 4))
        for tap in range(9):
            ky, kx = divmod(tap, 3)
            g[:, :, ky:ky + (oh - 1) * 2 + 1:2, kx:kx + (ow - 1) * 2 + 1:2] += np.where(self.arg == tap, gy, 0)
        return g[:, :, :h, :w]


class _PoolNonOverlapping(MaxPool3x3s2Solution):
    """2x2 windows, stride 2 (the non-overlapping exercise's pooling): the wrong window."""

    def forward(self, x):
        self.x_shape = x.shape
        return F.max_pool2d(x, 2, 2, 0).data


@pytest.mark.parametrize("wrong", [_PoolOverwrites, _PoolEveryTiedPixel, _PoolNoPaddingOffset, _PoolNonOverlapping])
def test_wrong_max_pool_fails(wrong, capsys):
    assert checks.check_max_pool(wrong) is False
    out = capsys.readouterr().out
    assert "WRONG" in out and "Traceback" not in out


def test_the_tie_check_alone_catches_every_tied_pixel(capsys):
    """Distinct values cannot see this mistake; only the inputs with ties do."""
    rng = np.random.default_rng(0)
    x = checks._ties(rng, (2, 2, 6, 6))
    from miniran import Tensor

    for cls, expected in ((MaxPool3x3s2Solution, True), (_PoolEveryTiedPixel, False)):
        t = Tensor(x.copy(), requires_grad=True)
        y = cls()(t)
        gy = rng.standard_normal(y.shape)
        y.backward(gy)
        assert checks._check_tie_routing("ties", x, gy, t.grad) is expected


# --------------------------------------------------------------------------- 05: depth


def test_relu_and_add_solution_passes(capsys):
    assert checks.check_relu_and_add(ReLUSolution, ResidualAddSolution)
    assert "whole unit" in capsys.readouterr().out


class _ReLUPassesEverything(ReLUSolution):
    """Forgets the mask in the backward pass: the gradient of the identity."""

    def backward(self, gy):
        return gy


class _ReLUMaskOfGradient(ReLUSolution):
    """Masks by the sign of the upstream gradient instead of the input's."""

    def backward(self, gy):
        return gy * (gy > 0)


class _AddShortcutGetsNothing(ResidualAddSolution):
    """Only the residual branch gets the gradient: the shortcut is cut in the backward pass."""

    def backward(self, gy):
        return gy, gy * 0


@pytest.mark.parametrize("relu, add", [(_ReLUPassesEverything, ResidualAddSolution),
                                       (_ReLUMaskOfGradient, ResidualAddSolution),
                                       (ReLUSolution, _AddShortcutGetsNothing)])
def test_wrong_relu_or_add_fails(relu, add, capsys):
    assert checks.check_relu_and_add(relu, add) is False
    out = capsys.readouterr().out
    assert "WRONG" in out and "Traceback" not in out


def test_depth_solution_passes():
    assert checks.check_depth(depth)


@pytest.mark.parametrize("wrong", [
    lambda m, p=1, t=2: 36 * m + 20,                      # the formula, not the count: 452 fails
    lambda m, p=1, t=2: 20 + 9 * m * (2 * p + t) + 3,     # the three projection shortcuts counted
    lambda m, p=1, t=2: 19 + 9 * m * (2 * p + t),         # the linear layer forgotten
    lambda m, p=1, t=2: 20 + 9 * m * (p + t),             # the post units forgotten
])
def test_wrong_depth_fails(wrong, capsys):
    assert checks.check_depth(wrong) is False
    assert "WRONG" in capsys.readouterr().out


@pytest.mark.parametrize("wrong", [
    lambda m, p=1, t=2: 18 * m * t + 20,                  # right whenever t = 2p, as in every paper network
    lambda m, p=1, t=2: 12 * m * (p + t) + 20,            # the same
])
def test_depth_formulas_right_only_for_t_equal_2p_fail(wrong, capsys):
    for (m, p, t), d in checks.PAPER_DEPTHS.values():     # they agree with every paper depth ...
        assert wrong(m, p, t) == d
    assert checks.check_depth(wrong) is False             # ... and the cases with t != 2p catch them
    out = capsys.readouterr().out
    assert "t != 2p" in out and "WRONG" in out


def test_depth_extra_cases_are_counted_not_computed():
    for m, p, t in checks.DEPTH_EXTRA_CASES:
        assert t != 2 * p
        net = checks.models.ResidualAttentionNetwork("cifar", (8, 8, 8), (m, m, m), (1, 1, 1), p=p, t=t,
                                                      num_classes=10)
        assert checks.count_trunk_layers(net) == depth(m, p, t)


def test_count_trunk_layers_matches_the_paper():
    from miniran import models

    assert [checks.count_trunk_layers(b()) for b in (models.attention56, models.attention92)] == [56, 92]


# --------------------------------------------------------------------------- 07: attention module forward


def test_attention_forward_solution_passes():
    assert checks.check_attention_forward(attention_forward)


def _attention_always_arl(module, x):
    s = module.pre(x)
    trunk = module.trunk(s)
    return module.post((1 + mask_forward(module.soft_mask, s, trunk.shape[2:])) * trunk)


def _attention_no_skip(module, x):
    s = module.pre(x)
    trunk = module.trunk(s)
    mask, y, levels = module.soft_mask, s, []
    for down in mask.down:
        y = down(F.max_pool2d(y, 3, stride=2, padding=1))
        levels.append(y)
    for k in reversed(range(mask.pools - 1)):
        y = mask.up[k](F.interpolate_bilinear(y, levels[k].shape[2:], align_corners=True))
    m = mask.head(F.interpolate_bilinear(y, trunk.shape[2:], align_corners=True))
    return module.post((1 + m) * trunk if module.residual else m * trunk)


def _attention_mask_from_trunk(module, x):
    s = module.pre(x)
    trunk = module.trunk(s)
    m = mask_forward(module.soft_mask, trunk, trunk.shape[2:])   # the mask must see s, not T
    return module.post((1 + m) * trunk if module.residual else m * trunk)


def _attention_no_post(module, x):
    s = module.pre(x)
    trunk = module.trunk(s)
    m = mask_forward(module.soft_mask, s, trunk.shape[2:])
    return (1 + m) * trunk if module.residual else m * trunk


@pytest.mark.parametrize("wrong", [_attention_always_arl, _attention_no_skip, _attention_mask_from_trunk,
                                   _attention_no_post])
def test_wrong_attention_forward_fails(wrong, capsys):
    assert checks.check_attention_forward(wrong) is False
    assert "WRONG" in capsys.readouterr().out


# --------------------------------------------------------------------------- 10: sigmoid(batch norm) backward


def test_bn_sigmoid_solution_passes():
    assert checks.check_bn_sigmoid(BNSigmoidSolution)


class _BNNoMeanTerm(BNSigmoidSolution):
    def backward(self, gy):
        gx, gg, gb = super().backward(gy)
        gz = gy * self.y * (1 - self.y) * self.gamma.reshape(self.bshape)
        return gx + gz.mean(axis=self.axes, keepdims=True) * self.inv_std, gg, gb


class _BNNoXhatTerm(BNSigmoidSolution):
    def backward(self, gy):
        gx, gg, gb = super().backward(gy)
        gz = gy * self.y * (1 - self.y) * self.gamma.reshape(self.bshape)
        return gx + self.xhat * (gz * self.xhat).mean(axis=self.axes, keepdims=True) * self.inv_std, gg, gb


class _BNSigmoidFactorLast(BNSigmoidSolution):
    """The sigmoid's factor applied after the batch-norm backward instead of before."""

    def backward(self, gy):
        s = self.y * (1 - self.y)
        gxhat = gy * self.gamma.reshape(self.bshape)
        mean_g = gxhat.mean(axis=self.axes, keepdims=True)
        mean_gx = (gxhat * self.xhat).mean(axis=self.axes, keepdims=True)
        gx = s * (gxhat - mean_g - self.xhat * mean_gx) * self.inv_std
        return gx, (gy * s * self.xhat).sum(axis=self.axes), (gy * s).sum(axis=self.axes)


class _BNNoSigmoidInGamma(BNSigmoidSolution):
    def backward(self, gy):
        gx, _, gb = super().backward(gy)
        return gx, (gy * self.xhat).sum(axis=self.axes), gb


@pytest.mark.parametrize("wrong", [_BNNoMeanTerm, _BNNoXhatTerm, _BNSigmoidFactorLast, _BNNoSigmoidInGamma])
def test_wrong_bn_sigmoid_fails(wrong, capsys):
    assert checks.check_bn_sigmoid(wrong) is False
    assert "WRONG" in capsys.readouterr().out


# --------------------------------------------------------------------------- solutions and answers on request


def test_show_solution_prints_the_source(capsys):
    checks.show_solution("nb03_im2col", "im2col")
    assert "def im2col(x, k, stride=1, padding=0):" in capsys.readouterr().out
    assert checks.load_solution("nb05_depth", "depth")(4) == 164


@pytest.mark.parametrize("number", sorted(p.name[:2] for p in TUTORIALS.glob("[0-9][0-9]_*.ipynb")))
def test_every_notebook_has_answers(number, capsys):
    checks.show_answers(number)
    out = capsys.readouterr().out
    assert out.startswith(f"## {number}") and "no answers" not in out


def test_no_notebook_runs_a_solution_by_itself():
    """Solutions are loaded on request only: no code cell imports from solutions/."""
    import json

    for path in sorted(TUTORIALS.glob("*.ipynb")):
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            if cell["cell_type"] == "code":
                src = "".join(cell["source"])
                assert "from solutions" not in src and "import solutions" not in src, path.name
                assert "load_solution(" not in src, path.name


# --------------------------------------------------------------------------- the backward exercises of 01-09

from solutions.nb01_arrays import logsumexp  # noqa: E402
from solutions.nb02_autograd import SigmoidSolution  # noqa: E402
from solutions.nb06_upsample_axis import UpsampleLastAxisSolution  # noqa: E402
from solutions.nb07_fusion import AttentionFusionSolution  # noqa: E402
from solutions.nb08_attention_activations import ChannelL2NormalizeSolution, SpatialSigmoidSolution  # noqa: E402
from solutions.nb09_cross_entropy import SoftmaxCrossEntropy  # noqa: E402


def test_backward_exercise_solutions_pass():
    assert checks.check_logsumexp(logsumexp)
    assert checks.check_sigmoid(SigmoidSolution)
    assert checks.check_upsample(UpsampleLastAxisSolution)
    assert checks.check_fusion(AttentionFusionSolution)
    assert checks.check_attention_activations(ChannelL2NormalizeSolution, SpatialSigmoidSolution)
    assert checks.check_cross_entropy(SoftmaxCrossEntropy)


def _lse_overflows(x, axis=-1, keepdims=False):
    return np.log(np.exp(x).sum(axis=axis, keepdims=keepdims))


def _lse_float64(x, axis=-1, keepdims=False):
    return logsumexp(np.asarray(x, dtype=np.float64), axis, keepdims)


def _lse_drops_keepdims(x, axis=-1, keepdims=False):
    return logsumexp(x, axis)


class _SigmoidNoOneMinus(SigmoidSolution):
    def backward(self, gy):
        return gy * self.y


class _UpsampleOverwrites(UpsampleLastAxisSolution):
    """Assigns instead of adding where several outputs share a source."""

    def backward(self, gy):
        gx = np.zeros(gy.shape[:-1] + (self.n,), dtype=gy.dtype)
        gx[..., self.i0] = (1 - self.lam) * gy
        gx[..., self.i1] += self.lam * gy
        return gx


class _FusionForgetsTheOne(AttentionFusionSolution):
    def backward(self, gy):
        return gy * self.t, gy * self.m


class _ChannelNormConstantN(ChannelL2NormalizeSolution):
    def backward(self, gy):
        return gy / self.n


class _CrossEntropyNoMean(SoftmaxCrossEntropy):
    def backward(self, gy):
        gz, none = super().backward(gy)
        return gz * gz.shape[0], none


@pytest.mark.parametrize("checker,wrong", [
    (checks.check_logsumexp, (_lse_overflows,)),
    (checks.check_logsumexp, (_lse_float64,)),
    (checks.check_logsumexp, (_lse_drops_keepdims,)),
    (checks.check_sigmoid, (_SigmoidNoOneMinus,)),
    (checks.check_upsample, (_UpsampleOverwrites,)),
    (checks.check_fusion, (_FusionForgetsTheOne,)),
    (checks.check_attention_activations, (_ChannelNormConstantN, SpatialSigmoidSolution)),
    (checks.check_cross_entropy, (_CrossEntropyNoMean,)),
], ids=["lse-overflow", "lse-dtype", "lse-keepdims", "sigmoid", "upsample-overwrite", "fusion", "channel-norm",
        "cross-entropy"])
def test_wrong_backward_answers_fail(checker, wrong, capsys):
    with np.errstate(all="ignore"):
        assert checker(*wrong) is False
    out = capsys.readouterr().out
    assert "WRONG" in out and "Traceback" not in out
