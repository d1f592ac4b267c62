"""Solution to the exercise of notebook 03: the backward pass of an im2col convolution.

Notation: N batch, C input channels, O output channels, H x W input,
KH x KW kernel, OH x OW output, ``CKK = C*KH*KW``, ``P = N*OH*OW``.

The forward pass is one matrix product, ``Y = W2 @ col`` with
``W2 = w.reshape(O, CKK)`` and ``col = im2col(x)`` of shape (CKK, P). The
gradients of a matrix product ``Y = A @ B`` are ``gA = gY @ B.T`` and
``gB = A.T @ gY``, so with ``gY`` the upstream gradient laid out as (O, P):

* ``gW = gY @ col.T``                -> (O, CKK), reshaped to (O, C, KH, KW);
* ``gcol = W2.T @ gY``               -> (CKK, P), and ``gx = col2im(gcol)``,
  because im2col copied every pixel into several columns and col2im adds
  those copies' gradients back onto the pixel;
* ``gb = gY.sum(axis=1)``            -> (O,), the bias is added at every position.
"""

from __future__ import annotations

import miniran.functional as F
from miniran import Function, get_array_module


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
    """conv2d(x, w, b) with stride and zero padding, by im2col; inputs x, w, b."""

    def __init__(self, stride=1, padding=0):
        self.stride, self.padding = stride, padding

    def forward(self, x, w, b):
        xp = get_array_module(x)
        o, c, kh, kw = w.shape
        col = F.im2col(x, (kh, kw), self.stride, self.padding)  # (C, KH, KW, N, OH, OW)
        _, _, _, n, oh, ow = col.shape
        self.x_shape, self.w, self.col_shape = x.shape, w, col.shape
        self.col2d = col.reshape(c * kh * kw, n * oh * ow)
        y = w.reshape(o, -1) @ self.col2d + b[:, None]  # (O, N*OH*OW)
        return xp.ascontiguousarray(y.reshape(o, n, oh, ow).transpose(1, 0, 2, 3))

    def backward(self, gy):
        o = self.w.shape[0]
        gy2d = gy.transpose(1, 0, 2, 3).reshape(o, -1)  # (O, N*OH*OW)
        gcol = self.w.reshape(o, -1).T @ gy2d  # (C*KH*KW, N*OH*OW)
        gx = F.col2im(gcol.reshape(self.col_shape), self.x_shape, self.stride, self.padding)
        gw = conv_weight_grad(gy, self.col2d, self.w.shape)
        gb = gy2d.sum(axis=1)
        return gx, gw, gb


def conv2d_solution(x, w, b, stride=1, padding=0):
    """Apply :class:`Conv2dSolution` to ``x`` (N, C, H, W), ``w`` (O, C, KH, KW), ``b`` (O,)."""
    return Conv2dSolution(stride, padding)(x, w, b)
