"""``cupy.cuda.graph`` of the stand-in: stream capture into a CUDA graph, and its replay.

Between ``stream.begin_capture()`` and ``stream.end_capture()`` a GPU runs
nothing: every operation issued on the capturing stream becomes a node of a
graph, and ``Graph.launch()`` runs all of them, on the same buffers, as one
launch. The stand-in does the same with deferred execution:

* each operation issued during the capture runs once, only so that its
  results have their shapes and dtypes, and is recorded (the stand-in
  function, its arguments, the buffers of its results); when the capture
  ends, every buffer that existed before it gets back its contents, and every
  buffer allocated in it is garbage again, as on a GPU where nothing ran;
* ``Graph.launch()`` runs the recorded operations in order, reading the
  buffers' contents as they are then and writing into the captured result
  buffers; the counters see one launch, ``graph_launch``;
* what CUDA refuses during a capture is refused, with an error naming the
  rule, and the capture is invalidated (``end_capture`` then raises
  ``cudaErrorStreamCaptureInvalidated``, as CUDA does): a synchronisation or
  device-to-host copy; a host-to-device copy from pageable memory (the
  stand-in has no pinned host memory, so every host copy is one); work on
  the legacy (null) stream while another stream captures; an allocation that
  does not come from a graph-aware pool (``cupy.cuda.MemoryAsyncPool``,
  ``cupy.cuda.malloc_async``). On a GPU, CuPy's default (relaxed) capture
  mode lets the default ``MemoryPool`` hand out memory that the graph does
  not own, which a later allocation can reuse while the graph still writes
  it; the stand-in refuses that allocation instead.
* memory allocated in the capture and not freed in it (an array of the
  capture that Python still holds when the capture ends) makes the second
  ``launch()`` fail while it is still held, as CUDA refuses to launch again a
  graph whose allocations were not freed.

Not simulated: capture modes (every mode behaves as the strictest here),
several captures at once, work on a second non-default stream during a
capture, child graphs, ``Graph.upload``, random draws and NCCL calls inside a
capture (they raise ``NotImplementedError``).
"""

from __future__ import annotations

import gc
import weakref

import numpy as np

import cupy_standin as _ctl
from cupy.cuda import runtime

_RULE_UNSUPPORTED = "cudaErrorStreamCaptureUnsupported: operation not permitted when stream is capturing"


class _Frozen:
    """A device array in a recorded operation's arguments, held by its host buffer (not its Python object)."""

    __slots__ = ("a",)

    def __init__(self, a):
        self.a = a


def _freeze(x):
    from cupy import ndarray

    if isinstance(x, ndarray):
        return _Frozen(x._a)
    if type(x) in (list, tuple):
        return type(x)(_freeze(v) for v in x)
    if type(x) is dict:
        return {k: _freeze(v) for k, v in x.items()}
    return x


def _thaw(x):
    from cupy import ndarray

    if isinstance(x, _Frozen):
        out = object.__new__(ndarray)
        out._a = x.a
        return out
    if type(x) in (list, tuple):
        return type(x)(_thaw(v) for v in x)
    if type(x) is dict:
        return {k: _thaw(v) for k, v in x.items()}
    return x


def _store(dst, src):
    """Write a replayed operation's results ``src`` into the captured result buffers ``dst``."""
    if isinstance(dst, _Frozen):
        if dst.a.__array_interface__["data"][0] != src._a.__array_interface__["data"][0]:
            np.copyto(dst.a, src._a)
    elif type(dst) in (list, tuple):
        for d, s in zip(dst, src):
            _store(d, s)


def _owner(a):
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


class _Capture:
    """The state of one open capture on ``stream``."""

    def __init__(self, stream):
        import cupy

        self.stream = stream
        self.ops = []  # (function, frozen args, frozen kwargs, frozen results)
        self.nodes = 0  # device operations recorded
        self.inside = False  # in a recorded operation (its inner operations are part of it)
        self.allocations = []  # host buffers of the memory the graph owns
        self.keep = []  # buffers the recorded operations address by pointer (cuBLAS)
        self.wrappers = {}  # id -> weak reference of each cupy.ndarray object made during the capture
        self.invalid = None  # why the capture is invalidated
        live = (r() for r in list(cupy._live.values()))
        self.saved = [(weakref.ref(a), a.copy()) for a in live if a is not None]

    # -- the rules
    def _refuse(self, error):
        self.invalid = self.invalid or str(error)
        raise error

    def on_launch(self, name, n):
        from cupy.cuda import Stream, get_current_stream

        current = get_current_stream()
        if current is Stream.null or current.ptr == 0:
            self._refuse(runtime.CUDARuntimeError(906, (
                f"cudaErrorStreamCaptureImplicit: operation would make the legacy stream depend on a capturing "
                f"blocking stream (cupy stand-in: {name!r} was issued on the legacy (null) stream while "
                f"{self.stream!r} captures; issue the captured work on the capturing stream, `with stream:`)")))
        if current is not self.stream:
            raise NotImplementedError(f"cupy stand-in: {name!r} on a second stream during a capture is not simulated")
        if not self.inside:
            raise NotImplementedError(f"cupy stand-in: {name!r} cannot be captured by the stand-in yet")
        self.nodes += n

    def refuse_sync(self, name):
        self._refuse(runtime.CUDARuntimeError(900, (
            f"{_RULE_UNSUPPORTED} (cupy stand-in: {name!r} synchronises with the device or copies device memory "
            f"to the host; no synchronisation and no device-to-host copy may happen during a capture)")))

    def refuse_host_copy(self, name):
        self._refuse(runtime.CUDARuntimeError(900, (
            f"{_RULE_UNSUPPORTED} (cupy stand-in: {name!r} copies from pageable host memory to the device; a "
            f"pageable host-to-device copy cannot be captured: copy into a static device buffer before the "
            f"capture or before each replay)")))

    def on_alloc(self, host_array):
        from cupy.cuda import _allocator_is_graph_aware

        if not _allocator_is_graph_aware():
            self._refuse(RuntimeError(
                "cupy stand-in: an allocation outside a graph-aware pool during a capture: the default "
                "MemoryPool's memory is not owned by the graph, so later work could reuse it while the graph "
                "still writes it; allocate before the capture, or capture under "
                "`cupy.cuda.using_allocator(cupy.cuda.MemoryAsyncPool().malloc)`"))
        self.allocations.append(host_array)

    def on_wrap(self, device_array):
        self.wrappers[id(device_array)] = weakref.ref(device_array)

    def record(self, fn, args, kwargs, result):
        self.ops.append((fn, _freeze(args), _freeze(kwargs), _freeze(result)))

    # -- the end
    def restore(self):
        """Nothing ran: memory from before the capture as it was, memory of the capture garbage."""
        from cupy import _garbage

        for ref, copy in self.saved:
            a = ref()
            if a is not None:
                np.copyto(a, copy)
        for a in self.allocations:
            np.copyto(a, _garbage(a.shape, a.dtype))
        self.saved = []

    def still_held(self):
        """Weak references to the arrays of graph-owned memory that Python still holds."""
        gc.collect()
        owned = {id(a) for a in self.allocations}
        alive = (r() for r in list(self.wrappers.values()))
        return [weakref.ref(w) for w in alive if w is not None and id(_owner(w._a)) in owned]


class Graph:
    """A captured CUDA graph (made by ``Stream.end_capture()``); ``launch()`` replays it."""

    def __init__(self, capture=None):
        if capture is None:
            raise NotImplementedError("cupy stand-in: a Graph is made by Stream.end_capture() only")
        self._ops = capture.ops
        self._memory = capture.allocations + capture.keep  # the graph owns (or uses) these buffers
        self._held = capture.still_held()
        self._launches = 0

    @property
    def nodes(self) -> int:
        """How many recorded operations (stand-in only: not a CuPy attribute)."""
        return len(self._ops)

    def launch(self, stream=None):
        """Run the captured work once, on the same buffers: one launch."""
        if _ctl._state.capture is not None:
            raise NotImplementedError("cupy stand-in: launching a graph inside a capture is not simulated")
        held = [r() for r in self._held if r() is not None]
        if self._launches and held:
            raise runtime.CUDARuntimeError(1, (
                f"cudaErrorInvalidValue: invalid argument (cupy stand-in: {len(held)} array(s) allocated during "
                f"the capture and not freed in it are still held, e.g. shape {held[0].shape} {held[0].dtype}; a "
                f"graph whose allocations were not freed cannot be launched again: drop them before end_capture)"))
        self._launches += 1
        _ctl.launch("graph_launch")
        _ctl._state.replaying = True
        try:
            for fn, args, kwargs, result in self._ops:
                _store(result, fn(*_thaw(args), **_thaw(kwargs)))
        finally:
            _ctl._state.replaying = False

    def upload(self, stream=None):
        raise NotImplementedError("cupy stand-in: Graph.upload is not simulated")

    def __repr__(self):
        return f"<cupy.cuda.graph.Graph of {len(self._ops)} operations (cupy stand-in)>"


def begin(stream) -> None:
    """``stream.begin_capture()``."""
    if _ctl._state.capture is not None:
        if _ctl._state.capture.stream is stream:
            raise runtime.CUDARuntimeError(401, "cudaErrorIllegalState: the stream is already capturing")
        raise NotImplementedError("cupy stand-in: two captures at once are not simulated")
    _ctl._state.capture = _Capture(stream)


def end(stream) -> Graph:
    """``stream.end_capture()``: the graph, or the error that invalidated the capture."""
    capture = _ctl._state.capture
    if capture is None or capture.stream is not stream:
        raise runtime.CUDARuntimeError(401, "cudaErrorIllegalState: the stream is not capturing")
    _ctl._state.capture = None
    capture.restore()
    if capture.invalid is not None:
        raise runtime.CUDARuntimeError(901, (
            f"cudaErrorStreamCaptureInvalidated: operation failed due to a previous error during capture "
            f"(cupy stand-in: {capture.invalid})"))
    return Graph(capture)


def is_capturing(stream) -> bool:
    capture = _ctl._state.capture
    return capture is not None and capture.stream is stream
