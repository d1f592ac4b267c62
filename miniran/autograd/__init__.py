"""Autograd core: :class:`Tensor`, :class:`Function`, the backward pass and gradient checking."""

from miniran.autograd.gradcheck import GradcheckError, gradcheck
from miniran.autograd.tensor import (
    Function,
    Tensor,
    as_array,
    as_tensor,
    enable_grad,
    is_grad_enabled,
    no_grad,
    sum_to,
)

__all__ = [
    "Function",
    "GradcheckError",
    "Tensor",
    "as_array",
    "as_tensor",
    "enable_grad",
    "gradcheck",
    "is_grad_enabled",
    "no_grad",
    "sum_to",
]
