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

import numpy as np

from miniran import backend, kernels


class SGD:
    """SGD over a list of parameters (e.g. ``model.parameters()``).

    Args:
        params: iterable of :class:`~miniran.nn.Parameter`.
        lr: learning rate (schedulers change ``optimizer.lr``).
        momentum: momentum factor (0 disables it).
        nesterov: use Nesterov momentum (needs momentum > 0).
        weight_decay: L2 penalty added to every parameter's gradient.
    """

    def __init__(self, params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4):
        self.params = list(params)
        if not self.params:
            raise ValueError("SGD: params is empty (did you pass model.parameters()?)")
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

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        """Apply one update to every parameter that has a gradient.

        On the GPU each parameter is updated by one fused kernel
        (:data:`SGD_KERNEL`) instead of the seven or eight array operations of
        :meth:`_update_arrays`, which stays the reference the kernel is tested
        against and the CPU path.
        """
        lr, mu, wd = self.lr, self.momentum, self.weight_decay
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            v = self.velocity[i]
            if v is not None and backend.device_of(v) != backend.device_of(p.data):
                # the model was moved (Module.to) after earlier steps: the buffer follows
                v = self.velocity[i] = backend.to_device(v, backend.device_of(p.data))
            if backend.is_cupy_array(p.data):
                self._update_gpu(i, p, lr, mu, wd)
            else:
                self._update_arrays(i, p, lr, mu, wd)
        self.steps += 1

    def _update_arrays(self, i, p, lr, mu, wd):
        """The update in plain array code (the readable reference)."""
        g = p.grad
        if wd:
            g = g + wd * p.data
        if mu:
            v = self.velocity[i]
            if v is None:
                v = self.velocity[i] = g.copy()  # first step: v = g, as PyTorch
            else:
                v *= mu
                v += g
            g = g + mu * v if self.nesterov else v
        p.data -= lr * g

    def _update_gpu(self, i, p, lr, mu, wd):
        """The same update as one kernel launch; momentum buffers start as empty
        arrays that the kernel's first step fills with g."""
        if not mu:
            SGD_PLAIN_KERNEL(p.grad, lr, wd, p.data)
            return
        first = self.velocity[i] is None
        if first:
            self.velocity[i] = backend.get_array_module(p.data).empty_like(p.data)
        SGD_KERNEL(p.grad, lr, mu, wd, int(self.nesterov), int(first), p.data, self.velocity[i])

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
        return self


# One thread per parameter element: weight decay, momentum and the Nesterov
# step fused, so a parameter costs one launch instead of about eight.
SGD_KERNEL = kernels.elementwise_kernel(
    "miniran_sgd_update",
    "T g, T lr, T mu, T wd, int32 nesterov, int32 first",
    "T p, T v",
    """
    const T d = g + wd * p;              // gradient with L2 weight decay
    const T vel = first ? d : mu * v + d;  // first step: v = g, as PyTorch
    v = vel;
    p = p - lr * (nesterov ? d + mu * vel : vel);
    """,
)

# momentum = 0: no buffer to read or write
SGD_PLAIN_KERNEL = kernels.elementwise_kernel(
    "miniran_sgd_update_plain",
    "T g, T lr, T wd",
    "T p",
    "p = p - lr * (g + wd * p);",
)
