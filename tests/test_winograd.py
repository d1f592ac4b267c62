"""Winograd F(2x2, 3x3) convolution (miniran.fast.winograd) against independent references.

Oracles: im2col + one matrix product (float64) and col2im for the gradients
(the readable path of miniran.functional.conv), a naive loop convolution (tests/function_cases.py),
the matrices B, G, A applied literally to each patch, the adjoint identity,
and float64 central differences with a random upstream gradient.
"""

import numpy as np
import pytest

from miniran.functional.conv import col2im, im2col
from miniran.fast import winograd as wg
from miniran.fast.winograd import (
    conv3x3_winograd_backward,
    conv3x3_winograd_forward,
    winograd_supported,
)

from function_cases import naive_conv2d

# (N, C, O, H, W, padding): odd and even sizes, H != W, padding 0..3, N = 1, C = 1, O != C
SHAPES = [
    (2, 3, 4, 5, 5, 1),
    (1, 1, 1, 3, 3, 0),
    (2, 2, 3, 7, 6, 1),
    (2, 3, 2, 6, 9, 2),
    (1, 2, 2, 4, 4, 0),
    (3, 4, 5, 8, 8, 1),
    (1, 1, 2, 1, 1, 1),
    (2, 2, 1, 2, 5, 2),
    (2, 2, 2, 5, 4, 3),
    (1, 3, 2, 9, 3, 0),
    (2, 5, 3, 11, 10, (1, 2)),
]


def _pad_pair(p):
    return p if isinstance(p, tuple) else (p, p)


def reference_conv(x, w, padding):
    """im2col + one product: returns y and the col matrix."""
    n, c, h, wd = x.shape
    o = w.shape[0]
    ph, pw = _pad_pair(padding)
    oh, ow = h + 2 * ph - 2, wd + 2 * pw - 2
    col2d = im2col(x, 3, 1, (ph, pw)).reshape(c * 9, n * oh * ow)
    y = (w.reshape(o, c * 9) @ col2d).reshape(o, n, oh, ow).transpose(1, 0, 2, 3)
    return y, col2d


def reference_grads(x, w, padding, gy):
    """gx = col2im(w^T gy), gw = gy col^T: the im2col formulas."""
    n, c, h, wd = x.shape
    o = w.shape[0]
    oh, ow = gy.shape[2:]
    _, col2d = reference_conv(x, w, padding)
    gy2d = gy.transpose(1, 0, 2, 3).reshape(o, n * oh * ow)
    gw = (gy2d @ col2d.T).reshape(w.shape)
    gx = col2im((w.reshape(o, c * 9).T @ gy2d).reshape(c, 3, 3, n, oh, ow), x.shape, 1, padding)
    return gx, gw


def _data(shape, seed, dtype=np.float64):
    n, c, o, h, wd, p = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, wd)).astype(dtype)
    w = rng.standard_normal((o, c, 3, 3)).astype(dtype)
    return x, w, p, rng


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_im2col_float64(shape):
    x, w, p, _ = _data(shape, 0)
    y, saved = conv3x3_winograd_forward(x, w, p)
    y_ref, _ = reference_conv(x, w, p)
    assert y.shape == y_ref.shape and y.dtype == np.float64 and y.flags.c_contiguous
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES[:6])
def test_forward_matches_naive_loops(shape):
    x, w, p, _ = _data(shape, 1)
    y, _ = conv3x3_winograd_forward(x, w, p)
    np.testing.assert_allclose(y, naive_conv2d(x, w, padding=p), rtol=1e-12, atol=1e-12)


def test_transforms_equal_the_matrices():
    """The add/subtract code of each stage is B^T d B, G g G^T and A^T m A, literally."""
    rng = np.random.default_rng(2)
    n, c, o, h, wd, p = 2, 3, 2, 6, 7, 1
    x = rng.standard_normal((n, c, h, wd))
    w = rng.standard_normal((o, c, 3, 3))
    oh, ow = h + 2 * p - 2, wd + 2 * p - 2
    th, tw = (oh + 1) // 2, (ow + 1) // 2
    # every 4x4 patch of the padded input (padded far enough for the last tiles)
    xpad = np.zeros((n, c, 2 * th + 2, 2 * tw + 2))
    xpad[:, :, p:p + h, p:p + wd] = x
    V = np.empty((16, c, n * th * (tw + 1)))
    wg._input_transform(x, p, p, th, tw, V)
    V = V.reshape(4, 4, c, n, th, tw + 1)[..., :tw]
    U = wg._kernel_transform(w).reshape(4, 4, o, c)
    for t in range(th):
        for u in range(tw):
            d = xpad[:, :, 2 * t:2 * t + 4, 2 * u:2 * u + 4]            # (N, C, 4, 4)
            np.testing.assert_allclose(V[..., t, u], np.einsum("il,ncls,js->ijcn", wg.B_T, d, wg.B_T),
                                       atol=1e-12)
    np.testing.assert_allclose(U, np.einsum("ik,ockl,jl->ijoc", wg.G, w, wg.G), atol=1e-12)
    # output transform: A^T m A of a random m, into an even-sized output
    m = rng.standard_normal((4, 4, o, n, th, tw + 1))
    y = np.empty((n, o, 2 * th, 2 * tw))
    wg._output_transform(m.copy(), y)
    expected = np.einsum("ai,ijonts,bj->onatbs", wg.A_T, m[..., :tw], wg.A_T)  # (O, N, 2, TH, 2, TW)
    np.testing.assert_allclose(y, expected.transpose(1, 0, 3, 2, 5, 4).reshape(y.shape), atol=1e-12)


@pytest.mark.parametrize("c, hw", [(16, 32), (32, 16), (64, 8), (64, 4)])
def test_forward_float32_accuracy_at_attention56_shapes(c, hw):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, c, hw, hw)).astype(np.float32)
    w = (rng.standard_normal((c, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
    y, _ = conv3x3_winograd_forward(x, w, 1)
    assert y.dtype == np.float32
    y_ref, _ = reference_conv(x.astype(np.float64), w.astype(np.float64), 1)
    assert np.abs(y - y_ref).max() / np.abs(y_ref).max() < 1e-5
    gy = rng.standard_normal(y.shape).astype(np.float32)
    _, saved = conv3x3_winograd_forward(x, w, 1)
    gx, gw = conv3x3_winograd_backward(saved, gy)
    assert gx.dtype == np.float32 and gw.dtype == np.float32
    gx_ref, gw_ref = reference_grads(x.astype(np.float64), w.astype(np.float64), 1, gy.astype(np.float64))
    assert np.abs(gx - gx_ref).max() / np.abs(gx_ref).max() < 1e-5
    assert np.abs(gw - gw_ref).max() / np.abs(gw_ref).max() < 1e-5


# --------------------------------------------------------------------------- backward


@pytest.mark.parametrize("shape", SHAPES)
def test_backward_matches_im2col_col2im(shape):
    x, w, p, rng = _data(shape, 4)
    y, saved = conv3x3_winograd_forward(x, w, p)
    gy = rng.standard_normal(y.shape)
    gx, gw = conv3x3_winograd_backward(saved, gy)
    gx_ref, gw_ref = reference_grads(x, w, p, gy)
    assert gx.shape == x.shape and gw.shape == w.shape
    assert gx.flags.c_contiguous and gw.flags.c_contiguous
    np.testing.assert_allclose(gx, gx_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gw, gw_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_adjoint_identity(shape):
    """<conv(x), gy> = <x, gx> = <w, gw>: the backward pass is the transpose of the forward."""
    x, w, p, rng = _data(shape, 5)
    y, saved = conv3x3_winograd_forward(x, w, p)
    gy = rng.standard_normal(y.shape)
    gx, gw = conv3x3_winograd_backward(saved, gy)
    inner = np.sum(y * gy)
    np.testing.assert_allclose(np.sum(x * gx), inner, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(np.sum(w * gw), inner, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("shape", [(1, 2, 2, 3, 4, 1), (2, 1, 2, 5, 3, 2)])
def test_central_differences(shape):
    x, w, p, rng = _data(shape, 6)
    y, saved = conv3x3_winograd_forward(x, w, p)
    gy = rng.standard_normal(y.shape)
    gx, gw = conv3x3_winograd_backward(saved, gy)

    def loss(xv, wv):
        return np.sum(conv3x3_winograd_forward(xv, wv, p, keep=False)[0] * gy)

    eps = 1e-6
    for array, grad, name in ((x, gx, "gx"), (w, gw, "gw")):
        numeric = np.zeros_like(array)
        for idx in np.ndindex(array.shape):
            old = array[idx]
            array[idx] = old + eps
            plus = loss(x, w)
            array[idx] = old - eps
            minus = loss(x, w)
            array[idx] = old
            numeric[idx] = (plus - minus) / (2 * eps)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-7, err_msg=name)


def test_only_the_requested_gradients():
    x, w, p, rng = _data((2, 3, 4, 6, 6, 1), 7)
    y, saved = conv3x3_winograd_forward(x, w, p)
    gy = rng.standard_normal(y.shape)
    gx_ref, gw_ref = reference_grads(x, w, p, gy)
    gx, gw = conv3x3_winograd_backward(saved, gy, need_gw=False)
    assert gw is None
    np.testing.assert_allclose(gx, gx_ref, rtol=1e-12, atol=1e-12)
    gx, gw = conv3x3_winograd_backward(saved, gy, need_gx=False)
    assert gx is None
    np.testing.assert_allclose(gw, gw_ref, rtol=1e-12, atol=1e-12)
    # keep=False: no V, so the input gradient only
    _, light = conv3x3_winograd_forward(x, w, p, keep=False)
    assert light.V is None
    gx, _ = conv3x3_winograd_backward(light, gy, need_gw=False)
    np.testing.assert_allclose(gx, gx_ref, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="keep=True"):
        conv3x3_winograd_backward(light, gy)
    with pytest.raises(ValueError, match="gy has shape"):
        conv3x3_winograd_backward(saved, gy[:, :, 1:])


def test_interleaved_calls_keep_their_own_state():
    """Scratch buffers are reused between calls; what backward needs must not be overwritten."""
    xa, wa, pa, rng = _data((2, 3, 4, 8, 8, 1), 8)
    xb, wb, pb, _ = _data((3, 5, 2, 12, 10, 2), 9)   # larger: the scratch buffers grow
    ya, saved_a = conv3x3_winograd_forward(xa, wa, pa)
    yb, saved_b = conv3x3_winograd_forward(xb, wb, pb)
    gya, gyb = rng.standard_normal(ya.shape), rng.standard_normal(yb.shape)
    gxb, gwb = conv3x3_winograd_backward(saved_b, gyb)
    gxa, gwa = conv3x3_winograd_backward(saved_a, gya)
    for (x, w, p, gy, gx, gw) in ((xa, wa, pa, gya, gxa, gwa), (xb, wb, pb, gyb, gxb, gwb)):
        gx_ref, gw_ref = reference_grads(x, w, p, gy)
        np.testing.assert_allclose(gx, gx_ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(gw, gw_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ya, reference_conv(xa, wa, pa)[0], rtol=1e-12, atol=1e-12)
    wg.release_workspace()
    y, _ = conv3x3_winograd_forward(xa, wa, pa)
    np.testing.assert_allclose(y, ya, rtol=0, atol=0)


def test_dtypes_are_kept():
    x, w, p, _ = _data((2, 3, 4, 5, 6, 1), 10, np.float32)
    y, saved = conv3x3_winograd_forward(x, w, p)
    assert y.dtype == np.float32
    gx, gw = conv3x3_winograd_backward(saved, np.ones_like(y))
    assert gx.dtype == np.float32 and gw.dtype == np.float32
    # mixed: computed in float64, each gradient back in its input's dtype
    y, saved = conv3x3_winograd_forward(x, w.astype(np.float64), p)
    assert y.dtype == np.float64
    gx, gw = conv3x3_winograd_backward(saved, np.ones_like(y))
    assert gx.dtype == np.float32 and gw.dtype == np.float64


# --------------------------------------------------------------------------- what is supported


def test_winograd_supported():
    x, w3 = (64, 16, 32, 32), (16, 16, 3, 3)
    assert winograd_supported(x, w3, 1, 1)
    assert winograd_supported(x, w3, (1, 1), (0, 2))
    assert winograd_supported((1, 2, 1, 1), (3, 2, 3, 3), 1, 1)
    assert not winograd_supported(x, w3, 2, 1)                     # stride 2
    assert not winograd_supported(x, w3, (1, 2), 1)
    assert not winograd_supported(x, (16, 16, 1, 1), 1, 0)         # 1x1
    assert not winograd_supported(x, (16, 16, 5, 5), 1, 2)         # 5x5
    assert not winograd_supported(x, (16, 8, 3, 3), 1, 1)          # channels differ
    assert not winograd_supported((1, 2, 1, 1), (3, 2, 3, 3), 1, 0)  # kernel larger than the input
    assert not winograd_supported(x, w3, 1, -1)
    with pytest.raises(ValueError, match="3x3"):
        conv3x3_winograd_forward(np.zeros((1, 2, 5, 5)), np.zeros((2, 2, 5, 5)), 2)


def test_out_and_gx_out_write_into_given_arrays():
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal((4, 3, 6, 5)), rng.standard_normal((2, 3, 3, 3))
    gy = rng.standard_normal((4, 2, 6, 5))
    y_ref, saved_ref = conv3x3_winograd_forward(x, w, 1)
    gx_ref, gw_ref = conv3x3_winograd_backward(saved_ref, gy)
    big = np.full((6, 2, 6, 5), np.nan)  # write into images 1..4 of a bigger batch
    y, saved = conv3x3_winograd_forward(x, w, 1, out=big[1:5])
    assert y.base is big and np.array_equal(big[1:5], y_ref) and np.isnan(big[[0, 5]]).all()
    gx_big = np.full((6, 3, 6, 5), np.nan)
    gx, gw = conv3x3_winograd_backward(saved, gy, gx_out=gx_big[1:5])
    assert np.array_equal(gx_big[1:5], gx_ref) and np.array_equal(gw, gw_ref)
    # float32 gx_out for a float64 computation: converted on the way out
    gx32 = np.empty((4, 3, 6, 5), np.float32)
    saved32 = conv3x3_winograd_forward(x.astype(np.float32), w, 1)[1]
    conv3x3_winograd_backward(saved32, gy, gx_out=gx32)
    assert np.allclose(gx32, gx_ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="out must be a float64 array of shape"):
        conv3x3_winograd_forward(x, w, 1, out=np.empty((4, 2, 5, 5)))
    with pytest.raises(ValueError, match="gx_out must be a float64 array of shape"):
        conv3x3_winograd_backward(saved, gy, gx_out=np.empty((4, 3, 6, 5), np.float32))
