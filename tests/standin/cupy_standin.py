"""Control module of the CPU stand-in for CuPy (not a CuPy name).

The stand-in (``tests/standin/cupy``) counts what a real GPU run would do:

* ``launches``: device operations that would launch GPU work (ufuncs,
  reductions, copies, fills, matmuls, random draws, user kernels, fancy
  indexing, scatter); views (reshape of a contiguous array, basic slicing,
  transpose) count nothing, nor does ``cupy.empty``.
* ``syncs``: device-to-host transfers and anything that makes the host wait
  (``.get()``, ``asnumpy``, ``float(x)``, ``x.item()``, boolean masks,
  ``nonzero``, ``bincount``, stream/device synchronisation...).
* ``host_to_device``: host-to-device copies (``cupy.asarray(numpy_array)``).
* ``launches_by_name``: a ``collections.Counter`` of what launched, to find
  what is worth fusing.

During a CUDA-graph capture (``cupy.cuda.graph``) nothing is counted, since
nothing runs; each replay of a graph counts one launch, ``graph_launch``.

Use::

    import cupy_standin
    with cupy_standin.counting() as c:
        step()
    print(c.launches, c.syncs, c.launches_by_name.most_common(5))
"""

from __future__ import annotations

import collections
import contextlib
import os
import sys

_STANDIN_DIR = os.path.dirname(os.path.abspath(__file__))


class Counts:
    """A set of counters; ``counting()`` yields one that is live inside its block."""

    def __init__(self):
        self.launches = 0
        self.syncs = 0
        self.host_to_device = 0
        self.launches_by_name = collections.Counter()
        self.syncs_by_name = collections.Counter()
        #: "file:line (operation)" of the caller outside the stand-in, for each launch
        self.launches_by_site = collections.Counter()

    def as_dict(self) -> dict:
        return {"launches": self.launches, "syncs": self.syncs,
                "host_to_device": self.host_to_device,
                "launches_by_name": collections.Counter(self.launches_by_name),
                "syncs_by_name": collections.Counter(self.syncs_by_name)}

    def __repr__(self):
        return (f"Counts(launches={self.launches}, syncs={self.syncs}, "
                f"host_to_device={self.host_to_device})")


_total = Counts()
_active: list[Counts] = []  # the live objects of the open counting() blocks


def _all():
    yield _total
    yield from _active


def _call_site() -> str:
    """file:line of the innermost caller that is not the stand-in itself."""
    frame = sys._getframe(2)
    while frame is not None and _STANDIN_DIR in frame.f_code.co_filename:
        frame = frame.f_back
    if frame is None:
        return "?"
    path = frame.f_code.co_filename
    short = path.split("/miniran/")[-1] if "/miniran/" in path else os.path.basename(path)
    return f"{short}:{frame.f_lineno}"


class _State:
    """What the stand-in is doing: capturing a CUDA graph (``capture``), or replaying one."""

    capture = None  # the open capture of cupy.cuda.graph (one at a time), or None
    replaying = False


_state = _State()


def launch(name: str, n: int = 1) -> None:
    """Record ``n`` device launches of the operation ``name`` (used by the stand-in).

    During a capture nothing is launched (the capture records it instead, and
    checks the stream); during a replay the work is the graph's one launch.
    """
    if _state.replaying:
        return
    if _state.capture is not None:
        _state.capture.on_launch(name, n)
        return
    site = None
    for c in _all():
        c.launches += n
        c.launches_by_name[name] += n
        if c is not _total:
            site = site or f"{_call_site()} ({name})"
            c.launches_by_site[site] += n


def sync(name: str) -> None:
    """Record one device-to-host copy or host wait (used by the stand-in); refused during a capture."""
    if _state.capture is not None:
        _state.capture.refuse_sync(name)
    for c in _all():
        c.syncs += 1
        c.syncs_by_name[name] += 1


def host_to_device(name: str = "asarray") -> None:
    """Record one host-to-device copy (used by the stand-in); refused during a capture."""
    if _state.capture is not None:
        _state.capture.refuse_host_copy(name)
    for c in _all():
        c.host_to_device += 1


def allocated(host_array) -> None:
    """A new device buffer (used by the stand-in): during a capture it must come from a graph-aware pool."""
    if _state.capture is not None:
        _state.capture.on_alloc(host_array)


def wrapped(device_array) -> None:
    """A new ``cupy.ndarray`` object (used by the stand-in): a capture notes what Python still holds."""
    if _state.capture is not None:
        _state.capture.on_wrap(device_array)


def captured(fn):
    """Decorate a stand-in operation so that a capture records it instead of running it.

    Outside a capture ``fn`` just runs. Inside one, the outermost decorated
    call runs once (to give its results their shapes; the capture undoes its
    effect on memory when it ends) and, if it launched anything, is recorded
    to run again on every replay of the graph, on the same buffers.
    """
    def wrapper(*args, **kwargs):
        cap = _state.capture
        if cap is None or cap.inside:
            return fn(*args, **kwargs)
        cap.inside, nodes = True, cap.nodes
        try:
            result = fn(*args, **kwargs)
        finally:
            cap.inside = False
        if cap.nodes != nodes:
            cap.record(fn, args, kwargs, result)
        return result

    wrapper.__name__, wrapper.__qualname__ = fn.__name__, fn.__qualname__
    wrapper.__doc__, wrapper.__wrapped__ = fn.__doc__, fn
    return wrapper


def counters() -> dict:
    """The counts since the last ``reset()`` (a fresh dict)."""
    return _total.as_dict()


def reset() -> None:
    """Set the global counters to zero (open ``counting()`` blocks keep theirs)."""
    global _total
    _total = Counts()


@contextlib.contextmanager
def counting():
    """Yield a ``Counts`` object that shows what happens inside the block."""
    c = Counts()
    _active.append(c)
    try:
        yield c
    finally:
        _active.remove(c)


def is_standin(module) -> bool:
    """True when ``module`` (e.g. the imported ``cupy``) is this stand-in."""
    return bool(getattr(module, "_IS_MINIRAN_STANDIN", False))
