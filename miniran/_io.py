"""Safe file writing: the one place where miniran writes files to disk.

This is a lowest-layer module, beside :mod:`miniran.backend`: it imports
nothing from miniran, and every writer of the package goes through it
(checkpoints, ``.npz`` saves, dataset downloads, the embedded sample, the
metrics log).

* :func:`atomic_path` / :func:`atomic_write` write a whole file under a
  temporary name in the same folder, flush it to disk (``fsync``) and only then
  rename it over the final name. A crash, a full disk or Ctrl-C at any moment
  leaves either the old file or the new one, never a half-written one, and the
  temporary file is removed.
* :func:`append_line` appends one line with a single ``os.write`` on a file
  opened with ``O_APPEND``, then ``fsync``: the line is never interleaved with
  another writer's, and a torn line can only be the last one.

New files get the mode the process umask allows (``0o666 & ~umask``): the
temporary file is created with ``os.open(..., 0o666)``, which applies the
umask itself, so the umask is never changed (changing it, even for a moment,
is not thread-safe).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets

__all__ = ["append_line", "atomic_path", "atomic_write"]


def _create_temp(folder: str, name: str) -> str:
    """Create a new empty file next to ``name`` in ``folder`` and return its path."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = os.path.join(folder, f".tmp-{secrets.token_hex(6)}-{name}")
        try:
            os.close(os.open(tmp, flags, 0o666))  # the kernel applies the umask
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file in {folder}")


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path; on success it is fsynced and renamed over ``path``.

    The caller writes the file's full content to the yielded path (by any
    means: ``open``, ``np.savez``, a download). If the ``with`` body raises
    (any exception, ``KeyboardInterrupt`` included) the temporary file is
    deleted and ``path`` is left untouched. The folder of ``path`` must exist.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = _create_temp(folder, os.path.basename(path))
    try:
        yield tmp
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (POSIX)
        _fsync_path(folder)


def atomic_write(path, write, mode: str = "wb") -> None:
    """Write a whole file atomically: ``write(f)`` fills the open file ``f``."""
    with atomic_path(path) as tmp:
        with open(tmp, mode) as f:
            write(f)


def append_line(path, line: str) -> None:
    """Append ``line`` (a newline is added) to ``path`` in one ``os.write``, then fsync."""
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    fd = os.open(os.fspath(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        size = os.fstat(fd).st_size
        try:
            written = os.write(fd, data)
            if written != len(data):  # a regular file only writes less when the disk is full
                raise OSError(errno.ENOSPC, f"only {written} of {len(data)} bytes could be appended",
                              os.fspath(path))
        except BaseException:
            with contextlib.suppress(OSError):  # never leave a torn line behind
                os.ftruncate(fd, size)
            raise
        os.fsync(fd)
    finally:
        os.close(fd)

