"""Bilinear resizing of feature maps (the mask branch's "interpolation" layers).

The soft mask branch of the Residual Attention Network (paper section 3.2,
Fig. 2) pools down to a small map and then expands it again with bilinear
interpolation, each time to the size of a *reference* map (Caffe's ``Interp``
layer takes its output size from a second input; see docs/models.md). :func:`interpolate_bilinear` is that operation, with PyTorch's
exact semantics for both values of ``align_corners``.

Notation:
    N: batch size, C: channels,
    (H, W): input height and width, (H_out, W_out): output height and width.

How it is computed: bilinear interpolation is *separable* (one axis at a
time), and along one axis it is a linear map from ``in`` values to ``out``
values. Each output position ``d`` reads two neighbours ``i0 <= i1`` of a
source coordinate ``src`` and mixes them as ``(1 - lam) * x[i0] + lam * x[i1]``.
Writing those weights into a small dense matrix ``A`` of shape (out, in)
(two non-zeros per row) turns the whole resize into two matrix products::

    y = A_h @ x @ A_w^T          (A_h: (H_out, H), A_w: (W_out, W))

and its backward into the transposed products::

    gx = A_h^T @ gy @ A_w

Why matrices and not a gather plus a scatter-add (Chainer's choice,
``np.add.at``/``np.bincount`` on CPU, ``cupyx.scatter_add``/atomicAdd on GPU):

* the backward is just the transpose of the forward: nothing new to derive,
  no index bookkeeping, no Python loop over pixels;
* it is exact and deterministic on the GPU (a GEMM has a fixed summation
  order; atomicAdd does not);
* it is fast at the sizes of this network: the maps are at most 56x56 on
  ImageNet and 32x32 on CIFAR (224 at the very most), so the dense (out, in)
  matrices are tiny, and one BLAS call does the work that the gather form
  spreads over several elementwise passes. On the CPU it is faster than
  PyTorch's ``F.interpolate`` and than a NumPy gather-and-lerp forward on the
  same shapes (docs/performance.md has the timings).

The dense form would stop paying off for large maps (cost grows like
``in * out`` per row instead of ``2 * out``), which this network never uses.
"""

from __future__ import annotations

import functools
import operator

import numpy as np

from miniran import backend
from miniran.functional import _dispatch
from miniran.autograd import Function, Tensor


def _indices_and_weights(in_size, out_size, align_corners, xp=np):
    """Source neighbours and mixing weights along one axis (PyTorch's rules).

    For each output position ``d = 0 .. out_size - 1``:

    * ``align_corners=True``: ``src = d * (in - 1) / (out - 1)`` (``0`` when
      ``out == 1``); the corner pixels of input and output line up exactly.
    * ``align_corners=False``: ``src = (d + 0.5) * in / out - 0.5``, clamped
      below at 0 (pixel *centres* line up; PyTorch's
      ``area_pixel_compute_source_index`` with ``scale = in / out``).

    Then ``i0 = floor(src)``, ``i1 = min(i0 + 1, in - 1)``, ``lam = src - i0``.

    Args:
        in_size, out_size: lengths of the axis before and after resizing.
        align_corners: which rule above.
        xp: the array module (numpy or cupy) to build the arrays with.

    Returns:
        ``(i0, i1, lam)``: int64 arrays ``i0, i1`` and a float64 array
        ``lam``, each of shape (out_size,). The output at ``d`` is
        ``(1 - lam[d]) * x[i0[d]] + lam[d] * x[i1[d]]``.
    """
    d = xp.arange(out_size, dtype=np.float64)
    if align_corners:
        scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        src = d * scale
    else:
        src = xp.maximum((d + 0.5) * (in_size / out_size) - 0.5, 0.0)
    # the min guards against src landing a rounding error above in - 1
    i0 = xp.minimum(xp.floor(src).astype(np.int64), in_size - 1)
    i1 = xp.minimum(i0 + 1, in_size - 1)
    lam = src - i0
    return i0, i1, lam


def _interpolation_matrix(in_size, out_size, align_corners, dtype, xp=np):
    """The (out_size, in_size) matrix A of one axis: ``y = A @ x`` along that axis.

    Row ``d`` holds ``1 - lam[d]`` in column ``i0[d]`` and ``lam[d]`` in
    column ``i1[d]``; both weights land in the same column when
    ``i0 == i1`` (the last row of an edge), so every row sums to 1.
    """
    i0, i1, lam = _indices_and_weights(in_size, out_size, align_corners, xp)
    cols = xp.arange(in_size)
    # one-hot rows built by comparison: adds (not overwrites) when i0 == i1
    a = (1 - lam)[:, None] * (cols == i0[:, None]) + lam[:, None] * (cols == i1[:, None])
    return a.astype(dtype)


@functools.lru_cache(maxsize=256)
def _cached_matrix(in_size, out_size, align_corners, dtype_str, device):
    """The interpolation matrix, built once per shape on the host; on the GPU
    it is copied to the device once, so a forward pass launches no kernel to
    build it (the attention modules resize the same few shapes every step)."""
    a = _interpolation_matrix(in_size, out_size, align_corners, np.dtype(dtype_str), np)
    a.flags.writeable = False  # shared by every call: never modified in place
    return backend.to_device(a, device)  # no copy for "cpu"


def _matmul_last_axis(x, a):
    """``x @ a.T`` over the last axis of ``x`` as ONE matrix product.

    ``x @ a.T`` on a 4-D array would run one small GEMM per (n, c) slice;
    flattening the leading axes first hands BLAS a single tall matrix, which
    is faster for our shapes (docs/performance.md).
    """
    lead = x.shape[:-1]
    return (x.reshape(-1, x.shape[-1]) @ a.T).reshape(lead + (a.shape[0],))


class InterpolateBilinear(Function):
    """Bilinear resize of (N, C, H, W) to (N, C, H_out, W_out) as ``A_h @ x @ A_w^T``."""

    def __init__(self, size, align_corners):
        self.size = size
        self.align_corners = align_corners

    def forward(self, x):
        (h, w), (ho, wo) = x.shape[2:], self.size
        # an axis whose size does not change is left alone: its matrix would be
        # the identity, so skipping it is exact and free
        device, dt = backend.device_of(x), np.dtype(x.dtype).str
        self.a_h = None if ho == h else _cached_matrix(h, ho, self.align_corners, dt, device)
        self.a_w = None if wo == w else _cached_matrix(w, wo, self.align_corners, dt, device)
        y = x
        if self.a_w is not None:
            y = _matmul_last_axis(y, self.a_w)  # (N, C, H, W_out)
        if self.a_h is not None:
            y = self.a_h @ y  # (H_out, H) @ (N, C, H, W_out) -> (N, C, H_out, W_out)
        return y.copy() if y is x else y  # identity resize: a copy, never an alias

    def backward(self, gy):
        # the transpose of each linear map, in reverse order
        gx = gy
        if self.a_w is not None:
            gx = _matmul_last_axis(gx, self.a_w.T)  # (N, C, H_out, W)
        if self.a_h is not None:
            gx = self.a_h.T @ gx  # (N, C, H, W)
        return gx


def _normalize_size(size, x_shape):
    """``size`` (an int or an (H_out, W_out) pair) as a tuple of two positive ints."""
    if isinstance(size, Tensor):
        raise TypeError(
            "interpolate_bilinear: size must be an int or an (H_out, W_out) pair; "
            "to match a reference tensor ref, pass size=ref.shape[-2:]"
        )
    try:
        pair = (size, size) if not isinstance(size, (tuple, list)) else tuple(size)
        if len(pair) != 2:
            raise TypeError
        pair = tuple(operator.index(s) for s in pair)
    except TypeError:
        raise TypeError(
            f"interpolate_bilinear: size must be an int or an (H_out, W_out) pair of ints, got {size!r}"
        ) from None
    if pair[0] <= 0 or pair[1] <= 0:
        raise ValueError(
            f"interpolate_bilinear: size must be positive, got size={size!r} "
            f"for an input of shape {tuple(x_shape)}"
        )
    return pair


def interpolate_bilinear(x, size, align_corners=True) -> Tensor:
    """Resize feature maps with bilinear interpolation (paper section 3.2).

    Matches ``torch.nn.functional.interpolate(x, size, mode="bilinear",
    align_corners=...)`` for both values of ``align_corners``, for any sizes up
    or down, including non-integer ratios.

    Args:
        x: tensor of shape (N, C, H, W), floating point.
        size: the output spatial size, an int (square) or an
            ``(H_out, W_out)`` pair. The attention module passes a reference
            map's size, ``ref.shape[-2:]``, so no size is ever hard-coded.
        align_corners: ``True`` (default) maps corner pixel to corner pixel,
            the ``(in - 1) / (out - 1)`` ratio of the DeepLab-style ``Interp``
            layer the official Caffe model uses (assumed from other copies of
            that code; docs/models.md). ``False`` maps pixel
            centres (PyTorch's default, half-pixel offsets). See
            :func:`_indices_and_weights` for the formulas.

    Returns:
        Tensor of shape (N, C, H_out, W_out), same dtype and device as ``x``.
        An identity resize (``size == (H, W)``) returns an exact copy of ``x``.

    Raises:
        ValueError: ``x`` is not 4-D, or a size is not positive.
        TypeError: ``size`` is not an int or a pair of ints, or ``x`` is not floating point.
    """
    shape = tuple(x.shape)
    if len(shape) != 4:
        raise ValueError(f"interpolate_bilinear: x must be 4-D (N, C, H, W), got shape {shape}")
    if np.dtype(x.dtype).kind != "f":
        raise TypeError(f"interpolate_bilinear: x must be floating point, got dtype {x.dtype}")
    if shape[2] == 0 or shape[3] == 0:
        raise ValueError(f"interpolate_bilinear: x has an empty spatial size, shape {shape}")
    return _dispatch.apply(InterpolateBilinear, x, size=_normalize_size(size, shape), align_corners=bool(align_corners))
