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
"""

from __future__ import annotations

import numpy as np

from miniran import backend
from miniran.autograd import Function, Tensor, as_array
from miniran.backend import get_array_module, is_cupy_array


def _channel_dot(a, b):
    """sum(a * b) over every axis but the channel axis 1: a (C,) vector.

    ``einsum`` multiplies and adds in one pass, without building the
    (N, C, H, W) product first.
    """
    dims = "nchw" if a.ndim == 4 else "nc"
    return get_array_module(a).einsum(f"{dims},{dims}->c", a, b)


class BatchNorm(Function):
    """Batch norm on raw arrays; see :func:`batch_norm` for the arguments.

    Inputs: ``x`` (N, C, H, W) or (N, C), ``gamma`` (C,), ``beta`` (C,).
    Per-channel (C,) vectors are reshaped to ``bshape``, (1, C, 1, 1) or
    (1, C), to broadcast against x. In-place operations (``*=``, ``+=``) on
    arrays created here save a pass over memory and an allocation each.
    """

    def __init__(self, running_mean, running_var, use_batch_stats, momentum, eps):
        self.running_mean, self.running_var = running_mean, running_var
        self.use_batch_stats = use_batch_stats
        self.momentum, self.eps = momentum, eps

    def forward(self, x, gamma, beta):
        xp = get_array_module(x)
        self.axes = (0,) + tuple(range(2, x.ndim))  # every axis but C: (0,) or (0, 2, 3)
        self.bshape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
        self.m = m = x.size // x.shape[1]  # values per channel, N*H*W
        if xp is not np:
            return self._forward_gpu(x, gamma, beta)

        if self.use_batch_stats:
            mean = x.mean(axis=self.axes)
            xc = x - mean.reshape(self.bshape)
            var = _channel_dot(xc, xc) / m  # biased, as used for normalising
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
        return y

    def backward(self, gy):
        if is_cupy_array(gy):
            return self._backward_gpu(gy)
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
                b, c = -a * ggamma / m, -a * gbeta / m
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


    # ------------------------------------------------------------------ GPU path
    # The same equations as above in five fused kernels per training step
    # (two reductions and two elementwise kernels forward, two reductions and
    # one elementwise kernel backward), instead of about 35 array operations.
    # The array code above is the reference they are tested against.

    def _forward_gpu(self, x, gamma, beta):
        x = get_array_module(x).ascontiguousarray(x)
        bshape, m = self.bshape, self.m
        if self.use_batch_stats:
            mean = _BN_MEAN(x, 1.0 / m, axis=self.axes)
            var = _BN_VAR(x, mean.reshape(bshape), 1.0 / m, axis=self.axes)
            inv_std = get_array_module(x).empty_like(mean)
            if self.running_mean is not None:
                _BN_STATS_UPDATE(mean, var, self.eps, self.momentum, m / (m - 1),
                                 inv_std, self.running_mean, self.running_var)
            else:
                _BN_INV_STD(var, self.eps, inv_std)
        else:
            mean = self.running_mean.astype(x.dtype)
            inv_std = get_array_module(x).empty_like(mean)
            _BN_INV_STD(self.running_var.astype(x.dtype), self.eps, inv_std)
        self.x, self.mean, self.inv_std, self.gamma = x, mean, inv_std, gamma
        return _BN_NORMALIZE(x, mean.reshape(bshape), inv_std.reshape(bshape),
                             gamma.reshape(bshape), beta.reshape(bshape))

    def _backward_gpu(self, gy):
        bshape, m = self.bshape, self.m
        gy = get_array_module(gy).ascontiguousarray(gy)
        mean, inv_std = self.mean.reshape(bshape), self.inv_std.reshape(bshape)
        gbeta = _BN_SUM(gy, axis=self.axes)
        ggamma = _BN_SUM_GY_XHAT(gy, self.x, mean, inv_std, axis=self.axes)
        gx = None
        if self.needs_input_grad[0]:
            gx = _BN_GRAD_X(gy, self.x, mean, inv_std, self.gamma.reshape(bshape),
                            gbeta.reshape(bshape), ggamma.reshape(bshape),
                            1.0 / m, int(self.use_batch_stats))
        return (
            gx,
            ggamma if self.needs_input_grad[1] else None,
            gbeta if self.needs_input_grad[2] else None,
        )


# Per-channel vectors arrive reshaped to (1, C, 1, 1) and broadcast against x.
_BN_MEAN = backend.reduction_kernel(
    "miniran_bn_mean", "T x, T inv_m", "T mean",
    map_expr="x", reduce_expr="a + b", post_map_expr="mean = a * inv_m", identity="0")

_BN_VAR = backend.reduction_kernel(
    "miniran_bn_var", "T x, T mean, T inv_m", "T var",
    map_expr="(x - mean) * (x - mean)", reduce_expr="a + b", post_map_expr="var = a * inv_m",
    identity="0")  # biased, the variance used to normalise

_BN_INV_STD = backend.elementwise_kernel(
    "miniran_bn_inv_std", "T var, T eps", "T inv_std", "inv_std = rsqrt(var + eps);")

_BN_STATS_UPDATE = backend.elementwise_kernel(
    "miniran_bn_stats_update", "T mean, T var, T eps, T momentum, T unbias",
    "T inv_std, R running_mean, R running_var",
    """
    // one thread per channel: 1/sqrt(var + eps) for normalising, and the
    // running statistics updated in place (unbiased variance, as PyTorch)
    inv_std = rsqrt(var + eps);
    running_mean = (R)((1 - momentum) * (T)running_mean + momentum * mean);
    running_var = (R)((1 - momentum) * (T)running_var + momentum * var * unbias);
    """)

_BN_NORMALIZE = backend.elementwise_kernel(
    "miniran_bn_normalize", "T x, T mean, T inv_std, T gamma, T beta", "T y",
    "y = (x - mean) * (gamma * inv_std) + beta;")

_BN_SUM = backend.reduction_kernel(
    "miniran_bn_sum", "T gy", "T total",
    map_expr="gy", reduce_expr="a + b", post_map_expr="total = a", identity="0")

_BN_SUM_GY_XHAT = backend.reduction_kernel(
    "miniran_bn_sum_gy_xhat", "T gy, T x, T mean, T inv_std", "T total",
    map_expr="gy * ((x - mean) * inv_std)", reduce_expr="a + b", post_map_expr="total = a",
    identity="0")

_BN_GRAD_X = backend.elementwise_kernel(
    "miniran_bn_grad_x",
    "T gy, T x, T mean, T inv_std, T gamma, T gbeta, T ggamma, T inv_m, int32 batch_stats",
    "T gx",
    """
    const T a = gamma * inv_std;  // dy/dx with the statistics held fixed
    if (batch_stats) {
        // gx = a/M * (M*gy - sum(gy) - xhat*sum(gy*xhat))
        const T xhat = (x - mean) * inv_std;
        gx = a * (gy - inv_m * gbeta - xhat * (inv_m * ggamma));
    } else {
        gx = a * gy;
    }
    """)


def batch_norm(
    x,
    gamma,
    beta,
    running_mean=None,
    running_var=None,
    training=True,
    momentum=0.1,
    eps=1e-5,
) -> Tensor:
    """Batch normalisation over the channel axis 1 (PyTorch semantics).

    Args:
        x: input tensor (N, C, H, W) or (N, C).
        gamma: scale, tensor (C,) (``None``: ones, nothing learnt).
        beta: shift, tensor (C,) (``None``: zeros, nothing learnt).
        running_mean, running_var: raw arrays (C,) on x's device, or both
            ``None``. In training mode they are updated **in place** with
            ``running = (1 - momentum) * running + momentum * batch_stat``
            (unbiased variance). With ``None`` the batch statistics are
            always used, in evaluation mode too.
        training: use the batch statistics (True) or the running ones (False).
        momentum: weight of the new batch statistic in the running update, in
            [0, 1]. ``None`` (PyTorch's cumulative average) needs a batch count:
            :class:`miniran.nn.BatchNorm2d` keeps one.
        eps: added to the variance before the square root.

    Returns:
        Tensor of x's shape: ``gamma * (x - mean) / sqrt(var + eps) + beta``.
    """
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
                raise TypeError(f"batch_norm: {name} must be a raw array (a module buffer), not a Tensor")
            if tuple(r.shape) != (c,):
                raise ValueError(
                    f"batch_norm: {name} must have shape ({c},) for x of shape {x.shape}, got {tuple(r.shape)}"
                )
            if is_cupy_array(r) != is_cupy_array(x.data):
                raise ValueError(
                    f"batch_norm: {name} and x are on different devices; move the module with .to()"
                )
    use_batch_stats = bool(training) or running_mean is None
    if use_batch_stats and x.size // c <= 1:
        raise ValueError(
            f"batch_norm: training needs more than 1 value per channel, got x of shape {x.shape}"
        )
    return BatchNorm(running_mean, running_var, use_batch_stats, float(momentum), float(eps))(x, gamma, beta)
