"""miniran.data: CIFAR readers, download safety, sample, augmentation, loader, label noise."""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import io
import json
import sys
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from miniran.data import (
    CIFAR10_CLASSES,
    CIFAR100_COARSE_CLASSES,
    CIFAR100_FINE_CLASSES,
    SAMPLE_PATH,
    ChecksumError,
    DataLoader,
    DatasetCorruptError,
    DatasetNotFoundError,
    UnsafeArchiveError,
    apply_label_noise,
    balanced_subset,
    cifar,
    compute_normalization,
    crop_flip,
    draw_crop_flip_params,
    load_cifar10,
    load_cifar10_sample,
    load_cifar100,
    load_dataset,
    noise_transition_matrix,
    normalize,
    num_classes,
    random_crop_flip,
    sample_indices,
)
from miniran.data.download import download_archive, safe_extract

DATA_DIR = Path(__file__).resolve().parents[1] / "miniran" / "data"

# ============================================================================ helpers


def _records(labels, images):
    """Bytes of records in the official layout: label byte(s), then 3072 pixel bytes."""
    labels = np.asarray(labels, dtype=np.uint8).reshape(len(images), -1)
    return np.concatenate([labels, images.reshape(len(images), -1)], axis=1).tobytes()


def _write_fake(folder: Path, spec, rng):
    """Write every file of ``spec`` with random pixels/labels; return {name: (images, labels)}."""
    folder.mkdir(parents=True, exist_ok=True)
    content = {}
    for name, count in {**spec.train_files, **spec.test_files}.items():
        images = rng.integers(0, 256, size=(count, 3, 32, 32), dtype=np.uint8)
        labels = np.stack([rng.integers(0, k, size=count) for k in spec.label_ranges], axis=1)
        (folder / name).write_bytes(_records(labels, images))
        content[name] = (images, labels)
    return content


def _tar_bytes(members):
    """A .tar.gz in memory from (name, bytes) pairs or ready TarInfo objects (links)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def small_specs(monkeypatch):
    """CIFAR specs with tiny record counts (same format), so fake files stay small."""
    c10 = dataclasses.replace(
        cifar.SPECS["cifar10"],
        train_files={f"data_batch_{i}.bin": 4 for i in range(1, 6)}, test_files={"test_batch.bin": 10},
    )
    c100 = dataclasses.replace(
        cifar.SPECS["cifar100"], train_files={"train.bin": 30}, test_files={"test.bin": 12},
    )
    monkeypatch.setitem(cifar.SPECS, "cifar10", c10)
    monkeypatch.setitem(cifar.SPECS, "cifar100", c100)
    return {"cifar10": c10, "cifar100": c100}


@pytest.fixture
def isolated_env(tmp_path, monkeypatch):
    """No $MINIRAN_DATA, and a cache folder inside tmp_path."""
    monkeypatch.delenv("MINIRAN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "miniran"


def _no_fetch(url, dest):
    raise AssertionError(f"unexpected download of {url}")


# ============================================================================ real CIFAR-10

_REAL = {}


@pytest.fixture
def real_cifar10(cifar10_dir):
    """Real CIFAR-10 (train and test), read once for the whole file."""
    if not _REAL:
        _REAL["train"] = load_cifar10(cifar10_dir, train=True, download=False)
        _REAL["test"] = load_cifar10(cifar10_dir, train=False, download=False)
    return _REAL


def test_real_cifar10_shapes_and_balance(real_cifar10, cifar10_dir):
    for split, n in (("train", 50000), ("test", 10000)):
        images, labels = real_cifar10[split]
        assert images.shape == (n, 3, 32, 32) and images.dtype == np.uint8
        assert labels.shape == (n,) and labels.dtype == np.int64
        assert images.flags.c_contiguous
        assert np.bincount(labels, minlength=10).tolist() == [n // 10] * 10
    # oracle: record 0 of test_batch.bin read by hand (1 label byte + R, G, B planes)
    raw = np.fromfile(cifar10_dir / "test_batch.bin", dtype=np.uint8, count=3073)
    images, labels = real_cifar10["test"]
    assert labels[0] == raw[0]
    np.testing.assert_array_equal(images[0, 1], raw[1 + 1024:1 + 2048].reshape(32, 32))


def test_real_cifar10_root_spellings(cifar10_dir):
    # the folder itself and the folder containing it both work (test split: 0.1 s)
    a = load_cifar10(cifar10_dir, train=False, download=False)
    b = load_cifar10(cifar10_dir.parent, train=False, download=False)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_class_names(cifar10_dir):
    assert len(CIFAR10_CLASSES) == 10
    meta = (cifar10_dir / "batches.meta.txt").read_text().split()
    assert tuple(meta) == CIFAR10_CLASSES
    assert len(set(CIFAR100_FINE_CLASSES)) == 100 and list(CIFAR100_FINE_CLASSES) == sorted(CIFAR100_FINE_CLASSES)
    assert len(set(CIFAR100_COARSE_CLASSES)) == 20
    assert list(CIFAR100_COARSE_CLASSES) == sorted(CIFAR100_COARSE_CLASSES)


def test_sample_is_real_cifar10(real_cifar10):
    for split in ("train", "test"):
        images, labels = load_cifar10_sample(train=split == "train")
        idx = sample_indices(train=split == "train")
        np.testing.assert_array_equal(images, real_cifar10[split][0][idx])
        np.testing.assert_array_equal(labels, real_cifar10[split][1][idx])


# ============================================================================ sample


def test_sample_file():
    assert SAMPLE_PATH.stat().st_size < 16 * 1024 * 1024
    for train, per_class in ((True, 400), (False, 100)):
        images, labels = load_cifar10_sample(train=train)
        assert images.shape == (10 * per_class, 3, 32, 32) and images.dtype == np.uint8
        assert labels.dtype == np.int64
        assert np.bincount(labels, minlength=10).tolist() == [per_class] * 10
        idx = sample_indices(train=train)
        assert idx.shape == labels.shape and np.all(np.diff(idx) > 0)
        assert idx.max() < (50000 if train else 10000)
    with np.load(SAMPLE_PATH, allow_pickle=False) as f:
        assert tuple(f["classes"]) == CIFAR10_CLASSES
        assert int(f["seed"]) == 0
    x, y = load_dataset("cifar10-sample", train=False)
    assert x.shape == (1000, 3, 32, 32)


def test_sample_missing_file(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="make_cifar10_sample"):
        load_cifar10_sample(path=tmp_path / "nope.npz")


def test_write_sample_from_fake_files(tmp_path, small_specs):
    from miniran.data.sample import write_cifar10_sample

    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    train_images = rng.integers(0, 256, size=(20, 3, 32, 32), dtype=np.uint8)
    train_labels = np.arange(20) % 10
    for i in range(5):
        sl = slice(4 * i, 4 * i + 4)
        (folder / f"data_batch_{i + 1}.bin").write_bytes(_records(train_labels[sl], train_images[sl]))
    test_images = rng.integers(0, 256, size=(10, 3, 32, 32), dtype=np.uint8)
    (folder / "test_batch.bin").write_bytes(_records(np.arange(10), test_images))
    out = write_cifar10_sample(folder, tmp_path / "s.npz", train_per_class=2, test_per_class=1,
                               seed=3, verify=False)
    images, labels = load_cifar10_sample(train=True, path=out)
    idx = sample_indices(train=True, path=out)
    assert images.shape == (20, 3, 32, 32)  # 2 per class: every training image
    np.testing.assert_array_equal(images, train_images[idx])
    np.testing.assert_array_equal(labels, train_labels[idx])
    images, labels = load_cifar10_sample(train=False, path=out)
    np.testing.assert_array_equal(labels, np.arange(10))
    np.testing.assert_array_equal(images, test_images)


# ============================================================================ reading fake files


def test_cifar100_official_format(tmp_path, small_specs, isolated_env):
    spec = small_specs["cifar100"]
    content = _write_fake(tmp_path / "cifar-100-binary", spec, np.random.default_rng(1))
    for root in (tmp_path, tmp_path / "cifar-100-binary"):
        for train, name in ((True, "train.bin"), (False, "test.bin")):
            images, labels = load_cifar100(root, train=train, download=False, fetch=_no_fetch)
            np.testing.assert_array_equal(images, content[name][0])
            assert labels.dtype == np.int64
            np.testing.assert_array_equal(labels, content[name][1][:, 1])
            _, coarse = load_cifar100(root, train=train, label="coarse", download=False)
            np.testing.assert_array_equal(coarse, content[name][1][:, 0])
    x, y = load_dataset("CIFAR-100", root=tmp_path, train=False, download=False)
    assert x.shape == (12, 3, 32, 32) and y.max() < 100
    with pytest.raises(ValueError, match="label"):
        load_cifar100(tmp_path, label="medium", download=False)


def test_cifar10_fake_files_md5_and_verify(tmp_path, small_specs, isolated_env):
    content = _write_fake(tmp_path / "cifar-10-batches-bin", small_specs["cifar10"], np.random.default_rng(2))
    # the fake files have the official names but not the published md5 sums
    with pytest.raises(ChecksumError, match="data_batch_1.bin.*md5"):
        load_cifar10(tmp_path, download=False)
    images, labels = load_cifar10(tmp_path, download=False, verify=False)
    expected = np.concatenate([content[f"data_batch_{i}.bin"][0] for i in range(1, 6)])
    np.testing.assert_array_equal(images, expected)
    assert labels.shape == (20,)


def test_truncated_file_is_reported(tmp_path, small_specs, isolated_env):
    _write_fake(tmp_path / "cifar-100-binary", small_specs["cifar100"], np.random.default_rng(3))
    path = tmp_path / "cifar-100-binary" / "test.bin"
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    expected = 12 * 3074
    with pytest.raises(DatasetCorruptError, match=rf"test\.bin: {expected - 100} bytes, expected {expected}"):
        load_cifar100(tmp_path, train=False, download=False)
    path.write_bytes(data + data[:3074])  # one record too many
    with pytest.raises(DatasetCorruptError, match="too long"):
        load_cifar100(tmp_path, train=False, download=False)


def test_label_out_of_range_is_reported(tmp_path, small_specs, isolated_env):
    _write_fake(tmp_path / "cifar-100-binary", small_specs["cifar100"], np.random.default_rng(4))
    path = tmp_path / "cifar-100-binary" / "train.bin"
    data = bytearray(path.read_bytes())
    data[3 * 3074 + 1] = 100  # fine label of record 3
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetCorruptError, match=r"record 3 has label 100"):
        load_cifar100(tmp_path, download=False)


def test_not_found_says_where_and_how(tmp_path, monkeypatch, isolated_env):
    monkeypatch.setenv("MINIRAN_DATA", str(tmp_path / "envdata"))
    with pytest.raises(DatasetNotFoundError) as info:
        load_cifar10(download=False)
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    for place in (tmp_path / "envdata" / "cifar-10-batches-bin", tmp_path / "envdata",
                  isolated_env / "cifar-10-batches-bin", isolated_env):
        assert str(place) in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz" in msg
    assert "MINIRAN_DATA" in msg and "download=False" in msg
    # with an explicit root, only root is searched
    with pytest.raises(DatasetNotFoundError) as info:
        load_cifar100(tmp_path / "mine", download=False)
    assert str(tmp_path / "mine" / "cifar-100-binary") in str(info.value)
    assert str(isolated_env) not in str(info.value).split("To get it")[0]


def test_offline_download_failure(tmp_path, isolated_env):
    def offline(url, dest):
        raise urllib.error.URLError("no network")

    with pytest.raises(DatasetNotFoundError, match="(?s)no network.*MINIRAN_DATA"):
        load_cifar10(tmp_path / "data", fetch=offline)
    assert not (tmp_path / "data").exists()  # no partial or temporary file, not even the folder


def test_env_and_cache_dirs_are_searched(tmp_path, monkeypatch, small_specs, isolated_env):
    content = _write_fake(isolated_env / "cifar-100-binary", small_specs["cifar100"], np.random.default_rng(5))
    _, labels = load_cifar100(train=False, download=False)  # found in the per-user cache
    np.testing.assert_array_equal(labels, content["test.bin"][1][:, 1])
    content = _write_fake(tmp_path / "env" / "cifar-100-binary", small_specs["cifar100"], np.random.default_rng(6))
    monkeypatch.setenv("MINIRAN_DATA", str(tmp_path / "env"))
    _, labels = load_cifar100(train=False, download=False)  # $MINIRAN_DATA comes first
    np.testing.assert_array_equal(labels, content["test.bin"][1][:, 1])


# ============================================================================ download and extraction


def _cifar100_tarball(tmp_path, spec, rng):
    src = tmp_path / "src"
    content = _write_fake(src / "cifar-100-binary", spec, rng)
    members = [(f"cifar-100-binary/{name}", (src / "cifar-100-binary" / name).read_bytes()) for name in content]
    members.append(("cifar-100-binary/fine_label_names.txt", "\n".join(CIFAR100_FINE_CLASSES).encode()))
    data = _tar_bytes(members)
    archive = tmp_path / "served" / "cifar-100-binary.tar.gz"
    archive.parent.mkdir()
    archive.write_bytes(data)
    return archive, hashlib.md5(data).hexdigest(), content


def test_download_success_via_file_url(tmp_path, monkeypatch, small_specs, isolated_env):
    archive, md5, content = _cifar100_tarball(tmp_path, small_specs["cifar100"], np.random.default_rng(7))
    spec = dataclasses.replace(small_specs["cifar100"], url=archive.as_uri(), archive_md5=md5)
    monkeypatch.setitem(cifar.SPECS, "cifar100", spec)
    root = tmp_path / "data"
    images, labels = load_cifar100(root, train=True)
    np.testing.assert_array_equal(images, content["train.bin"][0])
    np.testing.assert_array_equal(labels, content["train.bin"][1][:, 1])
    assert (root / "cifar-100-binary" / "fine_label_names.txt").is_file()
    assert not (root / "cifar-100-binary.tar.gz").exists()  # the downloaded archive is removed
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp")]
    # second call: found on disk, nothing fetched
    load_cifar100(root, train=False, fetch=_no_fetch)


def test_download_md5_mismatch_is_rejected(tmp_path, monkeypatch, small_specs, isolated_env):
    archive, md5, _ = _cifar100_tarball(tmp_path, small_specs["cifar100"], np.random.default_rng(8))
    spec = dataclasses.replace(small_specs["cifar100"], url=archive.as_uri(), archive_md5="0" * 32)
    monkeypatch.setitem(cifar.SPECS, "cifar100", spec)
    root = tmp_path / "data"
    with pytest.raises(ChecksumError, match=md5):
        load_cifar100(root)
    assert not root.exists()  # neither the archive nor a temporary file, nor the folder, is left


def test_archive_placed_by_hand_is_used_offline(tmp_path, monkeypatch, small_specs, isolated_env):
    archive, md5, content = _cifar100_tarball(tmp_path, small_specs["cifar100"], np.random.default_rng(9))
    spec = dataclasses.replace(small_specs["cifar100"], archive_md5=md5)
    monkeypatch.setitem(cifar.SPECS, "cifar100", spec)
    _, labels = load_cifar100(archive.parent, train=False, download=False, fetch=_no_fetch)
    np.testing.assert_array_equal(labels, content["test.bin"][1][:, 1])
    assert archive.exists()  # the user's own file is kept
    # a damaged archive placed by hand is refused, not silently replaced
    archive.write_bytes(archive.read_bytes()[:-10])
    (archive.parent / "cifar-100-binary" / "test.bin").unlink()
    with pytest.raises(ChecksumError, match="not the published"):
        load_cifar100(archive.parent, download=False)


def test_download_archive_with_fetch_function(tmp_path):
    payload = b"hello archive"

    def fetch(url, dest):
        Path(dest).write_bytes(payload)

    path = download_archive("https://example.invalid/x.tar.gz", hashlib.md5(payload).hexdigest(),
                            tmp_path, fetch=fetch)
    assert path == tmp_path / "x.tar.gz" and path.read_bytes() == payload
    # present with the right md5: reused without fetching
    assert download_archive("https://example.invalid/x.tar.gz", hashlib.md5(payload).hexdigest(),
                            tmp_path, fetch=_no_fetch) == path


def _link(name, kind, target):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.mark.parametrize("bad", [
    ("../escape.bin", b"x"),
    ("ok/../../escape.bin", b"x"),
    ("/tmp/miniran-absolute.bin", b"x"),
    _link("cifar-100-binary/link", tarfile.SYMTYPE, "/etc/passwd"),
    _link("cifar-100-binary/hard", tarfile.LNKTYPE, "cifar-100-binary/good.bin"),
    _link("cifar-100-binary/fifo", tarfile.FIFOTYPE, ""),
], ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink", "fifo"])
def test_safe_extract_rejects_unsafe_members(tmp_path, bad):
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(_tar_bytes([("cifar-100-binary/good.bin", b"good"), bad]))
    target = tmp_path / "target"
    with pytest.raises(UnsafeArchiveError):
        safe_extract(archive, target)
    assert not (target / "cifar-100-binary" / "good.bin").exists()  # nothing written at all
    assert not (tmp_path / "escape.bin").exists()
    assert not [p for p in target.iterdir() if p.name.startswith(".tmp")]


def test_download_rejects_escaping_member(tmp_path, monkeypatch, small_specs, isolated_env):
    data = _tar_bytes([("cifar-100-binary/train.bin", b"x"), ("../../escape.bin", b"x")])
    archive = tmp_path / "served" / "cifar-100-binary.tar.gz"
    archive.parent.mkdir()
    archive.write_bytes(data)
    spec = dataclasses.replace(small_specs["cifar100"], url=archive.as_uri(),
                               archive_md5=hashlib.md5(data).hexdigest())
    monkeypatch.setitem(cifar.SPECS, "cifar100", spec)
    with pytest.raises(UnsafeArchiveError, match="escape"):
        load_cifar100(tmp_path / "a" / "b")
    assert not (tmp_path / "escape.bin").exists()
    assert not (tmp_path / "a" / "b" / "cifar-100-binary").exists()


def test_safe_extract_plain_archive(tmp_path):
    archive = tmp_path / "ok.tar.gz"
    archive.write_bytes(_tar_bytes([("d/a.bin", b"aa"), ("./d/sub/b.bin", b"bb")]))
    written = safe_extract(archive, tmp_path / "t")
    assert (tmp_path / "t" / "d" / "a.bin").read_bytes() == b"aa"
    assert (tmp_path / "t" / "d" / "sub" / "b.bin").read_bytes() == b"bb"
    assert len(written) == 2


# ============================================================================ names, subsets


def test_load_dataset_names():
    assert num_classes("cifar10") == 10 and num_classes("cifar100") == 100
    assert num_classes("cifar10-sample") == 10
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")


def test_balanced_subset():
    labels = np.repeat(np.arange(10), 50)[np.random.default_rng(0).permutation(500)]
    idx = balanced_subset(labels, 100, seed=1)
    assert idx.dtype == np.int64 and idx.shape == (100,) and len(set(idx.tolist())) == 100
    assert np.all(np.diff(idx) > 0)
    assert np.bincount(labels[idx], minlength=10).tolist() == [10] * 10
    np.testing.assert_array_equal(idx, balanced_subset(labels, 100, seed=1))
    assert not np.array_equal(idx, balanced_subset(labels, 100, seed=2))
    counts = np.bincount(labels[balanced_subset(labels, 105, seed=1)], minlength=10)
    assert sorted(counts.tolist()) == [10] * 5 + [11] * 5
    for bad in (0, 501, -3, 2.5):
        with pytest.raises(ValueError, match="n must be"):
            balanced_subset(labels, bad)
    with pytest.raises(ValueError, match="class 0 has 1 examples"):
        balanced_subset(np.array([0, 1, 1, 1]), 4)


# ============================================================================ augmentation


def _crop_flip_loop(images, oy, ox, flips, p):
    """Oracle: one image at a time, with np.pad."""
    out = np.empty_like(images)
    h, w = images.shape[2:]
    for b in range(images.shape[0]):
        padded = np.pad(images[b], ((0, 0), (p, p), (p, p)))
        crop = padded[:, oy[b]:oy[b] + h, ox[b]:ox[b] + w]
        out[b] = crop[:, :, ::-1] if flips[b] else crop
    return out


def test_crop_flip_matches_loop(xp, rng):
    images = rng.standard_normal((7, 3, 10, 12)).astype(np.float32)
    oy, ox, flips = draw_crop_flip_params(7, rng, padding=3)
    got = crop_flip(xp.asarray(images), xp.asarray(oy), ox, flips, padding=3)
    assert got.dtype == np.float32 and got.shape == images.shape
    np.testing.assert_array_equal(np.asarray(got.get() if hasattr(got, "get") else got),
                                  _crop_flip_loop(images, oy, ox, flips, 3))


def test_crop_flip_special_cases(rng):
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(crop_flip(x, [4, 4], [4, 4], [False, False]), x)
    np.testing.assert_array_equal(crop_flip(x, [4, 4], [4, 4], [True, True]), x[..., ::-1])
    shifted = crop_flip(x, [0, 8], [0, 8], [False, False])
    assert np.all(shifted[0, :, :4, :] == 0) and np.all(shifted[0, :, :, :4] == 0)
    np.testing.assert_array_equal(shifted[0, :, 4:, 4:], x[0, :, :28, :28])
    np.testing.assert_array_equal(shifted[1, :, :28, :28], x[1, :, 4:, 4:])


def test_random_crop_flip_reproducible_and_covers_offsets(rng):
    x = rng.standard_normal((5, 3, 32, 32)).astype(np.float32)
    a = random_crop_flip(x, np.random.default_rng(3))
    b = random_crop_flip(x, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    oy, ox, flips = draw_crop_flip_params(20000, np.random.default_rng(0), padding=4)
    assert set(oy.tolist()) == set(range(9)) and set(ox.tolist()) == set(range(9))
    assert abs(flips.mean() - 0.5) < 0.02
    assert not draw_crop_flip_params(10, 0, flip=False)[2].any()


def test_normalization_statistics(rng):
    images = rng.integers(0, 256, size=(40, 3, 8, 8), dtype=np.uint8)
    mean, std = compute_normalization(images, "pixel")
    assert mean.shape == (3, 8, 8) and mean.dtype == np.float32 and std.shape == (1, 1, 1)
    np.testing.assert_allclose(mean, images.mean(0) / 255, rtol=1e-6)
    x = normalize(images, mean, std)
    assert x.dtype == np.float32
    np.testing.assert_allclose(x.mean(0), 0, atol=1e-6)
    mean, std = compute_normalization(images, "channel", chunk=7)
    assert mean.shape == std.shape == (3, 1, 1)
    ref = images.astype(np.float64) / 255
    np.testing.assert_allclose(mean.ravel(), ref.mean((0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(std.ravel(), ref.std((0, 2, 3)), rtol=1e-5)
    x = normalize(images, mean, std)
    np.testing.assert_allclose(x.mean((0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(x.std((0, 2, 3)), 1, rtol=1e-4)
    with pytest.raises(ValueError, match="mode"):
        compute_normalization(images, "batch")


def test_augment_cupy_agrees_with_numpy(cp, rng):
    images = rng.integers(0, 256, size=(9, 3, 32, 32), dtype=np.uint8)
    mean, std = compute_normalization(images, "channel")
    x_np = normalize(images, mean, std)
    x_cp = normalize(cp.asarray(images), cp.asarray(mean), std)
    assert isinstance(x_cp, cp.ndarray)
    np.testing.assert_allclose(cp.asnumpy(x_cp), x_np, rtol=1e-6, atol=1e-6)
    a = random_crop_flip(x_np, np.random.default_rng(5))
    b = random_crop_flip(x_cp, np.random.default_rng(5))
    assert isinstance(b, cp.ndarray)
    np.testing.assert_allclose(cp.asnumpy(b), a, rtol=1e-6, atol=1e-6)


# ============================================================================ loader


def _dataset(n=50, seed=0):
    r = np.random.default_rng(seed)
    return r.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8), r.integers(0, 10, size=n)


def _epoch(loader):
    return [(x.copy(), y.copy()) for x, y in loader]


def test_loader_batches_cover_the_dataset():
    images, labels = _dataset(50)
    loader = DataLoader(images, labels, batch_size=16, shuffle=True, normalize=None, seed=0)
    assert len(loader) == 4
    batches = _epoch(loader)
    assert [len(y) for _, y in batches] == [16, 16, 16, 2]
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    assert x.dtype == np.float32 and y.dtype == np.int64 and x.shape == (50, 3, 32, 32)
    # every image exactly once, with its own label; pixels only scaled to [0, 1]
    order = np.array([np.flatnonzero((images.reshape(50, -1) == np.rint(xi.ravel() * 255)).all(1))[0] for xi in x])
    assert sorted(order.tolist()) == list(range(50))
    np.testing.assert_array_equal(y, labels[order])
    np.testing.assert_allclose(x, images[order] / 255, atol=1e-6)
    assert order.tolist() != list(range(50))
    second = np.concatenate([b[1] for b in _epoch(loader)])
    assert loader.epoch == 2
    assert not np.array_equal(second, y)  # a new order each epoch
    assert len(DataLoader(images, labels, batch_size=16, drop_last=True)) == 3
    assert [len(y) for _, y in DataLoader(images, labels, batch_size=16, drop_last=True)] == [16] * 3


def test_loader_unshuffled_and_eval_statistics():
    images, labels = _dataset(20)
    train = DataLoader(images, labels, batch_size=8, normalize="pixel")
    test = DataLoader(images[:5], labels[:5], batch_size=8, shuffle=False, mean=train.mean, std=train.std)
    (x, y), = list(test)
    np.testing.assert_allclose(x, normalize(images[:5], train.mean, train.std), atol=1e-6)
    np.testing.assert_array_equal(y, labels[:5])
    with pytest.raises(ValueError, match="normalize"):
        DataLoader(images, labels, normalize="minmax")
    with pytest.raises(ValueError, match="labels"):
        DataLoader(images, labels[:3])


def test_loader_augmentation_follows_the_documented_draws():
    images, labels = _dataset(30)
    loader = DataLoader(images, labels, batch_size=12, augment=True, normalize="channel", seed=7)
    x0, y0 = next(iter(loader))
    rng = np.random.default_rng(7)
    order = rng.permutation(30)
    oy, ox, flips = draw_crop_flip_params(30, rng, 4)
    expected = crop_flip(normalize(images[order[:12]], loader.mean, loader.std), oy[:12], ox[:12], flips[:12])
    np.testing.assert_allclose(x0, expected, atol=1e-6)
    np.testing.assert_array_equal(y0, labels[order[:12]])
    same = DataLoader(images, labels, batch_size=12, augment=True, normalize="channel", seed=7)
    other = DataLoader(images, labels, batch_size=12, augment=True, normalize="channel", seed=8)
    np.testing.assert_array_equal(next(iter(same))[0], x0)
    assert not np.array_equal(next(iter(other))[0], x0)


@pytest.mark.parametrize("stop_after", [0, 2, 4, 5])  # 4 = end of epoch, 5 = into the next
def test_loader_resume_gives_the_same_batches(tmp_path, stop_after):
    images, labels = _dataset(50)
    kwargs = dict(batch_size=12, augment=True, seed=11)  # 5 batches per epoch
    a = DataLoader(images, labels, **kwargs)
    stream = (batch for _ in range(3) for batch in a)
    for _ in range(stop_after):
        next(stream)
    state = a.state_dict()
    assert set(state) == {"epoch", "position", "rng_state", "num_samples", "batch_size"}
    assert isinstance(state["rng_state"], str) and json.loads(state["rng_state"])["bit_generator"] == "PCG64"
    rest_a = [b for _, b in zip(range(7), stream)]
    # round trip through an .npz without pickle, into a loader with another seed
    np.savez(tmp_path / "state.npz", **state)
    with np.load(tmp_path / "state.npz", allow_pickle=False) as f:
        loaded = {k: f[k] for k in f.files}
    b = DataLoader(images, labels, **{**kwargs, "seed": 999}).load_state_dict(loaded)
    assert (b.epoch, b.position) == (state["epoch"], state["position"])
    rest_b = [batch for _, batch in zip(range(7), (batch for _ in range(3) for batch in b))]
    assert len(rest_a) == len(rest_b) == 7
    for (xa, ya), (xb, yb) in zip(rest_a, rest_b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_loader_break_keeps_position_and_state_checks():
    images, labels = _dataset(50)
    loader = DataLoader(images, labels, batch_size=10, seed=3)
    full = [y for _, y in DataLoader(images, labels, batch_size=10, seed=3)]
    got = []
    for _, y in loader:
        got.append(y)
        if len(got) == 2:
            break
    assert (loader.epoch, loader.position) == (0, 2)
    got += [y for _, y in loader]
    for a, b in zip(got, full):
        np.testing.assert_array_equal(a, b)
    assert len(got) == 5 and (loader.epoch, loader.position) == (1, 0)
    with pytest.raises(ValueError, match="num_samples"):
        DataLoader(images[:40], labels[:40], batch_size=10).load_state_dict(loader.state_dict())


def test_loader_on_gpu_matches_cpu(cp):
    images, labels = _dataset(40)
    kwargs = dict(batch_size=16, augment=True, normalize="pixel", seed=5)
    cpu = DataLoader(images, labels, **kwargs)
    gpu = DataLoader(images, labels, device="gpu", **kwargs)
    assert isinstance(gpu._images, cp.ndarray) and gpu._images.dtype == np.uint8
    for (xc, yc), (xg, yg) in zip(cpu, gpu):
        assert isinstance(xg, cp.ndarray) and xg.dtype == np.float32 and yg.dtype == np.int64
        np.testing.assert_allclose(cp.asnumpy(xg), xc, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(cp.asnumpy(yg), yc)
    state = gpu.state_dict()
    again = DataLoader(images, labels, device="gpu", **kwargs).load_state_dict(state)
    np.testing.assert_array_equal(cp.asnumpy(next(iter(again))[1]), next(iter(cpu))[1])


# ============================================================================ label noise


def test_label_noise_matches_eq7():
    labels = np.repeat(np.arange(10), 5000)
    before = labels.copy()
    for r in (0.9, 0.5, 0.3):
        noisy = apply_label_noise(labels, clean_ratio=r, seed=0)
        np.testing.assert_array_equal(labels, before)  # input untouched
        assert noisy.dtype == np.int64 and noisy.shape == labels.shape
        assert abs((noisy != labels).mean() - (1 - r)) < 0.01
        confusion = np.zeros((10, 10))
        np.add.at(confusion, (labels, noisy), 1)
        confusion /= 5000
        q = noise_transition_matrix(r)
        # every cell, off-diagonal ones included (uniform over the other classes),
        # within 5 binomial standard deviations of Q
        np.testing.assert_array_less(np.abs(confusion - q), 5 * np.sqrt(q * (1 - q) / 5000) + 1e-12)
    np.testing.assert_array_equal(apply_label_noise(labels, noise_level=0.3, seed=4),
                                  apply_label_noise(labels, clean_ratio=0.7, seed=4))


def test_label_noise_reproducible_and_extremes():
    labels = np.random.default_rng(0).integers(0, 10, size=1000)
    a = apply_label_noise(labels, noise_level=0.5, seed=1)
    np.testing.assert_array_equal(a, apply_label_noise(labels, noise_level=0.5, seed=1))
    assert not np.array_equal(a, apply_label_noise(labels, noise_level=0.5, seed=2))
    np.testing.assert_array_equal(apply_label_noise(labels, clean_ratio=1.0), labels)
    assert np.all(apply_label_noise(labels, clean_ratio=0.0) != labels)
    q = noise_transition_matrix(noise_level=0.3, num_classes=100)
    np.testing.assert_allclose(q.sum(1), 1)
    assert q[0, 0] == pytest.approx(0.7) and q[0, 1] == pytest.approx(0.3 / 99)


@pytest.mark.parametrize("kwargs, word", [
    (dict(), "exactly one"),
    (dict(clean_ratio=0.5, noise_level=0.5), "exactly one"),
    (dict(clean_ratio=1.5), "clean_ratio"),
    (dict(noise_level=-0.1), "noise_level"),
    (dict(noise_level=float("nan")), "noise_level"),
    (dict(clean_ratio="high"), "clean_ratio"),
    (dict(clean_ratio=0.5, num_classes=1), "num_classes"),
    (dict(clean_ratio=0.5, num_classes=5), "labels must be in 0..4"),
])
def test_label_noise_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        apply_label_noise(np.arange(10), **kwargs)


def test_label_noise_on_gpu(cp):
    labels = np.random.default_rng(0).integers(0, 10, size=1000)
    noisy = apply_label_noise(cp.asarray(labels), clean_ratio=0.6, seed=3)
    assert isinstance(noisy, cp.ndarray)
    np.testing.assert_array_equal(cp.asnumpy(noisy), apply_label_noise(labels, clean_ratio=0.6, seed=3))


# ============================================================================ layering


def test_data_layer_imports_only_backend_numpy_stdlib():
    for path in sorted(DATA_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
                if node.module == "miniran":  # from miniran import backend
                    names = [f"miniran.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert name not in ("pickle", "torch") and top not in ("pickle", "torch"), (path, name)
                ok = (
                    top == "numpy" or name in ("miniran.backend", "miniran._io") or name.startswith("miniran.data")
                    or name == "__future__" or top in sys.stdlib_module_names
                )
                assert ok and name != "miniran", f"{path.name} imports {name}"


def test_failed_download_does_not_create_the_data_dir(tmp_path, isolated_env):
    """Issue 10: a download that fails leaves no trace, not even the folder it would have made."""
    def offline(url, dest):
        raise urllib.error.URLError("no network")

    with pytest.raises(DatasetNotFoundError, match="no network"):
        load_cifar10(tmp_path / "new" / "data", fetch=offline)
    assert not (tmp_path / "new").exists()
