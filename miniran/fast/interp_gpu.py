"""The GPU twin of :class:`~miniran.functional.interpolation.InterpolateBilinear`: one GEMM each way.

The reference computes ``y = A_h @ x @ A_w^T`` as two products; on CuPy the
second one, a 2-D matrix against a (N, C, H, W_out) batch, broadcasts, and
CuPy 14 then launches pointer-array kernels besides the GEMM. For the small
maps of the attention masks the two matrices combine into one, their
Kronecker product ``K = A_h (x) A_w`` of shape (H_out*W_out, H*W)::

    y.reshape(N*C, H_out*W_out) = x.reshape(N*C, H*W) @ K^T        # forward
    gx.reshape(N*C, H*W)        = gy.reshape(N*C, H_out*W_out) @ K  # backward

one 2-D GEMM each (``K^T`` is a transposed view: a flag for cuBLAS, not a
copy). ``K`` is built once per shape on the host and kept on the device. It
does more multiplications than the separable form, which is why it is used
only while ``K`` stays small (:data:`MAX_KRONECKER_ELEMENTS`); larger maps run
the reference's two products.
"""

from __future__ import annotations

import functools

import numpy as np

from miniran import backend
from miniran.functional._dispatch import twin_of
from miniran.functional.interpolation import InterpolateBilinear, _interpolation_matrix

__all__ = ["InterpolateBilinearGPU"]

#: the largest Kronecker matrix used, in elements (4 Mi: 16 MiB in float32)
MAX_KRONECKER_ELEMENTS = 1 << 22


@functools.lru_cache(maxsize=64)
def _kronecker(h, w, ho, wo, align_corners, dtype_str):
    """``A_h (x) A_w`` (H_out*W_out, H*W) on the device, built once per shape."""
    dtype = np.dtype(dtype_str)
    a_h = _interpolation_matrix(h, ho, align_corners, dtype, np)
    a_w = _interpolation_matrix(w, wo, align_corners, dtype, np)
    k = np.kron(a_h, a_w).astype(dtype)
    return backend.to_device(k, "gpu")


@twin_of(InterpolateBilinear)
class InterpolateBilinearGPU(InterpolateBilinear):
    """Bilinear resizing of CuPy (N, C, H, W) arrays by one GEMM with the Kronecker matrix."""

    @classmethod
    def suits(cls, arrays, params, grad):
        x = arrays[0]
        if not backend.is_cupy_array(x) or x.ndim != 4 or x.dtype not in (np.float32, np.float64):
            return False
        (h, w), (ho, wo) = x.shape[2:], params["size"]
        return (h, w) != (ho, wo) and ho * wo * h * w <= MAX_KRONECKER_ELEMENTS

    def forward(self, x):
        cp = backend.get_array_module(x)
        n, c, h, w = x.shape
        ho, wo = self.size
        self.k = _kronecker(h, w, ho, wo, self.align_corners, np.dtype(x.dtype).str)
        self.in_hw = (h, w)
        x2 = cp.ascontiguousarray(x).reshape(n * c, h * w)
        return (x2 @ self.k.T).reshape(n, c, ho, wo)

    def backward(self, gy):
        cp = backend.get_array_module(gy)
        n, c, ho, wo = gy.shape
        gy2 = cp.ascontiguousarray(gy).reshape(n * c, ho * wo)
        return (gy2 @ self.k).reshape((n, c) + self.in_hw)
