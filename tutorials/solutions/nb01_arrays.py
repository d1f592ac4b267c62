"""Solution to the exercise of notebook 01: a log-sum-exp that runs on NumPy or CuPy.

``logsumexp(x) = log(sum(exp(x)))`` is the normaliser of softmax and of the
cross-entropy loss. Computed as written, ``exp`` overflows for inputs above
about 88 in float32 (709 in float64). Subtracting the maximum first fixes it,
because ``log(sum(exp(x))) = m + log(sum(exp(x - m)))`` for any ``m``, and with
``m = max(x)`` every ``exp(x - m)`` lies in (0, 1] and the sum is at least 1.

The function takes its array module from its input, so the same line of code
runs on a NumPy array (CPU) and on a CuPy array (GPU), and it keeps the
input's dtype (float32 stays float32).
"""

from __future__ import annotations

from miniran import get_array_module


def logsumexp(x, axis=-1, keepdims=False):
    """``log(sum(exp(x), axis))`` without overflow, on NumPy or CuPy arrays.

    Args:
        x: a floating-point NumPy or CuPy array.
        axis: the axis to reduce (an int).
        keepdims: keep the reduced axis with length 1.

    Returns:
        An array of the same module and dtype as ``x``.
    """
    xp = get_array_module(x)
    m = x.max(axis=axis, keepdims=True)  # the largest term becomes exp(0) = 1
    out = xp.log(xp.exp(x - m).sum(axis=axis, keepdims=True)) + m
    return out if keepdims else out.squeeze(axis=axis)
