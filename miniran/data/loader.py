"""A seeded, resumable mini-batch loader that can keep the whole dataset on the GPU.

Each epoch, one NumPy generator draws, in this order, the permutation of the
dataset (when ``shuffle``) and, when ``augment``, the crop offsets and flips of
every image of the epoch [paper §4.1]. These few arrays are the only random
numbers; with ``device="gpu"`` they are sent to the GPU once per epoch, next to
the uint8 images and labels sent once at construction, so building a batch
(gather, normalise, pad, crop, flip) never leaves the device.

The generator state at the start of the current epoch, the epoch number and
the number of batches already given out in it are all the loader's state
(:meth:`DataLoader.state_dict`): a restored loader redraws that epoch's arrays
and continues with exactly the batches the original would have produced.
"""

from __future__ import annotations

import json
import numbers

import numpy as np

from miniran import backend
from miniran.data.augment import compute_normalization, crop_flip, draw_crop_flip_params, normalize

__all__ = ["DataLoader"]


def _check_dataset(images, labels, batch_size, normalize, num_classes):
    """One ValueError naming the first argument of :class:`DataLoader` that does not fit."""
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {images.shape}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must have shape ({images.shape[0]},), got {labels.shape}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if normalize not in ("pixel", "channel", None):
        raise ValueError(f"normalize must be 'pixel', 'channel' or None, got {normalize!r}")
    if images.shape[0] == 0:
        raise ValueError("the dataset is empty")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    # Checked here, once, on the host: on the GPU an out-of-range label is
    # not an error but silently wraps around (CuPy's fancy indexing), and a
    # check per batch would make the host wait for the GPU every step.
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or (num_classes is not None and high >= int(num_classes)):
        expected = f"[0, {int(num_classes)})" if num_classes is not None else ">= 0"
        raise ValueError(f"labels must lie in {expected}, got range [{low}, {high}]")


def _normalization_stats(images, normalize, mean, std):
    """``(mean, std)`` as float32 NumPy arrays: those given, else computed from ``images``."""
    if mean is None or std is None:
        if normalize is None:
            stats = (np.zeros((1, 1, 1), np.float32), np.ones((1, 1, 1), np.float32))
        else:
            stats = compute_normalization(images, normalize)
        mean = stats[0] if mean is None else mean
        std = stats[1] if std is None else std
    return (np.asarray(backend.to_numpy(mean), dtype=np.float32),
            np.asarray(backend.to_numpy(std), dtype=np.float32))


class DataLoader:
    """Mini-batches ``(x, y)`` of an in-memory image dataset.

    Args:
        images: ``(N, 3, 32, 32)`` uint8 pixels (NumPy).
        labels: ``(N,)`` integer labels.
        batch_size: B (64 in the paper [§4.1]).
        shuffle: a new random order every epoch (else the stored order).
        augment: 4-pixel zero padding, random 32x32 crop and random horizontal
            flip of each image (the paper's training augmentation).
        normalize: ``"pixel"`` (subtract the mean image, the paper's choice),
            ``"channel"`` (per-channel mean/std standardisation) or None (only
            scale to ``[0, 1]``). See :mod:`miniran.data.augment`.
        mean, std: statistics to use instead of computing them from ``images``;
            give a test loader the training loader's ``mean`` and ``std``.
        seed: seed of the loader's own ``numpy.random.Generator``.
        drop_last: leave out the last, smaller batch of each epoch.
        device: ``"cpu"`` (NumPy batches) or ``"gpu"`` (CuPy batches; the
            whole uint8 dataset is copied to the GPU once, here).
        padding: P for ``augment`` (4 in the paper).
        num_classes: when given, labels outside ``[0, num_classes)`` are refused
            here (on the GPU they would otherwise wrap around silently).

    Yields:
        ``x`` float32 ``(B, 3, 32, 32)`` and ``y`` int64 ``(B,)``, raw arrays on ``device``.

    Iterating gives the remaining batches of the current epoch and then moves
    to the next epoch; ``len(loader)`` is the number of batches per epoch.
    Use one iteration at a time: breaking out of a loop keeps the position,
    and the next loop continues from there.
    """

    def __init__(self, images, labels, batch_size: int = 64, shuffle: bool = True,
                 augment: bool = False, normalize="pixel", mean=None, std=None, seed: int = 0,
                 drop_last: bool = False, device="cpu", padding: int = 4, num_classes=None):
        images = backend.to_numpy(images)
        labels = backend.to_numpy(labels)
        _check_dataset(images, labels, batch_size, normalize, num_classes)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.augment = bool(augment)
        self.drop_last = bool(drop_last)
        if isinstance(padding, bool) or not isinstance(padding, numbers.Integral) or padding < 0:
            raise ValueError(f"DataLoader: padding must be an int >= 0, got {padding!r}")
        self.padding = int(padding)
        self.device = backend.normalize_device(device)
        self.num_samples = int(images.shape[0])
        if self.drop_last and self.num_samples < self.batch_size:
            raise ValueError(
                f"drop_last with batch_size {self.batch_size} > {self.num_samples} images "
                "gives no batch at all"
            )

        # normalisation statistics, kept on the host (for saving) and on the device
        self.mean, self.std = _normalization_stats(images, normalize, mean, std)

        # the dataset goes to the device once
        self._images = backend.to_device(np.ascontiguousarray(images), self.device)
        self._labels = backend.to_device(labels.astype(np.int64), self.device)
        self._mean = backend.to_device(self.mean, self.device)
        self._std = backend.to_device(self.std, self.device)
        self._xp = backend.get_array_module(self._images)

        self._rng = np.random.default_rng(seed)
        self._epoch = 0
        self._position = 0
        self._epoch_start_state = self._rng.bit_generator.state
        self._plan = None  # this epoch's order and augmentation, on the device

    # ------------------------------------------------------------------ sizes
    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)

    @property
    def epoch(self) -> int:
        """Epochs completed (0 during the first one)."""
        return self._epoch

    @property
    def position(self) -> int:
        """Batches already given out in the current epoch."""
        return self._position

    # ------------------------------------------------------------------ the epoch plan
    def _make_plan(self):
        """Draw this epoch's order and augmentation from the epoch-start state."""
        self._rng.bit_generator.state = self._epoch_start_state
        n = self.num_samples
        order = self._rng.permutation(n) if self.shuffle else np.arange(n)
        plan = {"order": order.astype(np.int64)}
        if self.augment:
            oy, ox, flips = draw_crop_flip_params(n, self._rng, self.padding, flip=True)
            plan.update(oy=oy, ox=ox, flips=flips)
        # one transfer per epoch (no copy at all on the CPU)
        self._plan = {k: backend.to_device(v, self.device) for k, v in plan.items()}

    def _next_epoch(self):
        if self._plan is None:  # e.g. restored at the very end of an epoch
            self._make_plan()  # advances the generator past this epoch's draws
        self._epoch += 1
        self._position = 0
        self._epoch_start_state = self._rng.bit_generator.state
        self._plan = None

    def _batch(self, k: int):
        start = k * self.batch_size
        stop = min(start + self.batch_size, self.num_samples)
        idx = self._plan["order"][start:stop]
        x = normalize(self._images[idx], self._mean, self._std)
        if self.augment:
            sl = slice(start, stop)
            x = crop_flip(x, self._plan["oy"][sl], self._plan["ox"][sl], self._plan["flips"][sl],
                          self.padding)
        return x, self._labels[idx]

    def __iter__(self):
        if self._position >= len(self):  # the last epoch was consumed without ending the loop
            self._next_epoch()
        if self._plan is None:
            self._make_plan()
        for k in range(self._position, len(self)):
            batch = self._batch(k)
            self._position = k + 1  # before yielding: a saved state never repeats this batch
            yield batch
        self._next_epoch()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """The loader's position and random state, as ints and a string (no pickle).

        Returns:
            ``{"epoch", "position", "rng_state", "num_samples", "batch_size"}``:
            ``rng_state`` is the JSON text of the generator's
            ``bit_generator.state`` at the start of the current epoch. Every
            value can be stored in an ``.npz`` (it comes back as a 0-d array,
            which :meth:`load_state_dict` accepts).
        """
        return {
            "epoch": int(self._epoch),
            "position": int(self._position),
            "rng_state": json.dumps(self._epoch_start_state),
            "num_samples": int(self.num_samples),
            "batch_size": int(self.batch_size),
        }

    def load_state_dict(self, state: dict):
        """Continue from a :meth:`state_dict`, with the same batches as the original run.

        The dataset size and batch size must match; shuffle, augment and
        drop_last should too (they are not stored). Returns self.
        """
        def scalar(key):
            value = state[key]
            return value.item() if isinstance(value, np.ndarray) else value

        for key in ("num_samples", "batch_size"):
            if int(scalar(key)) != getattr(self, key):
                raise ValueError(
                    f"load_state_dict: the state has {key}={int(scalar(key))}, this loader "
                    f"has {getattr(self, key)}; it would not give the same batches"
                )
        position = int(scalar("position"))
        if not 0 <= position <= len(self):
            raise ValueError(f"load_state_dict: position {position} is outside 0..{len(self)}")
        rng_state = scalar("rng_state")
        if isinstance(rng_state, bytes):
            rng_state = rng_state.decode()
        rng_state = json.loads(str(rng_state))
        self._rng.bit_generator.state = rng_state  # raises if it is another generator's state
        self._epoch_start_state = self._rng.bit_generator.state
        self._epoch = int(scalar("epoch"))
        self._position = position
        self._plan = None
        return self

    def __repr__(self):
        return (
            f"DataLoader(num_samples={self.num_samples}, batch_size={self.batch_size}, "
            f"shuffle={self.shuffle}, augment={self.augment}, device='{self.device}', "
            f"epoch={self._epoch}, position={self._position})"
        )
