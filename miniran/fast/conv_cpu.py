"""The CPU twins of :class:`~miniran.functional.conv.Conv2dFunction`: three faster ways to the same numbers.

The reference builds one ``col`` for the whole batch in (C*KH*KW, N*OH*OW)
order, multiplies once, and transposes the result to (N, O, OH, OW). These
twins instead work **per image**, in the layout ``col`` (N, C*KH*KW, OH*OW)::

    y (N, O, OH*OW) = w (O, CKK) @ col (N, CKK, OH*OW)     # already NCHW

so no transposing copy is needed, and each of miniran's CPU threads
(:func:`miniran.threads.parallel_chunks`) unfolds and multiplies its own
group of images, with BLAS held at one thread (two layers of threads would
fight over the cores). Registered in order of preference:

* :class:`Conv2dPointwiseCPU`: a 1x1 kernel without padding needs no im2col
  at all (a stride only picks every SY-th row and SX-th column first).
* :class:`Conv2dWinogradCPU`: a 3x3 kernel with stride 1 by Winograd's
  F(2x2, 3x3) (:mod:`miniran.fast.winograd`), where it pays (:meth:`~Conv2dWinogradCPU.suits`).
* :class:`Conv2dBatchedCPU`: any other kernel, im2col per group of images.

The weight gradient sums the groups' ``gy[i] @ col[i].T``; the side with
more rows goes on the left of each product, which BLAS runs faster
(docs/performance.md), and the (K, O) result is transposed back.
"""

from __future__ import annotations

import numpy as np

from miniran import threads
from miniran.fast import winograd
from miniran.functional._dispatch import twin_of
from miniran.functional.conv import Conv2dFunction, _fold_taps, _unfold_taps, _zero_pad

__all__ = ["Conv2dPointwiseCPU", "Conv2dWinogradCPU", "Conv2dBatchedCPU"]


def _on_cpu(arrays) -> bool:
    return all(type(a) is np.ndarray for a in arrays)


def _weight_grad_of_images(unfolded, g3):
    """``sum over i of g3[i] @ unfolded[i].T`` (O, K): one group of images' part of the weight gradient.

    ``unfolded`` (n, K, L) is the input as the product saw it (x itself for a
    1x1 kernel, the per-image col otherwise), ``g3`` (n, O, L) the output
    gradient.
    """
    if unfolded.shape[1] > g3.shape[1]:
        return np.matmul(unfolded, g3.transpose(0, 2, 1)).sum(axis=0).T
    return np.matmul(g3, unfolded.transpose(0, 2, 1)).sum(axis=0)


def _im2col_images(x, stride, padding, col):
    """im2col in the per-image layout: ``col[n, c, ky, kx, i, j] = xpad[n, c, i*SY + ky, j*SX + kx]``.

    ``x`` (n, C, H, W), ``col`` a preallocated (n, C, KH, KW, OH, OW) array
    (written in place), for a few images at a time.
    """
    (sy, sx), (ph, pw) = stride, padding
    # viewed as (n, KH, KW, C, OH, OW), col has the layout _unfold_taps fills from (n, C, ...)
    _unfold_taps(_zero_pad(x, ph, pw), col.transpose(0, 2, 3, 1, 4, 5), sy, sx)


def _col2im_images(col, stride, padding, out):
    """The adjoint of :func:`_im2col_images`: fold ``col`` (n, C, KH, KW, OH, OW) into ``out`` (n, C, H, W)."""
    (sy, sx), (ph, pw) = stride, padding
    n, c, h, w = out.shape
    img = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=col.dtype) if (ph or pw) else out
    if img is out:
        out[...] = 0
    _fold_taps(col.transpose(0, 2, 3, 1, 4, 5), img, sy, sx)
    if img is not out:
        out[...] = img[:, :, ph:ph + h, pw:pw + w]


class _Conv2dCPUTwin(Conv2dFunction):
    """What the CPU twins share: the weight and bias gradients from per-group parts."""

    def _with_weight_and_bias_grads(self, gx, parts, gy3):
        """(gx, gw[, gb]): gw summed over the groups' ``parts``, gb from gy3 (N, O, L)."""
        needs = self.needs_input_grad
        gw = gb = None
        if needs[1]:
            gw = parts[0] if len(parts) == 1 else np.sum(parts, axis=0)
            gw = np.ascontiguousarray(gw).reshape(self.w.shape).astype(self.dtypes[1], copy=False)
        if len(needs) == 3 and needs[2]:
            gb = gy3.sum(axis=(0, 2)).astype(self.dtypes[2], copy=False)
        return (gx, gw) if len(needs) == 2 else (gx, gw, gb)


@twin_of(Conv2dFunction)
class Conv2dPointwiseCPU(_Conv2dCPUTwin):
    """A 1x1 kernel (any stride, no padding) as one batched product per group of images.

    ``y (N, O, OH*OW) = w (O, C) @ x (N, C, OH*OW)``: no im2col, and no
    transposing copy before or after the product.
    """

    @classmethod
    def suits(cls, arrays, params, grad):
        return _on_cpu(arrays) and arrays[1].shape[2:] == (1, 1) and tuple(params["padding"]) == (0, 0)

    def forward(self, x, w, b=None):
        x, w, (oh, ow) = self._prepare(x, w, b)
        (sy, sx) = self.stride
        if (sy, sx) != (1, 1):
            x = x[:, :, ::sy, ::sx]
        n, c = x.shape[:2]
        o = w.shape[0]
        x3 = np.ascontiguousarray(x).reshape(n, c, oh * ow)
        self.x3 = x3 if self.needs_input_grad[1] else None
        w2 = w.reshape(o, c)
        y = np.empty((n, o, oh * ow), dtype=x.dtype)

        def product(a_, b_):  # images a_:b_, on one of the CPU threads
            np.matmul(w2, x3[a_:b_], out=y[a_:b_])  # (O, C) @ (n, C, OH*OW)
            if b is not None:
                y[a_:b_] += b.astype(y.dtype, copy=False)[:, None]
        threads.parallel_chunks(n, product, y.size + x3.size, blas=True)
        return y.reshape(n, o, oh, ow)

    def backward(self, gy):
        n, c, h, wd = self.x_shape
        o = self.w.shape[0]
        (sy, sx) = self.stride
        oh, ow = gy.shape[2:]
        gy3 = np.ascontiguousarray(gy.astype(self.w.dtype, copy=False)).reshape(n, o, oh * ow)
        w2 = self.w.reshape(o, c)
        needs = self.needs_input_grad
        gx = None
        g_sub = np.empty((n, c, oh * ow), dtype=gy3.dtype) if needs[0] else None

        def products(a_, b_):  # images a_:b_: their part of gx, their sum of the weight gradient
            if needs[0]:
                np.matmul(w2.T, gy3[a_:b_], out=g_sub[a_:b_])  # (C, O) @ (n, O, OH*OW)
            return _weight_grad_of_images(self.x3[a_:b_], gy3[a_:b_]) if needs[1] else None
        parts = threads.parallel_chunks(n, products, gy3.size * 2 + n * c * oh * ow, blas=True)
        if needs[0]:
            g_sub = g_sub.reshape(n, c, oh, ow)
            if (sy, sx) == (1, 1):
                gx = g_sub
            else:  # the pixels the stride skipped get no gradient
                gx = np.zeros((n, c, h, wd), dtype=g_sub.dtype)
                gx[:, :, ::sy, ::sx] = g_sub
            gx = gx.astype(self.dtypes[0], copy=False)
        return self._with_weight_and_bias_grads(gx, parts, gy3)


@twin_of(Conv2dFunction)
class Conv2dWinogradCPU(_Conv2dCPUTwin):
    """3x3, stride 1: Winograd F(2x2, 3x3) per group of images.

    Each of miniran's CPU threads transforms, multiplies and transforms back
    its own images; the transformed input V is kept (per group) for the
    weight gradient only.
    """

    @classmethod
    def suits(cls, arrays, params, grad):
        """Whether Winograd beats im2col here (docs/performance.md has the measurements).

        Winograd does fewer multiplies and moves fewer bytes, but as many
        small NumPy calls, which on several threads wait for each other (the
        GIL): on one thread it wins for forward + backward at every map size
        and for the forward alone from 16x16 maps on; on several threads only
        for forward + backward on maps of 16x16 and up (its backward is what
        gains). With few input channels (the 3 of an RGB stem) im2col's col
        is small and Winograd's output transforms dominate: im2col there.
        """
        x, w = arrays[0], arrays[1]
        if not _on_cpu(arrays) or x.ndim != 4 or x.shape[1] < 8:
            return False
        if not winograd.winograd_supported(x.shape, w.shape, params["stride"], params["padding"]):
            return False
        ph, pw = params["padding"]
        big_maps = (x.shape[2] + 2 * ph - 2) * (x.shape[3] + 2 * pw - 2) >= 256
        if threads.cpu_threads() == 1:
            return grad or big_maps
        return grad and big_maps

    def forward(self, x, w, b=None):
        x, w, (oh, ow) = self._prepare(x, w, b)
        n, o = x.shape[0], w.shape[0]
        keep = bool(self.needs_input_grad[1])
        y = np.empty((n, o, oh, ow), dtype=x.dtype)

        def part(a_, b_):
            _, saved = winograd.conv3x3_winograd_forward(x[a_:b_], w, self.padding, keep=keep, out=y[a_:b_])
            if b is not None:
                y[a_:b_] += b.astype(y.dtype, copy=False)[:, None, None]
            return a_, b_, saved
        pieces = threads.parallel_chunks(n, part, x.size * 4, blas=True)
        self.pieces = pieces if any(self.needs_input_grad) else None
        return y

    def backward(self, gy):
        needs = self.needs_input_grad
        gy = gy.astype(self.w.dtype, copy=False)
        gx = np.empty(self.x_shape, dtype=self.dtypes[0]) if needs[0] else None

        def part(i, j):  # pieces i:j of the forward pass
            gw_sum = None
            for a_, b_, saved in self.pieces[i:j]:
                _, gw_ab = winograd.conv3x3_winograd_backward(saved, gy[a_:b_], need_gx=needs[0],
                                                              need_gw=needs[1],
                                                              gx_out=gx[a_:b_] if needs[0] else None)
                if needs[1]:
                    gw_sum = gw_ab if gw_sum is None else gw_sum + gw_ab
            return gw_sum
        parts = threads.parallel_chunks(len(self.pieces), part, gy.size * 4 * len(self.pieces), blas=True)
        return self._with_weight_and_bias_grads(gx, parts, gy.reshape(gy.shape[0], gy.shape[1], -1))


@twin_of(Conv2dFunction)
class Conv2dBatchedCPU(_Conv2dCPUTwin):
    """Any other kernel: im2col per group of images, then one batched product each.

    Each thread unfolds its own images into ``col`` (n, C*KH*KW, OH*OW) and
    multiplies them, ``y[i] = w (O, CKK) @ col[i]``.
    """

    @classmethod
    def suits(cls, arrays, params, grad):
        return _on_cpu(arrays)

    def forward(self, x, w, b=None):
        x, w, (oh, ow) = self._prepare(x, w, b)
        n, c = x.shape[:2]
        o, _, kh, kw = w.shape
        w2 = w.reshape(o, c * kh * kw)
        col = np.empty((n, c, kh, kw, oh, ow), dtype=x.dtype)
        y = np.empty((n, o, oh * ow), dtype=x.dtype)

        def unfold_and_multiply(a_, b_):
            _im2col_images(x[a_:b_], self.stride, self.padding, col[a_:b_])
            np.matmul(w2, col[a_:b_].reshape(b_ - a_, c * kh * kw, oh * ow), out=y[a_:b_])
            if b is not None:
                y[a_:b_] += b.astype(y.dtype, copy=False)[:, None]
        threads.parallel_chunks(n, unfold_and_multiply, col.size + y.size, blas=True)
        self.col3 = col.reshape(n, c * kh * kw, oh * ow) if self.needs_input_grad[1] else None
        return y.reshape(n, o, oh, ow)

    def backward(self, gy):
        n, c, h, wd = self.x_shape
        o, _, kh, kw = self.w.shape
        oh, ow = gy.shape[2:]
        ckk = c * kh * kw
        gy3 = np.ascontiguousarray(gy.astype(self.w.dtype, copy=False)).reshape(n, o, oh * ow)
        w2 = self.w.reshape(o, ckk)
        needs = self.needs_input_grad
        gx = np.empty(self.x_shape, dtype=gy3.dtype) if needs[0] else None

        def products(a_, b_):  # images a_:b_: their gx, their part of the weight gradient
            g3 = gy3[a_:b_]
            if needs[0]:
                gcol = np.matmul(w2.T, g3)  # (n, CKK, OH*OW)
                _col2im_images(gcol.reshape(b_ - a_, c, kh, kw, oh, ow), self.stride, self.padding,
                               gx[a_:b_])
            return _weight_grad_of_images(self.col3[a_:b_], g3) if needs[1] else None
        parts = threads.parallel_chunks(n, products, gy3.size + n * ckk * oh * ow, blas=True)
        if needs[0]:
            gx = gx.astype(self.dtypes[0], copy=False)
        return self._with_weight_and_bias_grads(gx, parts, gy3)
