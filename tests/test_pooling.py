"""Pooling: naive-loop references, gradient checks over a grid of settings
(distinct inputs, so max pooling has no ties), hand-computed cases, validation,
layers, GPU and torch agreement."""

import contextlib
import itertools
import math

import numpy as np
import pytest

import miniran
import miniran.functional as F
import miniran.threads
from miniran import Tensor, gradcheck, nn
from miniran.backend import to_numpy

from function_cases import naive_pool2d


def shuffled_linspace(shape, rng):
    """Distinct values in [-1, 1] in random order: no ties, so max pooling is differentiable."""
    size = int(np.prod(shape))
    return rng.permutation(np.linspace(-1.0, 1.0, size)).reshape(shape)


# --------------------------------------------------------------------------- the output-size rule
# (the pooling oracle itself is naive_pool2d, from function_cases.py)


def ref_out_size(size, k, s, p, ceil_mode):
    """PyTorch's rule, written with math.floor/math.ceil on real division."""
    rounding = math.ceil if ceil_mode else math.floor
    out = rounding((size + 2 * p - k) / s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1  # the last window would start in the right padding
    return out


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
        F.max_pool2d(Tensor(x), k, s, p, ceil_mode).data, naive_pool2d(x, k, s, p, ceil_mode=ceil_mode, kind="max")
    )
    for cip in (True, False):
        np.testing.assert_allclose(
            F.avg_pool2d(Tensor(x), k, s, p, ceil_mode, cip).data,
            naive_pool2d(x, k, s, p, ceil_mode=ceil_mode, kind="avg", count_include_pad=cip),
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


def test_ceil_mode_window_may_outgrow_a_small_map():
    """Issue 17, PyTorch's rule: in ceil mode the only condition is one output window,
    whose start lies inside the input or its left padding; it may run past the padded edge.
    ``max_pool2d(x, 2, 2, ceil_mode=True)`` of a 1x1 map is that pixel (it was refused)."""
    x = np.array([[[[3.0]]]])
    t = Tensor(x, requires_grad=True)
    y = F.max_pool2d(t, 2, 2, ceil_mode=True)
    assert y.shape == (1, 1, 1, 1) and y.data.item() == 3.0
    y.backward(np.full((1, 1, 1, 1), 5.0))
    assert t.grad.item() == 5.0
    for cip in (True, False):  # the window clipped to the padded edge holds the one pixel: divisor 1
        assert F.avg_pool2d(Tensor(x), 2, 2, ceil_mode=True, count_include_pad=cip).data.item() == 3.0
    # 1x3 map, 2x2 kernel, stride 2: rows ceil((1 - 2) / 2) + 1 = 1, columns ceil((3 - 2) / 2) + 1 = 2;
    # the windows cover columns {0, 1} and {2} (clipped), one row
    x = np.array([[[[1.0, 5.0, 2.0]]]])
    np.testing.assert_array_equal(F.max_pool2d(Tensor(x), 2, ceil_mode=True).data, [[[[5.0, 2.0]]]])
    np.testing.assert_array_equal(F.avg_pool2d(Tensor(x), 2, ceil_mode=True).data, [[[[3.0, 2.0]]]])
    # 1x1 map, 4x4 kernel, stride 3, padding 1: one window from -1 to 2, clipped to the padded
    # edge at H + P = 2: rows -1 (padding), 0 (the pixel), 1 (padding)
    x = np.array([[[[9.0]]]])
    assert F.max_pool2d(Tensor(x), 4, 3, 1, ceil_mode=True).data.item() == 9.0
    assert F.avg_pool2d(Tensor(x), 4, 3, 1, ceil_mode=True).data.item() == 1.0  # 9 / (3 * 3)
    assert F.avg_pool2d(Tensor(x), 4, 3, 1, ceil_mode=True, count_include_pad=False).data.item() == 9.0
    with pytest.raises(ValueError, match="larger than the padded input"):
        F.max_pool2d(Tensor(x), 4, 3, 1)  # without ceil mode: floor((1 + 2 - 4) / 3) + 1 = 0 windows


SMALL_MAPS = [(1, 1), (1, 3), (2, 2), (2, 3), (3, 1), (4, 5)]


@pytest.mark.parametrize("hw", SMALL_MAPS)
def test_small_maps_follow_torch(hw, rng):
    """Every kernel 1..4, stride 1..3, padding up to half the kernel, ceil mode or not, on small
    maps: the same output (forward and backward) as PyTorch, or an error where PyTorch gives one."""
    torch = pytest.importorskip("torch")
    x = shuffled_linspace((2, 2) + hw, rng)
    for k, s, p, ceil_mode in itertools.product([1, 2, 3, 4], [1, 2, 3], [0, 1, 2], [False, True]):
        if 2 * p > k:
            continue
        for kind, cip in (("max", True), ("avg", True), ("avg", False)):
            case = (hw, kind, k, s, p, ceil_mode, cip)
            tx = torch.tensor(x, requires_grad=True)
            try:
                if kind == "max":
                    ty = torch.nn.functional.max_pool2d(tx, k, s, p, ceil_mode=ceil_mode)
                else:
                    ty = torch.nn.functional.avg_pool2d(tx, k, s, p, ceil_mode=ceil_mode, count_include_pad=cip)
            except RuntimeError:
                ty = None
            mx = Tensor(x, requires_grad=True)
            fn = (lambda t: F.max_pool2d(t, k, s, p, ceil_mode)) if kind == "max" else (  # noqa: E731
                lambda t: F.avg_pool2d(t, k, s, p, ceil_mode, cip))
            if ty is None:
                with pytest.raises(ValueError, match="larger than the padded input"):
                    fn(mx)
                continue
            my = fn(mx)
            gy = rng.standard_normal(tuple(ty.shape))
            ty.backward(torch.tensor(gy))
            my.backward(gy)
            assert my.shape == tuple(ty.shape), case
            np.testing.assert_allclose(my.data, ty.detach().numpy(), rtol=1e-12, atol=1e-15, err_msg=str(case))
            np.testing.assert_allclose(mx.grad, tx.grad.numpy(), rtol=1e-12, atol=1e-15, err_msg=str(case))
            assert F.pool_output_size(hw[0], k, s, p, ceil_mode) == ty.shape[2], case


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
    # ceil mode: the kernel may run past the padded input by stride - 1 at most (issue 17)
    with pytest.raises(ValueError, match=r"kernel_size \(8, 8\) is larger than the padded input \(6, 7\) "
                                         r"by more than stride - 1 = 1 \(ceil_mode=True"):
        fn(x, 8, stride=2, padding=1, ceil_mode=True)
    with pytest.raises(ValueError, match=rf"{name}: x has no pixels: shape \(1, 2, 0, 5\)"):
        fn(Tensor(np.zeros((1, 2, 0, 5))), 2, padding=1)  # every window would be padding only
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


# --------------------------------------------------------------------------- the max-pool backward, against naive loops


def ref_max_pool_backward(x, gy, k, s, p):
    """Each window sends its gradient to its max, one window at a time, straight from the rules.

    Padding never wins; on ties the first pixel (row-major) wins; a window
    whose real pixels are all -inf sends its gradient to its first real pixel.
    """
    n, c, h, w = x.shape
    gx = np.zeros(x.shape)
    for b, ch, i, j in itertools.product(range(n), range(c), range(gy.shape[2]), range(gy.shape[3])):
        h0, w0 = i * s - p, j * s - p
        best, at = -np.inf, (max(h0, 0), max(w0, 0))
        for r in range(max(h0, 0), min(h0 + k, h)):
            for q in range(max(w0, 0), min(w0 + k, w)):
                if x[b, ch, r, q] > best:
                    best, at = x[b, ch, r, q], (r, q)
        gx[b, ch][at] += gy[b, ch, i, j]
    return gx


def _max_pool_backward_inputs(shape, rng):
    distinct = shuffled_linspace(shape, rng)
    ties = np.maximum(np.round(distinct * 3), 0)  # after a ReLU: windows of equal values
    minus_inf = distinct.copy()
    minus_inf[0, 0] = -np.inf  # a whole plane: every window is all -inf
    minus_inf[-1, -1, :2, :2] = -np.inf  # a corner window, with its padding
    return {"distinct": distinct, "ties": ties, "minus_inf": minus_inf}


@pytest.mark.parametrize("k,s,p,ceil_mode,hw", GRID)
@pytest.mark.parametrize("reference", [True, False], ids=["reference", "twin"])
def test_max_pool_backward_matches_naive_loops(k, s, p, ceil_mode, hw, reference, rng):
    for name, x in _max_pool_backward_inputs((2, 2) + hw, rng).items():
        t = Tensor(x, requires_grad=True)
        with miniran.reference_only() if reference else contextlib.nullcontext():
            y = F.max_pool2d(t, k, s, p, ceil_mode)
        assert type(y.creator).__name__ == ("MaxPool2dFunction" if reference else "MaxPool2dCPU")
        gy = rng.standard_normal(y.shape)
        y.backward(gy)
        np.testing.assert_allclose(t.grad, ref_max_pool_backward(x, gy, k, s, p), rtol=1e-13, atol=1e-15,
                                   err_msg=name)


# --------------------------------------------------------------------------- the CPU twins against the reference




def _forward_backward(fn, x, gy, reference):
    """(y, gx, the class that computed y) of ``fn`` on x with upstream gradient gy."""
    t = Tensor(x.copy(), requires_grad=True)
    with miniran.reference_only() if reference else contextlib.nullcontext():
        y = fn(t)
        y.backward(gy)
    return to_numpy(y.data), to_numpy(t.grad), type(y.creator).__name__


# (function, its twin on the CPU, input shape, relative tolerance float64/float32 (forward, backward))
POOL_TWIN_CASES = {
    "max-3x3-s2-p1": (lambda t: F.max_pool2d(t, 3, 2, 1), "MaxPool2d", (5, 3, 9, 8)),
    "max-2x2-ceil": (lambda t: F.max_pool2d(t, 2, ceil_mode=True), "MaxPool2d", (7, 2, 5, 5)),
    "max-3x2-s(1,2)-p1-ceil": (lambda t: F.max_pool2d(t, (3, 2), (1, 2), 1, True), "MaxPool2d", (3, 2, 7, 6)),
    "avg-3x3-s2-p1": (lambda t: F.avg_pool2d(t, 3, 2, 1), "AvgPool2d", (5, 3, 9, 8)),
    "avg-3x3-s2-p1-ceil-nopad": (lambda t: F.avg_pool2d(t, 3, 2, 1, True, False), "AvgPool2d", (4, 3, 8, 9)),
    "avg-2x2-ceil-nopad": (lambda t: F.avg_pool2d(t, 2, ceil_mode=True, count_include_pad=False),
                           "AvgPool2d", (3, 2, 5, 7)),
    "avg-(2,3)-s1-p1": (lambda t: F.avg_pool2d(t, (2, 3), 1, 1), "AvgPool2d", (2, 3, 5, 6)),
    "max-2x2-ceil-1x1": (lambda t: F.max_pool2d(t, 2, 2, 0, True), "MaxPool2d", (3, 2, 1, 1)),
    "max-4x4-s3-p1-ceil-1x3": (lambda t: F.max_pool2d(t, 4, 3, 1, True), "MaxPool2d", (3, 2, 1, 3)),
    "avg-2x2-ceil-1x3": (lambda t: F.avg_pool2d(t, 2, 2, 0, True), "AvgPool2d", (3, 2, 1, 3)),
    "avg-4x4-s3-p1-ceil-2x1": (lambda t: F.avg_pool2d(t, 4, 3, 1, True), "AvgPool2d", (3, 2, 2, 1)),
    "global": (F.global_avg_pool2d, "GlobalAvgPool2d", (5, 3, 7, 6)),
    "global-1x1": (F.global_avg_pool2d, "GlobalAvgPool2d", (3, 4, 1, 1)),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", sorted(POOL_TWIN_CASES))
def test_cpu_twins_match_the_reference(case, dtype, cpu_threads, rng):
    fn, name, shape = POOL_TWIN_CASES[case]
    x = np.round(rng.standard_normal(shape), 1).astype(dtype)  # rounded: ties between window entries
    gy = rng.standard_normal(fn(Tensor(x)).shape).astype(dtype)
    y_fast, g_fast, fast = _forward_backward(fn, x, gy, reference=False)
    y_ref, g_ref, ref = _forward_backward(fn, x, gy, reference=True)
    assert (fast, ref) == (name + "CPU", name + "Function")
    assert y_fast.dtype == g_fast.dtype == dtype and g_fast.shape == x.shape
    # max and average pooling: the reference's array code per group of images,
    # the same numbers; the max-pool scatter-add and the BLAS mean round differently
    tol = {"MaxPool2d": (0, 0), "AvgPool2d": (0, 0), "GlobalAvgPool2d": (1e-14, 0)}[name]
    if dtype == np.float32:
        tol = {"MaxPool2d": (0, 1e-6), "AvgPool2d": (0, 0), "GlobalAvgPool2d": (1e-6, 0)}[name]
    for what, a, b, rtol in (("y", y_fast, y_ref, tol[0]), ("gx", g_fast, g_ref, tol[1])):
        err = np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)
        assert err <= rtol, f"{case} {what}: the twin differs from the reference by {err:.2e} (relative)"


def test_twins_gradcheck(cpu_threads, rng):
    """float64 gradient checks through the twins (random upstream gradient)."""
    x = shuffled_linspace((3, 2, 7, 6), rng)
    gradcheck(lambda t: F.max_pool2d(t, 3, 2, 1, True), [x])
    gradcheck(lambda t: F.avg_pool2d(t, 3, 2, 1, True, False), [x])
    gradcheck(F.global_avg_pool2d, [x])


def test_max_pool_inference_saves_no_argmax(rng):
    x = shuffled_linspace((2, 3, 9, 9), rng)
    reference = F.pooling.MaxPool2dFunction
    for cls in (reference, *miniran.functional._dispatch.twins(reference)):
        if cls is reference or cls.suits((x,), {}, False):
            f = cls(kernel=(3, 3), stride=(2, 2), padding=(1, 1), ceil_mode=False)
            with miniran.no_grad():
                y = f(Tensor(x, requires_grad=True))
            assert f.arg is None, cls.__name__
            np.testing.assert_array_equal(y.data, naive_pool2d(x, 3, 2, 1, ceil_mode=False, kind="max"))


# --------------------------------------------------------------------------- the GPU twin against the reference, on the device


def _gpu_max_pool_inputs(rng):
    """Inputs where max-pool kernels go wrong: ties, -inf windows, NaN, odd sizes."""
    x = rng.standard_normal((2, 3, 9, 7)).astype(np.float32)
    ties = np.maximum(np.round(x), 0)  # after a ReLU: windows full of equal values
    minus_inf = x.copy()
    minus_inf[0, 1] = -np.inf  # whole plane: every window is all -inf
    minus_inf[1, 2, :2, :2] = -np.inf  # a corner window (with padding) of -inf
    nan = x.copy()
    nan[1, 0, 4, 4] = np.nan
    return {"random": x, "ties": ties, "minus_inf": minus_inf, "nan": nan}


@pytest.mark.gpu
@pytest.mark.parametrize("k,s,p,ceil_mode", [(3, 2, 1, False), (2, 2, 0, True), (3, 1, 1, True), (3, 2, 1, True)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pool_gpu_twin_matches_the_reference_on_the_device(cp, k, s, p, ceil_mode, dtype, rng):
    for name, x in _gpu_max_pool_inputs(rng).items():
        x = cp.asarray(x.astype(dtype))
        y_shape = F.max_pool2d(Tensor(x), k, s, p, ceil_mode).shape
        gy = cp.asarray(rng.standard_normal(y_shape).astype(dtype))
        fn = lambda t: F.max_pool2d(t, k, s, p, ceil_mode)  # noqa: E731
        ts = [Tensor(x, requires_grad=True) for _ in range(2)]
        with miniran.reference_only():
            y_ref = fn(ts[0])
        y_gpu = fn(ts[1])
        assert (type(y_gpu.creator).__name__, type(y_ref.creator).__name__) == ("MaxPool2dGPU", "MaxPool2dFunction")
        for y, t in zip((y_ref, y_gpu), ts):
            y.backward(gy)
            assert isinstance(y.data, cp.ndarray) and isinstance(t.grad, cp.ndarray)
            assert y.dtype == t.grad.dtype == dtype
        np.testing.assert_array_equal(to_numpy(y_gpu.data), to_numpy(y_ref.data), err_msg=name)
        rtol = 1e-6 if dtype == np.float32 else 1e-13
        np.testing.assert_allclose(to_numpy(ts[1].grad), to_numpy(ts[0].grad), rtol=rtol, atol=rtol, err_msg=name)


@pytest.mark.gpu
@pytest.mark.parametrize("hw", [(1, 1), (1, 3), (2, 2)])
@pytest.mark.parametrize("k,s,p", [(2, 2, 0), (4, 3, 1), (3, 2, 1)])
def test_ceil_mode_on_small_maps_on_the_device(cp, hw, k, s, p, rng):
    """Issue 17: windows that outgrow a small map (ceil mode): the GPU twin and the reference on
    the device give the CPU's numbers."""
    x = shuffled_linspace((2, 3) + hw, rng).astype(np.float32)
    fns = {"max": lambda t: F.max_pool2d(t, k, s, p, True),
           "avg": lambda t: F.avg_pool2d(t, k, s, p, True),
           "avg-nopad": lambda t: F.avg_pool2d(t, k, s, p, True, False)}
    for kind, fn in fns.items():
        gy = rng.standard_normal(fn(Tensor(x)).shape).astype(np.float32)
        y_cpu, g_cpu, _ = _forward_backward(fn, x, gy, reference=False)
        t = Tensor(cp.asarray(x), requires_grad=True)
        y = fn(t)
        y.backward(cp.asarray(gy))
        if kind == "max":
            assert type(y.creator).__name__ == "MaxPool2dGPU"
        np.testing.assert_allclose(to_numpy(y.data), y_cpu, rtol=1e-6, atol=1e-6, err_msg=kind)
        np.testing.assert_allclose(to_numpy(t.grad), g_cpu, rtol=1e-6, atol=1e-6, err_msg=kind)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["avg", "global"])
def test_average_pooling_runs_its_reference_on_the_device(cp, kind, rng):
    """No GPU twin: CuPy arrays take the reference code, and it agrees with the CPU twin."""
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    fn = (lambda t: F.avg_pool2d(t, 3, 2, 1, True, False)) if kind == "avg" else F.global_avg_pool2d
    gy = rng.standard_normal(fn(Tensor(x)).shape).astype(np.float32)
    y_cpu, g_cpu, cpu_name = _forward_backward(fn, x, gy, reference=False)
    t = Tensor(cp.asarray(x), requires_grad=True)
    y = fn(t)
    y.backward(cp.asarray(gy))
    assert cpu_name.endswith("CPU") and type(y.creator).__name__ == cpu_name[:-3] + "Function"
    np.testing.assert_allclose(to_numpy(y.data), y_cpu, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(to_numpy(t.grad), g_cpu, rtol=1e-6, atol=1e-6)


@pytest.mark.gpu
def test_max_pool_gpu_twin_launches(cp, rng):
    """One kernel forward, one backward."""
    cupy_standin = pytest.importorskip("cupy_standin", reason="counts launches: stand-in only")
    t = Tensor(cp.asarray(rng.standard_normal((2, 3, 9, 8)).astype(np.float32)), requires_grad=True)
    y = F.max_pool2d(t, 3, 2, 1)
    gy = cp.ones(y.shape, dtype=cp.float32)
    with cupy_standin.counting() as c:
        y = F.max_pool2d(t, 3, 2, 1)
        y.creator.backward(gy)
    assert c.launches == 2 and c.syncs == 0, c.launches_by_name
