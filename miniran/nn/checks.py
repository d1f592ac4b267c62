"""Checks of the arrays read from a file: is each entry what its reader will use it as?

Shared by the readers of miniran's ``.npz`` files (the shipped weights,
:func:`miniran.models.load_pretrained`; a training checkpoint can use the same
checks). Each function returns ``None`` when the entry is fine, or the reason
it is not, as words that follow the entry's name in a one-line message::

    problem = weights_problem(arrays["model/fc.weight"])
    if problem:
        raise ValueError(f"{path}: entry 'model/fc.weight' {problem}")

A ``.npz`` keeps whatever was saved in it: ``astype(np.float32)`` quietly
turns numeric text into numbers and drops the imaginary part of complex
numbers, and a NaN loads like any other weight. These checks catch what a cast
would hide. Only NumPy here, so any layer of the package can use them.
"""

from __future__ import annotations

import numpy as np

__all__ = ["first_few", "holds", "integer_problem", "statistic_problem", "text_problem", "weights_problem"]


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def holds(value: np.ndarray) -> str:
    """'holds text (<U9, shape (3,))': what an array holds, for a message."""
    kind = {"U": "text", "S": "bytes", "c": "complex numbers", "b": "booleans", "O": "objects",
            "i": "integers", "u": "integers", "M": "dates", "m": "time spans", "V": "raw records"}
    what = kind.get(value.dtype.kind, "values")
    return f"holds {what} ({value.dtype}, shape {value.shape})"


def weights_problem(value: np.ndarray) -> str | None:
    """Why ``value`` is not an array of finite floating-point numbers (None when it is)."""
    if value.dtype.kind != "f":
        return f"{holds(value)}; expected floating-point numbers"
    bad = int(value.size - np.isfinite(value).sum())
    if bad:
        return f"holds {_count(bad, 'NaN or infinite value')} (of {value.size}); expected finite numbers"
    return None


def statistic_problem(value: np.ndarray, image_shape=None, positive: bool = False) -> str | None:
    """Why ``value`` is not a usable normalisation statistic (None when it is).

    A statistic is finite real numbers; with ``image_shape`` (C, H, W) its
    shape must broadcast to it (``(C, H, W)``, ``(C, 1, 1)``, ``(1, 1, 1)``...);
    with ``positive`` every value must be above zero (a standard deviation
    divides the images).
    """
    if value.dtype.kind not in "fiu":
        return f"{holds(value)}; expected real numbers"
    if image_shape is not None:
        image_shape = tuple(image_shape)
        try:
            fits = value.ndim <= len(image_shape) and np.broadcast_shapes(value.shape, image_shape) == image_shape
        except ValueError:
            fits = False
        if not fits:
            return f"has shape {value.shape}; expected a shape that broadcasts to the images {image_shape}"
    if not np.isfinite(value).all():
        return "holds NaN or infinite values; expected finite numbers"
    if positive and not (value > 0).all():
        return (f"holds {_count(int((value <= 0).sum()), 'value')} <= 0 (smallest {value.min():g}); "
                "expected values above zero")
    return None


def text_problem(value: np.ndarray) -> str | None:
    """Why ``value`` is not one piece of text (a 0-d unicode array; None when it is)."""
    if value.dtype.kind != "U" or value.ndim != 0:
        return f"{holds(value)}; expected one piece of text"
    return None


def integer_problem(value: np.ndarray, minimum=None) -> str | None:
    """Why ``value`` is not one integer (a 0-d integer array) of at least ``minimum`` (None when it is)."""
    if value.dtype.kind not in "iu" or value.ndim != 0:
        return f"{holds(value)}; expected one integer"
    if minimum is not None and int(value) < minimum:
        return f"is {int(value)}; expected at least {minimum}"
    return None


def first_few(keys, n: int = 4) -> str:
    """'a, b, c, d and 408 more (412 in all)': a list of entries summarised for a one-line message."""
    keys = list(keys)
    if len(keys) <= n:
        return ", ".join(keys)
    return f"{', '.join(keys[:n])} and {len(keys) - n} more ({len(keys)} in all)"
