"""Solution to the exercise of notebook 06: bilinear upsampling along one axis, forward and backward.

The mask branch expands its small maps with bilinear interpolation (paper
section 3.2). Bilinear interpolation is separable, so one axis is enough to
see the whole idea. With ``align_corners=True`` (the rule miniran uses, the
Caffe ``Interp`` layer's ratio), output position ``d`` of ``out`` reads the
source coordinate

    src = d * (n - 1) / (out - 1)        (0 when out == 1)

and mixes its two neighbours ``i0 = floor(src)`` and ``i1 = min(i0 + 1, n - 1)``:

    y[..., d] = (1 - lam[d]) * x[..., i0[d]] + lam[d] * x[..., i1[d]],   lam = src - i0

Backward: ``y`` is linear in ``x``, and ``x[..., i]`` is read by every output
``d`` with ``i0[d] == i`` (weight ``1 - lam[d]``) or ``i1[d] == i`` (weight
``lam[d]``). So each output *sends* its upstream gradient back to its two
sources with the same weights, and the contributions arriving at one source
are summed (a scatter-add). A loop over the output positions does that
without any index trick; ``out`` is at most a few dozen here.
"""

from __future__ import annotations

import numpy as np

from miniran import Function, get_array_module


def neighbours(n, out, xp=np):
    """``(i0, i1, lam)`` of the align-corners rule, each of shape (out,)."""
    d = xp.arange(out, dtype=np.float64)
    src = d * ((n - 1) / (out - 1)) if out > 1 else d * 0.0
    i0 = xp.minimum(xp.floor(src).astype(np.int64), n - 1)
    i1 = xp.minimum(i0 + 1, n - 1)
    return i0, i1, src - i0


class UpsampleLastAxisSolution(Function):
    """Resize the last axis of ``x`` from ``n`` to ``out`` values by linear interpolation."""

    def __init__(self, out):
        self.out = int(out)

    def forward(self, x):
        xp = get_array_module(x)
        self.n = x.shape[-1]
        self.i0, self.i1, lam = neighbours(self.n, self.out, xp)
        self.lam = lam.astype(x.dtype)
        return (1 - self.lam) * x[..., self.i0] + self.lam * x[..., self.i1]

    def backward(self, gy):
        xp = get_array_module(gy)
        gx = xp.zeros(gy.shape[:-1] + (self.n,), dtype=gy.dtype)
        for d in range(self.out):
            # output d read x[i0[d]] with weight 1 - lam[d] and x[i1[d]] with weight lam[d]:
            # send gy[d] back along the same two edges (+=: several outputs share a source)
            gx[..., int(self.i0[d])] += (1 - self.lam[d]) * gy[..., d]
            gx[..., int(self.i1[d])] += self.lam[d] * gy[..., d]
        return gx


def upsample_last_axis_solution(x, out):
    return UpsampleLastAxisSolution(out)(x)
