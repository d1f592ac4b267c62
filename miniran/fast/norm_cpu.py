"""``BatchNormCPU``: the batch norm of :mod:`miniran.functional.normalization`, faster on the CPU.

The twin takes (N, C, H, W) NumPy arrays and computes the reference's
equations in fewer passes over memory, split over miniran's CPU threads by
images (:func:`miniran.threads.parallel_chunks`):

* statistics: for every (image, channel) row of H*W values, its sum and its
  sum of squares, two matrix products (BLAS reads each row once, at memory
  speed), combined per channel in float64. E[x^2] - E[x]^2 cancels when
  |mean| >> std; where mean^2 > 1e3 * var (a relative error above ~1e-4 in
  float32) the twin falls back to the two-pass centred sums of the reference,
  so the result is as accurate;
* y = x * scale + shift (+ ReLU) with per-channel scale = gamma * inv_std and
  shift = beta - mean * scale;
* backward: gx = a*g + b2*x + c2 with per-channel a, b2, c2 built from sum(g)
  and sum(g * x) (the same two products), so xhat is never stored.

NumPy's ``maximum(y, 0)`` with a scalar 0 takes a slow loop; a row of zeros
broadcast along the last axis takes the vectorised one (docs/performance.md).
"""

from __future__ import annotations

import numpy as np

from miniran import threads
from miniran.functional._dispatch import twin_of
from miniran.functional.normalization import BatchNorm


def _row_sums(u3, v3):
    """Per (image, channel) row of (N, C, L) arrays: ``sum(u)`` and ``sum(u * v)``, (N, C) float64 each.

    Two matrix products per group of images, on the CPU threads: a product
    with a vector of ones, and a batch of dot products. BLAS reads each row
    once and accumulates in vector registers, much faster than NumPy's
    reductions over an axis.
    """
    n, c, hw = u3.shape
    ones = np.ones(hw, dtype=u3.dtype)

    def sums(a, b):
        u = u3[a:b].reshape(-1, hw)
        v = v3[a:b].reshape(-1, hw)
        dots = np.matmul(u[:, None, :], v[:, :, None])  # (rows, 1, 1)
        return (u @ ones).reshape(b - a, c), dots.reshape(b - a, c)
    parts = threads.parallel_chunks(n, sums, u3.size, blas=True)
    return (np.concatenate([p[0] for p in parts]).astype(np.float64),
            np.concatenate([p[1] for p in parts]).astype(np.float64))


def _would_cancel(mean, var) -> bool:
    """Whether E[x^2] - E[x]^2 (and the like) loses accuracy for some channel: mean^2 > 1000 * var.

    Past that ratio float32 rounding costs more than about 1e-4 of the
    variance; the twin then works with centred values.
    """
    mean, var = np.asarray(mean, dtype=np.float64), np.asarray(var, dtype=np.float64)
    return bool(np.any(mean * mean > 1e3 * var))


def _centred_variance(x3, mean64, scratch):
    """Biased per-channel variance of (N, C, L) ``x3`` from centred values (the two-pass method).

    Used when the faster E[x^2] - E[x]^2 would cancel. ``scratch`` is an
    array of x3's shape that may be overwritten.
    """
    mean3 = mean64.astype(x3.dtype)[:, None]

    def centred(a, b):
        d = scratch[a:b]
        np.subtract(x3[a:b], mean3, out=d)
        return np.einsum("nci,nci->c", d, d, dtype=np.float64)
    parts = threads.parallel_chunks(x3.shape[0], centred, x3.size)
    return np.sum(parts, axis=0) / (x3.shape[0] * x3.shape[2])


@twin_of(BatchNorm)
class BatchNormCPU(BatchNorm):
    """Batch norm (and batch norm + ReLU) of (N, C, H, W) NumPy arrays on miniran's CPU threads."""

    @classmethod
    def suits(cls, arrays, params, grad) -> bool:
        x = arrays[0]
        # statistics over several processes (sync batch norm) are the reference's job
        return type(x) is np.ndarray and x.ndim == 4 and params.get("comm") is None

    def forward(self, x, gamma, beta):
        x = np.ascontiguousarray(x)
        n, c = x.shape[:2]
        self.m = x.size // c  # values per channel, N*H*W
        x3 = x.reshape(n, c, -1)
        y = np.empty_like(x)
        y3 = y.reshape(x3.shape)
        if self.use_batch_stats:
            mean, var = self._batch_statistics(x3, y3)
        else:
            mean = self.running_mean.astype(x.dtype)
            var = self.running_var.astype(x.dtype)
        inv_std = 1.0 / np.sqrt(var + self.eps)
        # the backward pass's sum(g * x) - mean * sum(g) cancels the same way
        self.centred = _would_cancel(mean, var)
        self._normalise(x3, y3, mean, inv_std, gamma, beta)
        self.x, self.mean, self.inv_std, self.gamma = x, mean, inv_std, gamma
        if self.relu:
            self.y = y
        return y

    def _batch_statistics(self, x3, scratch):
        """Per-channel mean and biased variance (x's dtype); updates the running statistics."""
        m = self.m
        sums, squares = _row_sums(x3, x3)
        mean64 = sums.sum(axis=0) / m
        var64 = np.maximum(squares.sum(axis=0) / m - mean64 * mean64, 0.0)
        if _would_cancel(mean64, var64):
            var64 = _centred_variance(x3, mean64, scratch)
        mean, var = mean64.astype(x3.dtype), var64.astype(x3.dtype)
        if self.running_mean is not None:
            mom, rm, rv = self.momentum, self.running_mean, self.running_var
            rm[...] = (1 - mom) * rm + mom * mean.astype(rm.dtype)
            rv[...] = (1 - mom) * rv + mom * (var * (m / (m - 1))).astype(rv.dtype)
        return mean, var

    def _normalise(self, x3, y3, mean, inv_std, gamma, beta):
        """y3 = gamma * (x3 - mean) * inv_std + beta (then the ReLU), image by image on the threads."""
        dtype = x3.dtype
        scale = (gamma * inv_std).astype(dtype)
        shift = (beta - mean * scale).astype(dtype)
        scale3, shift3 = scale[:, None], shift[:, None]
        mean3, beta3 = mean[:, None], beta.astype(dtype)[:, None]
        zeros = np.zeros(x3.shape[2], dtype=dtype)

        def normalise(a, b):
            yb = y3[a:b]
            if self.centred:  # (x - mean) * scale + beta: no cancellation when |mean| >> std
                np.subtract(x3[a:b], mean3, out=yb)
                yb *= scale3
                yb += beta3
            else:
                np.multiply(x3[a:b], scale3, out=yb)
                yb += shift3
            if self.relu:
                np.maximum(yb, zeros, out=yb)
        threads.parallel_chunks(x3.shape[0], normalise, x3.size)

    def backward(self, gy):
        gy = np.ascontiguousarray(gy)
        x3 = self.x.reshape(self.x.shape[0], self.x.shape[1], -1)
        n, c, hw = x3.shape
        gy3 = gy.reshape(n, c, hw)
        gx = np.empty_like(self.x) if self.needs_input_grad[0] or self.relu else None
        g3 = gy3
        if self.relu:  # g = gy where the ReLU passed, kept in gx's memory
            g3 = gx.reshape(n, c, hw)
            y3 = self.y.reshape(n, c, hw)

            def through_relu(a, b):
                np.multiply(gy3[a:b], y3[a:b] > 0, out=g3[a:b])
            threads.parallel_chunks(n, through_relu, gy.size)
        mean, inv_std = self.mean.astype(np.float64), self.inv_std.astype(np.float64)
        if self.centred:  # |mean| >> std: work with x - mean (one more pass), mean 0 below
            xc = np.empty_like(self.x).reshape(n, c, hw)
            mean3 = self.mean[:, None]

            def centre(a, b):
                np.subtract(x3[a:b], mean3, out=xc[a:b])
            threads.parallel_chunks(n, centre, xc.size)
            x3, mean = xc, np.zeros_like(mean)
        sum_g, sum_gx = (v.sum(axis=0) for v in _row_sums(g3, x3))
        gbeta = sum_g
        ggamma = inv_std * (sum_gx - mean * sum_g)  # sum(g * xhat)
        dtype = self.x.dtype
        if self.needs_input_grad[0]:
            self._grad_x(gx, g3, x3, mean, inv_std, ggamma, gbeta)
        else:
            gx = None
        return (
            gx,
            ggamma.astype(dtype) if self.needs_input_grad[1] else None,
            gbeta.astype(dtype) if self.needs_input_grad[2] else None,
        )

    def _grad_x(self, gx, g3, x3, mean, inv_std, ggamma, gbeta):
        """gx = a*g + b2*x + c2 into ``gx``, image by image (g3 may be gx's own memory)."""
        n, c, hw = x3.shape
        a = self.gamma.astype(np.float64) * inv_std
        if self.use_batch_stats:
            # gx = a*g + b*xhat + c (see the reference) with xhat = (x - mean) * inv_std
            m = self.m
            b, cc = -a * ggamma / m, -a * gbeta / m
            b2, c2 = b * inv_std, cc - b * inv_std * mean
        else:
            b2 = c2 = a  # unused
        a3, b3, c3 = (v.astype(self.x.dtype)[:, None] for v in (a, b2, c2))

        def grad_x(a_, b_):
            gxb = gx.reshape(n, c, hw)[a_:b_]
            if not self.use_batch_stats:  # fixed statistics: gx = a * g
                np.multiply(g3[a_:b_], a3, out=gxb)
                return
            t = x3[a_:b_] * b3
            t += c3
            np.multiply(g3[a_:b_], a3, out=gxb)  # g3 is gx's memory (ReLU) or gy
            gxb += t
        threads.parallel_chunks(n, grad_x, g3.size)
