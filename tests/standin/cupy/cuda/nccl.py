"""Stand-in for ``cupy.cuda.nccl``: NCCL's API and rules, the data moved by MPI on the CPU.

CuPy 14's ``cupy.cuda.nccl`` re-exports ``cupy_backends.cuda.libs.nccl``; this
module copies the names miniran (or a learner) uses, with CuPy's signatures
and NCCL's constant values, and runs every collective over ``mpi4py``'s
``MPI.COMM_WORLD``: each process of ``mpiexec -n N`` plays one GPU.

* ``get_unique_id()``: a tuple of 128 ints in ``[-128, 127]`` (CuPy returns the
  C ``char`` bytes of ``ncclUniqueId``). The stand-in's ids start with a
  marker, so an id not made by ``get_unique_id`` is refused.
* ``NcclCommunicator(ndev, commId, rank)`` is collective, like
  ``ncclCommInitRank``: every process of ``MPI.COMM_WORLD`` must create one at
  the same point. ``ndev`` must be the MPI world size, ``rank`` in
  ``[0, ndev)`` and different on every process (any permutation of the MPI
  ranks is allowed, as in NCCL), ``commId`` the same tuple on every process
  and used for no earlier communicator. NCCL would hang (or fail with a
  bootstrap error) on a mismatch; the stand-in compares what every process
  was given (an MPI allgather) and refuses it with ``NcclError`` on every
  process, naming the processes.
* ``allReduce(sendbuf, recvbuf, count, datatype, op, stream)`` takes device
  *pointers* (ints) and a stream pointer. Each buffer, with its ``count``
  elements, must lie inside one live stand-in allocation (as
  ``cupy_backends.cuda.libs.cublas`` checks); ``sendbuf == recvbuf`` is in
  place, a partial overlap is refused; the stream must be ``0`` or a live
  ``cupy.cuda.Stream``'s ``ptr``. Every process must call with the same
  ``count``, ``datatype`` and ``op`` (NCCL would hang or corrupt); checked.
  Any refusal is raised on every process, so none is left waiting. The
  result is reduced in NCCL rank order, the same bits on every process.
  ``NCCL_AVG`` multiplies each input by ``1/n`` before the sum for floating
  types and divides the integer sum by ``n`` (truncating), as NCCL does.
  Each call counts one launch (``ncclAllReduce``) in ``cupy_standin`` and no
  sync: on a GPU it is queued on ``stream``; here it is done at once.
* ``size()``, ``rank_id()``, ``device_id()``, ``comm``, ``destroy()``,
  ``abort()``; a destroyed communicator refuses every call.

The other collectives, ``initAll`` and group calls raise
``NotImplementedError``. Not simulated: NCCL's refusal of two ranks on one
GPU (each process's device 0 counts as its own GPU here), asynchronous
errors, timeouts, ``NCCL_BFLOAT16``.
"""

from __future__ import annotations

import ctypes
import operator
import os

import numpy as np

import cupy_standin as _ctl

available = True

# ncclRedOp_t and ncclDataType_t (cupy_backends/cuda/libs/nccl.pxd)
NCCL_SUM = 0
NCCL_PROD = 1
NCCL_MAX = 2
NCCL_MIN = 3
NCCL_AVG = 4

NCCL_INT8 = NCCL_CHAR = 0
NCCL_UINT8 = 1
NCCL_INT32 = NCCL_INT = 2
NCCL_UINT32 = 3
NCCL_INT64 = 4
NCCL_UINT64 = 5
NCCL_FLOAT16 = NCCL_HALF = 6
NCCL_FLOAT32 = NCCL_FLOAT = 7
NCCL_FLOAT64 = NCCL_DOUBLE = 8
NCCL_BFLOAT16 = 9

_VERSION = 22703  # what get_version() reports: NCCL 2.27.3 (X * 10000 + Y * 100 + Z)
_ID_BYTES = 128
_MARK = b"miniran-standin-nccl"  # the first bytes of every id get_unique_id() makes

_DTYPES = {NCCL_INT8: np.int8, NCCL_UINT8: np.uint8, NCCL_INT32: np.int32, NCCL_UINT32: np.uint32,
           NCCL_INT64: np.int64, NCCL_UINT64: np.uint64, NCCL_FLOAT16: np.float16,
           NCCL_FLOAT32: np.float32, NCCL_FLOAT64: np.float64}
_OPS = {NCCL_SUM: "NCCL_SUM", NCCL_PROD: "NCCL_PROD", NCCL_MAX: "NCCL_MAX", NCCL_MIN: "NCCL_MIN",
        NCCL_AVG: "NCCL_AVG"}

# ncclResult_t of NCCL 2 and CuPy's names for them (ERROR2 in nccl.pyx), ncclGetErrorString's text
_UNHANDLED_CUDA_ERROR, _SYSTEM_ERROR, _INTERNAL_ERROR, _INVALID_ARGUMENT, _INVALID_USAGE = 1, 2, 3, 4, 5
_ERRORS = {
    1: ("NCCL_ERROR_UNHANDLED_CUDA_ERROR", "unhandled cuda error (run with NCCL_DEBUG=INFO for details)"),
    2: ("NCCL_ERROR_SYSTEM_ERROR", "unhandled system error (run with NCCL_DEBUG=INFO for details)"),
    3: ("NCCL_ERROR_INTERNAL_ERROR", "internal error - please report this issue to the NCCL developers"),
    4: ("NCCL_ERROR_INVALID_ARGUMENT", "invalid argument (run with NCCL_DEBUG=WARN for details)"),
    5: ("NCCL_ERROR_INVALID_USAGE", "invalid usage (run with NCCL_DEBUG=WARN for details)"),
}

_used_ids: set = set()  # ids this process has built a communicator with (an id serves one)


class NcclError(RuntimeError):
    """CuPy's ``NcclError``: ``status`` is the ``ncclResult_t``; the stand-in adds what was wrong."""

    def __init__(self, status, detail=None):
        self.status = status
        self.detail = detail
        name, text = _ERRORS.get(status, (f"NCCL_ERROR_{status}", "unknown result code"))
        super().__init__(f"{name}: {text}" + (f" [cupy stand-in: {detail}]" if detail else ""))

    def __reduce__(self):
        return (type(self), (self.status, self.detail))


def get_build_version():
    return _VERSION


def get_version():
    return _VERSION


def get_unique_id():
    """128 signed bytes, as CuPy returns ``ncclUniqueId``: the stand-in's marker, then random bytes."""
    raw = _MARK + os.urandom(_ID_BYTES - len(_MARK))
    return tuple(b - 256 if b > 127 else b for b in raw)


def _not_simulated(name):
    def f(*args, **kwargs):
        raise NotImplementedError(f"cupy stand-in: cupy.cuda.nccl.{name} is not implemented")
    f.__name__ = name
    return f


groupStart = _not_simulated("groupStart")
groupEnd = _not_simulated("groupEnd")


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise RuntimeError(f"cupy stand-in: its NCCL runs over MPI and mpi4py cannot be imported ({exc})") from exc
    return MPI


def _index(value, what, unsigned=False):
    """``value`` as a C integer the way Cython converts it (TypeError, or OverflowError below 0 for size_t)."""
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{what}: an integer is required, got {type(value).__name__}") from None
    if unsigned and value < 0:
        raise OverflowError(f"{what}: can't convert negative value to size_t")
    return value


def _check_id(commId):
    """The id as bytes, or the exception CuPy / NCCL would raise for it on this process."""
    if not isinstance(commId, tuple):
        return TypeError(f"Argument 'commId' has incorrect type (expected tuple, got {type(commId).__name__})")
    if len(commId) != _ID_BYTES:
        return AssertionError(f"commId has {len(commId)} elements, NCCL_UNIQUE_ID_BYTES is {_ID_BYTES}")
    for i, v in enumerate(commId):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
            return TypeError(f"commId[{i}]: an integer is required, got {type(v).__name__}")
        if not -128 <= v <= 127:
            return OverflowError(f"commId[{i}] = {v}: value too large to convert to char")
    raw = bytes(v % 256 for v in commId)
    if not raw.startswith(_MARK):
        return NcclError(_INVALID_ARGUMENT, "commId was not made by get_unique_id() (on a GPU: a bootstrap "
                                            "error or a hang)")
    return raw


class NcclCommunicator:
    """One process's member of an NCCL communicator (``ncclCommInitRank``), over ``MPI.COMM_WORLD``."""

    def __init__(self, ndev, commId, rank):
        world = _mpi().COMM_WORLD
        self._mpi_comm = None
        try:
            ndev, rank = _index(ndev, "ndev"), _index(rank, "rank")
            raw, local = _check_id(commId), None
        except TypeError as exc:
            raw, local = None, exc
        if local is None and isinstance(raw, BaseException):
            raw, local = None, raw
        if local is None and not 0 <= rank < ndev:
            local = NcclError(_INVALID_ARGUMENT, f"rank {rank} is not in [0, ndev = {ndev})")
        if local is None and raw in _used_ids:
            local = NcclError(_INVALID_USAGE, "this commId already made a communicator; an id from "
                                              "get_unique_id() serves one ncclCommInitRank per rank")
        # like ncclCommInitRank, collective: every process learns what every other was given
        seen = world.allgather((ndev, rank, raw, None) if local is None else (None, None, None, str(local)))
        if local is not None:
            raise local
        _refuse_mismatch(seen, world.Get_rank())
        _used_ids.add(raw)
        self._mpi_comm = world.Dup()
        self._size, self._rank = ndev, rank
        self._order = [r for _, r, _, _ in seen]  # NCCL rank of each MPI process

    # -- queries ----------------------------------------------------------------------------

    def _live(self):
        if self._mpi_comm is None:
            raise NcclError(_INVALID_ARGUMENT, "the communicator was destroyed (or never built)")
        return self._mpi_comm

    @property
    def comm(self):
        return 0 if self._mpi_comm is None else id(self)

    def size(self):
        self._live()
        return self._size

    def rank_id(self):
        self._live()
        return self._rank

    def device_id(self):
        self._live()
        return 0

    def destroy(self):
        """``ncclCommDestroy``: the communicator refuses every later call (a second destroy does nothing)."""
        comm, self._mpi_comm = self._mpi_comm, None
        if comm is not None and not _mpi().Is_finalized():
            comm.Free()

    abort = destroy

    # -- all-reduce -------------------------------------------------------------------------

    def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
        """``ncclAllReduce`` on device pointers: ``recvbuf[:count] = op over ranks of sendbuf[:count]``."""
        comm = self._live()
        try:
            sendbuf, recvbuf = _index(sendbuf, "sendbuf"), _index(recvbuf, "recvbuf")
            count = _index(count, "count", unsigned=True)
            datatype, op, stream = _index(datatype, "datatype"), _index(op, "op"), _index(stream, "stream")
            local, views = None, _resolve(sendbuf, recvbuf, count, datatype, op, stream)
        except (NcclError, NotImplementedError, TypeError, OverflowError) as exc:
            local, views = exc, None
        # every process learns what the others were asked, so that a refusal leaves none waiting
        seen = comm.allgather((count, datatype, op, None) if local is None else (None, None, None, str(local)))
        if local is not None:
            raise local
        _refuse_call_mismatch(seen)
        if count:
            send, recv = views
            gathered = np.empty((comm.Get_size(), send.nbytes), dtype=np.uint8)
            comm.Allgather(np.ascontiguousarray(send).view(np.uint8), gathered)
            rows = gathered.view(send.dtype)
            by_rank = [rows[self._order.index(r)] for r in range(self._size)]
            recv[...] = _reduce(by_rank, op)
        _ctl.launch("ncclAllReduce")

    reduce = _not_simulated("NcclCommunicator.reduce")
    broadcast = _not_simulated("NcclCommunicator.broadcast")
    bcast = _not_simulated("NcclCommunicator.bcast")
    reduceScatter = _not_simulated("NcclCommunicator.reduceScatter")
    allGather = _not_simulated("NcclCommunicator.allGather")
    send = _not_simulated("NcclCommunicator.send")
    recv = _not_simulated("NcclCommunicator.recv")
    initAll = staticmethod(_not_simulated("NcclCommunicator.initAll"))

    def check_async_error(self):
        self._live()


def _refuse_mismatch(seen, me):
    """NcclError on every process when the processes were not given one consistent communicator."""
    failed = [(p, err) for p, (_, _, _, err) in enumerate(seen) if err is not None]
    if failed:
        p, err = failed[0]
        raise NcclError(_INVALID_USAGE, f"process {p} could not join the communicator ({err}); on a GPU the "
                                        f"others would wait for it")
    size = len(seen)
    ndevs = sorted({n for n, _, _, _ in seen})
    if ndevs != [size]:
        raise NcclError(_INVALID_ARGUMENT, f"ndev {seen[me][0]} on this process, {ndevs} over the processes, "
                                           f"but {size} MPI processes take part: the stand-in runs one GPU per "
                                           f"process of MPI.COMM_WORLD")
    ranks = [r for _, r, _, _ in seen]
    if sorted(ranks) != list(range(size)):
        raise NcclError(_INVALID_USAGE, f"the processes asked for ranks {ranks}: each rank of [0, {size}) "
                                        f"exactly once (on a GPU: a duplicate rank hangs or fails)")
    ids = [raw for _, _, raw, _ in seen]
    if any(raw != ids[0] for raw in ids):
        groups = sorted({raw for raw in ids}, key=ids.index)
        who = "; ".join(f"processes {[p for p, r in enumerate(ids) if r == g]}" for g in groups)
        raise NcclError(_INVALID_USAGE, f"the processes were given different unique ids ({who}): on a GPU each "
                                        f"group would wait for its missing peers (a hang); send rank 0's id to "
                                        f"all (an MPI bcast)")


def _refuse_call_mismatch(seen):
    """NcclError on every process when one refused its call or the calls differ (NCCL would hang)."""
    failed = [(p, err) for p, (_, _, _, err) in enumerate(seen) if err is not None]
    if failed:
        p, err = failed[0]
        raise NcclError(_INVALID_USAGE, f"process {p}'s allReduce was refused ({err}); on a GPU the others "
                                        f"would wait for it")
    calls = [(c, d, o) for c, d, o, _ in seen]
    if any(call != calls[0] for call in calls):
        raise NcclError(_INVALID_USAGE, "the processes called allReduce with different (count, datatype, op): "
                                        f"{calls}; on a GPU: a hang or wrong data")


def _owner(ptr: int, nbytes: int, what: str):
    """A NumPy view of the live stand-in allocation holding [ptr, ptr + nbytes), and ptr's offset in it."""
    import cupy

    for ref in list(cupy._live.values()):
        a = ref()
        if a is None:
            continue
        base = a.__array_interface__["data"][0]
        if base <= ptr < base + max(a.nbytes, 1):
            if ptr + nbytes > base + a.nbytes:
                raise NcclError(_UNHANDLED_CUDA_ERROR, f"{what} 0x{ptr:x} + {nbytes} bytes reaches "
                                                       f"{ptr + nbytes - base - a.nbytes} bytes past its "
                                                       f"allocation of {a.nbytes} bytes")
            return (ctypes.c_char * a.nbytes).from_address(base), ptr - base
    raise NcclError(_UNHANDLED_CUDA_ERROR, f"{what} 0x{ptr:x} is not inside a device allocation (a host "
                                           f"pointer, a freed array, or a wrong address)")


def _resolve(sendbuf, recvbuf, count, datatype, op, stream):
    """(send, recv) NumPy views of the device buffers, after NCCL's argument checks."""
    if datatype not in _DTYPES:
        if datatype == NCCL_BFLOAT16:
            raise NotImplementedError("cupy stand-in: NCCL_BFLOAT16 is not simulated")
        raise NcclError(_INVALID_ARGUMENT, f"datatype {datatype} is not an ncclDataType_t")
    if op not in _OPS:
        raise NcclError(_INVALID_ARGUMENT, f"op {op} is not an ncclRedOp_t")
    from cupy import cuda

    if stream != 0 and stream not in cuda._live_streams:
        raise NcclError(_UNHANDLED_CUDA_ERROR, f"stream 0x{stream:x} is not a live cupy.cuda.Stream's ptr")
    if count == 0:
        return None
    dtype = np.dtype(_DTYPES[datatype])
    nbytes = count * dtype.itemsize
    if sendbuf != recvbuf and sendbuf < recvbuf + nbytes and recvbuf < sendbuf + nbytes:
        raise NcclError(_INVALID_ARGUMENT, f"sendbuf and recvbuf overlap without being equal ({recvbuf - sendbuf:+d}"
                                           " bytes): in place needs sendbuf == recvbuf")
    views = []
    for ptr, what in ((sendbuf, "sendbuf"), (recvbuf, "recvbuf")):
        raw, offset = _owner(ptr, nbytes, what)
        views.append(np.ndarray((count,), dtype=dtype, buffer=raw, offset=offset))
    return views


def _reduce(rows, op):
    """``op`` over the ranks' rows, in rank order (the same bits on every process)."""
    dtype = rows[0].dtype
    n = len(rows)
    if op == NCCL_AVG and dtype.kind == "f":  # NCCL: each input times 1/n, then the sum
        scale = dtype.type(1.0 / n)
        rows = [r * scale for r in rows]
    ufunc = {NCCL_SUM: np.add, NCCL_AVG: np.add, NCCL_PROD: np.multiply, NCCL_MAX: np.maximum,
             NCCL_MIN: np.minimum}[op]
    acc = rows[0].copy()
    with np.errstate(over="ignore"):  # integers wrap as on the GPU
        for r in rows[1:]:
            ufunc(acc, r, out=acc)
    if op == NCCL_AVG and dtype.kind in "iu":  # NCCL: the integer sum divided by n, truncated
        acc = (np.sign(acc) * (np.abs(acc) // n)).astype(dtype) if dtype.kind == "i" else acc // n
    return acc

