"""``cupyx`` of the stand-in: the scatter functions (unbuffered, indices wrap)."""

from __future__ import annotations

import cupy as _cupy

_REAL = frozenset(_cupy._NAMES["cupyx"])


def scatter_add(a, slices, value):
    """Unbuffered ``a[slices] += value`` (like ``numpy.add.at``); one launch."""
    _cupy._scatter(a, slices, value, "add", "add", _ufunc_dtypes("add"))


def scatter_max(a, slices, value):
    """Unbuffered ``a[slices] = max(a[slices], value)``; one launch."""
    _cupy._scatter(a, slices, value, "maximum", "max", _ufunc_dtypes("maximum"))


def scatter_min(a, slices, value):
    """Unbuffered ``a[slices] = min(a[slices], value)``; one launch."""
    _cupy._scatter(a, slices, value, "minimum", "min", _ufunc_dtypes("minimum"))


def _ufunc_dtypes(name):
    return _cupy.ufunc._AT[name][1].split()


def __getattr__(name):
    if name in _REAL:
        raise NotImplementedError(f"cupy stand-in: cupyx.{name} is not implemented")
    raise AttributeError(f"module 'cupyx' has no attribute '{name}'")
