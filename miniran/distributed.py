"""Many processes, one model: the MPI world, and all-reduce on NumPy (MPI) or CuPy (NCCL) arrays.

Data-parallel training runs the same program in N processes (``mpiexec -n N
miniran train ...``). Each process holds the whole model, computes the
gradient of its share of the global batch, and the processes *average* their
gradients (an all-reduce) before every update, so all of them take the same
step. miniran does not invent its own cluster protocol: it runs on MPI
through ``mpi4py`` (the ``mpich`` wheel brings an MPI without a system
install) and, on GPUs, on NCCL through CuPy (its unique id sent to every
process over MPI).

:func:`world` is the one entry point. Started by ``mpiexec`` with more than
one process (its environment says so: ``PMI_SIZE`` for MPICH,
``OMPI_COMM_WORLD_SIZE`` for Open MPI), it returns an :class:`MPIWorld`;
otherwise a :class:`SingleProcess` on which every collective is a no-op, so
code written for N processes runs unchanged on one, without ``mpi4py``.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from miniran import backend

__all__ = ["Communicator", "SingleProcess", "MPIWorld", "world", "launched_size"]

_WORLD = None


def launched_size() -> int:
    """How many processes the launcher started (1 when not started by mpiexec)."""
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        value = os.environ.get(var, "").strip()
        if value.isdigit():
            return int(value)
    return 1


def world():
    """The processes of this run: an :class:`MPIWorld` under ``mpiexec -n N`` (N > 1), else a :class:`SingleProcess`."""
    global _WORLD
    if _WORLD is None:
        _WORLD = MPIWorld() if launched_size() > 1 else SingleProcess()
    return _WORLD


class Communicator:
    """What training needs from the processes: their number, this one's rank, and collectives."""

    size = 1
    rank = 0
    local_rank = 0

    @property
    def is_root(self) -> bool:
        """Rank 0: the process that writes files and shows progress."""
        return self.rank == 0

    def allreduce_mean(self, array):
        """Replace ``array`` (NumPy or CuPy, contiguous) by its mean over the processes, in place."""
        return array

    def allreduce_sum(self, array):
        """Replace ``array`` by its sum over the processes, in place."""
        return array

    def sum_values(self, values):
        """Host floats summed over the processes (a list in, a list out)."""
        return [float(v) for v in values]

    def broadcast(self, obj, root=0):
        """A Python object from ``root`` to every process."""
        return obj

    def all_agree(self, ok: bool) -> bool:
        """True when ``ok`` is true on every process (every process learns the same answer)."""
        return bool(ok)

    def abort(self, status: int = 1):
        """End every process of the run at once (the MPI abort)."""
        sys.exit(status)


class SingleProcess(Communicator):
    """One process: every collective returns its input."""


class MPIWorld(Communicator):
    """``MPI.COMM_WORLD`` through mpi4py; CuPy arrays are all-reduced by NCCL on their own stream."""

    def __init__(self):
        try:
            from mpi4py import MPI
        except ImportError as exc:
            raise RuntimeError(
                f"started by mpiexec with {launched_size()} processes, but mpi4py cannot be imported "
                f"({exc}); install it with `pip install -e '.[mpi]'`") from exc
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.size, self.rank = self.comm.Get_size(), self.comm.Get_rank()
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank = local.Get_rank()
        local.Free()
        self._nccl = None

    def allreduce_sum(self, array):
        if backend.is_cupy_array(array):
            return self._nccl_allreduce(array, average=False)
        self.comm.Allreduce(self.MPI.IN_PLACE, array, op=self.MPI.SUM)
        return array

    def allreduce_mean(self, array):
        if backend.is_cupy_array(array):
            return self._nccl_allreduce(array, average=True)
        self.comm.Allreduce(self.MPI.IN_PLACE, array, op=self.MPI.SUM)
        array *= array.dtype.type(1.0 / self.size)
        return array

    def sum_values(self, values):
        return [float(v) for v in self.comm.allreduce(np.asarray(values, dtype=np.float64), op=self.MPI.SUM)]

    def broadcast(self, obj, root=0):
        return self.comm.bcast(obj, root=root)

    def all_agree(self, ok: bool) -> bool:
        return bool(self.comm.allreduce(bool(ok), op=self.MPI.LAND))

    def abort(self, status: int = 1):
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(status)
        # MPI_Abort may return (MPICH 5 asks the launcher to kill the processes and goes on):
        # this process must not go on, e.g. to print the traceback of the error it reported
        os._exit(status)

    # -- NCCL for CuPy arrays ---------------------------------------------------------------

    def _nccl_comm(self):
        """NCCL's communicator (its unique id made by rank 0 and sent to all over MPI) and its stream."""
        if self._nccl is None:
            import cupy
            from cupy.cuda import nccl

            uid = self.comm.bcast(nccl.get_unique_id() if self.rank == 0 else None, root=0)
            self._nccl = (nccl, nccl.NcclCommunicator(self.size, uid, self.rank),
                          cupy.cuda.Stream(non_blocking=True))
        return self._nccl

    def _nccl_allreduce(self, array, average):
        """All-reduce on the device on NCCL's own stream, ordered after the work that made ``array``."""
        import cupy

        nccl, comm, stream = self._nccl_comm()
        if not array.flags.c_contiguous or array.dtype not in (np.float32, np.float64):
            raise ValueError(f"all-reduce: a contiguous float32 or float64 array, got {array.dtype} "
                             f"{'' if array.flags.c_contiguous else 'non-contiguous '}array")
        dtype = nccl.NCCL_FLOAT32 if array.dtype == np.float32 else nccl.NCCL_FLOAT64
        op = nccl.NCCL_AVG if average else nccl.NCCL_SUM
        current = cupy.cuda.get_current_stream()
        stream.wait_event(current.record())  # the gradients are ready
        comm.allReduce(array.data.ptr, array.data.ptr, array.size, dtype, op, stream.ptr)
        current.wait_event(stream.record())  # the update waits for the all-reduce
        return array
