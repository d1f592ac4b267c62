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
* :func:`lock_folder` takes an exclusive lock on ``FOLDER/.lock`` (``flock``),
  so only one process at a time works on a folder; the kernel drops the lock
  when its process dies, however it dies.
* :func:`remove_stale_temporaries` removes the temporary files that a process
  killed in the middle of a write (``SIGKILL``, a power cut) left behind; only
  names of the form :func:`atomic_path` gives them (``.tmp-<12 hex>-<name>``)
  are touched, and only for the names asked for.

New files get the mode the process umask allows (``0o666 & ~umask``): the
temporary file is created with ``os.open(..., 0o666)``, which applies the
umask itself, so the umask is never changed (changing it, even for a moment,
is not thread-safe).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets

try:
    import fcntl
except ImportError:  # Windows: no flock, folders are not locked
    fcntl = None

__all__ = ["FolderLock", "append_line", "atomic_path", "atomic_write", "lock_folder", "lock_holder",
           "remove_stale_temporaries", "temporary_target"]

#: the name of a temporary file of :func:`atomic_path`: ``.tmp-``, 12 hex digits, ``-``, the final name
TEMPORARY_NAME = re.compile(r"\.tmp-[0-9a-f]{12}-(?P<target>.+)\Z", re.DOTALL)
LOCK_NAME = ".lock"


def _temporary_name(name: str) -> str:
    return f".tmp-{secrets.token_hex(6)}-{name}"  # the form TEMPORARY_NAME matches


def temporary_target(filename: str) -> str | None:
    """The final name a temporary file of :func:`atomic_path` was for, or None if ``filename`` is not one."""
    match = TEMPORARY_NAME.match(filename)
    return match.group("target") if match else None


def _create_temp(folder: str, name: str) -> str:
    """Create a new empty file next to ``name`` in ``folder`` and return its path."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = os.path.join(folder, _temporary_name(name))
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



def remove_stale_temporaries(folder, names) -> list[str]:
    """Remove the temporary files of :func:`atomic_path` for ``names`` in ``folder``; returns their paths.

    Only for a folder nobody else is writing to (hold :func:`lock_folder`): a
    temporary file there was left by a write that never finished.
    """
    folder = os.fspath(folder)
    removed = []
    for filename in sorted(os.listdir(folder)):
        path = os.path.join(folder, filename)
        if temporary_target(filename) in names and os.path.isfile(path) and not os.path.islink(path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                removed.append(path)
    return removed


class FolderLock:
    """An exclusive lock on a folder, held until :meth:`release` (or the end of the process)."""

    def __init__(self, path: str, fd: int | None):
        self.path, self._fd = path, fd

    def release(self) -> None:
        """Remove the lock file and drop the lock (the unlink first: a waiting opener then sees a new file)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def lock_folder(folder) -> FolderLock | None:
    """Take an exclusive lock on ``FOLDER/.lock`` without waiting; None when another holder has it.

    The lock is ``flock`` on the file, so the kernel releases it when the
    holding process ends in any way (a ``.lock`` file left by a killed process
    does not block). The holder's process id is written in the file, for
    :func:`lock_holder`. OSError when the file cannot be created (a read-only
    folder). Without ``fcntl`` (Windows) nothing is locked.
    """
    path = os.path.join(os.fspath(folder), LOCK_NAME)
    if fcntl is None:
        return FolderLock(path, None)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        # the holder before may have released it (removing the file) between our open and flock:
        # the lock only counts on the file that is still at ``path``
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        mine = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
            break
        os.close(fd)
    with contextlib.suppress(OSError):  # only informative: a full disk must not stop the run here
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    return FolderLock(path, fd)


def lock_holder(folder) -> int | None:
    """The process id written in ``FOLDER/.lock`` by its holder (None when unknown)."""
    try:
        with open(os.path.join(os.fspath(folder), LOCK_NAME), encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None
