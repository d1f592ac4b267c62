"""miniran: the Residual Attention Network (Wang et al., CVPR 2017) from scratch on NumPy/CuPy.

Layers of the package, each importing only from those above it in this list:

* :mod:`miniran.backend`: NumPy/CuPy selection (``get_array_module``).
* :mod:`miniran.autograd`: ``Tensor``, ``Function``, backward, ``gradcheck``.
* :mod:`miniran.functional`: differentiable operations (conv, batch norm, ...).
* :mod:`miniran.nn`: modules and layers.
* :mod:`miniran.models`: residual units, the attention module, the networks.
* :mod:`miniran.optim`, :mod:`miniran.data`, :mod:`miniran.train`: training.
"""

from miniran import functional, nn, optim
from miniran.autograd import Function, GradcheckError, Tensor, enable_grad, gradcheck, no_grad
from miniran.backend import DEFAULT_DTYPE, cuda_available, get_array_module

__version__ = "0.1.0"


def tensor(data, requires_grad=False, dtype=None) -> Tensor:
    """Create a tensor (Python floats become float32, the default dtype; integers stay integers)."""
    t = Tensor(data, requires_grad=False)
    if dtype is not None:
        t = Tensor(t.data.astype(dtype))
    t.requires_grad = bool(requires_grad)
    return t


__all__ = [
    "DEFAULT_DTYPE", "Function", "GradcheckError", "Tensor", "cuda_available", "enable_grad",
    "functional", "get_array_module", "gradcheck", "nn", "no_grad", "optim", "tensor",
]
