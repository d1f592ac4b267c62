"""Faithfulness of the CPU stand-in for CuPy (tests/standin).

The stand-in must fail where real CuPy fails (implicit host conversion,
NumPy operands, unknown names, garbage from ``empty``, wrapping indices) and
run user kernels from their own CUDA C source. These tests run always: under
``MINIRAN_CUPY_STANDIN=1`` they run in this process, otherwise
``test_standin_suite`` runs this file again in a subprocess with the variable
set (so that ``import cupy`` never finds the stand-in in other tests).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

STANDIN_DIR = Path(__file__).resolve().parent / "standin"
IN_STANDIN = os.environ.get("MINIRAN_CUPY_STANDIN") == "1"

needs_standin = pytest.mark.skipif(not IN_STANDIN, reason="runs in the subprocess of test_standin_suite")


def test_standin_suite():
    """Run the stand-in tests below in a fresh interpreter with the stand-in on the path."""
    if IN_STANDIN:
        pytest.skip("already running under the stand-in")
    env = dict(os.environ, MINIRAN_CUPY_STANDIN="1")
    res = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider"],
                         env=env, capture_output=True, text=True, cwd=STANDIN_DIR.parents[1])
    assert res.returncode == 0, res.stdout[-8000:] + res.stderr[-2000:]


if IN_STANDIN:
    if str(STANDIN_DIR) not in sys.path:
        sys.path.insert(0, str(STANDIN_DIR))
    import cupy as cp
    import cupy_standin
    import cupyx
    from cupy import _standin_kernels

    assert cupy_standin.is_standin(cp), f"`import cupy` found {cp.__file__}, not the stand-in"


@pytest.fixture
def counts():
    with cupy_standin.counting() as c:
        yield c


# --------------------------------------------------------------------------- arrays and conversions


@needs_standin
class TestArrays:
    def test_not_a_numpy_subclass_and_data_is_a_pointer(self):
        x = cp.ones((2, 3), dtype=cp.float32)
        assert not isinstance(x, np.ndarray)
        assert isinstance(x.data, cp.cuda.MemoryPointer) and isinstance(x.data.ptr, int)
        assert x[1:].data.ptr == x.data.ptr + 3 * 4  # a view points into the same memory
        assert (x.shape, x.dtype, x.ndim, x.size, x.itemsize, x.nbytes) == ((2, 3), np.float32, 2, 6, 4, 24)
        assert x.strides == (12, 4) and x.flags.c_contiguous and x.T.flags.f_contiguous
        assert x.device.id == 0

    @pytest.mark.parametrize("convert", [np.asarray, np.array, lambda x: x.__array__()])
    def test_implicit_host_conversion_is_refused(self, convert):
        with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
            convert(cp.arange(3))

    def test_explicit_ways_back_count_a_sync(self, counts):
        x = cp.arange(4, dtype=cp.float32)
        assert isinstance(cp.asnumpy(x), np.ndarray) and isinstance(x.get(), np.ndarray)
        s = x.sum()
        assert isinstance(s, cp.ndarray) and s.ndim == 0  # reductions stay on the device
        float(s), int(s), bool(s), s.item(), x.tolist(), [0, 1][cp.arange(2)[1]]
        assert counts.syncs == 8

    @pytest.mark.parametrize("host", [np.ones(3), np.ones((2, 3)), np.array(2.0)])
    def test_numpy_operands_are_refused(self, host):
        x = cp.ones((2, 3))
        for op in (lambda: x + host, lambda: host + x, lambda: x * host, lambda: cp.add(x, host),
                   lambda: cp.maximum(host, x), lambda: cp.concatenate([x, host])):
            with pytest.raises(TypeError, match="Unsupported type <class 'numpy.ndarray'>"):
                op()
        with pytest.raises(TypeError):
            x += host

    def test_scalars_are_accepted_with_numpy2_promotion(self):
        x = cp.ones(3, dtype=cp.float32)
        for s in (2, 2.5, True, np.float32(2), np.int8(3), np.float16(1)):
            assert (x * s).dtype == np.float32
        assert (x * np.int64(3)).dtype == np.float64
        assert (x * np.float64(1.5)).dtype == np.float64  # NEP 50: a NumPy scalar is strong
        assert (x + 1.0).dtype == np.float32  # a Python scalar is weak

    def test_numpy_functions_dispatch_only_to_cupy_names(self):
        x = cp.arange(6, dtype=cp.float32).reshape(2, 3)
        assert isinstance(np.exp(x), cp.ndarray) and isinstance(np.sum(x, axis=0), cp.ndarray)
        assert isinstance(np.concatenate([x, x]), cp.ndarray)
        with pytest.raises(TypeError):
            np.ones(3) + x  # NumPy ufunc with a host operand: CuPy refuses
        with pytest.raises(TypeError):
            np.linalg.matrix_power(x[:, :2], 2)  # not a cupy name: NumPy gets NotImplemented

    def test_ufunc_at_is_cupy_scatter(self):
        a = cp.zeros(3, dtype=cp.float32)
        np.add.at(a, cp.array([0, 0, 4]), cp.ones(3, dtype=cp.float32))  # 4 wraps to 1
        assert a.get().tolist() == [2, 1, 0]
        with pytest.raises(NotImplementedError):
            np.multiply.at(a, cp.array([0]), 2.0)
        with pytest.raises(TypeError, match="only supports"):
            cp.subtract.at(a, cp.array([0]), 1.0)  # CuPy: subtract.at needs int32/uint32

    def test_host_array_into_basic_slice_is_refused_fancy_accepted(self, counts):
        x = cp.zeros(4)
        with pytest.raises(ValueError, match="non-scalar numpy.ndarray"):
            x[0:2] = np.ones(2)
        x[cp.array([0, 1])] = np.ones(2)  # fancy assignment copies the host value over
        assert x.get().tolist() == [1, 1, 0, 0] and counts.host_to_device == 2

    def test_empty_is_garbage(self):
        f = cp.empty((64,), dtype=cp.float32)
        assert np.isnan(f.get()).all()
        i = cp.empty((64,), dtype=cp.int32)
        assert (i.get() != 0).any()
        assert np.isnan(cp.empty_like(cp.zeros(8)).get()).all()

    def test_fancy_indices_wrap(self):
        x = cp.arange(5) * 10
        idx = cp.array([0, 5, -6, 7])
        assert x[idx].get().tolist() == [0, 0, 40, 20]
        assert cp.take(x, idx).get().tolist() == [0, 0, 40, 20]
        y = cp.arange(12).reshape(3, 4)
        assert y[:, cp.array([4])].get().ravel().tolist() == [0, 4, 8]
        assert y[..., cp.array([-5])].get().ravel().tolist() == [3, 7, 11]
        with pytest.raises(IndexError):
            x[5]  # a basic integer index still checks its bounds

    def test_unknown_names(self):
        with pytest.raises(AttributeError):
            cp.this_is_not_cupy
        with pytest.raises(NotImplementedError, match="cupy stand-in: cupy.fuse is not implemented"):
            cp.fuse
        with pytest.raises(NotImplementedError, match="cupy.ndarray.toDlpack"):
            cp.ones(2).toDlpack
        with pytest.raises(AttributeError):
            cp.ones(2).not_a_method
        with pytest.raises(AttributeError):
            cp.random.not_a_function
        with pytest.raises(AttributeError):
            cupyx.not_a_function

    def test_only_real_names_are_public(self):
        real = cp._NAMES
        for module, key in [(cp, "cupy"), (cp.random, "cupy.random"), (cp.cuda, "cupy.cuda"),
                            (cupyx, "cupyx")]:
            extra = [n for n in vars(module) if not n.startswith("_") and n not in real[key]]
            assert not extra, (key, extra)
        extra = [n for n in vars(cp.ndarray) if not n.startswith("_") and n not in real["cupy.ndarray"]]
        assert not extra

    def test_methods_and_operators(self):
        h = np.arange(12, dtype=np.float32).reshape(3, 4)
        x = cp.asarray(h)
        checks = [(x.T, h.T), (x.reshape(4, 3), h.reshape(4, 3)), (x.sum(0), h.sum(0)),
                  (x.mean(1), h.mean(1)), (x.max(), h.max()), (x.argmax(1), h.argmax(1)),
                  (x.var(0), h.var(0)), (x.clip(2, 5), h.clip(2, 5)), (x @ x.T, h @ h.T),
                  (x.dot(x.T), h.dot(h.T)), (-x // 3 % 2, -h // 3 % 2), (x ** 2 >= 9, h ** 2 >= 9),
                  (cp.einsum("ij,kj->ik", x, x), np.einsum("ij,kj->ik", h, h)),
                  (cp.pad(x, ((1, 0), (0, 2))), np.pad(h, ((1, 0), (0, 2)))),
                  (cp.where(x > 3, x, 0), np.where(h > 3, h, 0)),
                  (cp.moveaxis(x[None], 0, 2), np.moveaxis(h[None], 0, 2))]
        for got, want in checks:
            assert isinstance(got, cp.ndarray)
            np.testing.assert_allclose(got.get(), want, rtol=1e-6)
            assert got.dtype == want.dtype
        y = x.copy()
        y += 1
        y[0] = 0
        y[:, 1] *= 2
        assert y.get()[0].tolist() == [0] * 4 and y.get()[1, 1] == (5 + 1) * 2
        assert len(x) == 3 and [r.shape for r in x] == [(4,)] * 3


# --------------------------------------------------------------------------- counters


@needs_standin
class TestCounters:
    def test_views_are_free_work_is_counted(self, counts):
        x = cp.empty((4, 6), dtype=cp.float32)  # allocation only
        assert counts.launches == 0
        x.reshape(6, 4), x.T, x[1:3], x[:, ::2], x.ravel(), cp.expand_dims(x, 0), x.squeeze()
        assert counts.launches == 0
        cp.zeros(3), x + 1, x.sum(), x.T.copy(), x.T.reshape(-1), x[cp.array([0])], cp.random.rand(2)
        assert counts.launches == 7 and counts.syncs == 0
        assert counts.launches_by_name["zeros"] == 1 and counts.launches_by_name["random.rand"] == 1

    def test_transfers(self, counts):
        h = np.ones(3, dtype=np.float32)
        d = cp.asarray(h)
        cp.asarray(d), cp.array(d, copy=False), cp.ascontiguousarray(d)
        assert counts.host_to_device == 1 and counts.launches == 0
        d.get()
        cp.cuda.get_current_stream().synchronize()
        cp.cuda.Device(0).synchronize()
        assert counts.syncs == 3

    def test_data_dependent_shapes_sync(self, counts):
        x = cp.arange(10) % 3
        base = counts.syncs
        x[x > 0], cp.nonzero(x), cp.bincount(x), cp.unique(x), cp.argwhere(x), cp.where(x)
        assert counts.syncs - base == 6
        cp.count_nonzero(x), x.any(), cp.where(x > 0, 1, 2)  # these stay on the device
        assert counts.syncs - base == 6
        if x.any():  # `if` needs a Python bool: one more sync
            pass
        x[x > 1] = 0  # CuPy counts the True entries on the host first
        assert counts.syncs - base == 8
        launches = counts.launches
        cp.shape(x), cp.ndim(x), cp.result_type(x, 1.0)  # metadata: no device work
        assert counts.launches == launches

    def test_reset_and_global_counters(self):
        cupy_standin.reset()
        cp.ones(2) + 1
        c = cupy_standin.counters()
        assert c["launches"] == 2 and c["syncs"] == 0 and c["host_to_device"] == 0
        cupy_standin.reset()
        assert cupy_standin.counters()["launches"] == 0

    def test_scatter_add_counts_one_launch(self, counts):
        a = cp.zeros((3, 2), dtype=cp.float32)
        cupyx.scatter_add(a, cp.array([0, 2, 2, 3]), cp.ones((4, 2), dtype=cp.float32))
        assert a.get()[:, 0].tolist() == [2, 0, 2]  # 3 wraps to 0; repeated indices add up
        assert counts.launches_by_name["scatter_add"] == 1

    def test_devices_and_pool(self):
        assert cp.cuda.runtime.getDeviceCount() == 1 and cp.is_available()
        with cp.cuda.Device(0) as d:
            assert d.id == 0
        with pytest.raises(cp.cuda.runtime.CUDARuntimeError, match="invalid device ordinal"):
            cp.cuda.Device(1).use()
        pool = cp.get_default_memory_pool()
        before = pool.used_bytes()
        x = cp.zeros(1 << 16, dtype=cp.float32)
        assert pool.used_bytes() - before >= x.nbytes
        del x
        pool.free_all_blocks()
        assert pool.used_bytes() <= before


# --------------------------------------------------------------------------- user kernels


@needs_standin
class TestKernels:
    def test_elementwise_placeholders_broadcast_and_scalars(self, counts):
        k = cp.ElementwiseKernel("T x, T y, float32 s", "T z", "z = x * y + s", "standin_axpy")
        x = cp.arange(6, dtype=cp.float32).reshape(2, 3)
        y = cp.asarray(np.array([1, 2, 3], dtype=np.float32))
        z = k(x, y, 0.5)
        np.testing.assert_allclose(z.get(), x.get() * y.get() + 0.5)
        assert z.dtype == np.float32 and counts.launches_by_name["standin_axpy"] == 1
        with pytest.raises(TypeError):
            k(x, cp.ones(3, dtype=cp.float64), 0.5)  # T bound twice to different dtypes
        with pytest.raises(TypeError, match="Unsupported type"):
            k(x, np.ones(3, np.float32), 0.5)

    def test_elementwise_raw_and_given_output(self):
        # reverse a vector: a raw input indexed by hand, the output given
        k = cp.ElementwiseKernel("raw T x", "T y", "y = x[_ind.size() - 1 - i]", "standin_rev")
        x = cp.arange(5, dtype=cp.int32)
        out = cp.empty(5, dtype=cp.int32)
        assert k(x, out) is out and out.get().tolist() == [4, 3, 2, 1, 0]
        # into a strided view: written back where it belongs
        big = cp.zeros(10, dtype=cp.int32)
        k(x, big[::2])
        assert big.get().tolist() == [4, 0, 3, 0, 2, 0, 1, 0, 0, 0]

    def test_off_by_one_gives_a_wrong_answer(self):
        """A bug in the CUDA source shows on the CPU: a shifted index reads the neighbour."""
        good = cp.ElementwiseKernel("raw T x", "T y", "y = x[i] * 2", "standin_twice_ok")
        bad = cp.ElementwiseKernel("raw T x", "T y", "y = x[i + 1 < _ind.size() ? i + 1 : i] * 2",
                                   "standin_twice_bad")
        x = cp.arange(4, dtype=cp.float32)
        y = cp.empty(4, dtype=cp.float32)
        assert good(x, y).get().tolist() == [0, 2, 4, 6]
        assert bad(x, y).get().tolist() != [0, 2, 4, 6]

    def test_out_of_bounds_raw_access_is_reported(self):
        k = cp.ElementwiseKernel("raw T x", "T y", "y = x[i + 1]", "standin_oob")
        x = cp.arange(4, dtype=cp.float32)
        with pytest.raises(IndexError, match="raw array 'x' at index 4"):
            k(x, cp.empty(4, dtype=cp.float32))
        ok = cp.ElementwiseKernel("raw T x", "T y", "y = x[i]", "standin_in_bounds")
        assert ok(x, cp.empty(4, dtype=cp.float32)).get().tolist() == [0, 1, 2, 3]
        with pytest.raises(IndexError):  # reported again at the next bad launch
            k(x, cp.empty(4, dtype=cp.float32))
        k(x[:3], cp.empty(2, dtype=cp.float32))  # in bounds: no error left over

    def test_raw_only_kernel_needs_size(self):
        k = cp.ElementwiseKernel("raw T x", "raw T y", "y[i] = x[i] + 1", "standin_rawonly")
        x, y = cp.arange(3, dtype=cp.float32), cp.zeros(3, dtype=cp.float32)
        k(x, y, size=3)
        assert y.get().tolist() == [1, 2, 3]
        with pytest.raises(ValueError):
            k(x, y)

    def test_reduction_kernel_axis_keepdims(self):
        k = cp.ReductionKernel("T x", "T y", "x * x", "a + b", "y = sqrt(a)", "0", "standin_l2")
        h = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
        x = cp.asarray(h)
        np.testing.assert_allclose(k(x).get(), np.sqrt((h ** 2).sum()), rtol=1e-6)
        np.testing.assert_allclose(k(x, axis=1).get(), np.sqrt((h ** 2).sum(1)), rtol=1e-6)
        got = k(x, axis=(0, 2), keepdims=True)
        assert got.shape == (1, 3, 1)
        np.testing.assert_allclose(got.get(), np.sqrt((h ** 2).sum((0, 2), keepdims=True)), rtol=1e-6)
        m = cp.ReductionKernel("T x", "T y", "x", "max(a, b)", "y = a", "-INFINITY", "standin_max",
                               reduce_type="float")
        np.testing.assert_allclose(m(x, axis=2).get(), h.max(2))

    def test_raw_kernel_grid_block_and_atomics(self, counts):
        src = r'''
        extern "C" __global__ void standin_hist(const int* labels, int n, float* hist) {
            int t = blockIdx.x * blockDim.x + threadIdx.x;
            if (t < n) atomicAdd(&hist[labels[t]], 1.0f);
        }'''
        k = cp.RawKernel(src, "standin_hist")
        labels = cp.asarray(np.array([0, 1, 1, 3, 3, 3, 2], dtype=np.int32))
        hist = cp.zeros(4, dtype=cp.float32)
        k((2,), (4,), (labels, np.int32(7), hist))
        assert hist.get().tolist() == [1, 2, 1, 3] and counts.launches_by_name["standin_hist"] == 1
        with pytest.raises(TypeError, match="misread"):
            k((2,), (4,), (labels, 7, hist))  # a Python int is passed as 8 bytes: wrong for `int`
        with pytest.raises(TypeError):
            k((1,), (4,), (labels, np.int32(7), np.zeros(4, np.float32)))

    def test_unsupported_cuda_is_loud(self):
        # a RawKernel's barrier and shared memory are simulated (tests/test_standin_barriers.py);
        # warp shuffles are not, nor barriers in the generated kernels
        with pytest.raises(NotImplementedError, match="warp shuffles"):
            cp.RawKernel('extern "C" __global__ void f(float* x) { x[0] = __shfl_sync(~0u, x[0], 1); }', "f")
        with pytest.raises(NotImplementedError, match="__syncthreads"):
            cp.ElementwiseKernel("T x", "T y", "__syncthreads(); y = x;", "standin_sync")

    def test_compile_errors_are_reported(self, tmp_path, monkeypatch):
        monkeypatch.setenv("MINIRAN_STANDIN_CACHE", str(tmp_path))
        k = cp.ElementwiseKernel("T x", "T y", "y = x +* ;", "standin_broken")
        with pytest.raises(RuntimeError, match="failed to compile"):
            k(cp.ones(2))

    def test_compiled_kernels_are_cached_on_disk(self, tmp_path, monkeypatch):
        monkeypatch.setenv("MINIRAN_STANDIN_CACHE", str(tmp_path))
        src = ("T x", "T y", "y = x + 7 /* cache test %s */" % tmp_path.name, "standin_cache")
        n0 = _standin_kernels.compile_count
        assert cp.ElementwiseKernel(*src)(cp.ones(2)).get().tolist() == [8, 8]
        assert _standin_kernels.compile_count == n0 + 1
        _standin_kernels._loaded.clear()  # as in a new process: only the disk cache is left
        assert cp.ElementwiseKernel(*src)(cp.ones(2)).get().tolist() == [8, 8]
        assert _standin_kernels.compile_count == n0 + 1
        assert len(list(tmp_path.glob("*.so"))) == 1


# --------------------------------------------------------------------------- as strict as CuPy 14 (issue 18)


@needs_standin
class TestAsCuPy14Issues:
    """Three places where an earlier stand-in was kinder than CuPy: each of these failed on it."""

    @pytest.mark.parametrize("a_shape,b_shape,transpose,expected", [
        ((4, 6), (2, 6, 5), None, {"cupy_mat_ptrs": 3, "gemmBatched": 1}),  # W @ col: the weight broadcasts
        ((6, 4), (2, 6, 5), "a", {"matmul_copy": 1, "cupy_mat_ptrs": 3, "gemmBatched": 1}),  # W.T @ gy
        ((2, 4, 5), (2, 6, 5), "b", {"matmul_copy": 1, "gemmStridedBatched": 1}),  # gy @ col.T
        ((2, 4, 6), (2, 6, 5), None, {"gemmStridedBatched": 1}),  # same batch, contiguous: one call
        ((3, 1, 4, 6), (2, 6, 5), None, {"cupy_mat_ptrs": 6, "gemmBatched": 1}),  # two batch axes
        ((4, 6), (6, 5), None, {"gemm": 1}),  # 2-D: dot
        ((6, 4), (6, 5), "a", {"gemm": 1}),  # 2-D transposed: a flag, no copy
    ])
    def test_matmul_counts_what_cupy_launches(self, a_shape, b_shape, transpose, expected):
        rng = np.random.default_rng(0)
        ha, hb = rng.standard_normal(a_shape).astype(np.float32), rng.standard_normal(b_shape).astype(np.float32)
        a, b = cp.asarray(ha), cp.asarray(hb)
        if transpose == "a":
            a, ha = a.swapaxes(-1, -2), ha.swapaxes(-1, -2)
        if transpose == "b":
            b, hb = b.swapaxes(-1, -2), hb.swapaxes(-1, -2)
        with cupy_standin.counting() as c:
            got = cp.matmul(a, b)
        assert dict(c.launches_by_name) == expected
        np.testing.assert_allclose(got.get(), ha @ hb, rtol=1e-5)

    def test_matmul_into_a_strided_out_copies_once_more(self):
        a, b = cp.ones((2, 3, 4), dtype=cp.float32), cp.ones((2, 4, 5), dtype=cp.float32)
        out = cp.empty((2, 5, 3), dtype=cp.float32).swapaxes(1, 2)
        with cupy_standin.counting() as c:
            cp.matmul(a, b, out=out)
        assert dict(c.launches_by_name) == {"matmul_copy": 1, "gemmStridedBatched": 1}
        assert float(out.sum()) == 2 * 3 * 5 * 4

    def test_a_fixed_type_input_of_another_dtype_is_refused(self):
        k = cp.ElementwiseKernel("float32 x, int32 n", "float32 y", "y = x * n", "standin_fixed")
        x = cp.ones(3, dtype=cp.float32)
        assert k(x, cp.full(3, 2, dtype=cp.int32)).get().tolist() == [2, 2, 2]
        with pytest.raises(TypeError, match="Type is mismatched. x float64 float32"):
            k(x.astype(cp.float64), cp.full(3, 2, dtype=cp.int32))
        with pytest.raises(TypeError, match="Type is mismatched. n int64 int32"):
            k(x, cp.full(3, 2, dtype=cp.int64))
        assert k(x, 3).get().tolist() == [3, 3, 3]  # a Python scalar is cast, as in CuPy
        r = cp.ReductionKernel("float32 x", "float32 y", "x", "a + b", "y = a", "0", "standin_fixed_sum")
        with pytest.raises(TypeError, match="Type is mismatched"):
            r(x.astype(cp.float64))

    @pytest.mark.parametrize("n,threads", [(10, 16), (100, 128), (1000, 512), (3, 4)])
    def test_the_identity_is_applied_once_per_thread(self, n, threads):
        # CuPy: block_stride = clp2(max(1, 512 // n) // 2 + 1) outputs per 512-thread block, so
        # 512 // block_stride threads start from the identity for each output
        wrong = cp.ReductionKernel("T x", "T y", "x", "a + b", "y = a", "1", "standin_wrong_identity")
        right = cp.ReductionKernel("T x", "T y", "x", "a + b", "y = a", "0", "standin_right_identity")
        x = cp.arange(n, dtype=cp.float64)
        assert float(right(x)) == n * (n - 1) / 2
        assert float(wrong(x)) == n * (n - 1) / 2 + threads
        rows = cp.ones((5, n), dtype=cp.float64)  # five outputs: each its own threads
        assert wrong(rows, axis=1).get().tolist() == [n + threads] * 5

    def test_max_with_its_true_identity_is_exact_however_many_threads(self):
        m = cp.ReductionKernel("T x", "T y", "x", "max(a, b)", "y = a", "-INFINITY", "standin_max_id")
        h = -np.arange(1, 1001, dtype=np.float32)  # all negative: an identity of 0 would show
        assert float(m(cp.asarray(h))) == -1.0
        z = cp.ReductionKernel("T x", "T y", "x", "max(a, b)", "y = a", "0", "standin_max_zero")
        assert float(z(cp.asarray(h))) == 0.0  # the wrong identity leaks in, as on a GPU


@needs_standin
class TestCublas:
    """The stand-in of cupy_backends.cuda.libs.cublas: strided-batched GEMM, column-major, pointers checked."""

    def test_strided_batched_gemm_matches_numpy_with_shared_and_transposed_operands(self):
        from miniran.fast.gemm_gpu import batched_matmul

        rng = np.random.default_rng(1)
        for dtype in (np.float32, np.float64):
            w = rng.standard_normal((4, 6)).astype(dtype)
            col = rng.standard_normal((3, 6, 5)).astype(dtype)
            gy = rng.standard_normal((3, 4, 5)).astype(dtype)
            with cupy_standin.counting() as c:
                y = batched_matmul(cp.asarray(w), cp.asarray(col), cp.empty((3, 4, 5), dtype))
                g = batched_matmul(cp.asarray(w), cp.asarray(gy), cp.empty((3, 6, 5), dtype), trans_a=True)
                gw = batched_matmul(cp.asarray(gy), cp.asarray(col), cp.empty((3, 4, 6), dtype), trans_b=True)
            assert dict(c.launches_by_name) == {"gemmStridedBatched": 3}
            tol = 1e-5 if dtype == np.float32 else 1e-12
            np.testing.assert_allclose(y.get(), w @ col, rtol=tol, atol=tol)
            np.testing.assert_allclose(g.get(), w.T @ gy, rtol=tol, atol=tol)
            np.testing.assert_allclose(gw.get(), gy @ col.transpose(0, 2, 1), rtol=tol, atol=tol)

    def test_a_pointer_outside_every_allocation_is_refused(self):
        from cupy_backends.cuda.libs import cublas

        a = cp.ones((2, 2), dtype=cp.float32)
        one, zero = np.ones((), np.float32), np.zeros((), np.float32)
        with pytest.raises(cublas.CUBLASError, match="not inside"):
            cublas.sgemmStridedBatched(cp.cuda.get_cublas_handle(), 0, 0, 2, 2, 2, one.ctypes.data,
                                       a.data.ptr, 2, 4, a.data.ptr, 2, 4, zero.ctypes.data,
                                       a.data.ptr, 2, 4, 2)  # batch 2 reads past the 4 floats of a
