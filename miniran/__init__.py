"""miniran: the Residual Attention Network (Wang et al., CVPR 2017) from scratch on NumPy/CuPy.

Layers of the package, each importing only from those above it in this list:

* :mod:`miniran.backend`: NumPy/CuPy selection (``get_array_module``); beside it
  :mod:`miniran._io`, safe file writing (atomic writes, untearable appends).
* :mod:`miniran.threads` (miniran's CPU threads, the BLAS thread hold),
  :mod:`miniran.kernels` (the declarations of the fused GPU kernels) and
  :mod:`miniran.distributed` (the processes of a data-parallel run: MPI, NCCL).
* :mod:`miniran.autograd`: ``Tensor``, ``Function``, the graph walk (``autograd.graph``), ``gradcheck``.
* :mod:`miniran.functional`: differentiable operations (conv, batch norm, ...),
  each the readable reference algorithm: the textbook.
* :mod:`miniran.fast`: faster twins of those Functions (CPU threads, Winograd,
  fused CUDA kernels), chosen at one dispatch point: the engine.
* :mod:`miniran.nn`: modules and layers.
* :mod:`miniran.models`: residual units, the attention module, the networks.
* :mod:`miniran.optim`, :mod:`miniran.data`: optimisers and schedules; datasets and the loader.
* :mod:`miniran.viz`: masks and features of the attention modules, as arrays and pictures.
* :mod:`miniran.train`: the training command (its demo draws masks with ``viz``).

``tests/test_layers.py`` checks this rule on every module.
"""

from miniran import fast, functional, nn, optim  # fast: registers the engine's twins
from miniran.autograd import Function, GradcheckError, Tensor, enable_grad, gradcheck, no_grad
from miniran.backend import DEFAULT_DTYPE, cuda_available, get_array_module
from miniran.functional import reference_only

__version__ = "0.1.0"


def tensor(data, requires_grad=False, dtype=None) -> Tensor:
    """Create a tensor (Python floats become float32, the default dtype; integers stay integers).

    With ``requires_grad=True`` and no ``dtype``, integer data becomes float32
    (a gradient needs floating point); an explicit integer ``dtype`` is refused.
    """
    t = Tensor(data, requires_grad=False)
    if dtype is not None:
        t = Tensor(t.data.astype(dtype))
    elif requires_grad and t.dtype.kind != "f":
        t = Tensor(t.data.astype(DEFAULT_DTYPE))
    return Tensor(t.data, requires_grad=requires_grad)


__all__ = [
    "DEFAULT_DTYPE", "Function", "GradcheckError", "Tensor", "cuda_available", "enable_grad",
    "functional", "get_array_module", "gradcheck", "nn", "no_grad", "optim", "reference_only", "tensor",
]
