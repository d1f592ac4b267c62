"""The stand-in's RawKernel runs a block's threads as fibers: ``__syncthreads()`` and ``__shared__``.

A block-level reduction (each thread writes its value to shared memory, a tree
of barriers sums them) must give the sum here as on a GPU; a kernel whose
threads do not all reach the same barrier must fail, as it would hang or read
unwritten data on a GPU; shared memory starts with garbage, as on a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

_BLOCK_SUM = r'''
extern "C" __global__ void standin_block_sum(const double* x, int n, double* out) {
    __shared__ double part[256];
    const int t = threadIdx.x;
    double s = 0;
    for (int j = blockIdx.x * n + t; j < (blockIdx.x + 1) * n; j += blockDim.x) s += x[j];
    part[t] = s;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w /= 2) {
        if (t < w) part[t] += part[t + w];
        __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = part[0];
}'''


@pytest.fixture
def standin(cp):
    return pytest.importorskip("cupy_standin", reason="the stand-in's own simulation")


def test_block_reduction_through_shared_memory_and_barriers(cp, standin):
    k = cp.RawKernel(_BLOCK_SUM, "standin_block_sum")
    x = np.arange(3 * 1000, dtype=np.float64).reshape(3, 1000)
    out = cp.zeros(3, dtype=cp.float64)
    with standin.counting() as c:
        k((3,), (256,), (cp.asarray(x), np.int32(1000), out))
    assert out.get().tolist() == x.sum(1).tolist()
    assert c.launches_by_name["standin_block_sum"] == 1


def test_a_missing_barrier_reads_what_a_gpu_would_not_have(cp, standin):
    # without the barrier in the tree, thread t reads part[t + w] before thread t + w wrote it
    racy = _BLOCK_SUM.replace("        __syncthreads();\n    }", "    }").replace("standin_block_sum", "standin_racy")
    k = cp.RawKernel(racy, "standin_racy")
    x = np.ones((1, 512))
    out = cp.zeros(1, dtype=cp.float64)
    k((1,), (256,), (cp.asarray(x), np.int32(512), out))
    assert out.get()[0] != 512.0


def test_shared_memory_starts_with_garbage(cp, standin):
    src = r'''
    extern "C" __global__ void standin_uninit(float* out) {
        __shared__ float s[4];
        if (threadIdx.x == 0) out[blockIdx.x] = s[1];
        s[1] = 0.0f;  // the next block must not see this either
    }'''
    out = cp.zeros(2, dtype=cp.float32)
    cp.RawKernel(src, "standin_uninit")((2,), (4,), (out,))
    assert np.isnan(out.get()).all()


@pytest.mark.parametrize("body, message", [
    ("if (threadIdx.x < 2) return; __syncthreads(); out[threadIdx.x] = 1;", "have exited"),
    ("if (threadIdx.x < 2) { __syncthreads(); } else { __syncthreads(); } out[threadIdx.x] = 1;",
     "line 3"),
])
def test_a_barrier_that_not_every_thread_reaches_is_refused(cp, standin, body, message):
    src = 'extern "C" __global__ void standin_diverge(float* out) {\n' + body.replace("; ", ";\n") + "\n}"
    k = cp.RawKernel(src, "standin_diverge")
    with pytest.raises(RuntimeError, match=message):
        k((1,), (4,), (cp.zeros(4, dtype=cp.float32),))
