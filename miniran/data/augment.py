"""Input normalisation and the CIFAR augmentation of the paper, vectorised over the batch.

Paper [§4.1, after He et al. 2016]: "4 pixels are padded on each side, and a
32x32 crop is randomly sampled from the padded image or its horizontal flip,
with the per-pixel RGB mean value subtracted."

Choices made here (the paper does not spell them out):

* Pixels are first scaled to ``[0, 1]`` (``x / 255``), then the mean image of
  the training set (shape ``(3, 32, 32)``) is subtracted. Optionally
  (``mode="channel"``) each channel is standardised instead: minus its mean,
  divided by its standard deviation (shapes ``(3, 1, 1)``).
* **Normalise first, then pad with zeros.** The padded border therefore equals
  the mean pixel (0 after mean subtraction), as in the common ResNet
  reimplementations; padding raw pixels with 0 (black) before subtracting the
  mean is the other reading of the sentence.
* A crop at offset ``(oy, ox)`` is flipped *after* cropping. Flipping first and
  cropping at ``(oy, 2*pad - ox)`` gives the same image, and the offsets are
  uniform, so the distribution of crops is the one of the paper.

Every function takes NumPy or CuPy arrays (through ``get_array_module``) and
returns arrays of the same kind. Random numbers come from a NumPy
``Generator`` on the host: a batch needs only ``3*B`` small integers, which are
sent to the device, so results are identical on CPU and GPU and reproducible
from the seed.

Notation: B images per batch, C = 3 channels, H = W = 32, P = padding (4).
"""

from __future__ import annotations

import numpy as np

from miniran.backend import get_array_module, to_numpy

__all__ = [
    "PIXEL_SCALE", "compute_normalization", "crop_flip", "draw_crop_flip_params", "normalize",
    "random_crop_flip",
]

#: Raw uint8 pixels are multiplied by this before the mean is subtracted.
PIXEL_SCALE = 1.0 / 255.0


def compute_normalization(images, mode: str = "pixel", chunk: int = 1024):
    """Statistics of a training set for :func:`normalize`.

    Args:
        images: ``(N, C, H, W)`` uint8 pixels (NumPy or CuPy; computed on the host).
        mode: ``"pixel"``: the mean image, as in the paper [§4.1]; ``std`` is 1.
            ``"channel"``: per-channel mean and standard deviation.
        chunk: images summed at a time (bounds the float64 temporary memory).

    Returns:
        ``(mean, std)``, float32 NumPy arrays in ``[0, 1]`` pixel units:
        ``(C, H, W)`` and ``(1, 1, 1)`` for ``"pixel"``, ``(C, 1, 1)`` and
        ``(C, 1, 1)`` for ``"channel"``.
    """
    if mode not in ("pixel", "channel"):
        raise ValueError(f"mode must be 'pixel' or 'channel', got {mode!r}")
    images = to_numpy(images)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty (N, C, H, W) array, got shape {images.shape}")
    n = images.shape[0]
    if mode == "pixel":
        mean = images.mean(axis=0, dtype=np.float64) * PIXEL_SCALE
        return mean.astype(np.float32), np.ones((1, 1, 1), np.float32)
    # E[x] and E[x^2] per channel, summed chunk by chunk in float64
    total = np.zeros(images.shape[1])
    total_sq = np.zeros(images.shape[1])
    for start in range(0, n, chunk):
        block = images[start:start + chunk].astype(np.float64) * PIXEL_SCALE
        total += block.sum(axis=(0, 2, 3))
        total_sq += (block * block).sum(axis=(0, 2, 3))
    count = n * images.shape[2] * images.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
    std = np.where(std > 0, std, 1.0)  # a constant channel is left unscaled
    shape = (images.shape[1], 1, 1)
    return mean.reshape(shape).astype(np.float32), std.reshape(shape).astype(np.float32)


def normalize(images, mean, std):
    """``(images * PIXEL_SCALE - mean) / std`` as float32.

    Args:
        images: ``(B, C, H, W)`` uint8 (or float) pixels in ``0..255``.
        mean, std: from :func:`compute_normalization` (broadcastable to ``(C, H, W)``),
            NumPy or already on the images' device.

    Returns:
        float32 ``(B, C, H, W)`` on the device of ``images``.
    """
    xp = get_array_module(images)
    x = images.astype(np.float32) * np.float32(PIXEL_SCALE)
    x -= xp.asarray(mean, dtype=np.float32)
    x /= xp.asarray(std, dtype=np.float32)
    return x


def draw_crop_flip_params(n: int, rng, padding: int = 4, flip: bool = True):
    """Random crop offsets and flip decisions for ``n`` images.

    Args:
        n: number of images.
        rng: a ``numpy.random.Generator`` (or a seed for one).
        padding: P; offsets are uniform in ``0..2P`` (``2P+1`` positions per axis).
        flip: draw flips with probability 1/2; False gives no flips.

    Returns:
        ``(offsets_y, offsets_x, flips)``: int64 ``(n,)``, int64 ``(n,)``, bool ``(n,)``
        NumPy arrays. The draws are made in this order, so the stream of a
        generator is the same wherever this function is used.
    """
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    offsets_y = rng.integers(0, 2 * padding + 1, size=n, dtype=np.int64)
    offsets_x = rng.integers(0, 2 * padding + 1, size=n, dtype=np.int64)
    flips = rng.random(n) < 0.5 if flip else np.zeros(n, dtype=bool)
    return offsets_y, offsets_x, flips


def crop_flip(images, offsets_y, offsets_x, flips, padding: int = 4):
    """Zero-pad by P, crop ``H x W`` at the given offsets, and flip where asked.

    One gather does the whole batch: the batch is padded once to
    ``(B, C, H+2P, W+2P)``; the rows of image ``b`` are ``offsets_y[b] + arange(H)``
    and its columns ``offsets_x[b] + arange(W)``, reversed where ``flips[b]``;
    broadcasting the four index arrays picks every output pixel at once.

    Args:
        images: ``(B, C, H, W)`` float (already normalised, so zero = mean pixel).
        offsets_y, offsets_x: ``(B,)`` integers in ``0..2P`` (top-left corner in the padded image).
        flips: ``(B,)`` bool, mirror left-right.
        padding: P.

    Returns:
        ``(B, C, H, W)``, same dtype and device as ``images``. An offset of ``P``
        with no flip returns the image unchanged.
    """
    xp = get_array_module(images)
    b, c, h, w = images.shape
    p = int(padding)
    padded = xp.zeros((b, c, h + 2 * p, w + 2 * p), dtype=images.dtype)
    padded[:, :, p:p + h, p:p + w] = images
    oy = xp.asarray(offsets_y, dtype=np.int64).reshape(b, 1)
    ox = xp.asarray(offsets_x, dtype=np.int64).reshape(b, 1)
    fl = xp.asarray(flips, dtype=bool).reshape(b, 1)
    rows = oy + xp.arange(h)                          # (B, H)
    cols = ox + xp.arange(w)                          # (B, W)
    cols = xp.where(fl, cols[:, ::-1], cols)          # flipped images read columns backwards
    bi = xp.arange(b).reshape(b, 1, 1, 1)
    ci = xp.arange(c).reshape(1, c, 1, 1)
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


def random_crop_flip(images, rng, padding: int = 4, flip: bool = True):
    """The paper's CIFAR augmentation on a normalised batch [§4.1].

    Args:
        images: ``(B, C, H, W)`` float, normalised (see the module docstring).
        rng: ``numpy.random.Generator`` (or a seed); the draws are made on the
            host and only ``3*B`` integers go to the device.
        padding: P (4 in the paper).
        flip: random horizontal flips with probability 1/2.

    Returns:
        ``(B, C, H, W)`` augmented batch on the device of ``images``.
    """
    oy, ox, fl = draw_crop_flip_params(images.shape[0], rng, padding, flip)
    return crop_flip(images, oy, ox, fl, padding)
