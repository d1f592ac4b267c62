"""Batch normalisation (Ioffe & Szegedy, 2015) with PyTorch semantics.

Notation:
    N: batch size, C: channels, H, W: height and width.
    x: (N, C, H, W), or (N, C) for features without a spatial extent.
    M = N * H * W: how many values each channel's statistics are taken over.

Forward, per channel c (the reduction runs over every axis except C)::

    mean_c = mean(x[:, c])
    var_c  = mean((x[:, c] - mean_c) ** 2)          # biased: divide by M
    xhat   = (x - mean_c) / sqrt(var_c + eps)
    y      = gamma_c * xhat + beta_c

In **training** mode the batch statistics are used, and the running
estimates are updated in place::

    running_mean = (1 - momentum) * running_mean + momentum * mean_c
    running_var  = (1 - momentum) * running_var  + momentum * var_c * M / (M - 1)

(the running variance uses the *unbiased* estimate, as PyTorch does). In
**evaluation** mode ``running_mean`` / ``running_var`` replace the batch
statistics, so the layer is a fixed per-channel affine map.

Backward, per channel, with the sums over the channel's M values::

    dL/dbeta_c  = sum(gy)
    dL/dgamma_c = sum(gy * xhat)
    dL/dx = gamma_c / sqrt(var_c + eps) / M * (M * gy - sum(gy) - xhat * sum(gy * xhat))   # training
    dL/dx = gamma_c / sqrt(var_c + eps) * gy                                             # evaluation

**Sync batch norm** (data-parallel training, ``comm`` given): each process
holds a shard of the global batch, and the statistics are taken over the
global batch: the per-channel sums of x, then of (x - mean)^2, are summed over
the processes (an all-reduce) and divided by the global count; in the
backward pass the two sums ``sum(gy)`` and ``sum(gy * xhat)`` are summed over
the processes the same way. gamma's and beta's gradients stay per process
(the data-parallel all-reduce averages them with the other parameters).

This module is the reference algorithm. Its faster twins, the same numbers up
to rounding, are in the engine: ``miniran/fast/norm_cpu.py`` (CPU threads)
and ``miniran/fast/norm_gpu.py`` (fused CUDA kernels).
"""

from __future__ import annotations

from miniran.functional import _dispatch
from miniran.autograd import Function, Tensor, as_array
from miniran.backend import device_of, get_array_module


def _channel_dot(a, b):
    """sum(a * b) over every axis but the channel axis 1: a (C,) vector.

    ``einsum`` multiplies and adds in one pass, without building the
    (N, C, H, W) product first.
    """
    dims = "nchw" if a.ndim == 4 else "nc"
    return get_array_module(a).einsum(f"{dims},{dims}->c", a, b)


class BatchNorm(Function):
    """Batch norm on raw arrays, optionally followed by a ReLU; see :func:`batch_norm`.

    Inputs: ``x`` (N, C, H, W) or (N, C), ``gamma`` (C,), ``beta`` (C,).
    Per-channel (C,) vectors are reshaped to ``bshape``, (1, C, 1, 1) or
    (1, C), to broadcast against x. In-place operations (``*=``, ``+=``) on
    arrays created here save a pass over memory and an allocation each.

    ``relu=True`` computes ``relu(batch_norm(x))`` (:func:`batch_norm_relu`):
    the same numbers as the two functions one after the other, in one
    Function, so that a faster twin (:mod:`miniran.fast`) can do both in the
    same passes over memory.
    """

    def __init__(self, running_mean, running_var, use_batch_stats, momentum, eps, relu=False, comm=None):
        self.running_mean, self.running_var = running_mean, running_var
        self.use_batch_stats = use_batch_stats
        self.momentum, self.eps = momentum, eps
        self.relu = relu
        # sync batch norm: the processes whose shards make the global batch (miniran.distributed)
        self.comm = comm if use_batch_stats and comm is not None and comm.size > 1 else None

    def _over_all_processes(self, per_channel):
        """A per-channel sum of this process's shard, summed over every process (sync batch norm)."""
        if self.comm is not None:
            per_channel = self.comm.allreduce_sum(per_channel.copy())
        return per_channel

    def forward(self, x, gamma, beta):
        xp = get_array_module(x)
        self.axes = (0,) + tuple(range(2, x.ndim))  # every axis but C: (0,) or (0, 2, 3)
        self.bshape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
        self.m = m = x.size // x.shape[1] * (1 if self.comm is None else self.comm.size)  # values per channel, N*H*W

        if self.use_batch_stats:
            mean = self._over_all_processes(x.sum(axis=self.axes)) / m
            xc = x - mean.reshape(self.bshape)
            var = self._over_all_processes(_channel_dot(xc, xc)) / m  # biased, as used for normalising
            if self.running_mean is not None:
                # in place: the caller's arrays (a module's buffers) see the update
                mom, rm, rv = self.momentum, self.running_mean, self.running_var
                unbiased = var * (m / (m - 1))
                rm[...] = (1 - mom) * rm + mom * mean.astype(rm.dtype)
                rv[...] = (1 - mom) * rv + mom * unbiased.astype(rv.dtype)
        else:
            mean = self.running_mean.astype(x.dtype)
            var = self.running_var.astype(x.dtype)
            xc = x - mean.reshape(self.bshape)

        inv_std = 1.0 / xp.sqrt(var + self.eps)
        # Keep x (the graph holds it anyway), not xhat: backward recomputes
        # xhat in one pass instead of storing a second array of x's size.
        self.x, self.mean, self.inv_std, self.gamma = x, mean, inv_std, gamma
        # y = gamma * xhat + beta = xc * (gamma * inv_std) + beta, reusing xc
        y = xc
        y *= (gamma * inv_std).reshape(self.bshape)
        y += beta.reshape(self.bshape)
        if self.relu:
            xp.maximum(y, 0, out=y)
            self.y = y  # backward needs y > 0, the ReLU's mask
        return y

    def backward(self, gy):
        if self.relu:
            gy = gy * (self.y > 0)  # through the ReLU first
        bshape, m = self.bshape, self.m
        xhat = self.x - self.mean.reshape(bshape)
        xhat *= self.inv_std.reshape(bshape)
        gbeta = gy.sum(axis=self.axes)  # dL/dbeta = sum(gy)
        ggamma = _channel_dot(gy, xhat)  # dL/dgamma = sum(gy * xhat)
        gx = None
        if self.needs_input_grad[0]:
            a = self.gamma * self.inv_std  # dy/dx with the statistics held fixed
            if self.use_batch_stats:
                # mean and var depend on every x, which gives two more terms:
                #   gx = gamma*inv_std/M * (M*gy - sum(gy) - xhat*sum(gy*xhat))
                # i.e. per channel gx = a*gy + b*xhat + c, with the (C,) vectors
                # (with sync batch norm the sums run over the global batch)
                b = -a * self._over_all_processes(ggamma) / m
                c = -a * self._over_all_processes(gbeta) / m
                gx = xhat  # reuse the buffer: xhat is no longer needed
                gx *= b.reshape(bshape)
                gx += c.reshape(bshape)
                gx += gy * a.reshape(bshape)
            else:
                gx = gy * a.reshape(bshape)  # fixed statistics: y is affine in x
        return (
            gx,
            ggamma if self.needs_input_grad[1] else None,
            gbeta if self.needs_input_grad[2] else None,
        )


def batch_norm(
    x,
    running_mean=None,
    running_var=None,
    weight=None,
    bias=None,
    training=False,
    momentum=0.1,
    eps=1e-5,
    *,
    comm=None,
) -> Tensor:
    """Batch normalisation over the channel axis 1 (PyTorch's semantics and argument order).

    The arguments come in the order of ``torch.nn.functional.batch_norm``:
    ``batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)``.

    Args:
        x: input tensor (N, C, H, W) or (N, C).
        running_mean, running_var: raw arrays (C,) on x's device, or both
            ``None``. In training mode they are updated **in place** with
            ``running = (1 - momentum) * running + momentum * batch_stat``
            (unbiased variance). With ``None`` the batch statistics are
            always used, in evaluation mode too.
        weight: gamma, the scale, tensor (C,) (``None``: ones, nothing learnt).
        bias: beta, the shift, tensor (C,) (``None``: zeros, nothing learnt).
        training: use the batch statistics (True) or the running ones (False,
            the default, as in PyTorch).
        momentum: weight of the new batch statistic in the running update, in
            [0, 1]. ``None`` (PyTorch's cumulative average) needs a batch count:
            :class:`miniran.nn.BatchNorm2d` keeps one.
        eps: added to the variance before the square root.
        comm: in data-parallel training, the processes (``miniran.distributed.world()``)
            whose shards form the global batch: the batch statistics are then
            taken over the global batch (sync batch norm). ``None``: this
            process's batch only.

    Returns:
        Tensor of x's shape: ``weight * (x - mean) / sqrt(var + eps) + bias``.
    """
    return _batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps, relu=False, comm=comm)


def batch_norm_relu(
    x,
    running_mean=None,
    running_var=None,
    weight=None,
    bias=None,
    training=False,
    momentum=0.1,
    eps=1e-5,
    *,
    comm=None,
) -> Tensor:
    """``relu(batch_norm(x, ...))`` as one function (same arguments as :func:`batch_norm`).

    The pre-activation units apply a ReLU right after every batch norm. As
    one function the two give the same numbers, and the engine's GPU twin
    (:mod:`miniran.fast.norm_gpu`) computes both in the same passes over
    memory: two kernel launches forward and two backward instead of four and four.
    """
    return _batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps, relu=True, comm=comm)


def _batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps, relu, comm=None):
    """Check the arguments of :func:`batch_norm` / :func:`batch_norm_relu` and apply it."""
    gamma, beta = weight, bias
    x = x if isinstance(x, Tensor) else Tensor(x)
    if x.ndim not in (2, 4):
        raise ValueError(f"batch_norm: x must be 4-D (N, C, H, W) or 2-D (N, C), got shape {x.shape}")
    if momentum is None:
        raise ValueError("batch_norm: momentum=None (PyTorch's cumulative average) needs the count of batches "
                         "seen, which a function does not keep: use nn.BatchNorm2d(momentum=None), or a float")
    if not 0 <= momentum <= 1:
        raise ValueError(f"batch_norm: momentum must be in [0, 1], got {momentum}")
    c = x.shape[1]
    xp = get_array_module(x.data)
    gamma = Tensor(xp.ones(c, dtype=x.dtype)) if gamma is None else gamma
    beta = Tensor(xp.zeros(c, dtype=x.dtype)) if beta is None else beta
    gamma = gamma if isinstance(gamma, Tensor) else Tensor(as_array(gamma, like=x.data))
    beta = beta if isinstance(beta, Tensor) else Tensor(as_array(beta, like=x.data))
    for name, t in (("gamma", gamma), ("beta", beta)):
        if tuple(t.shape) != (c,):
            raise ValueError(
                f"batch_norm: {name} must have shape ({c},) for x of shape {x.shape}, got {tuple(t.shape)}"
            )
    if (running_mean is None) != (running_var is None):
        raise ValueError("batch_norm: give both running_mean and running_var, or neither")
    if running_mean is not None:
        for name, r in (("running_mean", running_mean), ("running_var", running_var)):
            if isinstance(r, Tensor):
                raise TypeError(f"batch_norm: {name} must be a raw array (a module buffer), not a Tensor "
                                "(the order is PyTorch's: x, running_mean, running_var, weight, bias)")
            if tuple(r.shape) != (c,):
                raise ValueError(
                    f"batch_norm: {name} must have shape ({c},) for x of shape {x.shape}, got {tuple(r.shape)}"
                )
            if device_of(r) != device_of(x.data):
                raise ValueError(
                    f"batch_norm: {name} and x are on different devices; move the module with .to()"
                )
    use_batch_stats = bool(training) or running_mean is None
    if use_batch_stats and x.size // c <= 1:
        raise ValueError(
            f"batch_norm: training needs more than 1 value per channel, got x of shape {x.shape}"
        )
    return _dispatch.apply(BatchNorm, x, gamma, beta, running_mean=running_mean, running_var=running_var,
                           use_batch_stats=use_batch_stats, momentum=float(momentum), eps=float(eps),
                           relu=relu, comm=comm)
