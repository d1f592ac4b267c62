"""CIFAR-10 and CIFAR-100 from the official *binary* files (no pickle).

The Residual Attention Network is evaluated on both [paper §4.1, Tables 3-6].

File format (Krizhevsky, 2009), every file a run of fixed-size records:

* CIFAR-10, ``cifar-10-batches-bin/data_batch_{1..5}.bin`` (train) and
  ``test_batch.bin``: 10,000 records of 3,073 bytes: 1 label byte (0-9), then
  3,072 pixel bytes.
* CIFAR-100, ``cifar-100-binary/train.bin`` (50,000 records) and ``test.bin``
  (10,000): records of 3,074 bytes: the coarse label (0-19), the fine label
  (0-99), then 3,072 pixel bytes.

The 3,072 pixel bytes are the red plane, then green, then blue, each 32x32 in
row-major order, which is exactly a C-ordered ``(3, 32, 32)`` array: no
transposition is needed to get the ``(N, C, H, W)`` layout the network uses.

Where the files are looked for, in order (the first folder that has them all wins):

1. ``root`` when given, either the folder that *contains*
   ``cifar-10-batches-bin`` or that folder itself (then only there);
2. otherwise ``$MINIRAN_DATA`` when set, then the per-user cache
   ``$XDG_CACHE_HOME/miniran`` (or ``~/.cache/miniran``).

When they are missing, the official ``.tar.gz`` (already placed in that
folder, or downloaded when ``download=True``) is checked against its published
md5 and unpacked safely into the first folder of that list. Files are checked
on every load: a size that is not the expected number of records, a label out
of range, or (CIFAR-10, ``verify=True``) an md5 that is not the published one
raises :class:`DatasetCorruptError` instead of training on broken data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from miniran.data.download import (
    ChecksumError,
    DatasetCorruptError,
    DatasetNotFoundError,
    _md5,
    default_data_dir,
    download_archive,
    file_md5,
    safe_extract,
)

__all__ = [
    "CIFAR10_CLASSES", "CIFAR100_COARSE_CLASSES", "CIFAR100_FINE_CLASSES", "DatasetSpec", "SPECS",
    "find_dataset_dir", "load_cifar10", "load_cifar100", "read_records",
]

#: CIFAR-10 class names, in label order (label ``i`` is ``CIFAR10_CLASSES[i]``).
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

#: CIFAR-100 fine class names in label order (the official list is alphabetical).
CIFAR100_FINE_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle",
    "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)

#: CIFAR-100 coarse (superclass) names in label order.
CIFAR100_COARSE_CLASSES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates", "people",
    "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
)

IMAGE_SHAPE = (3, 32, 32)
PIXEL_BYTES = 3 * 32 * 32


@dataclass(frozen=True)
class DatasetSpec:
    """Everything needed to find, fetch and check one binary CIFAR dataset.

    ``train_files``/``test_files`` map a file name to its number of records;
    ``label_bytes`` is the number of label bytes at the start of each record
    and ``label_ranges`` the number of classes of each of them; ``file_md5``
    holds the published md5 of files for which it is known.
    """

    name: str
    folder: str
    url: str
    archive_md5: str
    train_files: dict
    test_files: dict
    label_bytes: int
    label_ranges: tuple
    file_md5: dict = field(default_factory=dict)

    @property
    def archive(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def record_bytes(self) -> int:
        return self.label_bytes + PIXEL_BYTES

    def files(self, train: bool) -> dict:
        return self.train_files if train else self.test_files

    def all_files(self) -> list:
        return list(self.train_files) + list(self.test_files)


CIFAR10 = DatasetSpec(
    name="CIFAR-10",
    folder="cifar-10-batches-bin",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    archive_md5="c32a1d4ab5d03f1284b67883e8d87530",
    train_files={f"data_batch_{i}.bin": 10000 for i in range(1, 6)},
    test_files={"test_batch.bin": 10000},
    label_bytes=1,
    label_ranges=(10,),
    file_md5={
        "data_batch_1.bin": "5dd7e06a14cb22eb9f671a540d1b7c25",
        "data_batch_2.bin": "5ea93a67294ea407fff1d09f752e9692",
        "data_batch_3.bin": "942cd6a4bcdd0dd3c604fbe906cb4421",
        "data_batch_4.bin": "ae636b3ba5c66a11e91e8cb52e771fcb",
        "data_batch_5.bin": "53f37980c15c3d472c316c40844f3f0d",
        "test_batch.bin": "803d5f7f4d78ea53de84dbe85f74fb6d",
    },
)

CIFAR100 = DatasetSpec(
    name="CIFAR-100",
    folder="cifar-100-binary",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
    archive_md5="03b5dce01913d631647c71ecec9e9cb8",
    train_files={"train.bin": 50000},
    test_files={"test.bin": 10000},
    label_bytes=2,
    label_ranges=(20, 100),  # (coarse, fine)
)

#: The binary datasets by short name; tests replace entries to point at local archives.
SPECS = {"cifar10": CIFAR10, "cifar100": CIFAR100}


# --------------------------------------------------------------------------- reading


def read_records(path, spec: DatasetSpec, num_records: int, verify: bool = True):
    """Read one binary CIFAR file and check it.

    Args:
        path: the ``.bin`` file.
        spec: its dataset (record layout, label ranges, known md5 sums).
        num_records: how many records the file must hold.
        verify: also compare the md5 with the published one when it is known.

    Returns:
        ``(images, labels)``: uint8 ``(N, 3, 32, 32)`` and uint8 ``(N, label_bytes)``.

    Raises:
        DatasetCorruptError: wrong size (truncated or not this dataset), a label
            out of range, or (with ``verify``) an md5 that is not the published one.
    """
    path = Path(path)
    expected = num_records * spec.record_bytes
    actual = path.stat().st_size
    if actual != expected:
        why = "truncated" if actual < expected else "too long"
        if actual % spec.record_bytes:
            why += f", and not a whole number of {spec.record_bytes}-byte records"
        raise DatasetCorruptError(
            f"{path}: {actual} bytes, expected {expected} ({num_records} records of "
            f"{spec.record_bytes} bytes) for {spec.name}: the file is {why}. Delete it "
            f"and fetch {spec.url} again."
        )
    with open(path, "rb") as f:
        data = f.read()
    if len(data) != expected:  # the file changed under us
        raise DatasetCorruptError(f"{path}: read {len(data)} bytes, expected {expected}")
    known = spec.file_md5.get(path.name)
    if verify and known is not None:
        actual_md5 = _md5()
        actual_md5.update(data)
        if actual_md5.hexdigest() != known:
            raise ChecksumError(
                f"{path}: md5 {actual_md5.hexdigest()}, expected the published {known}: the "
                f"file is damaged or not the official {spec.name} file. Delete it and fetch "
                f"{spec.url} again (or pass verify=False to load it anyway)."
            )
    records = np.frombuffer(data, dtype=np.uint8).reshape(num_records, spec.record_bytes)
    labels = records[:, : spec.label_bytes]
    for column, num_classes in enumerate(spec.label_ranges):
        bad = labels[:, column] >= num_classes
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise DatasetCorruptError(
                f"{path}: record {first} has label {int(labels[first, column])} (label byte "
                f"{column}), but {spec.name} labels are 0..{num_classes - 1}: the file is corrupt."
            )
    images = records[:, spec.label_bytes:].reshape(num_records, *IMAGE_SHAPE)
    return images, labels


# --------------------------------------------------------------------------- finding


def _search_bases(root):
    """The folders to search, each with the words used for it in error messages."""
    if root is not None:
        return [(Path(root).expanduser(), "the root argument")]
    bases = []
    env = os.environ.get("MINIRAN_DATA")
    if env:
        bases.append((Path(env).expanduser(), "$MINIRAN_DATA"))
    bases.append((default_data_dir(), "the per-user cache"))
    return bases


def _candidate_dirs(base: Path, spec: DatasetSpec):
    """``base/<folder>`` (the official layout), then ``base`` itself (root is the folder)."""
    return [base / spec.folder, base]


def _complete(folder: Path, spec: DatasetSpec) -> bool:
    return all((folder / name).is_file() for name in spec.all_files())


def _not_found_message(spec: DatasetSpec, looked, bases, reason: str) -> str:
    files = ", ".join(spec.all_files())
    where = "\n".join(f"  - {folder}  ({how})" for folder, how in looked)
    target = bases[0][0]
    if target.name == spec.folder:
        target = target.parent
    return (
        f"{spec.name} (binary version) was not found. Looked for {files} in:\n{where}\n"
        f"{reason}\n"
        f"To get it: download {spec.url} (md5 {spec.archive_md5}) and either put the "
        f".tar.gz in {target} (it is checked and unpacked on the next load) or unpack it "
        f"there yourself, so that the files are {target / spec.folder / spec.all_files()[0]} "
        f"and so on. Then pass root='{target}', or set MINIRAN_DATA to that folder (without "
        f"root, $MINIRAN_DATA and then {default_data_dir()} are searched)."
    )


def find_dataset_dir(spec: DatasetSpec, root=None, download: bool = True, fetch=None) -> Path:
    """Return the folder holding all of ``spec``'s files, fetching them if allowed.

    Args:
        spec: which dataset (``SPECS["cifar10"]`` or ``SPECS["cifar100"]``).
        root: folder to search (see the module docstring); None searches
            ``$MINIRAN_DATA`` and then the per-user cache.
        download: fetch the official archive when the files and the archive are missing.
        fetch: passed to :func:`~miniran.data.download.download_archive` (tests).

    Raises:
        DatasetNotFoundError: the files are missing and could not be fetched; the
            message lists every folder searched and how to put the data there.
        ChecksumError, UnsafeArchiveError: the archive is not the official one.
    """
    bases = _search_bases(root)
    looked = []
    for base, how in bases:
        for folder in _candidate_dirs(base, spec):
            looked.append((folder, how))
            if _complete(folder, spec):
                return folder

    # Not unpacked anywhere: unpack an archive that is already there, else download one.
    target = bases[0][0]
    if target.name == spec.folder:
        target = target.parent
    archive = _find_archive(spec, bases)
    downloaded = False
    if archive is not None:
        actual = file_md5(archive)
        if actual != spec.archive_md5:
            raise ChecksumError(
                f"{archive} has md5 {actual}, not the published {spec.archive_md5}: it is "
                f"incomplete or not the official file. Delete it and load again."
            )
    elif not download:
        raise DatasetNotFoundError(
            _not_found_message(spec, looked, bases, "Downloading is off (download=False).")
        )
    else:
        try:
            archive = download_archive(spec.url, spec.archive_md5, target, spec.archive, fetch=fetch)
        except OSError as exc:  # no network, HTTP error, folder not writable, ...
            reason = f"Fetching {spec.url} into {target} failed: {exc!r}."
            raise DatasetNotFoundError(_not_found_message(spec, looked, bases, reason)) from exc
        downloaded = True
    safe_extract(archive, archive.parent)
    folder = archive.parent / spec.folder
    if not _complete(folder, spec):
        missing = [n for n in spec.all_files() if not (folder / n).is_file()]
        raise DatasetCorruptError(
            f"{archive} was unpacked but {folder} lacks {', '.join(missing)}: it is not the "
            f"{spec.name} binary archive."
        )
    if downloaded:
        archive.unlink()  # 160 MB no longer needed; every file is checked on each load
    return folder


def _find_archive(spec: DatasetSpec, bases):
    """An official archive placed by hand next to where the unpacked folder belongs."""
    for base, _ in bases:
        folders = [base.parent, base] if base.name == spec.folder else [base]
        for folder in folders:
            if (folder / spec.archive).is_file():
                return folder / spec.archive
    return None


# --------------------------------------------------------------------------- public loaders


def _load(spec: DatasetSpec, root, train, download, verify, fetch):
    folder = find_dataset_dir(spec, root, download=download, fetch=fetch)
    images, labels = [], []
    for name, count in spec.files(train).items():
        x, y = read_records(folder / name, spec, count, verify=verify)
        images.append(x)
        labels.append(y)
    # concatenate copies the record views into one contiguous (N, 3, 32, 32) array
    return np.concatenate(images), np.concatenate(labels).astype(np.int64)


def load_cifar10(root=None, train: bool = True, download: bool = True, verify: bool = True,
                 fetch=None):
    """Load CIFAR-10 (binary version) [paper §4.1].

    Args:
        root: the folder containing ``cifar-10-batches-bin``, or that folder itself;
            None searches ``$MINIRAN_DATA`` then ``~/.cache/miniran``.
        train: the 50,000 training images (``data_batch_1..5.bin`` in order) or
            the 10,000 test images (``test_batch.bin``).
        download: fetch and unpack the official archive when the files are missing.
        verify: check each file's md5 against the published one.
        fetch: replacement download function ``fetch(url, path)`` (for tests).

    Returns:
        ``(images, labels)``: uint8 ``(N, 3, 32, 32)`` (RGB planes) and int64 ``(N,)``
        in ``0..9`` (names in :data:`CIFAR10_CLASSES`).

    Raises:
        DatasetNotFoundError: missing and not fetched; the message says where it looked.
        DatasetCorruptError: a truncated file, a bad label or a wrong md5.
    """
    images, labels = _load(SPECS["cifar10"], root, train, download, verify, fetch)
    return images, labels[:, 0]


def load_cifar100(root=None, train: bool = True, label: str = "fine", download: bool = True,
                  verify: bool = True, fetch=None):
    """Load CIFAR-100 (binary version) [paper §4.1, Table 6].

    Args:
        root: the folder containing ``cifar-100-binary``, or that folder itself;
            None searches ``$MINIRAN_DATA`` then ``~/.cache/miniran``.
        train: ``train.bin`` (50,000 images) or ``test.bin`` (10,000).
        label: ``"fine"`` (100 classes, :data:`CIFAR100_FINE_CLASSES`) or
            ``"coarse"`` (20 superclasses, :data:`CIFAR100_COARSE_CLASSES`).
        download, verify, fetch: as in :func:`load_cifar10` (no md5 of the single
            CIFAR-100 files is published, so only sizes and labels are checked).

    Returns:
        ``(images, labels)``: uint8 ``(N, 3, 32, 32)`` and int64 ``(N,)``.
    """
    if label not in ("fine", "coarse"):
        raise ValueError(f"label must be 'fine' or 'coarse', got {label!r}")
    images, labels = _load(SPECS["cifar100"], root, train, download, verify, fetch)
    return images, labels[:, 1 if label == "fine" else 0]
