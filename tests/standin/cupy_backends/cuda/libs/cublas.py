"""Stand-in for ``cupy_backends.cuda.libs.cublas``: strided-batched GEMM on the CPU.

Only what miniran calls, with CuPy 14's signatures: ``sgemmStridedBatched``
and ``dgemmStridedBatched`` (and the operation constants). As in cuBLAS:

* matrices are column-major: element (i, j) of a matrix at pointer ``p`` with
  leading dimension ``ld`` is at ``p + (i + j * ld) * itemsize``;
* ``C[b] = alpha * op(A[b]) @ op(B[b]) + beta * C[b]`` with ``op`` the
  transpose when the flag says so, ``A[b]`` at ``A + b * strideA`` elements
  (a stride of 0 shares one matrix over the batch);
* ``alpha`` and ``beta`` are host pointers to scalars of the matrix type
  (CuPy's default pointer mode); with ``beta == 0`` C is not read;
* every pointer must lie, with all the elements it addresses, inside one live
  device (stand-in) allocation, else ``CUBLASError`` (on a GPU: a fault or
  garbage); batches that write one C matrix twice are refused (a race).

Each call counts one launch (``gemmStridedBatched``) in ``cupy_standin``.
"""

from __future__ import annotations

import ctypes

import numpy as np

import cupy_standin as _ctl

CUBLAS_OP_N = 0
CUBLAS_OP_T = 1
CUBLAS_OP_C = 2


class CUBLASError(RuntimeError):
    pass


_last_owner: dict = {}  # pointer -> weak reference of the buffer that held it last (a graph replays the same)


def _owner(ptr: int, nbytes: int):
    """The live stand-in buffer holding [ptr, ptr + nbytes), and ptr's offset in it."""
    import cupy

    hint = _last_owner.get(ptr)
    refs = ([hint] if hint is not None else []) + list(cupy._live.values())
    for ref in refs:
        a = ref()
        if a is None:
            continue
        base = a.__array_interface__["data"][0]
        if base <= ptr and ptr + nbytes <= base + a.nbytes:
            if _ctl._state.capture is not None:  # a captured GEMM addresses it by pointer: the graph keeps it
                _ctl._state.capture.keep.append(a)
            if len(_last_owner) > 100_000:
                _last_owner.clear()
            _last_owner[ptr] = ref
            return a, ptr - base
    raise CUBLASError(f"CUBLAS_STATUS_EXECUTION_FAILED: pointer 0x{ptr:x} (+{nbytes} bytes) is not inside "
                      "one device allocation")


def _matrices(ptr, dtype, rows, cols, ld, stride, batch):
    """(batch, rows, cols) view of column-major matrices at ``ptr`` (elements ``stride`` apart)."""
    if ld < max(1, rows):
        raise CUBLASError(f"CUBLAS_STATUS_INVALID_VALUE: leading dimension {ld} < rows {rows}")
    item = dtype.itemsize
    extent = ((batch - 1) * stride + (cols - 1) * ld + rows) * item if rows and cols and batch else 0
    owner, offset = _owner(ptr, extent)
    base = owner.__array_interface__["data"][0]
    raw = (ctypes.c_char * owner.nbytes).from_address(base)  # the allocation's bytes, whatever its layout
    return np.ndarray((batch, rows, cols), dtype=dtype, buffer=raw, offset=offset,
                      strides=(stride * item, item, ld * item))


def _scalar(ptr, dtype):
    ctype = ctypes.c_float if dtype == np.float32 else ctypes.c_double
    return dtype.type(ctype.from_address(ptr).value)


@_ctl.captured
def _gemm_strided_batched(dtype, transa, transb, m, n, k, al, A, lda, strideA, B, ldb, strideB,
                          be, C, ldc, strideC, batch):
    """The GEMM with ``alpha`` and ``beta`` already read from the host (``al``, ``be``): a
    capture records their values, as cuBLAS reads host scalars when the call is issued."""
    for flag in (transa, transb):
        if flag not in (CUBLAS_OP_N, CUBLAS_OP_T, CUBLAS_OP_C):
            raise CUBLASError(f"CUBLAS_STATUS_INVALID_VALUE: operation {flag}")
    if min(m, n, k, batch) < 0:
        raise CUBLASError("CUBLAS_STATUS_INVALID_VALUE: negative size")
    if batch > 1 and strideC == 0 and m and n:
        raise CUBLASError("stand-in: every batch writes the same C matrix (strideC == 0): a race on a GPU")
    if m == 0 or n == 0 or batch == 0:
        _ctl.launch("gemmStridedBatched")
        return
    a_rows, a_cols = (m, k) if transa == CUBLAS_OP_N else (k, m)
    b_rows, b_cols = (k, n) if transb == CUBLAS_OP_N else (n, k)
    a = _matrices(A, dtype, a_rows, a_cols, lda, strideA, batch)
    b = _matrices(B, dtype, b_rows, b_cols, ldb, strideB, batch)
    c = _matrices(C, dtype, m, n, ldc, strideC, batch)
    op_a = a if transa == CUBLAS_OP_N else a.transpose(0, 2, 1)
    op_b = b if transb == CUBLAS_OP_N else b.transpose(0, 2, 1)
    product = np.matmul(op_a, op_b) if k else np.zeros((batch, m, n), dtype)
    c[...] = al * product if be == 0 else al * product + be * c
    _ctl.launch("gemmStridedBatched")


def sgemmStridedBatched(handle, transa, transb, m, n, k, alpha, A, lda, strideA, B, ldb, strideB,
                        beta, C, ldc, strideC, batchCount):
    dtype = np.dtype(np.float32)
    _gemm_strided_batched(dtype, transa, transb, m, n, k, _scalar(alpha, dtype), A, lda, strideA,
                          B, ldb, strideB, _scalar(beta, dtype), C, ldc, strideC, batchCount)


def dgemmStridedBatched(handle, transa, transb, m, n, k, alpha, A, lda, strideA, B, ldb, strideB,
                        beta, C, ldc, strideC, batchCount):
    dtype = np.dtype(np.float64)
    _gemm_strided_batched(dtype, transa, transb, m, n, k, _scalar(alpha, dtype), A, lda, strideA,
                          B, ldb, strideB, _scalar(beta, dtype), C, ldc, strideC, batchCount)
