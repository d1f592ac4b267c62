"""Data: CIFAR-10/100 from the official binary files, an embedded sample, augmentation,
a resumable loader and label noise [paper §4.1, Table 5].

This layer imports only :mod:`miniran.backend` (and NumPy / the standard library).

* :func:`load_cifar10`, :func:`load_cifar100`, :func:`load_dataset`: ``(images, labels)``
  as uint8 ``(N, 3, 32, 32)`` and int64 ``(N,)``; found under ``root``,
  ``$MINIRAN_DATA`` or ``~/.cache/miniran``, else downloaded, md5-checked and
  unpacked safely (:mod:`miniran.data.download`).
* :func:`load_cifar10_sample`: 4,000 + 1,000 real CIFAR-10 images shipped in
  the package; :func:`balanced_subset` for ``--subset N``.
* :mod:`miniran.data.augment`: mean subtraction, 4-pixel padding, random crop
  and flip, vectorised on NumPy or CuPy arrays.
* :class:`DataLoader`: seeded, resumable (``state_dict``), optionally keeping
  the whole dataset on the GPU.
* :func:`apply_label_noise`: the confusion-matrix noise of Eq. 7.
"""

from miniran.data.augment import (
    PIXEL_SCALE,
    compute_normalization,
    crop_flip,
    draw_crop_flip_params,
    normalize,
    random_crop_flip,
)
from miniran.data.cifar import (
    CIFAR10_CLASSES,
    CIFAR100_COARSE_CLASSES,
    CIFAR100_FINE_CLASSES,
    find_dataset_dir,
    load_cifar10,
    load_cifar100,
)
from miniran.data.datasets import DATASETS, class_names, load_dataset, num_classes
from miniran.data.download import (
    ChecksumError,
    DatasetCorruptError,
    DatasetNotFoundError,
    UnsafeArchiveError,
    default_data_dir,
)
from miniran.data.loader import DataLoader
from miniran.data.noise import apply_label_noise, noise_transition_matrix
from miniran.data.sample import SAMPLE_PATH, balanced_subset, load_cifar10_sample, sample_indices

__all__ = [
    "CIFAR100_COARSE_CLASSES", "CIFAR100_FINE_CLASSES", "CIFAR10_CLASSES", "ChecksumError",
    "DATASETS", "DataLoader", "DatasetCorruptError", "DatasetNotFoundError", "PIXEL_SCALE",
    "SAMPLE_PATH", "UnsafeArchiveError", "apply_label_noise", "balanced_subset", "class_names",
    "compute_normalization", "crop_flip", "default_data_dir", "draw_crop_flip_params",
    "find_dataset_dir", "load_cifar10", "load_cifar100", "load_cifar10_sample", "load_dataset",
    "noise_transition_matrix", "normalize", "num_classes", "random_crop_flip", "sample_indices",
]
