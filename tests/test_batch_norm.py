"""Batch norm: gradient checks (float64, random upstream gradient), hand-computed
references, running-statistic updates, the layer, validation, GPU and torch agreement,
and the engine's twins (``BatchNormCPU``, ``BatchNormGPU``) against the reference
``BatchNorm`` on the same device."""

import contextlib

import numpy as np
import pytest

import miniran
import miniran.functional as F
import miniran.threads
from miniran import Tensor, gradcheck, nn

from function_cases import forward_backward

SHAPES = [(4, 3, 2, 3), (6, 4)]  # (N, C, H, W) and (N, C)


def make_inputs(rng, shape):
    """x with std ~1.5 (no tiny per-channel variance), gamma away from 0, beta."""
    c = shape[1]
    x = rng.standard_normal(shape) * 1.5 + 0.5
    gamma = rng.uniform(0.5, 1.5, c) * rng.choice([-1.0, 1.0], c)
    beta = rng.standard_normal(c)
    return x, gamma, beta


def reference(x, gamma, beta, mean, var, eps=1e-5):
    """Per-channel loop: y[:, c] = gamma[c] * (x[:, c] - mean[c]) / sqrt(var[c] + eps) + beta[c]."""
    y = np.empty_like(x)
    for c in range(x.shape[1]):
        y[:, c] = gamma[c] * (x[:, c] - mean[c]) / np.sqrt(var[c] + eps) + beta[c]
    return y


def channel_stats(x):
    """Mean, biased and unbiased variance of every channel, one channel at a time."""
    means, biased, unbiased = [], [], []
    for c in range(x.shape[1]):
        values = x[:, c].ravel()
        m = values.sum() / values.size
        ss = ((values - m) ** 2).sum()
        means.append(m)
        biased.append(ss / values.size)
        unbiased.append(ss / (values.size - 1))
    return np.array(means), np.array(biased), np.array(unbiased)


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_running", [False, True])
def test_gradcheck_training(shape, with_running, rng):
    x, gamma, beta = make_inputs(rng, shape)
    c = shape[1]
    running = (np.zeros(c), np.ones(c)) if with_running else (None, None)
    # the running stats change on every call, but the training output does not use them
    gradcheck(lambda x, g, b: F.batch_norm(x, *running, g, b, training=True), [x, gamma, beta])


@pytest.mark.parametrize("shape", SHAPES)
def test_gradcheck_eval(shape, rng):
    x, gamma, beta = make_inputs(rng, shape)
    rm, rv = rng.standard_normal(shape[1]), rng.uniform(0.5, 2.0, shape[1])
    gradcheck(lambda x, g, b: F.batch_norm(x, rm, rv, g, b, training=False), [x, gamma, beta])


def test_gradcheck_larger_input_directional(rng):
    x, gamma, beta = make_inputs(rng, (8, 5, 6, 6))
    gradcheck(lambda x, g, b: F.batch_norm(x, weight=g, bias=b), [x, gamma, beta], mode="directional")


def test_training_gradient_of_a_plain_sum_is_zero(rng):
    # the normalised output sums to N*H*W*beta whatever x is: dL/dx of sum(y) must vanish
    x, gamma, beta = make_inputs(rng, (4, 3, 2, 2))
    t = Tensor(x, requires_grad=True)
    F.sum(F.batch_norm(t, weight=Tensor(gamma), bias=Tensor(beta))).backward()
    np.testing.assert_allclose(t.grad, 0.0, atol=1e-12)


def test_only_requested_gradients(rng):
    x, gamma, beta = make_inputs(rng, (4, 3, 2, 2))
    t, g = Tensor(x, requires_grad=True), Tensor(gamma)  # gamma frozen
    b = Tensor(beta, requires_grad=True)
    F.batch_norm(t, weight=g, bias=b).backward(rng.standard_normal(x.shape))
    assert t.grad is not None and b.grad is not None and g.grad is None


# --------------------------------------------------------------------------- forward values


@pytest.mark.parametrize("shape", SHAPES)
def test_training_forward_matches_hand_computed(shape, rng):
    x, gamma, beta = make_inputs(rng, shape)
    mean, var, _ = channel_stats(x)
    y = F.batch_norm(Tensor(x), weight=Tensor(gamma), bias=Tensor(beta), training=True)
    np.testing.assert_allclose(y.data, reference(x, gamma, beta, mean, var), rtol=1e-12, atol=1e-12)


def test_tiny_hand_computed_case():
    # one channel, values 1, 2, 3, 4: mean 2.5, biased variance 1.25
    x = np.array([1.0, 2.0, 3.0, 4.0]).reshape(4, 1)
    y = F.batch_norm(Tensor(x), weight=Tensor(np.array([2.0])), bias=Tensor(np.array([1.0])), eps=0.0)
    expected = 2.0 * (x - 2.5) / np.sqrt(1.25) + 1.0
    np.testing.assert_allclose(y.data, expected, rtol=1e-14)


@pytest.mark.parametrize("shape", SHAPES)
def test_running_stats_update_uses_unbiased_variance(shape, rng):
    x, gamma, beta = make_inputs(rng, shape)
    c = shape[1]
    rm0, rv0 = rng.standard_normal(c), rng.uniform(0.5, 2.0, c)
    rm, rv = rm0.copy(), rv0.copy()
    F.batch_norm(Tensor(x), rm, rv, Tensor(gamma), Tensor(beta), training=True, momentum=0.3)
    mean, _, unbiased = channel_stats(x)
    np.testing.assert_allclose(rm, 0.7 * rm0 + 0.3 * mean, rtol=1e-12)
    np.testing.assert_allclose(rv, 0.7 * rv0 + 0.3 * unbiased, rtol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_eval_uses_and_keeps_running_stats(shape, rng):
    x, gamma, beta = make_inputs(rng, shape)
    c = shape[1]
    rm, rv = rng.standard_normal(c), rng.uniform(0.5, 2.0, c)
    rm_before, rv_before = rm.copy(), rv.copy()
    y = F.batch_norm(Tensor(x), rm, rv, Tensor(gamma), Tensor(beta), training=False)
    np.testing.assert_allclose(y.data, reference(x, gamma, beta, rm, rv), rtol=1e-12)
    np.testing.assert_array_equal(rm, rm_before)
    np.testing.assert_array_equal(rv, rv_before)


def test_no_running_stats_means_batch_stats_in_eval_too(rng):
    x, gamma, beta = make_inputs(rng, (4, 3, 2, 2))
    a = F.batch_norm(Tensor(x), weight=Tensor(gamma), bias=Tensor(beta), training=False)
    b = F.batch_norm(Tensor(x), weight=Tensor(gamma), bias=Tensor(beta), training=True)
    np.testing.assert_array_equal(a.data, b.data)


def test_gamma_beta_none_mean_plain_normalisation(rng):
    x = rng.standard_normal((5, 2, 3, 3))
    y = F.batch_norm(Tensor(x)).data
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0.0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1.0, rtol=1e-3)  # eps makes it a bit below 1


def test_running_stats_update_under_no_grad_and_keep_their_dtype(rng):
    x = rng.standard_normal((4, 3, 2, 2))  # float64 input, float32 buffers
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    with miniran.no_grad():
        F.batch_norm(Tensor(x), rm, rv, Tensor(np.ones(3)), Tensor(np.zeros(3)), training=True)
    assert rm.dtype == np.float32 and rv.dtype == np.float32
    np.testing.assert_allclose(rm, 0.1 * channel_stats(x)[0], rtol=1e-6)


# --------------------------------------------------------------------------- validation


def test_batch_norm_validation(rng):
    x = Tensor(rng.standard_normal((4, 3, 2, 2)))
    g, b = Tensor(np.ones(3)), Tensor(np.zeros(3))
    with pytest.raises(ValueError, match=r"x must be 4-D .* got shape \(4, 3, 2\)"):
        F.batch_norm(Tensor(np.ones((4, 3, 2))), weight=g, bias=b)
    with pytest.raises(ValueError, match=r"gamma must have shape \(3,\)"):
        F.batch_norm(x, weight=Tensor(np.ones(4)), bias=b)
    with pytest.raises(ValueError, match=r"beta must have shape \(3,\)"):
        F.batch_norm(x, weight=g, bias=Tensor(np.zeros(2)))
    with pytest.raises(ValueError, match=r"running_var must have shape \(3,\)"):
        F.batch_norm(x, np.zeros(3), np.ones(5), g, b)
    with pytest.raises(ValueError, match="both running_mean and running_var"):
        F.batch_norm(x, np.zeros(3), None, g, b)
    with pytest.raises(TypeError, match="raw array"):
        F.batch_norm(x, Tensor(np.zeros(3)), Tensor(np.ones(3)), g, b)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        F.batch_norm(Tensor(np.ones((1, 3))), weight=g, bias=b)


# --------------------------------------------------------------------------- layer


def test_batchnorm2d_layer(rng):
    bn = nn.BatchNorm2d(3, momentum=0.2)
    np.testing.assert_array_equal(bn.weight.data, np.ones(3, np.float32))
    np.testing.assert_array_equal(bn.bias.data, np.zeros(3, np.float32))
    assert bn.running_mean.dtype == np.float32 and bn.running_var.dtype == np.float32
    np.testing.assert_array_equal(bn.running_mean, 0.0)
    np.testing.assert_array_equal(bn.running_var, 1.0)
    assert list(bn.state_dict()) == ["weight", "bias", "running_mean", "running_var"]
    assert [n for n, _ in bn.named_parameters()] == ["weight", "bias"]

    x = rng.standard_normal((4, 3, 5, 5)).astype(np.float32) * 2 + 1
    y = bn(Tensor(x))  # training mode by default: batch statistics
    mean, var, unbiased = channel_stats(x.astype(np.float64))
    np.testing.assert_allclose(y.data, reference(x, np.ones(3), np.zeros(3), mean, var), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.running_mean, 0.2 * mean, rtol=1e-5)
    np.testing.assert_allclose(bn.running_var, 0.8 + 0.2 * unbiased, rtol=1e-5)

    bn.eval()
    rm, rv = bn.running_mean.copy(), bn.running_var.copy()
    y = bn(Tensor(x))
    np.testing.assert_allclose(y.data, reference(x, np.ones(3), np.zeros(3), rm, rv), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(bn.running_mean, rm)
    np.testing.assert_array_equal(bn.running_var, rv)


def test_batchnorm2d_trains_its_parameters(rng):
    bn = nn.BatchNorm2d(2)
    x = Tensor(rng.standard_normal((3, 2, 2, 2)).astype(np.float32))
    bn(x).backward(rng.standard_normal((3, 2, 2, 2)).astype(np.float32))
    assert bn.weight.grad.shape == (2,) and bn.bias.grad.shape == (2,)


def test_batchnorm2d_validation():
    bn = nn.BatchNorm2d(3)
    with pytest.raises(ValueError, match=r"x has 4 channels \(shape \(2, 4, 3, 3\)\) but num_features is 3"):
        bn(Tensor(np.ones((2, 4, 3, 3), np.float32)))
    with pytest.raises(ValueError, match=r"x must be 4-D .* got shape \(2, 3\)"):
        bn(Tensor(np.ones((2, 3), np.float32)))


# --------------------------------------------------------------------------- GPU and torch


@pytest.mark.parametrize("training", [True, False])
def test_gpu_matches_cpu(cp, training, rng):
    x, gamma, beta = make_inputs(rng, (4, 3, 5, 5))
    gy = rng.standard_normal(x.shape)
    results = []
    for xp in (np, cp):
        rm, rv = xp.asarray(np.full(3, 0.5)), xp.asarray(np.full(3, 2.0))
        t, g, b = (Tensor(xp.asarray(a), requires_grad=True) for a in (x, gamma, beta))
        y = F.batch_norm(t, rm, rv, g, b, training=training)
        y.backward(xp.asarray(gy))
        results.append([miniran.backend.to_numpy(a) for a in (y.data, t.grad, g.grad, b.grad, rm, rv)])
    for cpu, gpu in zip(*results):
        np.testing.assert_allclose(gpu, cpu, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("training", [True, False])
def test_matches_torch(shape, training, rng):
    torch = pytest.importorskip("torch")
    x, gamma, beta = make_inputs(rng, shape)
    c = shape[1]
    rm, rv = rng.standard_normal(c), rng.uniform(0.5, 2.0, c)
    gy = rng.standard_normal(shape)

    tx, tg, tb = (torch.tensor(a, requires_grad=True) for a in (x, gamma, beta))
    trm, trv = torch.tensor(rm), torch.tensor(rv)
    ty = torch.nn.functional.batch_norm(tx, trm, trv, tg, tb, training=training, momentum=0.1, eps=1e-5)
    ty.backward(torch.tensor(gy))

    mx, mg, mb = (Tensor(a, requires_grad=True) for a in (x, gamma, beta))
    mrm, mrv = rm.copy(), rv.copy()
    my = F.batch_norm(mx, mrm, mrv, mg, mb, training=training, momentum=0.1, eps=1e-5)
    my.backward(gy)
    pairs = [(my.data, ty), (mx.grad, tx.grad), (mg.grad, tg.grad), (mb.grad, tb.grad), (mrm, trm), (mrv, trv)]
    for ours, theirs in pairs:
        np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_argument_order_is_pytorch_s():
    """Issue 10: batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)."""
    import inspect

    params = inspect.signature(F.batch_norm).parameters
    names = [n for n, p in params.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert names == ["x", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"]
    # miniran's one addition, sync batch norm's processes, is keyword-only: it cannot shift the order
    assert [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY] == ["comm"]
    assert inspect.signature(F.batch_norm).parameters["training"].default is False
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 2, 2))
    rm, rv = np.zeros(3), np.ones(3)
    g, b = Tensor(rng.uniform(0.5, 2, 3)), Tensor(rng.standard_normal(3))
    y = F.batch_norm(Tensor(x), rm, rv, g, b, True, 0.5, 1e-5)
    xhat = (x - x.mean(axis=(0, 2, 3), keepdims=True)) / np.sqrt(x.var(axis=(0, 2, 3), keepdims=True) + 1e-5)
    np.testing.assert_allclose(y.data, g.data[:, None, None] * xhat + b.data[:, None, None], rtol=1e-10)
    np.testing.assert_allclose(rm, 0.5 * x.mean(axis=(0, 2, 3)), rtol=1e-10)
    with pytest.raises(TypeError, match="order is PyTorch's"):
        F.batch_norm(Tensor(x), g, b)  # the old order (x, gamma, beta)


# --------------------------------------------------------------------------- batch_norm_relu


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_relu_is_relu_of_batch_norm(training, rng):
    x = rng.standard_normal((4, 3, 5, 5))
    g, b = rng.standard_normal(3), rng.standard_normal(3)
    rm, rv = rng.standard_normal(3), rng.random(3) + 0.5
    gy = rng.standard_normal(x.shape)
    results = []
    for fused in (False, True):
        tx, tg, tb = (Tensor(a.copy(), requires_grad=True) for a in (x, g, b))
        r = (rm.copy(), rv.copy())
        if fused:
            y = F.batch_norm_relu(tx, *r, tg, tb, training=training)
        else:
            y = F.relu(F.batch_norm(tx, *r, tg, tb, training=training))
        y.backward(gy)
        results.append([y.data, tx.grad, tg.grad, tb.grad, *r])
    for a, b_ in zip(*results):
        np.testing.assert_allclose(b_, a, rtol=1e-12, atol=1e-12)
    gradcheck(lambda x, g, b: F.batch_norm_relu(x, None, None, g, b, training=True), [x, g, b])


# --------------------------------------------------------------------------- the twins against the reference
# The engine's twins of BatchNorm (miniran/fast/norm_cpu.py, norm_gpu.py) must give
# the reference's numbers, forward and backward, running statistics included.
# CPU: miniran's threads are forced on even small arrays (PARALLEL_MIN_ELEMENTS
# lowered), 1 to 3 of them, so uneven splits of the batch are exercised too.


@pytest.fixture
def threads(cpu_threads):
    """1, 2 or 3 CPU threads, used on arrays of any size (conftest's cpu_threads)."""
    return cpu_threads


_run = forward_backward


def _assert_close(fast, ref, rtol, what):
    for i, (a, b) in enumerate(zip(fast, ref)):
        a, b = miniran.backend.to_numpy(a), miniran.backend.to_numpy(b)
        err = np.abs(a.astype(np.float64) - b).max() / max(np.abs(b).max(), 1e-30)
        assert err <= rtol, f"{what}: output {i} differs from the reference by {err:.2e} (relative)"


def _twin_and_reference(xp, shape, relu, training, offset, dtype, rng, twin):
    """[y, gx, ggamma, gbeta, running_mean, running_var] (NumPy copies) of three runs on xp.

    "twin" (the class named ``twin`` must run), "reference" (``reference_only()``)
    in ``dtype``, and "exact", the reference in float64 on the same values.
    """
    c = shape[1]
    x = (rng.standard_normal(shape) * 2 + offset).astype(dtype)  # big offset: E[x^2] - E[x]^2 would cancel
    gamma, beta = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    gy = rng.standard_normal(shape).astype(dtype)
    if relu:  # keep pre-activations away from the ReLU's kink, where rounding flips the mask
        gy = gy * (np.abs(rng.standard_normal(shape)) > 0.05).astype(dtype)
    fn = F.batch_norm_relu if relu else F.batch_norm
    runs = {}
    for name, reference, dt in (("twin", False, dtype), ("reference", True, dtype), ("exact", True, np.float64)):
        rm, rv = xp.full(c, offset, dtype=dt), xp.full(c, 4.0, dtype=dt)
        out = _run(lambda t, g, b: fn(t, rm, rv, g, b, training=training),
                   *(xp.asarray(a.astype(dt)) for a in (x, gamma, beta)), upstream=xp.asarray(gy.astype(dt)),
                   reference=reference, expect="BatchNorm" if reference else twin)
        runs[name] = [miniran.backend.to_numpy(a) for a in out + [rm, rv]]
        assert all(a.dtype == dt for a in runs[name]), name
    return runs


def _errors(fast, ref, relu):
    """Relative error of each of the six outputs of ``fast`` against ``ref`` (None: not compared)."""
    fast, ref = list(fast), list(ref)
    compared = [True] * len(ref)
    if relu:  # compare where the ReLU mask agrees (both paths agree everywhere but at ties)
        mask = (ref[0] > 1e-9) == (fast[0] > 1e-9)
        assert mask.mean() > 0.999
        fast[1], ref[1] = fast[1] * mask, ref[1] * mask
        # gamma/beta gradients sum over the whole channel: compare only without flips
        if not mask.all():
            compared[2] = compared[3] = False
    return [np.abs(a.astype(np.float64) - b).max() / max(np.abs(b).max(), 1e-30) if keep else None
            for a, b, keep in zip(fast, ref, compared)]


_NAMES = ["y", "gx", "ggamma", "gbeta", "running_mean", "running_var"]


def _assert_twin_matches_reference(runs, relu, dtype, what):
    """float64: the twin is the reference up to 1e-10. float32: both round, so the twin must be
    within 1e-4 of the float32 reference, and its error against the float64 reference no more
    than twice the float32 reference's own (or 3e-5, float32 rounding of these sums)."""
    if dtype == np.float64:
        for name, err in zip(_NAMES, _errors(runs["twin"], runs["reference"], relu)):
            assert err is None or err <= 1e-10, f"{what}: {name} differs from the reference by {err:.2e}"
        return
    direct = _errors(runs["twin"], runs["reference"], relu)
    twin, ref = _errors(runs["twin"], runs["exact"], relu), _errors(runs["reference"], runs["exact"], relu)
    for name, d, t, r in zip(_NAMES, direct, twin, ref):
        if d is None or t is None or r is None:
            continue
        assert t <= max(2 * r, 3e-5), f"{what}: {name} off by {t:.2e}, the float32 reference by {r:.2e}"
        assert d <= max(1e-4, 2 * r), f"{what}: {name} differs from the float32 reference by {d:.2e}"


@pytest.mark.parametrize("shape", [(5, 3, 7, 6), (7, 4, 4, 4), (2, 6, 1, 1), (3, 5, 3, 1)])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("offset", [0.5, 300.0], ids=["centred", "big-mean"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cpu_twin_matches_reference(shape, relu, training, offset, dtype, threads, rng):
    runs = _twin_and_reference(np, shape, relu, training, offset, dtype, rng, "BatchNormCPU")
    _assert_twin_matches_reference(runs, relu, dtype, f"{shape} relu={relu} training={training} {dtype.__name__}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cpu_twin_keeps_dtype_and_is_accurate_in_float32(dtype, threads, rng):
    x = (rng.standard_normal((6, 5, 8, 8)) * 3 + 2).astype(dtype)
    gy = rng.standard_normal(x.shape).astype(dtype)
    g, b = np.ones(5, dtype), np.zeros(5, dtype)
    fast = _run(lambda t: F.batch_norm(t, None, None, g, b, training=True), x, upstream=gy, reference=False,
                expect="BatchNormCPU")
    exact = _run(lambda t: F.batch_norm(t, None, None, g, b, training=True), x.astype(np.float64),
                 upstream=gy.astype(np.float64), reference=True, expect="BatchNorm")
    assert all(a.dtype == dtype for a in fast)
    _assert_close(fast, exact, 1e-5 if dtype == np.float32 else 1e-12, f"batch norm {dtype.__name__}")


@pytest.mark.parametrize("relu", [False, True])
def test_cpu_twin_gradcheck(relu, threads, rng):
    x = rng.standard_normal((5, 3, 4, 4)) + 1.0
    gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
    fn = F.batch_norm_relu if relu else F.batch_norm
    t = Tensor(x, requires_grad=True)
    assert type(fn(t, None, None, Tensor(gamma), Tensor(beta)).creator).__name__ == "BatchNormCPU"
    gradcheck(lambda t, g, b: fn(t, None, None, g, b, training=True), [x, gamma, beta])


def test_cpu_twin_takes_a_strided_input_and_frozen_parameters(threads, rng):
    """A non-contiguous x (a slice) and gamma without a gradient give the reference's numbers."""
    base = rng.standard_normal((5, 3, 8, 7)) + 2.0
    x = base[:, :, ::2, 1:]  # (5, 3, 4, 6), strided
    g, b = rng.standard_normal(3), rng.standard_normal(3)
    gy = rng.standard_normal(x.shape)
    results = []
    for reference in (False, True):
        tx, tb = Tensor(x, requires_grad=True), Tensor(b, requires_grad=True)
        with miniran.reference_only() if reference else contextlib.nullcontext():
            y = F.batch_norm(tx, None, None, Tensor(g), tb, training=True)
            y.backward(gy)
        assert type(y.creator).__name__ == ("BatchNorm" if reference else "BatchNormCPU")
        results.append([y.data, tx.grad, tb.grad])
    _assert_close(results[0], results[1], 1e-10, "strided x")


def test_dispatch_picks_the_cpu_twin_for_4d_numpy_only(rng):
    x4, x2 = Tensor(rng.standard_normal((2, 3, 4, 4))), Tensor(rng.standard_normal((5, 3)))
    for fn in (F.batch_norm, F.batch_norm_relu):
        t4 = Tensor(x4.data, requires_grad=True)
        assert type(fn(t4).creator).__name__ == "BatchNormCPU"
        assert type(fn(Tensor(x2.data, requires_grad=True)).creator).__name__ == "BatchNorm"  # 2-D: the reference
        with miniran.reference_only():
            assert type(fn(t4).creator).__name__ == "BatchNorm"
    # without a graph (no gradient asked for): the same twin, the same numbers; the reference within rounding
    np.testing.assert_allclose(F.batch_norm(x4).data, F.batch_norm(Tensor(x4.data, requires_grad=True)).data,
                               rtol=0, atol=0)
    with miniran.reference_only():
        ref = F.batch_norm(x4).data
    np.testing.assert_allclose(F.batch_norm(x4).data, ref, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- the GPU twin (stand-in or real GPU)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (6, 5), (3, 7, 1, 1), (5, 2, 3, 1)])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("offset", [0.5, 300.0], ids=["centred", "big-mean"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gpu_twin_matches_reference_on_the_same_device(cp, shape, relu, training, offset, dtype, rng):
    runs = _twin_and_reference(cp, shape, relu, training, offset, dtype, rng, "BatchNormGPU")
    _assert_twin_matches_reference(runs, relu, dtype, f"{shape} relu={relu} training={training} {dtype.__name__}")


@pytest.mark.gpu
def test_dispatch_picks_the_gpu_twin_and_the_reference_under_the_switch(cp, rng):
    for shape in ((2, 3, 4, 4), (5, 3)):
        t = Tensor(cp.asarray(rng.standard_normal(shape)), requires_grad=True)
        for fn in (F.batch_norm, F.batch_norm_relu):
            assert type(fn(t).creator).__name__ == "BatchNormGPU"
            with miniran.reference_only():
                assert type(fn(t).creator).__name__ == "BatchNorm"


@pytest.mark.gpu
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape, per_pass", [((4, 3, 5, 5), 1), ((40, 2, 21, 20), 2)],
                         ids=["one block per channel", "two stages"])
def test_gpu_twin_launches_one_kernel_each_way_or_two_for_large_channels(cp, relu, shape, per_pass, rng):
    """A channel of at most 16384 values: one kernel forward, one backward; larger ones two stages each."""
    cupy_standin = pytest.importorskip("cupy_standin", reason="counts launches: stand-in only")

    fn = F.batch_norm_relu if relu else F.batch_norm
    c = shape[1]
    x = Tensor(cp.asarray(rng.standard_normal(shape).astype(np.float32)), requires_grad=True)
    g, b = (Tensor(cp.asarray(rng.standard_normal(c).astype(np.float32)), requires_grad=True) for _ in range(2))
    rm, rv = cp.zeros(c, dtype=cp.float32), cp.ones(c, dtype=cp.float32)
    gy = cp.asarray(rng.standard_normal(x.shape).astype(np.float32))
    with cupy_standin.counting() as forward:
        y = fn(x, rm, rv, g, b, training=True)
    with cupy_standin.counting() as backward:
        y.backward(gy)
    assert forward.launches == per_pass, forward.launches_by_name.most_common()
    assert backward.launches == per_pass, backward.launches_by_name.most_common()
    with cupy_standin.counting() as evaluation:
        fn(x, rm, rv, g, b, training=False)
    assert evaluation.launches == 1, evaluation.launches_by_name.most_common()


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (40, 2, 21, 20)], ids=["one block per channel", "two stages"])
def test_gpu_twin_adds_the_shortcut_gradient_in_its_backward_kernel(cp, shape, rng):
    """out = bn_relu(h) + h: the gradient h gets from the shortcut is added by the batch norm's kernel."""
    cupy_standin = pytest.importorskip("cupy_standin", reason="counts launches: stand-in only")
    x0 = rng.standard_normal(shape)
    g0, b0, gy0 = rng.standard_normal(shape[1]) + 1, rng.standard_normal(shape[1]), rng.standard_normal(shape)
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        grads = []
        for reference in (True, False):
            x = Tensor(cp.asarray(x0.astype(dtype)), requires_grad=True)
            g, b = (Tensor(cp.asarray(a.astype(dtype)), requires_grad=True) for a in (g0, b0))
            with miniran.reference_only() if reference else contextlib.nullcontext():
                h = x * 2.0
                out = F.batch_norm_relu(h, None, None, g, b, training=True) + h
                with cupy_standin.counting() as backward:
                    out.backward(cp.asarray(gy0.astype(dtype)))
            grads.append([t.grad.get() for t in (x, g, b)])
        for ref, twin in zip(*grads):
            np.testing.assert_allclose(twin, ref, rtol=tol, atol=tol)
        assert backward.launches_by_name["add"] == 0, backward.launches_by_name.most_common()
