"""The fast CPU paths against the readable reference code they sit beside.

Every function with a fast CPU path (batch norm, the convolution's pointwise,
batched-im2col and Winograd paths, max pooling, same-shape add and multiply)
must give the reference's numbers, forward and backward, with miniran's own
CPU threads at work. The tests force the threads on even small arrays
(``PARALLEL_MIN_ELEMENTS`` lowered) and use three of them, so that uneven
splits of the batch are exercised too. Float64 gradient checks run through the
fast paths with a random upstream gradient.
"""

import threading

import numpy as np
import pytest

import miniran
import miniran.functional as F
from miniran import Tensor, gradcheck, models


@pytest.fixture
def rng():
    return np.random.default_rng(12)


@pytest.fixture
def threads(monkeypatch):
    """Three CPU threads, used on arrays of any size."""
    monkeypatch.setattr(miniran.threads, "PARALLEL_MIN_ELEMENTS", 1)
    miniran.threads.set_cpu_threads(3)
    yield 3
    miniran.threads.set_cpu_threads(None)


def _run(fn, *arrays, upstream, reference):
    """Outputs and input gradients of ``fn`` on float Tensors made from ``arrays``."""
    ts = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    if reference:
        with miniran.reference_only():
            y = fn(*ts)
            y.backward(upstream)
    else:
        y = fn(*ts)
        y.backward(upstream)
    return [y.data] + [t.grad for t in ts]


def _assert_close(fast, ref, rtol, what):
    for i, (a, b) in enumerate(zip(fast, ref)):
        err = np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)
        assert err <= rtol, f"{what}: output {i} differs from the reference by {err:.2e} (relative)"


# --------------------------------------------------------------------------- batch norm


@pytest.mark.parametrize("shape", [(5, 3, 7, 6), (7, 4, 4, 4), (2, 6, 1, 1)])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("offset", [0.5, 300.0], ids=["centred", "big-mean"])
def test_batch_norm_fast_path_matches_reference(shape, relu, training, offset, threads, rng):
    c = shape[1]
    x = rng.standard_normal(shape) * 2 + offset  # big-mean: E[x^2] - E[x]^2 would cancel
    gamma, beta = rng.standard_normal(c), rng.standard_normal(c)
    gy = rng.standard_normal(shape)
    if relu:  # keep pre-activations away from the ReLU's kink, where rounding flips the mask
        gy = gy * (np.abs(rng.standard_normal(shape)) > 0.05)
    results = []
    for reference in (False, True):
        rm, rv = np.full(c, offset), np.full(c, 4.0)
        fn = F.batch_norm_relu if relu else F.batch_norm
        out = _run(lambda t, g, b: fn(t, rm, rv, g, b, training=training), x, gamma, beta,
                   upstream=gy, reference=reference)
        results.append(out + [rm.copy(), rv.copy()])
    fast, ref = results
    if relu:  # compare where the ReLU mask agrees (both paths agree everywhere but at ties)
        mask = (ref[0] > 1e-9) == (fast[0] > 1e-9)
        assert mask.mean() > 0.999
        fast[1], ref[1] = fast[1] * mask, ref[1] * mask
        # gamma/beta gradients sum over the whole channel: compare only without flips
        if not mask.all():
            fast, ref = fast[:2] + fast[4:], ref[:2] + ref[4:]
    _assert_close(fast, ref, 1e-10, f"batch norm {shape} relu={relu} training={training}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_norm_fast_path_keeps_dtype_and_is_accurate_in_float32(dtype, threads, rng):
    x = (rng.standard_normal((6, 5, 8, 8)) * 3 + 2).astype(dtype)
    gy = rng.standard_normal(x.shape).astype(dtype)
    g, b = np.ones(5, dtype), np.zeros(5, dtype)
    fast = _run(lambda t: F.batch_norm(t, None, None, g, b, training=True), x, upstream=gy, reference=False)
    exact = _run(lambda t: F.batch_norm(t, None, None, g, b, training=True), x.astype(np.float64),
                 upstream=gy.astype(np.float64), reference=True)
    assert all(a.dtype == dtype for a in fast)
    _assert_close(fast, exact, 1e-5 if dtype == np.float32 else 1e-12, f"batch norm {dtype.__name__}")


@pytest.mark.parametrize("relu", [False, True])
def test_batch_norm_fast_path_gradcheck(relu, threads, rng):
    x = rng.standard_normal((5, 3, 4, 4)) + 1.0
    gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
    fn = F.batch_norm_relu if relu else F.batch_norm
    gradcheck(lambda t, g, b: fn(t, None, None, g, b, training=True), [x, gamma, beta])


# --------------------------------------------------------------------------- convolution


# (x shape, w shape, stride, padding, the CPU path the fast code takes)
CONV_CASES = [
    ((5, 6, 8, 7), (4, 6, 1, 1), 1, 0, "Conv2dPointwiseCPU"),
    ((5, 6, 9, 8), (7, 6, 1, 1), 2, 0, "Conv2dPointwiseCPU"),
    ((5, 3, 9, 8), (4, 3, 3, 3), 2, 1, "Conv2dBatchedCPU"),
    ((4, 3, 9, 9), (2, 3, 5, 5), 1, 2, "Conv2dBatchedCPU"),
    ((3, 2, 6, 6), (3, 2, 1, 1), 1, 1, "Conv2dBatchedCPU"),
    ((5, 8, 16, 16), (6, 8, 3, 3), 1, 1, "Conv2dWinogradCPU"),  # Winograd from 16x16 outputs and 8 channels on
    ((3, 9, 20, 18), (2, 9, 3, 3), 1, 0, "Conv2dWinogradCPU"),
    ((3, 8, 15, 16), (4, 8, 3, 3), 1, 2, "Conv2dWinogradCPU"),
    ((5, 8, 8, 8), (6, 8, 3, 3), 1, 1, "Conv2dBatchedCPU"),
    ((3, 3, 16, 16), (4, 3, 3, 3), 1, 1, "Conv2dBatchedCPU"),
]


@pytest.mark.parametrize("xs,ws,stride,padding,path", CONV_CASES)
@pytest.mark.parametrize("bias", [False, True])
def test_conv_fast_paths_match_reference(xs, ws, stride, padding, path, bias, threads, rng):
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    arrays = [x, w] + ([rng.standard_normal(ws[0])] if bias else [])
    y_shape = F.conv2d(Tensor(x), Tensor(w), stride=stride, padding=padding).shape
    gy = rng.standard_normal(y_shape)
    fast = _run(lambda *t: F.conv2d(*t, stride=stride, padding=padding), *arrays, upstream=gy, reference=False)
    ref = _run(lambda *t: F.conv2d(*t, stride=stride, padding=padding), *arrays, upstream=gy, reference=True)
    _assert_close(fast, ref, 1e-12, f"conv {xs} * {ws}, stride {stride}, padding {padding}")
    y = F.conv2d(*[Tensor(a, requires_grad=True) for a in arrays], stride=stride, padding=padding)
    assert type(y.creator).__name__ == path


@pytest.mark.parametrize("xs,ws,stride,padding,path", CONV_CASES[::2])
def test_conv_fast_paths_gradcheck(xs, ws, stride, padding, path, threads, rng):
    x, w, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])
    gradcheck(lambda *t: F.conv2d(*t, stride=stride, padding=padding), [x, w, b])


def test_conv_fast_paths_keep_float32(threads, rng):
    for xs, ws, stride, padding, _ in CONV_CASES:
        x = Tensor(rng.standard_normal(xs).astype(np.float32), requires_grad=True)
        w = Tensor(rng.standard_normal(ws).astype(np.float32), requires_grad=True)
        y = F.conv2d(x, w, stride=stride, padding=padding)
        y.backward(np.ones(y.shape, np.float32))
        assert y.dtype == x.grad.dtype == w.grad.dtype == np.float32


@pytest.mark.parametrize("threads_, needs_grad, size, path", [
    (2, True, 8, "Conv2dBatchedCPU"), (2, False, 8, "Conv2dBatchedCPU"), (2, True, 16, "Conv2dWinogradCPU"),
    (2, False, 16, "Conv2dBatchedCPU"), (1, True, 8, "Conv2dWinogradCPU"), (1, False, 8, "Conv2dBatchedCPU"),
    (1, False, 16, "Conv2dWinogradCPU"),
])
def test_which_3x3_twin_is_taken(threads_, needs_grad, size, path, rng):
    # Winograd's many small passes do not pay on maps under 16x16, except for
    # forward + backward on one thread, nor for a forward pass alone on several
    # threads (see Conv2dWinogradCPU.suits)
    from miniran.functional._dispatch import implementation

    def chosen(channels):  # the class conv2d would run (a call without gradients records no creator)
        x = Tensor(rng.standard_normal((2, channels, size, size)))
        w = Tensor(rng.standard_normal((4, channels, 3, 3)), requires_grad=needs_grad)
        return implementation(F.conv.Conv2dFunction, (x, w), {"stride": (1, 1), "padding": (1, 1)}).__name__

    miniran.threads.set_cpu_threads(threads_)
    try:
        assert chosen(8) == path
        assert chosen(3) == "Conv2dBatchedCPU"  # an RGB stem (3 input channels) always unfolds with im2col
        with miniran.reference_only():
            assert chosen(8) == chosen(3) == "Conv2dFunction"
        w = Tensor(rng.standard_normal((4, 8, 3, 3)), requires_grad=True)
        if needs_grad:  # and the call itself runs the class the dispatch names
            assert type(F.conv2d(Tensor(rng.standard_normal((2, 8, size, size))), w, padding=1).creator).__name__ == path
    finally:
        miniran.threads.set_cpu_threads(None)


# --------------------------------------------------------------------------- pooling, add, multiply


@pytest.mark.parametrize("shape", [(5, 3, 9, 8), (7, 2, 4, 4)])
def test_max_pool_fast_path_matches_reference(shape, threads, rng):
    x = np.round(rng.standard_normal(shape), 1)  # rounded: ties between window entries
    y_shape = F.max_pool2d(Tensor(x), 3, stride=2, padding=1).shape
    gy = rng.standard_normal(y_shape)
    fast = _run(lambda t: F.max_pool2d(t, 3, stride=2, padding=1), x, upstream=gy, reference=False)
    ref = _run(lambda t: F.max_pool2d(t, 3, stride=2, padding=1), x, upstream=gy, reference=True)
    _assert_close(fast, ref, 0.0, f"max pool {shape}")


def test_add_and_mul_fast_paths_match_reference(threads, rng):
    a, b = rng.standard_normal((7, 3, 5, 4)), rng.standard_normal((7, 3, 5, 4))
    gy = rng.standard_normal(a.shape)
    for fn in (lambda s, t: s + t, lambda s, t: s * t):
        fast = _run(fn, a, b, upstream=gy, reference=False)
        ref = _run(fn, a, b, upstream=gy, reference=True)
        _assert_close(fast, ref, 0.0, "add / mul")


# --------------------------------------------------------------------------- a whole network


def test_attention56_fast_paths_match_reference(threads, rng):
    model = models.attention56(num_classes=10, seed=3)
    model.astype(np.float64)  # float64: float32 rounding, amplified through 56 layers, is not the question
    x = rng.standard_normal((4, 3, 32, 32))
    y = rng.integers(0, 10, 4)
    results = []
    for reference in (False, True):
        model.zero_grad()
        if reference:
            with miniran.reference_only():
                loss = F.cross_entropy(model(Tensor(x)), y)
                loss.backward()
        else:
            loss = F.cross_entropy(model(Tensor(x)), y)
            loss.backward()
        results.append([loss.data] + [p.grad.copy() for p in model.parameters()])
    fast, ref = results
    for i, (a, b) in enumerate(zip(fast, ref)):
        scale = max(np.abs(b).max(), 1e-12)
        assert np.abs(a - b).max() <= 1e-8 * scale, f"parameter {i}: fast and reference gradients differ"


# --------------------------------------------------------------------------- the thread pool


def test_parallel_chunks_covers_the_range_in_order(threads):
    seen = []
    lock = threading.Lock()

    def work(a, b):
        with lock:
            seen.append((a, b))
        return list(range(a, b))

    parts = miniran.threads.parallel_chunks(11, work, elements=10**6)
    assert [i for part in parts for i in part] == list(range(11))
    assert len(parts) == 6  # twice as many pieces as threads
    assert sorted(seen) == sorted({(p[0], p[-1] + 1) for p in parts})


def test_parallel_chunks_runs_small_jobs_inline(monkeypatch):
    miniran.threads.set_cpu_threads(4)
    try:
        assert miniran.threads.parallel_chunks(8, lambda a, b: (a, b), elements=10) == [(0, 8)]
    finally:
        miniran.threads.set_cpu_threads(None)


def test_parallel_chunks_passes_errors_on_and_restores_blas(threads):
    before = miniran.threads.blas_threads()

    def work(a, b):
        if a > 0:
            raise RuntimeError("piece failed")
        return a

    with pytest.raises(RuntimeError, match="piece failed"):
        miniran.threads.parallel_chunks(6, work, elements=10**6, blas=True)
    assert miniran.threads.blas_threads() == before


def test_cpu_region_holds_blas_at_one_thread_and_gives_it_back(threads):
    before = miniran.threads.blas_threads()
    if before is None:
        pytest.skip("NumPy's BLAS is not an OpenBLAS miniran can drive")
    with miniran.threads.cpu_region():
        assert miniran.threads.blas_threads() == 1
        with miniran.threads.cpu_region():  # nested: nothing changes
            assert miniran.threads.blas_threads() == 1
        assert miniran.threads.blas_threads() == 1
    assert miniran.threads.blas_threads() == before


def test_cpu_threads_from_the_environment(monkeypatch):
    for var in ("MINIRAN_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    miniran.threads.set_cpu_threads(None)
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert miniran.threads.cpu_threads() == 3
        miniran.threads.set_cpu_threads(None)
        monkeypatch.setenv("MINIRAN_NUM_THREADS", "2")  # miniran's own setting comes first
        assert miniran.threads.cpu_threads() == 2
        for bad in ("two", "0", "-3"):
            miniran.threads.set_cpu_threads(None)
            monkeypatch.setenv("MINIRAN_NUM_THREADS", bad)
            with pytest.raises(ValueError, match="MINIRAN_NUM_THREADS must be a positive integer"):
                miniran.threads.cpu_threads()
        # another library's variable that miniran cannot read is passed over, not refused
        monkeypatch.delenv("MINIRAN_NUM_THREADS")
        monkeypatch.setenv("OMP_NUM_THREADS", "auto")
        monkeypatch.setenv("OPENBLAS_NUM_THREADS", "5")
        miniran.threads.set_cpu_threads(None)
        assert miniran.threads.cpu_threads() == 5
    finally:
        monkeypatch.delenv("MINIRAN_NUM_THREADS", raising=False)
        miniran.threads.set_cpu_threads(None)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_set_cpu_threads_refuses_bad_values(bad):
    with pytest.raises(ValueError, match="set_cpu_threads: n must be a positive integer"):
        miniran.threads.set_cpu_threads(bad)


def test_available_cores_is_at_least_one():
    assert 1 <= miniran.threads.available_cores() <= (__import__("os").cpu_count() or 1)


@pytest.mark.parametrize("v2,v1,expected", [
    ("150000 100000", None, 2), ("max 100000", None, 4), ("50000 100000", None, 1),
    (None, ("250000", "100000"), 3), (None, ("-1", "100000"), 4),
])
def test_available_cores_follows_a_cgroup_quota(v2, v1, expected, monkeypatch):
    import builtins
    import os

    files = {}
    if v2 is not None:
        files["/sys/fs/cgroup/cpu.max"] = v2
    if v1 is not None:
        files["/sys/fs/cgroup/cpu/cpu.cfs_quota_us"], files["/sys/fs/cgroup/cpu/cpu.cfs_period_us"] = v1
    real_open = builtins.open

    def fake_open(path, *args, **kwargs):
        if str(path).startswith("/sys/fs/cgroup"):
            if path not in files:
                raise FileNotFoundError(path)
            import io
            return io.StringIO(files[path])
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert miniran.threads.available_cores() == expected


def test_sigmoid_fast_path_matches_reference(threads, rng):
    x = rng.standard_normal((7, 3, 5, 4)) * 30  # large |x| too: the tanh form never overflows
    gy = rng.standard_normal(x.shape)
    fast = _run(F.sigmoid, x, upstream=gy, reference=False)
    ref = _run(F.sigmoid, x, upstream=gy, reference=True)
    _assert_close(fast, ref, 1e-15, "sigmoid")  # the product in another order: last-bit differences
    gradcheck(F.sigmoid, [rng.standard_normal((5, 2, 3))])


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_avg_pool_fast_path_matches_reference(count_include_pad, ceil_mode, threads, rng):
    x = rng.standard_normal((5, 3, 9, 8))

    def pool(t):
        return F.avg_pool2d(t, 3, stride=2, padding=1, ceil_mode=ceil_mode, count_include_pad=count_include_pad)
    gy = rng.standard_normal(pool(Tensor(x)).shape)
    fast = _run(pool, x, upstream=gy, reference=False)
    ref = _run(pool, x, upstream=gy, reference=True)
    _assert_close(fast, ref, 1e-15, f"avg pool ceil_mode={ceil_mode} count_include_pad={count_include_pad}")


def test_global_avg_pool_fast_path_matches_reference(threads, rng):
    x = rng.standard_normal((5, 3, 7, 6))
    gy = rng.standard_normal((5, 3))
    fast = _run(F.global_avg_pool2d, x, upstream=gy, reference=False)
    ref = _run(F.global_avg_pool2d, x, upstream=gy, reference=True)
    _assert_close(fast, ref, 1e-14, "global average pooling")
    x32 = Tensor(x.astype(np.float32))
    assert F.global_avg_pool2d(x32).dtype == np.float32


def test_gradients_of_a_tensor_used_twice_are_summed_on_the_threads(threads, rng):
    from miniran.fast.elementwise_cpu import elementwise

    x = rng.standard_normal((6, 3, 4, 4))
    assert np.array_equal(elementwise(np.add, x, 2 * x), x + 2 * x)
    assert elementwise(np.add, np.float32(1), np.float32(2)) == 3  # anything else: plain a + b
    gy = rng.standard_normal(x.shape)
    fast = _run(lambda t: F.sigmoid(t) * t + t, x, upstream=gy, reference=False)
    ref = _run(lambda t: F.sigmoid(t) * t + t, x, upstream=gy, reference=True)
    _assert_close(fast, ref, 1e-15, "a tensor used three times")
