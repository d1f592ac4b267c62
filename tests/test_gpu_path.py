"""The GPU path: defects found when it first ran, and the fused kernels.

Tests marked ``gpu`` run on a real GPU when one is usable, and everywhere under
the CuPy stand-in (``MINIRAN_CUPY_STANDIN=1``, see tests/standin/README.md).
"""

import os
import subprocess
import sys

import numpy as np
import pytest

import miniran
import miniran.functional as F
import miniran.models
from miniran import backend, data, nn, optim
from miniran.autograd import Tensor

from conftest import ROOT, STANDIN_DIR, USING_STANDIN


# --------------------------------------------------------------------------- array module


@pytest.mark.gpu
def test_get_array_module_sees_raw_cupy_arrays(cp):
    a = cp.ones(3, dtype=cp.float32)
    # a CuPy array has a `.data` attribute (its memory pointer): not a tensor's data
    assert backend.get_array_module(a) is cp
    assert backend.get_array_module(np.ones(2), 2.0, a) is cp
    assert backend.get_array_module(None, Tensor(a)) is cp
    assert backend.get_array_module(np.ones(2), 3) is np
    assert backend.is_cupy_array(a) and not backend.is_cupy_array(Tensor(a))


@pytest.mark.gpu
def test_scalar_operands_and_functions_take_raw_cupy_arrays(cp, rng):
    """`(1 + mask) * trunk` and every vision function on CuPy inputs stay on the GPU."""
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    t = Tensor(cp.asarray(x), requires_grad=True)
    y = (1 + F.sigmoid(t)) * t
    for out in (y, F.conv2d(t, Tensor(cp.ones((4, 3, 3, 3), dtype=cp.float32)), padding=1),
                F.max_pool2d(t, 3, 2, 1), F.interpolate_bilinear(t, (16, 16))):
        assert isinstance(out.data, cp.ndarray) and out.dtype == np.float32


@pytest.mark.skipif(not USING_STANDIN, reason="needs the CuPy stand-in to import `cupy` before miniran")
def test_tensor_from_cupy_imported_by_the_user_first():
    """CuPy imported by the user, not yet by miniran: Tensor(cupy_array) must work."""
    code = (
        "import cupy as cp\n"
        "import miniran\n"
        "from miniran import backend\n"
        "assert backend._cupy is None  # miniran has not imported CuPy itself\n"
        "t = miniran.Tensor(cp.ones(3, dtype=cp.float32))\n"
        "assert isinstance(t.data, cp.ndarray) and t.device == 'gpu'\n"
        "print('ok')\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(STANDIN_DIR), str(ROOT)]))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# --------------------------------------------------------------------------- devices


@pytest.mark.parametrize("name", ["cuda:1", "gpu:3", "CUDA:12"])
def test_other_gpu_indices_are_refused_not_mapped_to_device_0(name):
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES"):
        backend.normalize_device(name)
    assert backend.normalize_device("cuda:0") == "gpu"


# --------------------------------------------------------------------------- labels


def test_loader_refuses_out_of_range_labels_once_on_the_host():
    images = np.zeros((4, 3, 32, 32), np.uint8)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\), got range \[0, 10\]"):
        data.DataLoader(images, np.array([0, 1, 2, 10]), num_classes=10)
    with pytest.raises(ValueError, match=r"labels must lie in >= 0"):
        data.DataLoader(images, np.array([0, -1, 2, 3]))


@pytest.mark.gpu
def test_out_of_range_gpu_labels_are_caught(cp):
    """On the GPU an out-of-range label would wrap around silently; the loss becomes NaN."""
    logits = Tensor(cp.zeros((3, 4), dtype=cp.float32))
    loss = F.cross_entropy(logits, cp.asarray([0, 1, 4]))
    assert np.isnan(float(loss.data))
    loss = F.cross_entropy(logits, cp.asarray([0, 1, -5]))
    assert np.isnan(float(loss.data))


# --------------------------------------------------------------------------- dtypes


def test_max_backward_keeps_float32(rng):
    x = Tensor(rng.standard_normal((3, 4)).astype(np.float32), requires_grad=True)
    F.max(x, axis=1).sum().backward()
    assert x.grad.dtype == np.float32


# --------------------------------------------------------------------------- optimiser


def _steps(model, opt, xs, ys, xp):
    for x, y in zip(xs, ys):
        loss = F.cross_entropy(model(Tensor(xp.asarray(x))), xp.asarray(y))
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.gpu
@pytest.mark.parametrize("momentum,nesterov,wd", [(0.9, True, 1e-4), (0.9, False, 1e-2), (0.0, False, 1e-4)])
def test_fused_sgd_kernel_matches_the_array_update(cp, rng, momentum, nesterov, wd):
    xs = [rng.standard_normal((8, 5)).astype(np.float32) for _ in range(4)]
    ys = [rng.integers(0, 3, 8) for _ in range(4)]
    results = []
    for xp in (np, cp):
        model = nn.Linear(5, 3, rng=np.random.default_rng(1))
        if xp is cp:
            model.to("gpu")
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=momentum, nesterov=nesterov, weight_decay=wd)
        _steps(model, opt, xs, ys, xp)
        results.append([backend.to_numpy(p.data) for p in model.parameters()])
        assert all(p.dtype == np.float32 for p in model.parameters())
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_moving_a_model_after_steps_moves_the_momentum_buffers(cp, rng):
    """Module.to() after optimiser steps: the momentum buffers follow the parameters."""
    xs = [rng.standard_normal((8, 5)).astype(np.float32) for _ in range(6)]
    ys = [rng.integers(0, 3, 8) for _ in range(6)]
    ref = nn.Linear(5, 3, rng=np.random.default_rng(1))
    ref_opt = optim.SGD(ref.parameters(), lr=0.1)
    _steps(ref, ref_opt, xs, ys, np)

    model = nn.Linear(5, 3, rng=np.random.default_rng(1))
    opt = optim.SGD(model.parameters(), lr=0.1)
    _steps(model, opt, xs[:2], ys[:2], np)
    model.to("gpu")
    _steps(model, opt, xs[2:4], ys[2:4], cp)
    assert all(isinstance(v, cp.ndarray) for v in opt.velocity)
    model.to("cpu")
    _steps(model, opt, xs[4:], ys[4:], np)
    assert all(isinstance(v, np.ndarray) for v in opt.velocity)
    for a, b in zip(ref.parameters(), model.parameters()):
        np.testing.assert_allclose(a.data, b.data, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- fused kernels vs array code


def _max_pool_inputs(rng):
    """Inputs where max-pool kernels go wrong: ties, -inf windows, NaN, odd sizes."""
    x = rng.standard_normal((2, 3, 9, 7)).astype(np.float32)
    ties = np.maximum(x, 0)  # after a ReLU: windows full of equal zeros
    ties[0, 0, :3, :3] = 1.0
    minus_inf = x.copy()
    minus_inf[0, 1, :, :] = -np.inf  # whole plane: every window is all -inf
    minus_inf[1, 2, :2, :2] = -np.inf  # a corner window (with padding) of -inf
    nan = x.copy()
    nan[1, 0, 4, 4] = np.nan
    return {"random": x, "ties": ties, "minus_inf": minus_inf, "nan": nan}


@pytest.mark.gpu
@pytest.mark.parametrize("k,s,p,ceil_mode", [(3, 2, 1, False), (2, 2, 0, False), (3, 2, 1, True), (3, 1, 1, False)])
def test_max_pool_kernels_match_the_array_code(cp, rng, k, s, p, ceil_mode):
    for name, x in _max_pool_inputs(rng).items():
        results = []
        for xp in (np, cp):
            t = Tensor(xp.asarray(x), requires_grad=True)
            y = F.max_pool2d(t, k, s, p, ceil_mode=ceil_mode)
            y.backward(xp.asarray(np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)))
            results.append((backend.to_numpy(y.data), backend.to_numpy(t.grad)))
        (y0, g0), (y1, g1) = results
        assert y1.dtype == g1.dtype == np.float32, name
        np.testing.assert_array_equal(y1, y0, err_msg=name)
        np.testing.assert_allclose(g1, g0, rtol=1e-6, atol=1e-6, err_msg=name)


@pytest.mark.gpu
def test_gpu_kernels_pass_gradcheck(cp, rng):
    """float64 gradient checks of the fused GPU paths (max pool, ReLU, batch norm)."""
    x = cp.asarray(rng.standard_normal((2, 3, 7, 6)))
    miniran.gradcheck(lambda a: F.max_pool2d(a, 3, 2, 1), [x])
    miniran.gradcheck(lambda a: F.relu(a), [x])
    g, b = cp.asarray(rng.standard_normal(3)), cp.asarray(rng.standard_normal(3))
    miniran.gradcheck(lambda a, g, b: F.batch_norm(a, None, None, g, b, training=True), [x, g, b])
    rm, rv = cp.zeros(3), cp.ones(3)
    miniran.gradcheck(lambda a, g, b: F.batch_norm(a, rm, rv, g, b, training=False), [x, g, b])


@pytest.mark.gpu
def test_interpolation_matrices_are_built_once(cp):
    cupy_standin = pytest.importorskip("cupy_standin", reason="counts launches: stand-in only")

    x = Tensor(cp.ones((1, 2, 4, 4), dtype=cp.float32), requires_grad=True)
    F.interpolate_bilinear(x, (8, 8))  # builds and caches the Kronecker matrix (InterpolateBilinearGPU)
    with cupy_standin.counting() as c:
        y = F.interpolate_bilinear(x, (8, 8))
    assert type(y.creator).__name__ == "InterpolateBilinearGPU"
    assert c.host_to_device == 0 and c.launches == 1  # one GEMM, nothing else
    gy = cp.ones(y.shape, dtype=cp.float32)
    with cupy_standin.counting() as c:
        y.backward(gy)
    assert c.host_to_device == 0 and c.launches == 1  # one GEMM back
    with miniran.reference_only():  # the reference: its two matrices, also built once
        F.interpolate_bilinear(x, (8, 8))
        with cupy_standin.counting() as c:
            F.interpolate_bilinear(x, (8, 8))
    assert c.host_to_device == 0


@pytest.mark.gpu
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (6, 5)])
def test_batch_norm_kernels_match_the_array_code(cp, rng, training, relu, shape):
    """Output, the three gradients, the running statistics and dtypes, CPU against GPU."""
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
    c = shape[1]
    g = rng.standard_normal(c).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    rm0, rv0 = rng.standard_normal(c).astype(np.float32), (rng.random(c) + 0.5).astype(np.float32)
    gy = rng.standard_normal(shape).astype(np.float32)
    fn = F.batch_norm_relu if relu else F.batch_norm
    results = []
    for xp in (np, cp):
        tx, tg, tb = (Tensor(xp.asarray(a), requires_grad=True) for a in (x, g, b))
        rm, rv = xp.asarray(rm0.copy()), xp.asarray(rv0.copy())
        y = fn(tx, rm, rv, tg, tb, training=training, momentum=0.3)
        y.backward(xp.asarray(gy))
        results.append([backend.to_numpy(a) for a in (y.data, tx.grad, tg.grad, tb.grad, rm, rv)])
    for name, a, b_ in zip(["y", "gx", "ggamma", "gbeta", "running_mean", "running_var"], *results):
        assert b_.dtype == np.float32, name
        np.testing.assert_allclose(b_, a, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(a).max()), err_msg=name)


# --------------------------------------------------------------------------- every operation, CPU against GPU

_X4 = (2, 3, 6, 5)
# name: (function of tensors, shapes of the float inputs)
OPERATIONS = {
    "add": (lambda a, b: a + b, [(3, 4), (4,)]),
    "sub": (lambda a, b: a - b, [(3, 4), (3, 1)]),
    "mul": (lambda a, b: a * b, [(3, 4), (3, 4)]),
    "div": (lambda a, b: a / (F.exp(b) + 1), [(3, 4), (4,)]),
    "scalar_ops": (lambda a: (1 + a) * 2 - 3 / (F.exp(a) + 1) - a / 4 + (2 - a), [(3, 4)]),
    "neg": (lambda a: -a, [(3, 4)]),
    "pow": (lambda a: a ** 2, [(3, 4)]),
    "exp": (lambda a: F.exp(a), [(3, 4)]),
    "log": (lambda a: F.log(F.exp(a) + 1), [(3, 4)]),
    "tanh": (lambda a: F.tanh(a), [(3, 4)]),
    "sigmoid": (lambda a: F.sigmoid(a), [(3, 4)]),
    "relu": (lambda a: F.relu(a), [_X4]),
    "sum": (lambda a: F.sum(a, axis=(0, 2)), [_X4]),
    "mean": (lambda a: F.mean(a, axis=1, keepdims=True), [_X4]),
    "max": (lambda a: F.max(a, axis=(2, 3)), [_X4]),
    "reshape": (lambda a: F.reshape(a, (6, 30)), [_X4]),
    "transpose": (lambda a: F.transpose(a, (1, 0, 3, 2)), [_X4]),
    "flatten": (lambda a: F.flatten(a), [_X4]),
    "getitem": (lambda a: F.getitem(a, (slice(None), [0, 2, 2])), [_X4]),
    "concat": (lambda a, b: F.concat([a, b], axis=1), [_X4, _X4]),
    "matmul": (lambda a, b: a @ b, [(3, 4), (4, 5)]),
    "linear": (lambda a, w, b: F.linear(a, w, b), [(3, 4), (5, 4), (5,)]),
    "softmax": (lambda a: F.softmax(a), [(3, 4)]),
    "log_softmax": (lambda a: F.log_softmax(a), [(3, 4)]),
    "cross_entropy": (lambda a: F.cross_entropy(a, backend.get_array_module(a.data).asarray([0, 3, 1])),
                      [(3, 4)]),
    "conv2d": (lambda a, w: F.conv2d(a, w, stride=2, padding=1), [_X4, (4, 3, 3, 3)]),
    "conv2d_1x1": (lambda a, w, b: F.conv2d(a, w, b), [_X4, (4, 3, 1, 1), (4,)]),
    "batch_norm": (lambda a, g, b: F.batch_norm(a, None, None, g, b, training=True), [_X4, (3,), (3,)]),
    "batch_norm_relu": (lambda a, g, b: F.batch_norm_relu(a, None, None, g, b, training=True),
                        [_X4, (3,), (3,)]),
    "max_pool2d": (lambda a: F.max_pool2d(a, 3, 2, 1), [_X4]),
    "avg_pool2d": (lambda a: F.avg_pool2d(a, 2, 2, ceil_mode=True), [_X4]),
    "global_avg_pool2d": (lambda a: F.global_avg_pool2d(a), [_X4]),
    "interpolate_bilinear": (lambda a: F.interpolate_bilinear(a, (9, 4)), [_X4]),
    "channel_l2_normalize": (lambda a: F.channel_l2_normalize(a), [_X4]),
    "spatial_sigmoid": (lambda a: F.spatial_sigmoid(a), [_X4]),
    "cast": (lambda a: F.cast(F.cast(a, np.float64) * 2, np.float32), [(3, 4)]),
}


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_every_operation_agrees_on_cpu_and_gpu(cp, name):
    """Forward, backward and dtypes (float32 stays float32) of each operation."""
    fn, shapes = OPERATIONS[name]
    rng = np.random.default_rng(7)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    results = []
    for xp in (np, cp):
        ts = [Tensor(xp.asarray(a), requires_grad=True) for a in arrays]
        y = fn(*ts)
        gy = np.random.default_rng(8).standard_normal(y.shape).astype(np.float32)
        y.backward(xp.asarray(gy))
        assert backend.get_array_module(y.data) is xp and y.dtype == np.float32, name
        results.append([backend.to_numpy(y.data)] + [backend.to_numpy(t.grad) for t in ts])
    for k, (a, b) in enumerate(zip(*results)):
        assert b.dtype == np.float32, (name, k)
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(a).max()), err_msg=f"{name} [{k}]")


# --------------------------------------------------------------------------- launches and syncs (stand-in only)


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [16, 64])
def test_attention56_training_step_launch_budget(cp, batch, monkeypatch):
    """One training step, counted as CuPy 14 issues it: at most 1,000 device operations, no sync.

    With ``SGD(flat=True)`` (what ``miniran train --device gpu`` uses) the
    update is one kernel, and the convolutions and batch norms write their
    parameters' gradients straight into the flat buffer: no per-parameter
    launch is left. A batch norm takes one kernel each way where a channel
    holds at most ``FUSED_MAX`` values and two where it holds more, so the
    count depends on the batch: the step runs on 2 images with ``FUSED_MAX``
    scaled by 2/batch, which picks the same kernels as the batch itself
    (`benchmarks/bench_gpu_ops.py --batch 64` counts the real batch: 853 at
    batch 16 and 891 at 64 at this commit; 1,095 with four batch-norm kernels
    per layer, 2,373 before the GPU-step work).
    """
    cupy_standin = pytest.importorskip("cupy_standin", reason="counts launches: stand-in only")
    from miniran.fast import norm_gpu

    monkeypatch.setattr(norm_gpu, "FUSED_MAX", norm_gpu.FUSED_MAX * 2 // batch)
    monkeypatch.setattr(norm_gpu, "CHUNK", norm_gpu.CHUNK * 2 // batch)
    rng = np.random.default_rng(0)
    net = miniran.models.attention56(num_classes=10, seed=0).to("gpu")
    opt = optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4, flat=True)
    schedule = optim.CosineLR(opt, 10)
    x = cp.asarray(rng.standard_normal((2, 3, 32, 32)).astype(np.float32))
    y = cp.asarray(rng.integers(0, 10, 2))

    def step():
        loss = F.cross_entropy(net(Tensor(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()

    step()  # the first step allocates momentum buffers and caches matrices
    with cupy_standin.counting() as c:
        step()
    assert c.syncs == 0, dict(c.syncs_by_name)
    assert c.host_to_device == 0
    by_name = c.launches_by_name
    assert by_name["miniran_sgd_update"] == 1  # every parameter in one update
    assert by_name["cupy_mat_ptrs"] == 0 and by_name["matmul_copy"] == 0  # no cupy.matmul broadcasting
    assert by_name["setitem"] <= 2  # only the classifier's weight and bias are copied into the flat buffer
    # the 32x32 layers' channels (64*32*32 values) take the two-stage kernels at batch 64 only
    assert by_name["miniran_bn_partial_moments_f32"] == (19 if batch == 64 else 0)
    assert c.launches <= 1000, by_name.most_common(10)


@pytest.mark.gpu
def test_evaluation_syncs_once_per_call_not_per_batch(cp):
    cupy_standin = pytest.importorskip("cupy_standin", reason="counts syncs: stand-in only")
    from miniran.train.trainer import evaluate

    rng = np.random.default_rng(0)
    net = miniran.models.attention56(num_classes=10, seed=0, pools=(1, 1, 1)).to("gpu")
    images = rng.integers(0, 256, (6, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, 6)
    mean, std = np.zeros((3, 1, 1), np.float32), np.ones((3, 1, 1), np.float32)
    with cupy_standin.counting() as c:
        result = evaluate(net, images, labels, mean, std, batch_size=2, device="gpu")  # 3 batches
    assert result["count"] == 6
    assert c.syncs <= 3, dict(c.syncs_by_name)  # the three numbers read back at the end


def test_every_test_using_cupy_is_marked_gpu():
    """`make test-gpu` (pytest -m gpu) must select every test that touches CuPy."""
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "not gpu",
                          "-p", "no:cacheprovider", str(ROOT / "tests")],
                         capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, MINIRAN_CUPY_STANDIN="1"))
    leaked = [line for line in out.stdout.splitlines() if "[cupy]" in line]
    assert out.returncode == 0, out.stderr[-2000:]
    assert not leaked, leaked
