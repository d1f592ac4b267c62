"""Balanced subsets, and the small real CIFAR-10 sample shipped inside the package.

The sample (``miniran/data/sample/cifar10_sample.npz``) holds 400 training
images per class (4,000, from ``data_batch_1..5.bin``) and 100 test images per
class (1,000, from ``test_batch.bin``), picked by :func:`balanced_subset` with a
fixed seed. It lets the demo, the notebooks and the tests run on real images
without any download. ``tools/make_cifar10_sample.py`` rebuilds it from the
official files. (500 training images per class would pass 16 MB: CIFAR pixels
hardly compress, about 2.8 kB per image.)

Arrays in the file (read with ``np.load(path)``, no pickle needed):

``train_images``/``test_images``
    uint8 ``(N, 3, 32, 32)``.
``train_labels``/``test_labels``
    int64 ``(N,)``.
``train_indices``/``test_indices``
    int64 ``(N,)``: position of each image in the official training set
    (``data_batch_1..5`` concatenated, 0..49999) or test set (0..9999).
``seed``, ``classes``, ``source``
    the seed used, the 10 class names, and a line describing the origin.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from miniran._io import atomic_write
from miniran.backend import to_numpy
from miniran.data.cifar import CIFAR10_CLASSES, load_cifar10
from miniran.data.download import DatasetNotFoundError

__all__ = [
    "SAMPLE_PATH", "balanced_subset", "load_cifar10_sample", "sample_indices",
    "write_cifar10_sample",
]

#: Where the embedded CIFAR-10 sample lives.
SAMPLE_PATH = Path(__file__).resolve().parent / "sample" / "cifar10_sample.npz"


def balanced_subset(labels, n: int, seed=0) -> np.ndarray:
    """Indices of ``n`` examples with (almost) the same number from every class.

    Each of the K classes present in ``labels`` gets ``n // K`` examples; the
    ``n % K`` left over go to classes drawn at random. Within a class the
    examples are drawn without replacement. The same seed gives the same indices.

    Args:
        labels: ``(N,)`` integer labels (NumPy or CuPy).
        n: how many indices, ``1 <= n <= N``.
        seed: seed of the generator (or a ``numpy.random.Generator``).

    Returns:
        int64 ``(n,)`` sorted indices into ``labels`` (so the subset keeps the
        original order; a loader shuffles it anyway).

    Raises:
        ValueError: ``n`` out of range, or a class with fewer than its share.
    """
    labels = to_numpy(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {labels.shape}")
    if isinstance(n, bool) or int(n) != n or not 1 <= n <= labels.shape[0]:
        raise ValueError(f"n must be an integer in 1..{labels.shape[0]}, got {n!r}")
    n = int(n)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    classes = np.unique(labels)
    k = classes.shape[0]
    counts = np.full(k, n // k)
    counts[rng.choice(k, n % k, replace=False)] += 1
    chosen = []
    for c, count in zip(classes, counts):
        members = np.flatnonzero(labels == c)
        if members.shape[0] < count:
            raise ValueError(
                f"class {c} has {members.shape[0]} examples, fewer than the {count} needed "
                f"for a balanced subset of {n}"
            )
        chosen.append(rng.choice(members, count, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def _read_sample(path=None) -> dict:
    path = Path(path) if path is not None else SAMPLE_PATH
    if not path.is_file():
        raise DatasetNotFoundError(
            f"the embedded CIFAR-10 sample {path} is missing (an incomplete install or "
            "checkout?). Rebuild it with `python tools/make_cifar10_sample.py --root "
            "<folder with cifar-10-batches-bin>`, or reinstall miniran."
        )
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def load_cifar10_sample(train: bool = True, path=None):
    """The embedded real CIFAR-10 sample: no download needed.

    Args:
        train: the 4,000 training images (400 per class) or the 1,000 test
            images (100 per class).
        path: another sample file (default :data:`SAMPLE_PATH`).

    Returns:
        ``(images, labels)``: uint8 ``(N, 3, 32, 32)`` and int64 ``(N,)``, as
        :func:`~miniran.data.load_cifar10` returns them.
    """
    arrays = _read_sample(path)
    split = "train" if train else "test"
    return arrays[f"{split}_images"], arrays[f"{split}_labels"].astype(np.int64)


def sample_indices(train: bool = True, path=None) -> np.ndarray:
    """Positions of the sample's images in the official training (or test) set."""
    return _read_sample(path)[f"{'train' if train else 'test'}_indices"]


def write_cifar10_sample(root, out=None, train_per_class: int = 400, test_per_class: int = 100,
                         seed: int = 0, verify: bool = True) -> Path:
    """Build the sample file from the official CIFAR-10 binary files.

    Args:
        root: where the official files are (as for :func:`~miniran.data.load_cifar10`;
            nothing is downloaded).
        out: the ``.npz`` to write (default :data:`SAMPLE_PATH`), written
            atomically with ``np.savez_compressed``.
        train_per_class, test_per_class: images per class taken from each split.
        seed: seed of :func:`balanced_subset` (the test split uses ``seed + 1``).
        verify: check the md5 of the official files.

    Returns:
        The path written.
    """
    out = Path(out) if out is not None else SAMPLE_PATH
    arrays = {}
    for split, per_class, split_seed in (("train", train_per_class, seed),
                                         ("test", test_per_class, seed + 1)):
        images, labels = load_cifar10(root, train=split == "train", download=False, verify=verify)
        idx = balanced_subset(labels, per_class * len(CIFAR10_CLASSES), seed=split_seed)
        arrays[f"{split}_images"] = images[idx]
        arrays[f"{split}_labels"] = labels[idx]
        arrays[f"{split}_indices"] = idx
    arrays["seed"] = np.int64(seed)
    arrays["classes"] = np.array(CIFAR10_CLASSES)
    arrays["source"] = np.array(
        "CIFAR-10 binary version (Krizhevsky 2009): train images from data_batch_1..5.bin "
        "(indices into their concatenation), test images from test_batch.bin; chosen by "
        f"miniran.data.balanced_subset with seed {seed} (train) and {seed + 1} (test)."
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda f: np.savez_compressed(f, **arrays))  # readable by all the umask allows
    return out
