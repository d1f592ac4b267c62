"""The engine's CPU thread pool, the rules that pick a twin, and whole networks against the reference.

Each fast CPU twin alone is compared with its reference Function, forward,
backward and buffers, float32 and float64, with 1 to 3 of miniran's threads
splitting even small arrays, in ``tests/function_cases.py`` (through
``tests/test_function_cases.py``). What stays here: the thread pool itself
(``parallel_chunks``, BLAS held at one thread, the core count from cgroup
quotas and the environment), which 3x3 convolution twin the dispatch picks,
batch norm's fast path in float32 against the float64 reference, gradients
of a tensor used several times summed on the threads, and a whole network
(Attention-56) with its fast paths against the reference code in float64,
to 1e-8.
"""

import threading

import numpy as np
import pytest

import miniran
import miniran.functional as F
from miniran import Tensor, models

from function_cases import forward_backward


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


_run = forward_backward


def _assert_close(fast, ref, rtol, what):
    for i, (a, b) in enumerate(zip(fast, ref)):
        err = np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)
        assert err <= rtol, f"{what}: output {i} differs from the reference by {err:.2e} (relative)"


# --------------------------------------------------------------------------- batch norm in float32, against float64


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


# --------------------------------------------------------------------------- which 3x3 convolution twin runs


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


def test_gradients_of_a_tensor_used_twice_are_summed_on_the_threads(threads, rng):
    from miniran.fast.elementwise_cpu import elementwise

    x = rng.standard_normal((6, 3, 4, 4))
    assert np.array_equal(elementwise(np.add, x, 2 * x), x + 2 * x)
    assert elementwise(np.add, np.float32(1), np.float32(2)) == 3  # anything else: plain a + b
    gy = rng.standard_normal(x.shape)
    fast = _run(lambda t: F.sigmoid(t) * t + t, x, upstream=gy, reference=False)
    ref = _run(lambda t: F.sigmoid(t) * t + t, x, upstream=gy, reference=True)
    _assert_close(fast, ref, 1e-15, "a tensor used three times")
