"""Batched matrix products on the GPU as ONE cuBLAS call each (strided-batched GEMM).

``cupy.matmul`` of a 2-D weight against a batch of matrices is correct but
costly in launches: CuPy 14 copies an operand that is not C-contiguous (a
transposed weight, a transposed activation), and when a batch axis
broadcasts it builds arrays of matrix pointers with one small kernel per
operand and for the output before cuBLAS's pointer-based batched GEMM. Here
the same product is one ``cublas<t>gemmStridedBatched``: a shared matrix is
given a batch stride of 0, and a transpose is a flag, never a copy.

cuBLAS works on column-major matrices; a row-major (rows, cols) array is the
column-major (cols, rows) matrix with leading dimension ``cols``. So
``C = op(A) @ op(B)`` (row-major) is computed as ``C^T = op(B)^T @ op(A)^T``
(column-major): B's memory goes first.
"""

from __future__ import annotations

import numpy as np

_CONSTANTS: dict = {}


def _host_scalars(dtype):
    """alpha = 1 and beta = 0 in host memory (cuBLAS's default pointer mode reads them there)."""
    if dtype not in _CONSTANTS:
        _CONSTANTS[dtype] = (np.ones((), dtype), np.zeros((), dtype))
    return _CONSTANTS[dtype]


def supported(*arrays) -> bool:
    """Whether :func:`batched_matmul` takes these arrays: float32 or float64, one dtype, C-contiguous."""
    dtype = arrays[0].dtype
    return dtype in (np.float32, np.float64) and all(
        a.dtype == dtype and a.flags.c_contiguous for a in arrays)


def batched_matmul(a, b, out, trans_a=False, trans_b=False):
    """``out[i] = op(a[i]) @ op(b[i])`` in one cuBLAS call; returns ``out``.

    ``a``, ``b``: C-contiguous CuPy arrays, 3-D (batch, rows, cols) or 2-D (one
    matrix shared by every batch entry, batch stride 0); ``op`` transposes
    when the flag is set. ``out``: C-contiguous (batch, M, N). All of one
    dtype, float32 or float64 (:func:`supported`).
    """
    import cupy
    from cupy_backends.cuda.libs import cublas

    batch, m, n = out.shape
    k = a.shape[-2] if trans_a else a.shape[-1]
    if (a.shape[-1] if trans_a else a.shape[-2]) != m or (b.shape[-1] if trans_b else b.shape[-2]) != k \
            or (b.shape[-2] if trans_b else b.shape[-1]) != n:
        raise ValueError(f"batched_matmul: shapes {a.shape}{'^T' if trans_a else ''} @ "
                         f"{b.shape}{'^T' if trans_b else ''} do not give {out.shape}")
    if not supported(a, b, out):
        raise TypeError("batched_matmul: float32 or float64 arrays of one dtype, C-contiguous")

    def batch_stride(x):
        return 0 if x.ndim == 2 else x.shape[-2] * x.shape[-1]

    gemm = cublas.sgemmStridedBatched if out.dtype == np.float32 else cublas.dgemmStridedBatched
    one, zero = _host_scalars(out.dtype.type)
    op = (cublas.CUBLAS_OP_N, cublas.CUBLAS_OP_T)
    gemm(cupy.cuda.get_cublas_handle(), op[trans_b], op[trans_a], n, m, k,
         one.ctypes.data, b.data.ptr, b.shape[-1], batch_stride(b),
         a.data.ptr, a.shape[-1], batch_stride(a),
         zero.ctypes.data, out.data.ptr, n, m * n, batch)
    return out
