"""GPU twins of elementwise Functions of :mod:`miniran.functional.basic`: fused CUDA kernels.

* :class:`ReLUGPU`: the backward ``gy * (y > 0)`` as one kernel, one launch
  instead of two (the comparison, then the product).
"""

from __future__ import annotations

from miniran import backend, kernels
from miniran.functional._dispatch import twin_of
from miniran.functional.basic import ReLUFunction

__all__ = ["ReLUGPU"]

# the fused `gy * (y > 0)` of ReLUFunction.backward
_RELU_GRAD_KERNEL = kernels.elementwise_kernel(
    "miniran_relu_grad", "T gy, T y", "T gx", "gx = y > (T)0 ? gy : (T)0;")


@twin_of(ReLUFunction)
class ReLUGPU(ReLUFunction):
    """ReLU on CuPy arrays: the reference's forward, a fused backward."""

    @classmethod
    def suits(cls, arrays, params, grad):
        return backend.is_cupy_array(arrays[0])

    def backward(self, gy):
        return _RELU_GRAD_KERNEL(gy, self.y)
