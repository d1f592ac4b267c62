"""Argument checks shared by the vision functions and their layers (one rule, one place)."""

from __future__ import annotations

import numbers


def _pair(value, name):
    """``3 -> (3, 3)``; ``(2, 1) -> (2, 1)``. Only integers are accepted (a float is a TypeError).

    This is the one rule for ``kernel_size``, ``stride`` and ``padding`` in
    :mod:`~miniran.functional.conv`, :mod:`~miniran.functional.pooling` and their
    layers; their ranges (stride >= 1, padding >= 0, ...) are checked by the caller.
    """
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    for v in pair:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    return int(pair[0]), int(pair[1])


def _count(value, name, minimum=1):
    """An integer >= ``minimum`` (a size, a number of channels), else TypeError/ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)
