"""Pooling: naive-loop references, gradient checks over a grid of settings
(distinct inputs, so max pooling has no ties), hand-computed cases, validation,
layers, GPU and torch agreement."""

import itertools
import math

import numpy as np
import pytest

import miniran
import miniran.functional as F
from miniran import Tensor, gradcheck, nn
from miniran.backend import to_numpy


def shuffled_linspace(shape, rng):
    """Distinct values in [-1, 1] in random order: no ties, so max pooling is differentiable."""
    size = int(np.prod(shape))
    return rng.permutation(np.linspace(-1.0, 1.0, size)).reshape(shape)


# --------------------------------------------------------------------------- naive references


def ref_out_size(size, k, s, p, ceil_mode):
    """PyTorch's rule, written with math.floor/math.ceil on real division."""
    rounding = math.ceil if ceil_mode else math.floor
    out = rounding((size + 2 * p - k) / s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1  # the last window would start in the right padding
    return out


def ref_pool(x, k, s, p, ceil_mode, kind, count_include_pad=True):
    """One output pixel at a time, straight from the definition."""
    n, c, h, w = x.shape
    oh, ow = ref_out_size(h, k, s, p, ceil_mode), ref_out_size(w, k, s, p, ceil_mode)
    y = np.zeros((n, c, oh, ow))
    for b in range(n):
        for ch in range(c):
            for i in range(oh):
                for j in range(ow):
                    h0, w0 = i * s - p, j * s - p  # window start, in input coordinates
                    h1, w1 = min(h0 + k, h + p), min(w0 + k, w + p)  # clipped to the padded edge
                    real = x[b, ch, max(h0, 0):min(h1, h), max(w0, 0):min(w1, w)]
                    if kind == "max":
                        y[b, ch, i, j] = real.max()  # padding is -inf: it never wins
                    else:
                        divisor = (h1 - h0) * (w1 - w0) if count_include_pad else real.size
                        y[b, ch, i, j] = real.sum() / divisor  # padding adds zeros
    return y


GRID = list(
    itertools.product(
        [2, 3],  # kernel
        [1, 2],  # stride
        [0, 1],  # padding
        [False, True],  # ceil_mode
        [(5, 5), (6, 6), (5, 7), (4, 6)],  # odd, even, non-square sizes
    )
)


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("k,s,p,ceil_mode,hw", GRID)
def test_forward_matches_naive_loops(k, s, p, ceil_mode, hw, rng):
    x = shuffled_linspace((2, 3) + hw, rng)
    np.testing.assert_array_equal(
        F.max_pool2d(Tensor(x), k, s, p, ceil_mode).data, ref_pool(x, k, s, p, ceil_mode, "max")
    )
    for cip in (True, False):
        np.testing.assert_allclose(
            F.avg_pool2d(Tensor(x), k, s, p, ceil_mode, cip).data,
            ref_pool(x, k, s, p, ceil_mode, "avg", cip),
            rtol=1e-12, atol=1e-15,
        )


@pytest.mark.parametrize("k,s,p,ceil_mode,hw", GRID)
def test_output_size_rule(k, s, p, ceil_mode, hw):
    for size in hw:
        assert F.pool_output_size(size, k, s, p, ceil_mode) == ref_out_size(size, k, s, p, ceil_mode)


def test_ceil_mode_output_sizes():
    # H=5, k=2, s=2: floor gives 2 windows, ceil a 3rd starting at 4, inside the input
    assert F.pool_output_size(5, 2, 2, 0, ceil_mode=False) == 2
    assert F.pool_output_size(5, 2, 2, 0, ceil_mode=True) == 3
    # H=3, k=2, s=2, p=1: ceil((3+2-2)/2)+1 = 3, but the 3rd window would start at
    # padded position 4 = H + p, entirely in the right padding: dropped
    assert F.pool_output_size(3, 2, 2, 1, ceil_mode=True) == 2
    assert F.pool_output_size(4, 1, 2, 0, ceil_mode=True) == 2  # 3rd would start at 4 = H


def test_hand_computed_cases():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    np.testing.assert_array_equal(F.max_pool2d(Tensor(x), 2).data[0, 0], [[5, 7], [13, 15]])
    np.testing.assert_array_equal(F.avg_pool2d(Tensor(x), 2).data[0, 0], [[2.5, 4.5], [10.5, 12.5]])
    # 3x3 / stride 2 / padding 1, the network's pooling: corner windows see 4 real pixels
    np.testing.assert_array_equal(F.max_pool2d(Tensor(x), 3, 2, 1).data[0, 0], [[5, 7], [13, 15]])
    avg = F.avg_pool2d(Tensor(x), 3, 2, 1).data[0, 0]
    np.testing.assert_allclose(avg[0, 0], (0 + 1 + 4 + 5) / 9)  # padding counted
    avg = F.avg_pool2d(Tensor(x), 3, 2, 1, count_include_pad=False).data[0, 0]
    np.testing.assert_allclose(avg[0, 0], (0 + 1 + 4 + 5) / 4)  # only real pixels
    np.testing.assert_allclose(F.global_avg_pool2d(Tensor(x)).data, [[7.5]])


def test_ceil_mode_window_past_the_padded_edge_divides_by_clipped_size():
    # H=W=5, k=2, s=2, p=0, ceil: the last window starts at 4 and holds 1 row/column only
    x = np.arange(25.0).reshape(1, 1, 5, 5)
    y = F.avg_pool2d(Tensor(x), 2, ceil_mode=True).data[0, 0]
    assert y.shape == (3, 3)
    np.testing.assert_allclose(y[2, 2], 24.0)  # divided by 1, not 4
    np.testing.assert_allclose(y[0, 2], (4 + 9) / 2)


def test_rectangular_kernel_stride_and_padding(rng):
    x = shuffled_linspace((2, 2, 7, 6), rng)
    y = F.max_pool2d(Tensor(x), (3, 2), stride=(2, 1), padding=(1, 0))
    assert y.shape == (2, 2, 4, 5)
    for i, j in itertools.product(range(4), range(5)):
        rows = slice(max(2 * i - 1, 0), 2 * i + 2)
        np.testing.assert_array_equal(y.data[:, :, i, j], x[:, :, rows, j:j + 2].max(axis=(2, 3)))
    gradcheck(lambda t: F.max_pool2d(t, (3, 2), (2, 1), (1, 0)), [x])
    gradcheck(lambda t: F.avg_pool2d(t, (3, 2), (2, 1), (1, 0), count_include_pad=False), [x])


def test_inference_path_matches_training_path(rng):
    # without a gradient the forward skips the argmax bookkeeping
    x = shuffled_linspace((2, 3, 9, 9), rng)
    with miniran.no_grad():
        a = F.max_pool2d(Tensor(x, requires_grad=True), 3, 2, 1).data
    b = F.max_pool2d(Tensor(x, requires_grad=True), 3, 2, 1).data
    np.testing.assert_array_equal(a, b)


def test_float32_stays_float32(rng):
    x = Tensor(shuffled_linspace((2, 2, 6, 6), rng).astype(np.float32), requires_grad=True)
    for fn in (lambda t: F.max_pool2d(t, 3, 2, 1), lambda t: F.avg_pool2d(t, 3, 2, 1), F.global_avg_pool2d):
        x.grad = None
        y = fn(x)
        y.backward(np.ones(y.shape, np.float32))
        assert y.dtype == np.float32 and x.grad.dtype == np.float32 and x.grad.shape == x.shape


# --------------------------------------------------------------------------- backward


@pytest.mark.parametrize("k,s,p,ceil_mode,hw", GRID)
def test_gradcheck_grid(k, s, p, ceil_mode, hw, rng):
    x = shuffled_linspace((1, 2) + hw, rng)
    gradcheck(lambda t: F.max_pool2d(t, k, s, p, ceil_mode), [x])
    for cip in (True, False):
        gradcheck(lambda t: F.avg_pool2d(t, k, s, p, ceil_mode, cip), [x])


def test_gradcheck_global_avg_pool(rng):
    gradcheck(F.global_avg_pool2d, [rng.standard_normal((2, 3, 4, 5))])


def test_max_pool_backward_accumulates_over_overlapping_windows():
    # the centre of a 3x3 input is the max of all four 2x2 windows (stride 1)
    x = np.array([[0.1, 0.2, 0.3], [0.4, 9.0, 0.5], [0.6, 0.7, 0.8]]).reshape(1, 1, 3, 3)
    t = Tensor(x, requires_grad=True)
    F.max_pool2d(t, 2, stride=1).backward(np.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2))
    expected = np.zeros((3, 3))
    expected[1, 1] = 10.0
    np.testing.assert_array_equal(t.grad[0, 0], expected)


def test_max_pool_ties_go_to_the_first_pixel_of_the_window():
    # e.g. after a ReLU: a window of zeros sends its gradient to its top-left pixel, as PyTorch
    t = Tensor(np.zeros((1, 1, 4, 4)), requires_grad=True)
    F.max_pool2d(t, 2).backward(np.ones((1, 1, 2, 2)))
    expected = np.zeros((4, 4))
    expected[::2, ::2] = 1.0
    np.testing.assert_array_equal(t.grad[0, 0], expected)


def test_avg_pool_backward_spreads_evenly():
    t = Tensor(np.zeros((1, 1, 4, 4)), requires_grad=True)
    F.avg_pool2d(t, 2).backward(np.full((1, 1, 2, 2), 4.0))
    np.testing.assert_array_equal(t.grad, np.ones((1, 1, 4, 4)))


def test_larger_input_directional(rng):
    x = shuffled_linspace((4, 3, 16, 16), rng)
    gradcheck(lambda t: F.max_pool2d(t, 3, 2, 1), [x], mode="directional")
    gradcheck(lambda t: F.avg_pool2d(t, 3, 2, 1), [x], mode="directional")


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("fn", [F.max_pool2d, F.avg_pool2d])
def test_validation(fn):
    x = Tensor(np.zeros((1, 2, 4, 5)))
    name = fn.__name__
    with pytest.raises(ValueError, match=rf"{name}: x must be 4-D \(N, C, H, W\), got shape \(2, 4, 5\)"):
        fn(Tensor(np.zeros((2, 4, 5))), 2)
    with pytest.raises(ValueError, match=r"kernel_size \(7, 7\) is larger than the padded input \(6, 7\)"):
        fn(x, 7, padding=1)
    with pytest.raises(ValueError, match=r"padding must be non-negative, got \(-1, -1\)"):
        fn(x, 3, padding=-1)
    with pytest.raises(ValueError, match=r"padding \(2, 2\) must be at most half of kernel_size \(3, 3\)"):
        fn(x, 3, padding=2)
    with pytest.raises(ValueError, match=r"stride must be positive, got \(0, 0\)"):
        fn(x, 2, stride=0)
    with pytest.raises(ValueError, match=r"kernel_size must be positive, got \(0, 0\)"):
        fn(x, 0)
    with pytest.raises(ValueError, match="kernel_size must be an int or a pair"):
        fn(x, (2, 2, 2))


def test_global_avg_pool_validation():
    with pytest.raises(ValueError, match=r"global_avg_pool2d: x must be 4-D .* got shape \(2, 3\)"):
        F.global_avg_pool2d(Tensor(np.zeros((2, 3))))


# --------------------------------------------------------------------------- layers


def test_layers(rng):
    x = Tensor(shuffled_linspace((2, 3, 7, 7), rng))
    np.testing.assert_array_equal(nn.MaxPool2d(3, 2, 1)(x).data, F.max_pool2d(x, 3, 2, 1).data)
    np.testing.assert_array_equal(
        nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False)(x).data,
        F.avg_pool2d(x, 2, ceil_mode=True, count_include_pad=False).data,
    )
    y = nn.GlobalAvgPool2d()(x)
    assert y.shape == (2, 3)
    np.testing.assert_allclose(y.data, x.data.mean(axis=(2, 3)))
    assert repr(nn.MaxPool2d(3, 2, 1)) == "MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=False)"
    assert nn.MaxPool2d(2).parameters() == []


# --------------------------------------------------------------------------- GPU and torch


@pytest.mark.parametrize("kind", ["max", "avg", "global"])
@pytest.mark.parametrize("k,s,p,ceil_mode", [(3, 2, 1, False), (2, 2, 0, True), (3, 1, 1, True)])
def test_gpu_matches_cpu(cp, kind, k, s, p, ceil_mode, rng):
    x = shuffled_linspace((2, 3, 9, 8), rng).astype(np.float32)
    fns = {
        "max": lambda t: F.max_pool2d(t, k, s, p, ceil_mode),
        "avg": lambda t: F.avg_pool2d(t, k, s, p, ceil_mode),
        "global": F.global_avg_pool2d,
    }
    results = []
    for xp in (np, cp):
        t = Tensor(xp.asarray(x), requires_grad=True)
        y = fns[kind](t)
        gy = xp.asarray(np.linspace(-1, 1, int(np.prod(y.shape)), dtype=np.float32).reshape(y.shape))
        y.backward(gy)
        results.append((to_numpy(y.data), to_numpy(t.grad)))
    (y_cpu, g_cpu), (y_gpu, g_gpu) = results
    np.testing.assert_allclose(y_gpu, y_cpu, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(g_gpu, g_cpu, rtol=1e-5, atol=1e-6)  # GPU adds in another order


@pytest.mark.parametrize(
    "k,s,p,ceil_mode", [(3, 2, 1, False), (3, 2, 1, True), (2, 2, 0, True), (3, 1, 0, False), (2, 1, 1, True)]
)
@pytest.mark.parametrize("hw", [(7, 7), (8, 8), (5, 9)])
def test_matches_torch(k, s, p, ceil_mode, hw, rng):
    torch = pytest.importorskip("torch")
    x = shuffled_linspace((2, 3) + hw, rng)
    for kind, cip in (("max", True), ("avg", True), ("avg", False)):
        tx = torch.tensor(x, requires_grad=True)
        if kind == "max":
            ty = torch.nn.functional.max_pool2d(tx, k, s, p, ceil_mode=ceil_mode)
        else:
            ty = torch.nn.functional.avg_pool2d(tx, k, s, p, ceil_mode=ceil_mode, count_include_pad=cip)
        gy = rng.standard_normal(tuple(ty.shape))
        ty.backward(torch.tensor(gy))
        mx = Tensor(x, requires_grad=True)
        if kind == "max":
            my = F.max_pool2d(mx, k, s, p, ceil_mode)
        else:
            my = F.avg_pool2d(mx, k, s, p, ceil_mode, cip)
        my.backward(gy)
        np.testing.assert_allclose(my.data, ty.detach().numpy(), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(mx.grad, tx.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_max_pool_window_of_minus_infinity_keeps_its_gradient():
    """PyTorch's answer: a window whose pixels are all -inf sends its gradient to its first real pixel."""
    x = np.full((1, 1, 4, 4), -np.inf)
    x[0, 0, 2:, 2:] = 1.0
    for padding in (0, 1):
        t = Tensor(x.copy(), requires_grad=True)
        y = F.max_pool2d(t, 2, 2, padding)
        y.backward(np.ones(y.shape))
        assert t.grad.sum() == y.size, padding  # no gradient is lost in the padding
    t = Tensor(x.copy(), requires_grad=True)
    F.max_pool2d(t, 2, 2, 1).sum().backward()
    # window (0, 0) covers padding and x[0, 0, 0, 0] only: the gradient lands on that real pixel
    assert t.grad[0, 0, 0, 0] == 1.0
