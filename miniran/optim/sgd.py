"""Stochastic gradient descent with (Nesterov) momentum and weight decay.

The paper trains every network with Nesterov SGD, momentum 0.9, weight decay
1e-4, initial learning rate 0.1 (section 4.1). The update follows PyTorch's
formulation, so runs can be compared step for step::

    g = grad + weight_decay * p
    v = momentum * v + g
    p = p - lr * (g + momentum * v)   # Nesterov
    p = p - lr * v                    # plain momentum
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from miniran import backend, kernels
from miniran.nn.flat import FlatParameters


def _check_finite(name, value):
    """``value`` must be a real number (not a bool) and finite: the command line's rule for its options."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"SGD: {name} must be a real number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"SGD: {name} must be a finite number, got {float(value)}")


class SGD:
    """SGD over a list of parameters (e.g. ``model.parameters()``).

    Args:
        params: iterable of :class:`~miniran.nn.Parameter`.
        lr: learning rate (schedulers change ``optimizer.lr``); finite, > 0.
        momentum: momentum factor in [0, 1) (0 disables it).
        nesterov: use Nesterov momentum (needs momentum > 0).
        weight_decay: L2 penalty added to every parameter's gradient; finite, >= 0.
        flat: gather the parameters into one flat buffer and their gradients
            into another (:class:`~miniran.nn.flat.FlatParameters`, ``self.flat``);
            a step then updates all of them with one kernel (one array
            operation set on the CPU) instead of one per parameter, and
            ``self.flat.grad`` is the one array that data-parallel training
            all-reduces. The parameters must share a dtype and a device.

    ``nan``, ``inf`` and values that are not real numbers are refused with
    one line naming the argument, as the command line refuses ``--lr nan``.
    """

    def __init__(self, params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4, flat=False):
        self.params = list(params)
        if not self.params:
            raise ValueError("SGD: params is empty (did you pass model.parameters()?)")
        for name, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            _check_finite(name, value)
        if lr <= 0:
            raise ValueError(f"SGD: lr must be positive, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"SGD: momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"SGD: weight_decay must be >= 0, got {weight_decay}")
        if nesterov and momentum == 0:
            raise ValueError("SGD: nesterov=True needs momentum > 0")
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.weight_decay = float(weight_decay)
        self.velocity = [None] * len(self.params)
        self.steps = 0
        self.flat = FlatParameters(self.params) if flat else None
        self._flat_velocity = None  # with flat=True: one buffer, self.velocity[i] its views
        self.lr_buffer = None  # see read_lr_from

    def read_lr_from(self, buffer):
        """Take each step's learning rate from ``buffer`` on the GPU instead of ``self.lr``.

        A captured CUDA graph replays its kernels with the arguments they had
        at capture, so a learning rate passed from the host would stay frozen;
        read from a device buffer, it is whatever the buffer holds when the
        graph runs (:mod:`miniran.train.cuda_graph` writes it there). The
        update is the same, bit for bit, as with ``self.lr`` equal to the
        buffer's value. ``self.lr`` and checkpoints are unaffected.

        Args:
            buffer: a CuPy array of one element, of the parameters' dtype;
                ``None`` goes back to ``self.lr``.
        """
        if buffer is not None:
            p = self.params[0].data
            if not (backend.is_cupy_array(p) and backend.is_cupy_array(buffer)):
                raise ValueError("SGD.read_lr_from: a device learning rate needs the parameters and the "
                                 "buffer on the GPU")
            if buffer.size != 1 or buffer.dtype != p.dtype:
                raise ValueError(f"SGD.read_lr_from: buffer must hold one {p.dtype} value, got shape "
                                 f"{tuple(buffer.shape)} {buffer.dtype}")
        self.lr_buffer = buffer

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        """Apply one update to every parameter that has a gradient.

        On the GPU each parameter is updated by one fused kernel
        (:data:`SGD_KERNEL`) instead of the seven or eight array operations of
        :func:`_update_arrays`, which stays the reference the kernel is tested
        against and the CPU path. With ``flat=True`` and every gradient in its
        slot, the whole flat buffer is one update.
        """
        lr = self.lr if self.lr_buffer is None else self.lr_buffer
        mu, wd = self.momentum, self.weight_decay
        if self.flat is not None:
            self.flat.sync()
            if self.flat.grads_in_slots():
                self._step_flat(lr, mu, wd)
                self.steps += 1
                return
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            v = self.velocity[i]
            if v is not None and backend.device_of(v) != backend.device_of(p.data):
                # the model was moved (Module.to) after earlier steps: the buffer follows
                v = self.velocity[i] = backend.to_device(v, backend.device_of(p.data))
            self.velocity[i] = self._update(p.grad, p.data, v, lr, mu, wd)
        self.steps += 1

    def _update(self, g, p, v, lr, mu, wd):
        """Update the array ``p`` in place from its gradient ``g``; the momentum buffer (new or ``v``)."""
        if backend.is_cupy_array(p):
            return _update_gpu(g, p, v, lr, mu, wd, self.nesterov)
        if backend.is_cupy_array(lr):
            raise ValueError("SGD: the parameters moved to the CPU; call read_lr_from(None) to use SGD.lr")
        return _update_arrays(g, p, v, lr, mu, wd, self.nesterov)

    def _step_flat(self, lr, mu, wd):
        """One update of the whole flat buffer; the per-parameter momentum buffers are its views."""
        flat = self.flat
        v = self._flat_velocity
        if mu and v is None and any(u is not None for u in self.velocity):
            v = self._gather_velocity()
        if v is not None and backend.device_of(v) != flat.device:
            v = backend.to_device(v, flat.device)
        self._flat_velocity = self._update(flat.grad, flat.data, v, lr, mu, wd)
        if self._flat_velocity is not None:
            self.velocity = [flat.view(self._flat_velocity, i) for i in range(len(self.params))]

    def _gather_velocity(self):
        """The per-parameter momentum buffers in one flat array (zeros where a parameter has none yet)."""
        xp = backend.get_array_module(self.flat.data)
        v = xp.zeros_like(self.flat.data)
        for i, u in enumerate(self.velocity):
            if u is not None:
                self.flat.view(v, i)[...] = backend.to_device(u, self.flat.device)
        return v

    # -- checkpointing
    def state_dict(self) -> dict:
        """Hyper-parameters, step count and momentum buffers as NumPy arrays."""
        state = {
            "lr": np.float64(self.lr),
            "momentum": np.float64(self.momentum),
            "nesterov": np.bool_(self.nesterov),
            "weight_decay": np.float64(self.weight_decay),
            "steps": np.int64(self.steps),
        }
        for i, v in enumerate(self.velocity):
            if v is not None:
                state[f"velocity.{i}"] = backend.to_numpy(v)
        return state

    def load_state_dict(self, state):
        for i, p in enumerate(self.params):
            key = f"velocity.{i}"
            if key in state and tuple(state[key].shape) != tuple(p.shape):
                raise ValueError(
                    f"SGD.load_state_dict: '{key}' has shape {tuple(state[key].shape)}, "
                    f"parameter {i} has shape {tuple(p.shape)}"
                )
        self.lr = float(state["lr"])
        self.momentum = float(state["momentum"])
        self.nesterov = bool(state["nesterov"])
        self.weight_decay = float(state["weight_decay"])
        self.steps = int(state["steps"])
        self.velocity = [
            backend.to_device(np.asarray(state[f"velocity.{i}"]), p.device).astype(p.dtype)
            if f"velocity.{i}" in state else None
            for i, p in enumerate(self.params)
        ]
        self._flat_velocity = None  # gathered again from these at the next flat step
        return self


def _update_arrays(g, p, v, lr, mu, wd, nesterov):
    """The update in plain array code (the readable reference): ``p`` in place; returns the momentum buffer."""
    if wd:
        g = g + wd * p
    if mu:
        if v is None:
            v = g.copy()  # first step: v = g, as PyTorch
        else:
            v *= mu
            v += g
        g = g + mu * v if nesterov else v
    p -= lr * g
    return v


def _update_gpu(g, p, v, lr, mu, wd, nesterov):
    """The same update as one kernel launch; a momentum buffer starts as an empty
    array that the kernel's first step fills with g. ``lr`` is a number, or a
    one-element device array (the ``_LR`` twins of the kernels read it there)."""
    on_device = backend.is_cupy_array(lr)
    if not mu:
        (SGD_PLAIN_KERNEL_LR if on_device else SGD_PLAIN_KERNEL)(g, lr, wd, p)
        return v
    first = v is None
    if first:
        v = backend.get_array_module(p).empty_like(p)
    (SGD_KERNEL_LR if on_device else SGD_KERNEL)(g, lr, mu, wd, int(nesterov), int(first), p, v)
    return v


# One thread per parameter element: weight decay, momentum and the Nesterov
# step fused, so a parameter costs one launch instead of about eight. The
# same code serves the learning rate as a kernel argument (``rate = lr``) and
# read from a device buffer (``rate = lr[0]``), so both give the same bits.
_SGD_UPDATE = """
    const T rate = {rate};
    const T d = g + wd * p;              // gradient with L2 weight decay
    const T vel = first ? d : mu * v + d;  // first step: v = g, as PyTorch
    v = vel;
    p = p - rate * (nesterov ? d + mu * vel : vel);
    """
SGD_KERNEL = kernels.elementwise_kernel(
    "miniran_sgd_update", "T g, T lr, T mu, T wd, int32 nesterov, int32 first", "T p, T v",
    _SGD_UPDATE.format(rate="lr"))
SGD_KERNEL_LR = kernels.elementwise_kernel(
    "miniran_sgd_update_lr", "T g, raw T lr, T mu, T wd, int32 nesterov, int32 first", "T p, T v",
    _SGD_UPDATE.format(rate="lr[0]"))

# momentum = 0: no buffer to read or write
_SGD_PLAIN_UPDATE = "const T rate = {rate}; p = p - rate * (g + wd * p);"
SGD_PLAIN_KERNEL = kernels.elementwise_kernel(
    "miniran_sgd_update_plain", "T g, T lr, T wd", "T p", _SGD_PLAIN_UPDATE.format(rate="lr"))
SGD_PLAIN_KERNEL_LR = kernels.elementwise_kernel(
    "miniran_sgd_update_plain_lr", "T g, raw T lr, T wd", "T p", _SGD_PLAIN_UPDATE.format(rate="lr[0]"))

# A captured step's learning rate, on the device: lr = table[step] (the last
# entry past the end), then step += 1. One thread (size=1); the table holds a
# schedule's rate for every step, computed once on the host.
LR_FROM_TABLE_KERNEL = kernels.elementwise_kernel(
    "miniran_lr_from_table", "raw T table, int64 n", "raw T lr, raw int64 step",
    """
    const long long s = step[0];
    lr[0] = table[s < n ? s : n - 1];
    step[0] = s + 1;
    """)
