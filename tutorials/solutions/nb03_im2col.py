"""Solution to exercise 1 of notebook 03: im2col and col2im, written from their definition.

Layout (the one of ``miniran.functional.im2col``): ``col`` has shape
(C, K, K, N, OH, OW), and ``col[c, ky, kx, n, i, j]`` is the pixel that kernel
tap (ky, kx) of channel c sees when the window sits at output position (i, j)
of image n. With zero padding P and stride S, that window's top-left corner is
row ``i*S``, column ``j*S`` of the padded image, so the tap sees

    col[c, ky, kx, n, i, j] = xpad[n, c, i*S + ky, j*S + kx],

and the output size is ``OH = (H + 2P - K) // S + 1`` (the last window must
fit inside the padded image).

Instead of six loops, loop over the K*K taps only: for a fixed tap, the rows
``ky, ky + S, ..., ky + (OH-1)*S`` and the same columns form one strided slice
of ``xpad`` with exactly the shape (N, C, OH, OW).

col2im is the adjoint: every entry of ``col`` is *added* (``+=``) back onto
the pixel it was copied from. Windows overlap when S < K, so a pixel receives
several entries; assigning (``=``) instead of adding keeps only the last one.
Entries that fall in the padding are dropped by cutting the padding off.
"""

from __future__ import annotations

import numpy as np


def output_size(size, k, stride, padding):
    """Number of window positions along one axis."""
    return (size + 2 * padding - k) // stride + 1


def im2col(x, k, stride=1, padding=0):
    """(N, C, H, W) -> col of shape (C, K, K, N, OH, OW), K x K windows, stride and zero padding."""
    n, c, h, w = x.shape
    oh, ow = output_size(h, k, stride, padding), output_size(w, k, stride, padding)
    xpad = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    col = np.empty((c, k, k, n, oh, ow), dtype=x.dtype)
    for ky in range(k):
        for kx in range(k):
            patch = xpad[:, :, ky:ky + (oh - 1) * stride + 1:stride, kx:kx + (ow - 1) * stride + 1:stride]
            col[:, ky, kx] = patch.transpose(1, 0, 2, 3)  # (N, C, OH, OW) -> (C, N, OH, OW)
    return col


def col2im(col, x_shape, k, stride=1, padding=0):
    """The adjoint of :func:`im2col`: add every entry of ``col`` onto its pixel; returns (N, C, H, W)."""
    n, c, h, w = x_shape
    oh, ow = col.shape[4], col.shape[5]
    img = np.zeros((n, c, h + 2 * padding, w + 2 * padding), dtype=col.dtype)
    for ky in range(k):
        for kx in range(k):
            img[:, :, ky:ky + (oh - 1) * stride + 1:stride, kx:kx + (ow - 1) * stride + 1:stride] += \
                col[:, ky, kx].transpose(1, 0, 2, 3)
    return img[:, :, padding:padding + h, padding:padding + w]
