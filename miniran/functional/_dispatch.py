"""The one place that decides which code computes a Function: the reference, or a faster twin.

Every Function of :mod:`miniran.functional` is the *reference* algorithm,
written once for NumPy and CuPy. A faster implementation of the same
operation (CPU threads, Winograd, a fused CUDA kernel) is a *twin*: a subclass
of the reference Function, in :mod:`miniran.fast`, that overrides ``forward``
and ``backward`` and keeps its own saved state. The engine registers its
twins here with :func:`twin_of`; this module never imports the engine.

The public wrappers (``conv2d``, ``batch_norm``, ...) call :func:`apply`,
which asks each registered twin of the Function, in the order they were
registered, whether it ``suits`` these inputs, and runs the first that does,
else the reference. So the class *is* the path: ``type(y.creator).__name__``
says which code computed ``y``, and a traceback names the twin.

The reference switch runs every Function on its reference code, on the CPU
and on the GPU: ``with reference_only(): ...``, or the environment variable
``MINIRAN_REFERENCE=1`` for a whole process. The engine also lets go of its
BLAS thread hold there, so the reference is plain NumPy (or plain CuPy).
"""

from __future__ import annotations

import os

from miniran.autograd import Tensor, is_grad_enabled

__all__ = ["apply", "implementation", "reference_only", "reference_active", "twin_of", "twins"]

_TWINS: dict[type, list[type]] = {}


def _reference_from_environment() -> bool:
    value = os.environ.get("MINIRAN_REFERENCE", "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"MINIRAN_REFERENCE must be 1 or 0 (true/false, yes/no, on/off), got {value!r}")


class _Switch:
    reference = None  # read from MINIRAN_REFERENCE on first use, so a bad value never breaks an import


def reference_active() -> bool:
    """Whether every Function runs on its reference code (see :class:`reference_only`)."""
    if _Switch.reference is None:
        _Switch.reference = _reference_from_environment()
    return _Switch.reference


class reference_only:
    """Context manager: every Function computes with its reference code, on the CPU and on the GPU.

    ``with miniran.reference_only(): ...`` gives the same results (up to float
    rounding) more slowly. It is what every twin is tested against.
    ``MINIRAN_REFERENCE=1`` does the same for a whole process.
    """

    def __enter__(self):
        self._previous, _Switch.reference = reference_active(), True
        return self

    def __exit__(self, *exc):
        _Switch.reference = self._previous
        return False


def twin_of(function: type):
    """Class decorator of the engine: register a faster twin of the reference ``function``.

    The twin must subclass ``function`` and have a classmethod
    ``suits(arrays, params, grad) -> bool``: ``arrays`` are the raw input
    arrays, ``params`` the keyword arguments of the constructor, ``grad``
    whether the call records a graph for a backward pass. Twins are asked in
    the order they were registered.
    """
    def register(twin: type) -> type:
        if not (isinstance(twin, type) and issubclass(twin, function)):
            raise TypeError(f"twin_of({function.__name__}): {twin!r} is not a subclass of it")
        if not callable(getattr(twin, "suits", None)):
            raise TypeError(f"twin_of({function.__name__}): {twin.__name__} has no suits(arrays, params, grad)")
        _TWINS.setdefault(function, []).append(twin)
        return twin
    return register


def twins(function: type) -> tuple[type, ...]:
    """The registered twins of a reference Function, in the order they are asked."""
    return tuple(_TWINS.get(function, ()))


def implementation(function: type, inputs, params: dict) -> type:
    """The class that computes ``function(**params)`` on ``inputs``: the first twin that suits, else ``function``."""
    candidates = _TWINS.get(function)
    if not candidates or _Switch.reference or (_Switch.reference is None and reference_active()):
        return function
    arrays = tuple(x.data if isinstance(x, Tensor) else x for x in inputs)
    grad = is_grad_enabled() and any(isinstance(x, Tensor) and x.requires_grad for x in inputs)
    for twin in candidates:
        if twin.suits(arrays, params, grad):
            return twin
    return function


def apply(function: type, *inputs, **params):
    """Run ``function(**params)(*inputs)``, or its twin that suits: the one dispatch point."""
    return implementation(function, inputs, params)(**params)(*inputs)
