"""conv2d, im2col/col2im and nn.Conv2d.

Oracles: naive loop implementations independent of the im2col code (the
convolution's is ``naive_conv2d`` of tests/function_cases.py, im2col's is
here), the adjoint identity of im2col/col2im, float64 gradient checks
with a random upstream gradient, NumPy-vs-CuPy agreement, and optionally
PyTorch when it happens to be installed.
"""

import contextlib
import math

import numpy as np

import pytest

import miniran
import miniran.functional as F
from miniran import Tensor, gradcheck, nn
from miniran.functional.conv import col2im, conv_output_size, im2col

from function_cases import naive_conv2d


def _pair(v):
    return tuple(v) if isinstance(v, tuple) else (v, v)


# --------------------------------------------------------------------------- naive oracles


def naive_im2col(x, kh, kw, stride, padding):
    (sy, sx), (ph, pw) = _pair(stride), _pair(padding)
    xpad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    n, c = x.shape[:2]
    oh = (xpad.shape[2] - kh) // sy + 1
    ow = (xpad.shape[3] - kw) // sx + 1
    col = np.zeros((c, kh, kw, n, oh, ow))
    for ci in range(c):
        for ky in range(kh):
            for kx in range(kw):
                for s in range(n):
                    for i in range(oh):
                        for j in range(ow):
                            col[ci, ky, kx, s, i, j] = xpad[s, ci, i * sy + ky, j * sx + kx]
    return col


# --------------------------------------------------------------------------- conv_output_size


def test_conv_output_size_inequalities():
    # the last window fits in the padded input, and one more would not
    for size in range(1, 13):
        for p in range(4):
            for k in range(1, size + 2 * p + 1):
                for s in range(1, 5):
                    out = conv_output_size(size, k, s, p)
                    assert out >= 1
                    assert (out - 1) * s + k <= size + 2 * p < out * s + k


def test_conv_output_size_known_values_and_errors():
    assert conv_output_size(32, 3, 1, 1) == 32  # "same" padding
    assert conv_output_size(32, 3, 2, 1) == 16
    assert conv_output_size(224, 7, 2, 3) == 112  # the ResNet stem
    assert conv_output_size(5, 7, 1, 1) == 1  # kernel exactly covers the padded input
    with pytest.raises(ValueError, match="kernel size 8 is larger"):
        conv_output_size(5, 8, 1, 1)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        conv_output_size(5, 3, 0, 1)
    with pytest.raises(ValueError, match="padding must be >= 0"):
        conv_output_size(5, 3, 1, -1)


# --------------------------------------------------------------------------- im2col / col2im

IM2COL_CASES = [
    # x shape, (KH, KW), stride, padding
    ((2, 3, 5, 5), (3, 3), 1, 0),
    ((2, 3, 5, 5), (3, 3), 1, 1),
    ((1, 2, 6, 7), (3, 3), 2, 1),
    ((2, 2, 7, 6), (2, 3), (2, 1), (1, 0)),
    ((1, 2, 4, 5), (1, 1), 1, 0),
    ((1, 1, 8, 8), (7, 7), 2, 3),
]


@pytest.mark.parametrize("shape,k,stride,padding", IM2COL_CASES)
def test_im2col_matches_naive_loops(shape, k, stride, padding, rng):
    x = rng.standard_normal(shape)
    col = im2col(x, k, stride, padding)
    np.testing.assert_array_equal(col, naive_im2col(x, *k, stride, padding))
    assert col.flags.c_contiguous  # so the reshape to (C*KH*KW, N*OH*OW) is free


@pytest.mark.parametrize("shape,k,stride,padding", IM2COL_CASES)
def test_col2im_is_the_adjoint_of_im2col(shape, k, stride, padding, rng):
    # <im2col(x), col> == <x, col2im(col)> for every x and col
    x = rng.standard_normal(shape)
    col = rng.standard_normal(im2col(x, k, stride, padding).shape)
    lhs = np.sum(im2col(x, k, stride, padding) * col)
    rhs = np.sum(x * col2im(col, shape, stride, padding))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12)


def test_col2im_adds_overlapping_windows():
    # a 3x3 kernel with stride 1 over a 3x3 image padded by 1: the centre pixel
    # is seen by all 9 taps of the 9 windows, a corner by 4
    ones = np.ones((1, 3, 3, 1, 3, 3))
    img = col2im(ones, (1, 1, 3, 3), stride=1, padding=1)
    np.testing.assert_array_equal(img[0, 0], [[4, 6, 4], [6, 9, 6], [4, 6, 4]])


def test_col2im_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="does not match x_shape"):
        col2im(np.zeros((2, 3, 3, 1, 4, 4)), (1, 2, 5, 5), stride=1, padding=0)


# --------------------------------------------------------------------------- forward

CASES = [
    # x shape, w shape, stride, padding, bias
    ((2, 2, 5, 5), (3, 2, 3, 3), 1, 0, True),
    ((2, 2, 5, 5), (3, 2, 3, 3), 1, 1, False),
    ((2, 2, 6, 6), (3, 2, 3, 3), 2, 1, True),  # even size, stride 2
    ((2, 2, 7, 7), (2, 2, 3, 3), 2, 0, True),  # odd size, stride 2
    ((2, 3, 4, 5), (2, 3, 1, 1), 1, 0, True),  # 1x1 fast path, non-square input
    ((2, 3, 5, 4), (2, 3, 1, 1), 2, 0, False),  # 1x1 with stride: the im2col path
    ((1, 2, 4, 4), (2, 2, 1, 1), 1, 1, True),  # 1x1 with padding
    ((1, 2, 7, 8), (2, 2, 7, 7), 1, 1, True),  # kernel 7
    ((1, 2, 9, 8), (2, 2, 7, 7), 2, 3, False),  # kernel 7, stride 2, padding 3 (ResNet stem)
    ((2, 2, 6, 7), (3, 2, 2, 3), (1, 2), (1, 0), True),  # non-square kernel, pair stride/padding
    ((1, 2, 5, 8), (2, 2, 3, 1), (2, 1), (0, 1), False),
    ((1, 1, 3, 3), (2, 1, 5, 5), 1, 1, True),  # kernel exactly covers the padded input
]


def _inputs(rng, xs, ws, bias):
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    return [x, w, rng.standard_normal(ws[0])] if bias else [x, w]


@pytest.mark.parametrize("xs,ws,stride,padding,bias", CASES)
def test_forward_matches_naive_loops(xs, ws, stride, padding, bias, rng):
    args = _inputs(rng, xs, ws, bias)
    y = F.conv2d(*map(Tensor, args), stride=stride, padding=padding)
    expected = naive_conv2d(*args, stride=stride, padding=padding)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y.data, expected, rtol=1e-10, atol=1e-12)


def test_forward_hand_computed():
    # 1 channel, 3x3 image, 2x2 kernel of ones + bias 1: each output is a 2x2 window sum + 1
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    y = F.conv2d(Tensor(x), Tensor(np.ones((1, 1, 2, 2))), Tensor(np.ones(1)))
    np.testing.assert_array_equal(y.data[0, 0], [[9, 13], [21, 25]])


def test_forward_accepts_non_contiguous_input(rng):
    x = rng.standard_normal((5, 6, 2, 3)).transpose(2, 3, 0, 1)  # (2, 3, 5, 6), a view
    w = rng.standard_normal((4, 3, 3, 3))
    y = F.conv2d(Tensor(x), Tensor(w), stride=2, padding=1)
    np.testing.assert_allclose(y.data, naive_conv2d(x, w, stride=2, padding=1), rtol=1e-10, atol=1e-12)


def test_float32_stays_float32(rng):
    x = Tensor(rng.standard_normal((2, 3, 6, 6)).astype(np.float32), requires_grad=True)
    w = Tensor(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), requires_grad=True)
    b = Tensor(np.zeros(4, dtype=np.float32), requires_grad=True)
    y = F.conv2d(x, w, b, padding=1)
    assert y.dtype == np.float32
    y.backward(np.ones(y.shape, dtype=np.float32))
    assert x.grad.dtype == w.grad.dtype == b.grad.dtype == np.float32


def test_mixed_dtypes_compute_in_the_wider_one(rng):
    x = Tensor(rng.standard_normal((1, 2, 4, 4)), requires_grad=True)  # float64
    w = Tensor(rng.standard_normal((3, 2, 3, 3)).astype(np.float32), requires_grad=True)
    y = F.conv2d(x, w)
    assert y.dtype == np.float64
    y.backward(np.ones(y.shape))
    assert x.grad.dtype == np.float64 and w.grad.dtype == np.float32


# --------------------------------------------------------------------------- backward


@pytest.mark.parametrize("xs,ws,stride,padding,bias", CASES)
def test_gradcheck_elementwise(xs, ws, stride, padding, bias, rng):
    args = _inputs(rng, xs, ws, bias)
    gradcheck(lambda *t: F.conv2d(*t, stride=stride, padding=padding), args, mode="elementwise")


@pytest.mark.parametrize("stride,padding,k", [(1, 1, 3), (2, 1, 3), (1, 0, 1)])
def test_gradcheck_directional_bigger(stride, padding, k, rng):
    x = rng.standard_normal((4, 8, 12, 10))
    w = rng.standard_normal((16, 8, k, k))
    b = rng.standard_normal(16)
    # 5e-4 / 5e-3: Chainer's conv tolerances (their gradient-check defaults for convolution)
    gradcheck(
        lambda *t: F.conv2d(*t, stride=stride, padding=padding), [x, w, b],
        mode="directional", atol=5e-4, rtol=5e-3,
    )


# what each CPU path keeps from its forward pass for the weight gradient
KEPT_FOR_WEIGHT_GRAD = {
    "Conv2dFunction": lambda f: f.col2d,
    "Conv2dBatchedCPU": lambda f: f.col3,
    "Conv2dPointwiseCPU": lambda f: f.x3,
    "Conv2dWinogradCPU": lambda f: f.pieces[0][2].V,  # the transformed input of the first group of images
}


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "reference"])
@pytest.mark.parametrize("stride,k,c,size", [(1, 3, 3, 6), (1, 3, 8, 16), (2, 3, 3, 6), (1, 1, 3, 6), (2, 1, 3, 6)])
@pytest.mark.parametrize("which", [0, 1, 2])
def test_only_requested_gradients_are_computed(which, stride, k, c, size, fast, rng):
    # (1, 3, 8, 16): big enough for the Winograd twin (see Conv2dWinogradCPU.suits)
    ts = [Tensor(a) for a in _inputs(rng, (2, c, size, size), (4, c, k, k), True)]
    ts[which].requires_grad = True
    with contextlib.nullcontext() if fast else miniran.reference_only():
        y = F.conv2d(*ts, stride=stride, padding=k // 2)
        # the unfolded input is only kept for the weight gradient
        kept = KEPT_FOR_WEIGHT_GRAD[type(y.creator).__name__](y.creator)
        assert (kept is not None) == (which == 1)
        y.backward(rng.standard_normal(y.shape))
    assert [t.grad is not None for t in ts] == [i == which for i in range(3)]


# --------------------------------------------------------------------------- argument checks


def test_argument_errors(rng):
    x = Tensor(rng.standard_normal((2, 3, 5, 5)))
    w = Tensor(rng.standard_normal((4, 3, 3, 3)))
    with pytest.raises(ValueError, match=r"x must be 4-D \(N, C, H, W\), got shape \(3, 5, 5\)"):
        F.conv2d(Tensor(np.zeros((3, 5, 5))), w)
    with pytest.raises(ValueError, match=r"weight must be 4-D \(O, C, KH, KW\), got shape \(4, 3, 3\)"):
        F.conv2d(x, Tensor(np.zeros((4, 3, 3))))
    with pytest.raises(ValueError, match=r"x has 3 channels .* weight expects 2 .*\(4, 2, 3, 3\)"):
        F.conv2d(x, Tensor(np.zeros((4, 2, 3, 3))))
    with pytest.raises(ValueError, match=r"kernel \(8, 3\) .* larger than the padded input \(7, 7\)"):
        F.conv2d(x, Tensor(np.zeros((4, 3, 8, 3))), padding=1)
    with pytest.raises(ValueError, match=r"padding must be >= 0, got \(-1, -1\)"):
        F.conv2d(x, w, padding=-1)
    with pytest.raises(ValueError, match=r"stride must be >= 1, got \(1, 0\)"):
        F.conv2d(x, w, stride=(1, 0))
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\), got \(3,\)"):
        F.conv2d(x, w, Tensor(np.zeros(3)))
    with pytest.raises(ValueError, match="stride must be an int or a pair"):
        F.conv2d(x, w, stride=(1, 1, 1))
    with pytest.raises(TypeError, match="padding must be an int or a pair"):
        F.conv2d(x, w, padding=1.5)


# --------------------------------------------------------------------------- nn.Conv2d


def test_conv2d_layer_init_is_kaiming_fan_out(rng):
    layer = nn.Conv2d(64, 128, 3, padding=1, rng=rng)
    assert layer.weight.shape == (128, 64, 3, 3) and layer.bias.shape == (128,)
    assert layer.weight.dtype == layer.bias.dtype == np.float32
    w = layer.weight.data
    expected_std = math.sqrt(2.0 / (128 * 3 * 3))  # fan_out = O * KH * KW
    assert abs(w.std() / expected_std - 1) < 0.02  # 73k samples: std of the estimate ~0.3%
    assert abs(w.mean()) < 0.05 * expected_std
    np.testing.assert_array_equal(layer.bias.data, 0)
    assert [name for name, _ in layer.named_parameters()] == ["weight", "bias"]


def test_conv2d_layer_forward_and_repr(rng):
    layer = nn.Conv2d(3, 5, (3, 1), stride=(2, 1), padding=(1, 0), bias=False, rng=rng)
    assert layer.bias is None and len(layer.parameters()) == 1
    assert repr(layer) == "Conv2d(3, 5, kernel_size=(3, 1), stride=(2, 1), padding=(1, 0), bias=False)"
    x = rng.standard_normal((2, 3, 8, 6)).astype(np.float32)
    y = layer(Tensor(x))
    assert y.shape == (2, 5, 4, 6)
    np.testing.assert_allclose(y.data, naive_conv2d(x, layer.weight.data, stride=(2, 1), padding=(1, 0)),
                               rtol=1e-4, atol=1e-5)
    y.backward(np.ones(y.shape, dtype=np.float32))
    assert layer.weight.grad.shape == layer.weight.shape


def test_conv2d_layer_is_reproducible_with_a_seeded_rng():
    a = nn.Conv2d(4, 8, 3, rng=np.random.default_rng(0)).weight.data
    b = nn.Conv2d(4, 8, 3, rng=np.random.default_rng(0)).weight.data
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- GPU (skips without one)

GPU_CASES = [
    ((4, 3, 9, 8), (5, 3, 3, 3), 1, 1),
    ((3, 4, 10, 11), (6, 4, 3, 3), 2, 1),
    ((2, 8, 6, 6), (16, 8, 1, 1), 1, 0),  # 1x1 fast path
    ((2, 3, 13, 12), (4, 3, 7, 5), (2, 3), (3, 2)),
    ((2, 2, 4, 4), (3, 2, 5, 5), 1, 1),  # kernel exactly covers the padded input
]


@pytest.mark.gpu
@pytest.mark.parametrize("xs,ws,stride,padding", GPU_CASES)
def test_cupy_matches_numpy(xs, ws, stride, padding, rng, cp):
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    b = rng.standard_normal(ws[0]).astype(np.float32)

    # the raw kernels first: im2col exactly (a copy), col2im up to summation order
    col = im2col(x, ws[2:], stride, padding)
    np.testing.assert_array_equal(cp.asnumpy(im2col(cp.asarray(x), ws[2:], stride, padding)), col)
    np.testing.assert_allclose(
        cp.asnumpy(col2im(cp.asarray(col), xs, stride, padding)), col2im(col, xs, stride, padding),
        rtol=1e-5, atol=1e-5,
    )

    # then the full forward and backward
    results = []
    for xp in (np, cp):
        ts = [Tensor(xp.asarray(a), requires_grad=True) for a in (x, w, b)]
        y = F.conv2d(*ts, stride=stride, padding=padding)
        gy = xp.asarray(np.random.default_rng(1).standard_normal(y.shape).astype(np.float32))
        y.backward(gy)
        results.append([y.numpy()] + [cp.asnumpy(t.grad) if xp is cp else t.grad for t in ts])
    for got, expected in zip(results[1], results[0]):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.gpu
@pytest.mark.parametrize("xs,ws,stride,padding", GPU_CASES[:4])
def test_cupy_gradcheck(xs, ws, stride, padding, rng, cp):
    """The GPU path (batched layout, its own kernels) passes the float64 gradient check."""
    x = cp.asarray(rng.standard_normal((1,) + xs[1:]))
    w = cp.asarray(rng.standard_normal(ws))
    b = cp.asarray(rng.standard_normal(ws[0]))
    gradcheck(lambda x, w, b: F.conv2d(x, w, b, stride=stride, padding=padding), [x, w, b])


# --------------------------------------------------------------------------- optional oracle: PyTorch


@pytest.mark.parametrize("xs,ws,stride,padding,bias", CASES[::3])
def test_matches_torch(xs, ws, stride, padding, bias, rng):
    torch = pytest.importorskip("torch")
    args = _inputs(rng, xs, ws, True)
    ts = [Tensor(a, requires_grad=True) for a in args]
    y = F.conv2d(*ts, stride=stride, padding=padding)
    gy = rng.standard_normal(y.shape)
    y.backward(gy)
    tt = [torch.tensor(a, requires_grad=True) for a in args]
    yt = torch.nn.functional.conv2d(*tt, stride=stride, padding=padding)
    yt.backward(torch.tensor(gy))
    np.testing.assert_allclose(y.data, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    for t, r in zip(ts, tt):
        np.testing.assert_allclose(t.grad, r.grad.numpy(), rtol=1e-10, atol=1e-12)
