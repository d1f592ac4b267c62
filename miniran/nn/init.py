"""Weight initialisation.

The paper initialises weights "following [9]" (He et al., 2015, *Delving deep
into rectifiers*): zero-mean Gaussians with variance 2 / fan. miniran uses the
**fan-out** form for convolutions (fan = out_channels * KH * KW), as the
ResNet reference code and torchvision's ResNets do, which keeps the variance
of the *gradients* constant through depth; fan-in is available for layers
where the forward signal matters more.
"""

from __future__ import annotations

import math

import numpy as np

from miniran import backend


def _fans(shape):
    if len(shape) < 2:
        raise ValueError(f"fan-in/fan-out need a weight with at least 2 dimensions, got shape {shape}")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def kaiming_normal(shape, mode="fan_out", rng=None, dtype=None):
    """He-normal weights: N(0, 2 / fan), fan = fan_in or fan_out of ``shape``.

    Args:
        shape: (O, C, KH, KW) for conv weights, (out, in) for linear ones.
        mode: ``"fan_out"`` (default, as the paper's ResNet lineage) or ``"fan_in"``.
        rng: a ``numpy.random.Generator`` (the global default generator if None).
    """
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = _fans(tuple(shape))
    std = math.sqrt(2.0 / (fan_in if mode == "fan_in" else fan_out))
    rng = rng if rng is not None else np.random.default_rng()
    return (rng.standard_normal(shape) * std).astype(dtype or backend.DEFAULT_DTYPE)


def uniform_fan_in(shape, fan_in, rng=None, dtype=None):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): the usual default for linear layers and biases."""
    bound = 1.0 / math.sqrt(fan_in)
    rng = rng if rng is not None else np.random.default_rng()
    return rng.uniform(-bound, bound, size=shape).astype(dtype or backend.DEFAULT_DTYPE)
