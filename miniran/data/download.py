"""Fetch, verify and safely unpack a dataset archive; find the per-user data folder.

The steps, each a small function that can be tested alone:

1. :func:`fetch_url` streams a URL (``https://`` or ``file://``) to a file.
2. :func:`download_archive` writes the archive next to its final name, checks
   its md5 and only then renames it into place (:func:`miniran._io.atomic_path`),
   so a broken or tampered download never looks like a good one. A failed
   download leaves nothing behind, not even the folder it created.
3. :func:`safe_extract` unpacks a ``.tar.gz`` after checking **every** member
   first: absolute paths, paths that leave the target folder (``../``), links
   and special files are refused, and nothing is written when one is found.

The exceptions used by the whole data layer live here too, so that every
module of :mod:`miniran.data` raises the same types.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path, PurePosixPath

from miniran._io import atomic_path

__all__ = [
    "ChecksumError", "DatasetCorruptError", "DatasetNotFoundError", "UnsafeArchiveError",
    "default_data_dir", "download_archive", "fetch_url", "file_md5", "safe_extract",
]


class DatasetNotFoundError(FileNotFoundError):
    """The dataset files are not where they were looked for and could not be fetched."""


class DatasetCorruptError(ValueError):
    """A dataset file exists but is truncated, has the wrong checksum or bad labels."""


class ChecksumError(DatasetCorruptError):
    """A file's md5 is not the published one."""


class UnsafeArchiveError(DatasetCorruptError):
    """An archive member would land outside the target folder, or is a link/special file."""


def default_data_dir() -> Path:
    """The per-user cache folder: ``$XDG_CACHE_HOME/miniran``, else ``~/.cache/miniran``."""
    cache = os.environ.get("XDG_CACHE_HOME")
    base = Path(cache) if cache else Path.home() / ".cache"
    return base / "miniran"


def _md5():
    try:
        return hashlib.md5(usedforsecurity=False)
    except TypeError:  # a Python built without the keyword
        return hashlib.md5()


def file_md5(path, chunk_size: int = 1 << 20) -> str:
    """Hex md5 of a file, read in chunks (constant memory)."""
    h = _md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_url(url: str, dest, timeout: float = 60.0) -> None:
    """Stream ``url`` to the file ``dest`` (any scheme urllib knows, ``file://`` included)."""
    show = sys.stderr.isatty()
    with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0)
        done = 0
        for chunk in iter(lambda: response.read(1 << 20), b""):
            out.write(chunk)
            done += len(chunk)
            if show and total:
                print(f"\r  {done / 1e6:.0f} / {total / 1e6:.0f} MB", end="", file=sys.stderr)
        if show and total:
            print(file=sys.stderr)


def download_archive(url: str, md5: str, dest_dir, filename: str | None = None, fetch=None) -> Path:
    """Download ``url`` into ``dest_dir`` and verify its md5; return the archive's path.

    Args:
        url: where the archive is (``https://...`` or ``file:///...``).
        md5: the expected hex md5 of the whole archive.
        dest_dir: folder that receives the archive (created if needed).
        filename: name of the archive in ``dest_dir`` (default: last part of the URL).
        fetch: ``fetch(url, path)`` writing the bytes to ``path``; default :func:`fetch_url`.
            Tests pass their own to work without a network.

    An archive already present with the right md5 is reused (no download).
    The bytes go to a temporary file first and are renamed into place only
    after the md5 matched; on a mismatch the temporary file is deleted and
    :class:`ChecksumError` is raised.
    """
    dest_dir = Path(dest_dir)
    filename = filename or url.rstrip("/").rsplit("/", 1)[-1]
    target = dest_dir / filename
    if target.is_file() and file_md5(target) == md5:
        return target
    created = _missing_parents(dest_dir)
    fetch = fetch_url if fetch is None else fetch
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            print(f"miniran: downloading {url} -> {target}", file=sys.stderr)
            fetch(url, tmp)
            actual = file_md5(tmp)
            if actual != md5:
                raise ChecksumError(
                    f"the file downloaded from {url} has md5 {actual}, expected {md5}: it is "
                    "incomplete or not the official file, so it was deleted. Try again, or "
                    f"download it yourself and put it at {target}."
                )
    except BaseException:
        for folder in created:  # a failed download leaves no trace, not even the folder
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    return target


def _missing_parents(folder: Path) -> list[Path]:
    """The folders that ``folder.mkdir(parents=True)`` would create, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _check_member(member: tarfile.TarInfo, target: Path) -> None:
    """Raise :class:`UnsafeArchiveError` unless ``member`` is a plain file/folder inside ``target``."""
    name = member.name
    if member.issym() or member.islnk():
        raise UnsafeArchiveError(f"archive member {name!r} is a link; links are not extracted")
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(f"archive member {name!r} is not a regular file or folder")
    pure = PurePosixPath(name)
    if pure.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"archive member {name!r} has an absolute path")
    if ".." in pure.parts or "\\" in name:
        raise UnsafeArchiveError(f"archive member {name!r} would be written outside {target}")
    resolved = (target / name).resolve()
    if resolved != target and target not in resolved.parents:
        raise UnsafeArchiveError(f"archive member {name!r} would be written outside {target}")


def safe_extract(archive, target_dir) -> list[Path]:
    """Unpack a ``.tar``/``.tar.gz`` into ``target_dir`` safely; return the files written.

    Every member is checked before anything is written (see
    :class:`UnsafeArchiveError`). Files are unpacked into a temporary folder
    inside ``target_dir`` and then moved into place one by one with
    ``os.replace``, so an interrupted extraction never leaves a half-written
    file under its final name. Existing files of the same name are replaced.
    """
    target = Path(target_dir).resolve()
    target.mkdir(parents=True, exist_ok=True)
    written = []
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for m in members:
            _check_member(m, target)
        tmp_root = Path(tempfile.mkdtemp(dir=target, prefix=".tmp-extract-"))
        try:
            staged = []
            for m in members:
                if m.isdir():
                    (target / m.name).mkdir(parents=True, exist_ok=True)
                    continue
                tmp_path = tmp_root / str(len(staged))
                src = tar.extractfile(m)
                with src, open(tmp_path, "wb") as out:
                    shutil.copyfileobj(src, out, length=1 << 20)
                staged.append((tmp_path, target / m.name))
            for tmp_path, final in staged:
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp_path, final)
                written.append(final)
        finally:
            shutil.rmtree(tmp_root, ignore_errors=True)
    return written
