"""Bilinear resize: hand-computed cases, a naive-loop oracle, gradient checks, PyTorch and CuPy agreement."""

import numpy as np
import pytest

import miniran.functional as F
from miniran import Tensor, gradcheck, nn
from miniran.functional.interpolation import _indices_and_weights, _interpolation_matrix

from function_cases import naive_bilinear

# (H, W) -> (H_out, W_out): up, down, mixed, non-integer ratios, to and from 1x1
RESIZES = [
    ((5, 7), (8, 3)),
    ((4, 4), (7, 9)),
    ((3, 3), (1, 1)),
    ((1, 1), (3, 3)),
    ((2, 2), (4, 4)),
    ((6, 5), (4, 2)),
    ((3, 4), (3, 7)),  # one axis unchanged
]


# --------------------------------------------------------------------------- hand-computed cases

# A 2x2 delta x = [[1, 0], [0, 0]] isolates the weight each output pixel gives
# to input pixel (0, 0); by separability it is the outer product of the
# per-axis weights w0[d] = 1 - lam[d] if i0[d] == 0 else 0.
#
# align_corners=True, 2 -> 4: src = d * (2-1)/(4-1) = 0, 1/3, 2/3, 1
#   i0 = 0, 0, 0, 1 and lam = 0, 1/3, 2/3, 0   ->  w0 = [1, 2/3, 1/3, 0] = [3, 2, 1, 0] / 3
#   y = outer(w0, w0) = outer([3, 2, 1, 0], [3, 2, 1, 0]) / 9
DELTA_UP_ALIGNED = np.array(
    [[9, 6, 3, 0],
     [6, 4, 2, 0],
     [3, 2, 1, 0],
     [0, 0, 0, 0]], dtype=np.float64) / 9
#
# align_corners=False, 2 -> 4: src = (d + 0.5) * 2/4 - 0.5 = -0.25, 0.25, 0.75, 1.25,
#   clamped below at 0: 0, 0.25, 0.75, 1.25; i0 = 0, 0, 0, 1; i1 = 1, 1, 1, min(2, 1) = 1
#   lam = 0, 0.25, 0.75, 0.25  ->  w0 = [1, 0.75, 0.25, 0] = [4, 3, 1, 0] / 4
#   (the last row reads pixel 1 twice: 0.75 * x[1] + 0.25 * x[1] = x[1])
#   y = outer([4, 3, 1, 0], [4, 3, 1, 0]) / 16
DELTA_UP_HALF_PIXEL = np.array(
    [[16, 12, 4, 0],
     [12, 9, 3, 0],
     [4, 3, 1, 0],
     [0, 0, 0, 0]], dtype=np.float64) / 16

# A ramp x[i, j] = 6 i + 3 j = [[0, 3], [6, 9]] shows the positions: bilinear
# interpolation reproduces a linear function, so y[p, q] = 6 src(p) + 3 src(q)
# wherever src is inside [0, 1] (and the clamped value at the edges).
#   align_corners=True:  src = 0, 1/3, 2/3, 1       -> y[p, q] = 2p + q
RAMP_UP_ALIGNED = np.array(
    [[0, 1, 2, 3],
     [2, 3, 4, 5],
     [4, 5, 6, 7],
     [6, 7, 8, 9]], dtype=np.float64)
#   align_corners=False: src (after clamping at 0, and reading x[1] at 1.25) acts like
#   0, 0.25, 0.75, 1   -> rows add 6 * src = 0, 1.5, 4.5, 6; columns add 3 * src = 0, 0.75, 2.25, 3
RAMP_UP_HALF_PIXEL = np.array(
    [[0.0, 0.75, 2.25, 3.0],
     [1.5, 2.25, 3.75, 4.5],
     [4.5, 5.25, 6.75, 7.5],
     [6.0, 6.75, 8.25, 9.0]])


@pytest.mark.parametrize(
    "x,align_corners,expected",
    [
        ([[1.0, 0.0], [0.0, 0.0]], True, DELTA_UP_ALIGNED),
        ([[1.0, 0.0], [0.0, 0.0]], False, DELTA_UP_HALF_PIXEL),
        ([[0.0, 3.0], [6.0, 9.0]], True, RAMP_UP_ALIGNED),
        ([[0.0, 3.0], [6.0, 9.0]], False, RAMP_UP_HALF_PIXEL),
    ],
)
def test_2x2_to_4x4_by_hand(x, align_corners, expected):
    x = np.array(x).reshape(1, 1, 2, 2)
    y = F.interpolate_bilinear(Tensor(x), (4, 4), align_corners=align_corners)
    np.testing.assert_allclose(y.data[0, 0], expected, rtol=0, atol=1e-14)


def test_4x4_to_2x2_half_pixel_is_2x2_average_pooling(rng):
    # align_corners=False, 4 -> 2: src = (d + 0.5) * 2 - 0.5 = 0.5, 2.5, so each
    # output is the mean of a 2x2 block: exactly average pooling with stride 2
    x = rng.standard_normal((2, 3, 4, 4))
    y = F.interpolate_bilinear(Tensor(x), 2, align_corners=False).data
    np.testing.assert_allclose(y, x.reshape(2, 3, 2, 2, 2, 2).mean(axis=(3, 5)), rtol=1e-14)


def test_4x4_to_2x2_aligned_keeps_the_corners(rng):
    # align_corners=True, 4 -> 2: src = d * 3 = 0, 3: the four corner pixels exactly
    x = rng.standard_normal((2, 3, 4, 4))
    y = F.interpolate_bilinear(Tensor(x), (2, 2), align_corners=True).data
    np.testing.assert_array_equal(y, x[:, :, ::3, ::3])


def test_indices_and_weights_non_integer_ratio():
    # 5 -> 3, half-pixel: src = (d + 0.5) * 5/3 - 0.5 = 1/3, 2, 11/3
    i0, i1, lam = _indices_and_weights(5, 3, False, np)
    np.testing.assert_array_equal(i0, [0, 2, 3])
    np.testing.assert_array_equal(i1, [1, 3, 4])
    np.testing.assert_allclose(lam, [1 / 3, 0, 2 / 3], atol=1e-15)
    # 5 -> 3, aligned: src = d * 4/2 = 0, 2, 4 (the last one has i1 clamped to 4)
    i0, i1, lam = _indices_and_weights(5, 3, True, np)
    np.testing.assert_array_equal(i0, [0, 2, 4])
    np.testing.assert_array_equal(i1, [1, 3, 4])
    np.testing.assert_allclose(lam, [0, 0, 0])


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("n_in,n_out", [(1, 4), (4, 1), (3, 8), (8, 3), (7, 14), (14, 7), (5, 5)])
def test_interpolation_matrix_rows_sum_to_one(n_in, n_out, align_corners):
    a = _interpolation_matrix(n_in, n_out, align_corners, np.float64)
    assert a.shape == (n_out, n_in)
    np.testing.assert_allclose(a.sum(axis=1), 1.0, rtol=1e-14)
    assert ((a != 0).sum(axis=1) <= 2).all() and (a >= 0).all()


# --------------------------------------------------------------------------- oracle and gradients


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("src,dst", RESIZES)
def test_matches_naive_loop(src, dst, align_corners, rng):
    x = rng.standard_normal((2, 3) + src)
    y = F.interpolate_bilinear(Tensor(x), dst, align_corners=align_corners)
    assert y.shape == (2, 3) + dst
    np.testing.assert_allclose(y.data, naive_bilinear(x, dst, align_corners=align_corners),
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("src,dst", RESIZES + [((4, 4), (4, 4))])
def test_gradcheck(src, dst, align_corners, rng):
    x = rng.standard_normal((2, 3) + src)
    gradcheck(lambda t: F.interpolate_bilinear(t, dst, align_corners=align_corners), [x])


def test_gradcheck_directional_on_a_mask_branch_shape(rng):
    x = rng.standard_normal((2, 4, 7, 7))
    gradcheck(lambda t: F.interpolate_bilinear(t, (14, 14)), [x], mode="directional")


@pytest.mark.parametrize("align_corners", [True, False])
def test_identity_resize_returns_the_input_exactly(align_corners, rng):
    x = rng.standard_normal((2, 3, 5, 6)).astype(np.float32)
    t = Tensor(x, requires_grad=True)
    y = F.interpolate_bilinear(t, (5, 6), align_corners=align_corners)
    np.testing.assert_array_equal(y.data, x)
    assert y.data is not x and not np.shares_memory(y.data, x)  # a copy, not an alias
    gy = rng.standard_normal(x.shape).astype(np.float32)
    y.backward(gy)
    np.testing.assert_array_equal(t.grad, gy)


def test_keeps_dtype_and_accepts_non_contiguous_input(rng):
    base = rng.standard_normal((2, 3, 6, 5)).astype(np.float32)
    x = base.transpose(0, 1, 3, 2)  # (2, 3, 5, 6), not C-contiguous
    y = F.interpolate_bilinear(Tensor(x), (9, 4))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.data, naive_bilinear(x.astype(np.float64), (9, 4), align_corners=True),
                               rtol=1e-5, atol=1e-6)


def test_size_from_a_reference_tensor(rng):
    small, ref = Tensor(rng.standard_normal((1, 2, 7, 7))), Tensor(np.zeros((1, 2, 14, 14)))
    assert F.interpolate_bilinear(small, ref.shape[-2:]).shape == (1, 2, 14, 14)
    assert F.interpolate_bilinear(small, 3).shape == (1, 2, 3, 3)
    assert F.interpolate_bilinear(small, [np.int64(2), 5]).shape == (1, 2, 2, 5)


def test_validation():
    x = Tensor(np.zeros((1, 2, 4, 4)))
    with pytest.raises(ValueError, match=r"4-D.*\(2, 4, 4\)"):
        F.interpolate_bilinear(Tensor(np.zeros((2, 4, 4))), (8, 8))
    with pytest.raises(ValueError, match=r"size must be positive.*size=\(0, 3\).*\(1, 2, 4, 4\)"):
        F.interpolate_bilinear(x, (0, 3))
    with pytest.raises(ValueError, match=r"size=-2"):
        F.interpolate_bilinear(x, -2)
    with pytest.raises(TypeError, match="pair"):
        F.interpolate_bilinear(x, (2, 3, 4))
    with pytest.raises(TypeError, match="pair"):
        F.interpolate_bilinear(x, 2.5)
    with pytest.raises(TypeError, match=r"ref.shape\[-2:\]"):
        F.interpolate_bilinear(x, x)
    with pytest.raises(TypeError, match="floating point"):
        F.interpolate_bilinear(Tensor(np.zeros((1, 1, 2, 2), dtype=np.int64)), 4)


def test_upsample_layer(rng):
    layer = nn.UpsampleBilinear()
    assert list(layer.parameters()) == []
    x = Tensor(rng.standard_normal((2, 3, 4, 4)), requires_grad=True)
    ref = Tensor(np.zeros((2, 5, 7, 9)))
    y = layer(x, ref)
    assert y.shape == (2, 3, 7, 9)
    np.testing.assert_array_equal(y.data, F.interpolate_bilinear(x, (7, 9)).data)
    assert layer(x, size=(2, 2)).shape == (2, 3, 2, 2)
    y.backward(np.ones(y.shape))
    assert x.grad.shape == x.shape
    assert "align_corners=False" in repr(nn.UpsampleBilinear(align_corners=False))
    with pytest.raises(ValueError, match="exactly one"):
        layer(x)
    with pytest.raises(ValueError, match="exactly one"):
        layer(x, ref, size=3)


# --------------------------------------------------------------------------- PyTorch oracle (optional)


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("src,dst", RESIZES + [((7, 7), (14, 14)), ((16, 16), (32, 32)), ((28, 28), (56, 56))])
def test_matches_torch(src, dst, align_corners, rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 3) + src)
    gy = rng.standard_normal((2, 3) + dst)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.interpolate(tx, size=dst, mode="bilinear", align_corners=align_corners)
    ty.backward(torch.tensor(gy))

    t = Tensor(x, requires_grad=True)
    y = F.interpolate_bilinear(t, dst, align_corners=align_corners)
    y.backward(gy)
    np.testing.assert_allclose(y.data, ty.detach().numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(t.grad, tx.grad.numpy(), rtol=1e-12, atol=1e-12)

    # float32, as in training: the weights are rounded differently, so a float32 tolerance
    y32 = F.interpolate_bilinear(Tensor(x.astype(np.float32)), dst, align_corners=align_corners)
    ty32 = torch.nn.functional.interpolate(
        torch.tensor(x, dtype=torch.float32), size=dst, mode="bilinear", align_corners=align_corners
    )
    np.testing.assert_allclose(y32.data, ty32.numpy(), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- CuPy agreement


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("src,dst", [((5, 7), (8, 3)), ((7, 7), (14, 14)), ((4, 4), (4, 4))])
def test_cupy_matches_numpy(src, dst, align_corners, cp, rng):
    x = rng.standard_normal((2, 3) + src).astype(np.float32)
    gy = rng.standard_normal((2, 3) + dst).astype(np.float32)
    t_cpu = Tensor(x, requires_grad=True)
    t_gpu = Tensor(cp.asarray(x), requires_grad=True)
    y_cpu = F.interpolate_bilinear(t_cpu, dst, align_corners=align_corners)
    y_gpu = F.interpolate_bilinear(t_gpu, dst, align_corners=align_corners)
    assert y_gpu.device == "gpu"
    y_cpu.backward(gy)
    y_gpu.backward(cp.asarray(gy))
    np.testing.assert_allclose(cp.asnumpy(y_gpu.data), y_cpu.data, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cp.asnumpy(t_gpu.grad), t_cpu.grad, rtol=1e-5, atol=1e-6)


def test_cupy_gradcheck(cp, rng):
    x = cp.asarray(rng.standard_normal((2, 3, 5, 7)))
    gradcheck(lambda t: F.interpolate_bilinear(t, (8, 3), align_corners=False), [x])
