"""Data-parallel training: the pieces the training loop adds when it runs in N processes.

``mpiexec -n N miniran train ...`` starts N copies of the same run. Each
builds the same model from the same seed and the same loader (the same
shuffle, the same augmentation of every image), and each step:

1. every process takes its slice of the global batch (:func:`shard`):
   ``--batch-size`` stays the global batch, each process computes on B / N;
2. forward and backward as usual, on the shard (the loss is the shard's mean);
3. the gradients are averaged over the processes with ONE all-reduce of the
   flat gradient buffer (:func:`average_gradients`): the mean of the N shard
   gradients is the gradient of the global batch's mean loss;
4. every process applies the same update, so the models stay identical.

Batch norm breaks step 3's identity: each process normalises with its own
shard's statistics. ``--sync-bn`` (:func:`use_sync_batch_norm`) takes them over
the global batch instead, so N processes compute what one process would.
"""

from __future__ import annotations

import numpy as np

from miniran import nn, threads
from miniran.distributed import Communicator

__all__ = ["shard", "shard_range", "average_gradients", "average_buffers", "use_sync_batch_norm",
           "check_batch_size", "share_cores", "use_local_gpu"]


def check_batch_size(batch_size: int, comm: Communicator) -> None:
    """Every process refuses a global batch that does not split evenly (the same line everywhere, no hang)."""
    if comm.size > 1 and batch_size % comm.size:
        raise ValueError(f"--batch-size {batch_size} is the global batch and does not split over {comm.size} "
                         f"processes: give a multiple of {comm.size}")


def shard(batch, comm: Communicator):
    """This process's contiguous slice of a global batch (the whole batch for one process)."""
    if comm.size == 1:
        return batch
    n = len(batch) // comm.size
    return batch[comm.rank * n:(comm.rank + 1) * n]


def shard_range(count: int, comm: Communicator) -> slice:
    """This process's part of ``count`` items (e.g. test images): contiguous, sizes differing by at most one."""
    bounds = np.linspace(0, count, comm.size + 1).round().astype(int)
    return slice(int(bounds[comm.rank]), int(bounds[comm.rank + 1]))


def average_gradients(optimizer, comm: Communicator) -> None:
    """Average every parameter's gradient over the processes: one all-reduce of the flat gradient buffer.

    The optimiser must have been built with ``flat=True``. A parameter that no
    loss reached has no gradient on any process; it gets zeros, so that every
    process sends the same buffer.
    """
    if comm.size == 1:
        return
    flat = optimizer.flat
    flat.sync()
    for p in flat.params:
        if p.grad is None:
            p.grad_slot[...] = 0
            p.grad = p.grad_slot
    comm.allreduce_mean(flat.grad)


def average_buffers(model, comm: Communicator) -> None:
    """Average the floating-point buffers (batch norm's running statistics) over the processes, in place.

    With per-process batch norm each process's running statistics follow its
    own shards; before an evaluation (split over the processes) and a
    checkpoint (written by rank 0) they are averaged, so every process
    evaluates the same model and the checkpoint holds what all of them saw.
    """
    if comm.size == 1:
        return
    for _, buffer in model.named_buffers():
        if buffer.dtype.kind == "f":
            comm.allreduce_mean(buffer)


def use_sync_batch_norm(model, comm: Communicator) -> int:
    """Make every batch norm of ``model`` take its statistics over the global batch; returns how many."""
    count = 0
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.comm = comm
            count += 1
    return count


def share_cores(comm: Communicator) -> None:
    """On a machine running several processes, each takes its share of the cores (threads = cores / processes)."""
    local = _processes_on_this_machine()
    if local > 1:
        share = max(1, threads.available_cores() // local)
        threads.set_cpu_threads(min(threads.cpu_threads(), share))
        if threads.blas_threads() is not None and threads.blas_threads() > share:
            threads.blas_threads(share)


def use_local_gpu(comm: Communicator) -> None:
    """Process ``local_rank`` of a machine takes GPU ``local_rank``; more processes than GPUs is refused.

    NCCL refuses two processes on one GPU, but only at the first all-reduce:
    the one line here comes before any training.
    """
    from miniran import backend

    cp = backend.cupy_module()
    gpus, local = cp.cuda.runtime.getDeviceCount(), _processes_on_this_machine()
    if local > gpus:
        raise ValueError(f"--device gpu: {local} processes on this machine but {gpus} GPU(s); data-parallel "
                         f"training takes one GPU per process: start at most {gpus} processes per machine")
    cp.cuda.Device(comm.local_rank).use()


def _processes_on_this_machine() -> int:
    import os

    for var in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE"):
        value = os.environ.get(var, "").strip()
        if value.isdigit():
            return int(value)
    return 1
