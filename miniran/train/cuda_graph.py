"""A training step captured once as a CUDA graph and replayed for every batch.

An eager step on the GPU issues about a thousand device operations, each
costing the host some microseconds of Python and launch work, so at small
batches the GPU waits for the host. CUDA can record the work of a stream once
(``stream.begin_capture()`` ... ``stream.end_capture()``, which returns a
graph) and run all of it again with one call (``graph.launch()``). A replay
runs the same kernels with the same arguments on the same memory, so a step
can be captured only if:

* it runs on a stream other than the legacy (null) stream: the capture uses
  its own ``cupy.cuda.Stream(non_blocking=True)``;
* its addresses are stable: the batch is copied into static input and label
  buffers before each replay; what the step allocates comes from
  ``cupy.cuda.MemoryAsyncPool``, whose allocations made during a capture
  belong to the graph (and every one of them is freed again before the
  capture ends, so the graph can be launched again); parameters, gradients,
  momentum and the sums below are allocated before the capture;
* nothing in it makes the host wait or copies from the host: no ``float()``,
  no ``.get()``, no NumPy array turned into a CuPy one;
* everything that changes from step to step lives on the device. The
  learning rate is read by the SGD kernel from a device buffer
  (:meth:`~miniran.optim.SGD.read_lr_from`). With a schedule, every step's
  rate is computed once on the host (``schedule.lr_at``) into a device table,
  and a one-thread kernel inside the graph copies ``table[step]`` into the
  buffer and advances a device step counter: no copy per step, the same bits
  as the eager step. Without a schedule, ``optimizer.lr`` is copied into the
  buffer (one host-to-device copy of one number) before the first replay
  after it changed;
* the shapes are static: a batch of another shape (the last, smaller batch of
  an epoch) runs eagerly, the same code as the captured step, the learning
  rate from the same table.

The first call is the warm-up: it runs the step eagerly (CuPy compiles the
kernels, cuBLAS sets up, the momentum buffer is made), then captures the step,
which runs nothing. Every later call is one copy of the images, one of the
labels, and one graph launch.

This path has been run only under the CuPy stand-in of the test suite
(``tests/standin``), which records a capture and replays it on the CPU; it
has not run on a GPU (see ``docs/gpu.md``).
"""

from __future__ import annotations

import contextlib
import gc

import numpy as np

from miniran import backend
from miniran.autograd import Tensor
from miniran.optim.sgd import LR_FROM_TABLE_KERNEL, SGD

__all__ = ["CapturedStep"]


class CapturedStep:
    """One training step (forward, loss, backward, SGD update) as a CUDA graph.

    Args:
        model: a :class:`~miniran.nn.Module` on the GPU, in training mode.
        optimizer: a :class:`~miniran.optim.SGD` over the model's parameters
            (``flat=True`` makes its update one kernel).
        loss_fn: ``loss_fn(logits, labels)`` -> a scalar loss Tensor, e.g.
            ``F.cross_entropy``; logits ``(B, K)``, labels ``(B,)`` int64.
        schedule: a learning-rate schedule of :mod:`miniran.optim` (its
            ``lr_at``), or None to use ``optimizer.lr`` as it is at each call.
            With a schedule, each call advances it: do not call
            ``schedule.step()`` yourself.
        total_steps: the step at which the schedule's table ends (later steps
            keep its last rate); default ``schedule.total_steps``.
        batch_size: the batch size to capture; a batch of another size runs
            eagerly, even the first (a run resumed at an epoch's last, smaller
            batch captures the next full one). None: capture the first batch.

    Call it once per batch, ``step(x, y)``, with ``x`` ``(B, C, H, W)`` and
    ``y`` ``(B,)`` CuPy arrays. Attributes: ``loss_sum`` (float64, the sum of
    loss times batch size) and ``correct`` (int64, right answers), device
    sums over the steps since :meth:`reset_sums`; ``graph`` (None until the
    capture); ``replays``, the number of graph launches.
    """

    def __init__(self, model, optimizer, loss_fn, schedule=None, total_steps=None, batch_size=None):
        if not isinstance(optimizer, SGD):
            raise TypeError(f"CapturedStep: optimizer must be a miniran.optim.SGD, got {type(optimizer).__name__}")
        if not backend.is_cupy_array(optimizer.params[0].data):
            raise ValueError("CapturedStep: a CUDA graph needs the model on the GPU (model.to('gpu'))")
        if schedule is not None and total_steps is None:
            total_steps = getattr(schedule, "total_steps", None)
            if total_steps is None:
                raise ValueError("CapturedStep: total_steps is needed to tabulate this schedule's learning rates")
        self.model, self.optimizer, self.loss_fn, self.schedule = model, optimizer, loss_fn, schedule
        self.total_steps, self.batch_size = total_steps, batch_size
        self.xp = backend.cupy_module()
        dtype = optimizer.params[0].data.dtype
        self.lr = self.xp.zeros(1, dtype=dtype)  # the rate the SGD kernel reads
        self._lr_written = None  # without a schedule: the optimizer.lr now in self.lr
        self._table = self._step_count = None
        if schedule is not None:  # one copy, here: every step's rate
            rates = [schedule.lr_at(s) for s in range(int(total_steps) + 1)]
            self._table = self.xp.asarray(np.asarray(rates, dtype=dtype))
            self._step_count = self.xp.asarray(np.asarray([schedule.last_step], dtype=np.int64))
        self.loss_sum = self.xp.zeros((), dtype=np.float64)
        self.correct = self.xp.zeros((), dtype=np.int64)
        self.static_x = self.static_y = self.graph = None
        self.stream = self.xp.cuda.Stream(non_blocking=True)
        self.replays = 0

    def reset_sums(self):
        """Set ``loss_sum`` and ``correct`` to zero (two fills, outside the graph)."""
        self.loss_sum.fill(0)
        self.correct.fill(0)

    def __call__(self, x, y):
        """One training step on the batch ``(x, y)``."""
        self._write_host_lr()
        if self.graph is not None and (x.shape, x.dtype, y.shape) == (
                self.static_x.shape, self.static_x.dtype, self.static_y.shape):
            self.static_x[...] = x
            self.static_y[...] = y
            self.graph.launch(stream=self.xp.cuda.get_current_stream())
            self.replays += 1
        else:  # a graph has static shapes: another batch size runs as usual
            self._run_eagerly(x, y)
            if self.graph is None and self.batch_size in (None, len(y)):
                # that was the warm-up: everything the capture needs exists now
                self.static_x, self.static_y = self.xp.empty_like(x), self.xp.empty_like(y)
                self._capture()
        self.optimizer.steps += 1
        if self.schedule is not None:
            self.schedule.step()

    # -- what runs on the device
    def _step(self, x, y):
        """The step's device work: learning rate, forward, backward, update, sums.

        Everything it allocates is dropped when it returns (a graph's
        allocations must be freed in the graph to launch it again).
        """
        if self._table is not None:
            LR_FROM_TABLE_KERNEL(self._table, len(self._table), self.lr, self._step_count, size=1)
        logits = self.model(Tensor(x))
        loss = self.loss_fn(logits, y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.loss_sum += loss.data * len(y)
        self.correct += (logits.data.argmax(axis=1) == y).sum()

    def _run_eagerly(self, x, y):
        self.optimizer.read_lr_from(self.lr)
        steps = self.optimizer.steps
        self._step(x, y)
        self.optimizer.steps = steps  # __call__ counts the step
        self.optimizer.zero_grad()

    def _capture(self):
        """Record :meth:`_step` on the static buffers into ``self.graph`` (nothing runs)."""
        cuda = self.xp.cuda
        steps = self.optimizer.steps
        kept = _kept_tensors(self.model)
        with self.stream, cuda.using_allocator(cuda.MemoryAsyncPool().malloc):
            self.stream.begin_capture()
            try:
                self._step(self.static_x, self.static_y)
                self.optimizer.zero_grad()
                _forget_new_tensors(self.model, kept)
                gc.collect()  # the autograd graph of the step, and every array it allocated, freed
            except BaseException:
                with contextlib.suppress(Exception):  # the capture is invalid: end it, report the cause
                    self.stream.end_capture()
                raise
            self.graph = self.stream.end_capture()
        self.optimizer.steps = steps

    def _write_host_lr(self):
        """Without a schedule: ``optimizer.lr`` into the device buffer when it changed (one small copy)."""
        if self.schedule is None and self.optimizer.lr != self._lr_written:
            self.lr.set(np.asarray([self.optimizer.lr], dtype=self.lr.dtype))
            self._lr_written = self.optimizer.lr


def _kept_tensors(model) -> dict:
    """Every Tensor that a module keeps as an attribute, by (module, name)."""
    return {(id(m), name): value for m in model.modules() for name, value in vars(m).items()
            if isinstance(value, Tensor)}


def _forget_new_tensors(model, before: dict) -> None:
    """Set to None what a module kept of the captured step (e.g. an attention module's
    ``last_mask``): its memory belongs to the graph, and held it would stop the graph
    from being launched again. Parameters are the same objects as before and stay."""
    for m in model.modules():
        for name, value in list(vars(m).items()):
            if isinstance(value, Tensor) and before.get((id(m), name)) is not value:
                setattr(m, name, None)
