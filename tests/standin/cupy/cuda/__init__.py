"""``cupy.cuda`` of the stand-in: one simulated device (id 0), counted synchronisations."""

from __future__ import annotations

import contextlib as _contextlib
import weakref as _weakref

import cupy_standin as _ctl
from cupy import _NAMES
from cupy.cuda import runtime  # noqa: F401

_REAL = frozenset(_NAMES["cupy.cuda"])


class MemoryPointer:
    """Pointer to the (host) memory of a stand-in array: ``.ptr`` is an int."""

    def __init__(self, host_array, offset=0):
        self._host = host_array  # keeps the memory alive, like CuPy's ``mem``
        self.ptr = int(host_array.__array_interface__["data"][0]) + offset
        self.device_id = 0
        self.device = Device(0)
        self.mem = self

    @property
    def size(self):
        return self._host.nbytes

    def __int__(self):
        return self.ptr

    def __add__(self, offset):
        return MemoryPointer(self._host, self.ptr - int(self._host.__array_interface__["data"][0]) + offset)

    def __repr__(self):
        return f"<MemoryPointer 0x{self.ptr:x} (cupy stand-in)>"


_current_device = [0]


class Device:
    """``cupy.cuda.Device(i)``: only device 0 exists; using another raises CUDARuntimeError."""

    def __init__(self, device=None):
        self.id = _current_device[0] if device is None else int(device)
        self._prev = []

    def use(self):
        runtime.setDevice(self.id)

    def __enter__(self):
        self._prev.append(runtime.getDevice())
        self.use()
        return self

    def __exit__(self, *exc):
        runtime.setDevice(self._prev.pop())

    def synchronize(self):
        _ctl.sync("device_synchronize")

    @property
    def compute_capability(self):
        return "90"

    @property
    def mem_info(self):
        return runtime.memGetInfo()

    def __int__(self):
        return self.id

    def __index__(self):
        return self.id

    def __eq__(self, other):
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self):
        return hash(self.id)

    def __repr__(self):
        return f"<CUDA Device {self.id}>"


_live_streams = _weakref.WeakValueDictionary()  # ptr -> Stream, for the stand-in NCCL's stream check


class Stream:
    """A CUDA stream; work is done at once, ``synchronize()`` counts a sync."""

    null = None  # set below
    _current: list = []

    def __init__(self, null=False, non_blocking=False, ptr=0, priority=None):
        self.ptr = 0 if null else id(self)
        self.device_id = 0
        self.is_non_blocking = bool(non_blocking) and not null
        if not null:
            _live_streams[self.ptr] = self

    def synchronize(self):
        _ctl.sync("stream_synchronize")

    def use(self):
        Stream._current[:] = [self]
        return self

    def __enter__(self):
        self._prev = get_current_stream()
        return self.use()

    def __exit__(self, *exc):
        self._prev.use()

    def record(self, event=None):
        event = event or Event()
        return event

    def wait_event(self, event):
        if not isinstance(event, Event):  # CuPy's Cython signature takes an Event
            raise TypeError(f"Argument 'event' has incorrect type (expected cupy.cuda.Event, got "
                            f"{type(event).__name__})")

    @property
    def done(self):
        return True

    def begin_capture(self, mode=None):
        """Start recording the work issued on this stream into a graph (``cupy.cuda.graph``)."""
        if self.ptr in (0, 1):  # CuPy's own check, before CUDA's
            raise RuntimeError("cannot capture on the default (legacy) stream")
        graph.begin(self)

    def end_capture(self):
        """Stop recording; returns the ``cupy.cuda.graph.Graph``."""
        return graph.end(self)

    def is_capturing(self):
        return graph.is_capturing(self)

    def __repr__(self):
        return f"<Stream {self.ptr} (cupy stand-in)>"


Stream.null = Stream(null=True)
Stream._current.append(Stream.null)


class Event:
    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self.done = True

    def record(self, stream=None):
        pass

    def synchronize(self):
        _ctl.sync("event_synchronize")


class MemoryAsyncPool:
    """CUDA's stream-ordered allocator (``cudaMallocAsync``): allocations made during a capture
    become part of the graph, so the stand-in accepts them there (see ``cupy.cuda.graph``)."""

    def __init__(self, pool_handles="current"):
        self.pool_handles = pool_handles

    def malloc(self, size):
        import cupy
        return MemoryPointer(cupy._garbage((int(size),), "uint8"))

    def used_bytes(self):
        return 0

    def total_bytes(self):
        return 0

    def free_bytes(self):
        return 0

    def free_all_blocks(self, stream=None):
        pass


def malloc_async(size):
    return MemoryAsyncPool().malloc(size)


_allocator = [None]  # None: the default memory pool


def set_allocator(allocator=None):
    _allocator[0] = allocator


def get_allocator():
    import cupy
    return _allocator[0] or cupy.get_default_memory_pool().malloc


@_contextlib.contextmanager
def using_allocator(allocator=None):
    previous = _allocator[0]
    _allocator[0] = allocator
    try:
        yield
    finally:
        _allocator[0] = previous


def _allocator_is_graph_aware() -> bool:
    """Whether the allocations now come from a stream-ordered pool, which a capture can own."""
    allocator = _allocator[0]
    return allocator is malloc_async or isinstance(getattr(allocator, "__self__", None), MemoryAsyncPool)


def get_elapsed_time(start_event, end_event):
    _ctl.sync("get_elapsed_time")
    return 0.0


def get_current_stream(device_id=None):
    return Stream._current[0]


def get_device_id():
    return runtime.getDevice()


def get_cublas_handle():
    """The cuBLAS handle of the current device (an int, as in CuPy); the stand-in's cuBLAS ignores it."""
    return 1


def is_available():
    return True


from cupy.cuda import graph  # noqa: E402
from cupy.cuda.graph import Graph  # noqa: E402,F401


def __getattr__(name):
    if name in _REAL:
        raise NotImplementedError(f"cupy stand-in: cupy.cuda.{name} is not implemented")
    raise AttributeError(f"module 'cupy.cuda' has no attribute '{name}'")
