"""Solution to exercise 2 of notebook 03: a convolution layer, forward and backward, on im2col and col2im.

Notation: N batch, C input channels, O output channels, H x W input,
K x K kernel, OH x OW output, ``CKK = C*K*K``, ``P = N*OH*OW``.

Forward: ``col = im2col(x)`` laid out as a (CKK, P) matrix holds one window
per column, so the whole convolution is one matrix product
``Y = W2 @ col + b`` with ``W2 = w.reshape(O, CKK)``: row o of ``W2`` is
filter o, and its dot product with a column is that filter applied to that
window. ``Y`` has shape (O, P); reshape it to (O, N, OH, OW) and move the
batch axis first.

Backward: the gradients of a matrix product ``Y = A @ B`` are
``gA = gY @ B.T`` and ``gB = A.T @ gY``, so with ``gY`` the upstream gradient
laid out like ``Y`` (O, P):

* ``gW = gY @ col.T``                -> (O, CKK), reshaped to (O, C, K, K);
* ``gcol = W2.T @ gY``               -> (CKK, P), and ``gx = col2im(gcol)``,
  because im2col copied every pixel into several columns (one per window that
  covers it) and col2im adds those copies' gradients back onto the pixel;
* ``gb = gY.sum(axis=1)``            -> (O,), the bias is added at every
  position of every image.

This solution uses the im2col and col2im of exercise 1 (``nb03_im2col``),
as the exercise asks; ``F.im2col`` and ``F.col2im`` give the same numbers.
"""

from __future__ import annotations

import numpy as np

from miniran import Function

from .nb03_im2col import col2im, im2col


def conv_weight_grad(gy, col2d, w_shape):
    """The weight gradient ``gW = gY @ col.T`` of a convolution.

    Args:
        gy: upstream gradient (N, O, OH, OW).
        col2d: the forward pass's im2col matrix (C*KH*KW, N*OH*OW).
        w_shape: the weight's shape (O, C, KH, KW).

    Returns:
        An array of shape ``w_shape``.
    """
    o = gy.shape[1]
    gy2d = gy.transpose(1, 0, 2, 3).reshape(o, -1)  # (O, N*OH*OW), the layout of Y
    return (gy2d @ col2d.T).reshape(w_shape)


class Conv2dSolution(Function):
    """conv2d(x, w, b) with stride and zero padding, by im2col; inputs x (N,C,H,W), w (O,C,K,K), b (O,)."""

    def __init__(self, stride=1, padding=0):
        self.stride, self.padding = stride, padding

    def forward(self, x, w, b):
        o, c, k, _ = w.shape
        col = im2col(x, k, self.stride, self.padding)  # (C, K, K, N, OH, OW)
        _, _, _, n, oh, ow = col.shape
        self.x_shape, self.w, self.col_shape = x.shape, w, col.shape
        self.col2d = col.reshape(c * k * k, n * oh * ow)  # one window per column
        y = w.reshape(o, -1) @ self.col2d + b[:, None]  # (O, N*OH*OW)
        return np.ascontiguousarray(y.reshape(o, n, oh, ow).transpose(1, 0, 2, 3))

    def backward(self, gy):
        o, _, k, _ = self.w.shape
        gy2d = gy.transpose(1, 0, 2, 3).reshape(o, -1)  # (O, N*OH*OW), the layout of Y
        gcol = self.w.reshape(o, -1).T @ gy2d  # (C*K*K, N*OH*OW)
        gx = col2im(gcol.reshape(self.col_shape), self.x_shape, k, self.stride, self.padding)
        gw = conv_weight_grad(gy, self.col2d, self.w.shape)
        gb = gy2d.sum(axis=1)
        return gx, gw, gb


def conv2d_solution(x, w, b, stride=1, padding=0):
    """Apply :class:`Conv2dSolution` to ``x`` (N, C, H, W), ``w`` (O, C, K, K), ``b`` (O,)."""
    return Conv2dSolution(stride, padding)(x, w, b)
