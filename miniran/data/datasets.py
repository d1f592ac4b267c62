"""One entry point for the datasets by name: ``load_dataset("cifar10")`` and friends."""

from __future__ import annotations

from miniran.data.cifar import (
    CIFAR10_CLASSES,
    CIFAR100_FINE_CLASSES,
    load_cifar10,
    load_cifar100,
)
from miniran.data.sample import load_cifar10_sample

__all__ = ["DATASETS", "class_names", "load_dataset", "num_classes"]

#: The names :func:`load_dataset` accepts.
DATASETS = ("cifar10", "cifar100", "cifar10-sample")


def _canonical(name: str) -> str:
    key = str(name).lower().replace("_", "").replace("-", "")
    canonical = {"cifar10": "cifar10", "cifar100": "cifar100", "cifar10sample": "cifar10-sample"}
    if key not in canonical:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return canonical[key]


def load_dataset(name: str, root=None, train: bool = True, download: bool = True,
                 verify: bool = True):
    """Load a dataset by name.

    Args:
        name: ``"cifar10"``, ``"cifar100"`` (fine labels) or ``"cifar10-sample"``
            (the embedded sample; ``root``, ``download`` and ``verify`` are ignored).
        root, download, verify: as in :func:`~miniran.data.load_cifar10`.
        train: the training split, else the test split.

    Returns:
        ``(images, labels)``: uint8 ``(N, 3, 32, 32)`` and int64 ``(N,)``.
    """
    name = _canonical(name)
    if name == "cifar10-sample":
        return load_cifar10_sample(train=train)
    if name == "cifar10":
        return load_cifar10(root, train=train, download=download, verify=verify)
    return load_cifar100(root, train=train, label="fine", download=download, verify=verify)


def class_names(name: str) -> tuple:
    """The class names of a dataset, in label order."""
    name = _canonical(name)
    return CIFAR100_FINE_CLASSES if name == "cifar100" else CIFAR10_CLASSES


def num_classes(name: str) -> int:
    """K for a dataset name (10 or 100)."""
    return len(class_names(name))
