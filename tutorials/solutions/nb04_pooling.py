"""Solution to the earlier exercise of notebook 04: max pooling's backward pass (argmax routing).

Notebook 04's exercise is now the overlapping 3x3/2 pooling (``nb04_overlapping_pool.py``); this
non-overlapping version is kept as a simpler reference and is still tested.

Non-overlapping windows only (kernel = stride = k, H and W divisible by k),
which lets a reshape cut the image into its windows:

    (N, C, H, W) -> (N, C, OH, k, OW, k) -> (N, C, OH, OW, k*k)

The forward pass takes the max over the last axis and remembers *which*
element won (``argmax``). Only that element influenced the output, so the
backward pass sends each window's upstream gradient to the winner and zero
to the other ``k*k - 1`` elements, then undoes the reshape.
"""

from __future__ import annotations

from miniran import Function, get_array_module


def _windows(x, k):
    """(N, C, H, W) -> (N, C, H/k, W/k, k*k): every k x k window as a row."""
    n, c, h, w = x.shape
    return x.reshape(n, c, h // k, k, w // k, k).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h // k, w // k, k * k)


def _unwindows(win, k):
    """The inverse of :func:`_windows`: (N, C, OH, OW, k*k) -> (N, C, OH*k, OW*k)."""
    n, c, oh, ow, _ = win.shape
    return win.reshape(n, c, oh, ow, k, k).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, oh * k, ow * k)


class MaxPool2dSolution(Function):
    """k x k max pooling with stride k on (N, C, H, W), H and W divisible by k."""

    def __init__(self, k=2):
        self.k = k

    def forward(self, x):
        h, w = x.shape[2:]
        if h % self.k or w % self.k:
            raise ValueError(f"MaxPool2dSolution: H and W must be divisible by k={self.k}, got {x.shape}")
        win = _windows(x, self.k)
        self.arg = win.argmax(axis=-1)  # (N, C, OH, OW): which of the k*k elements won
        return win.max(axis=-1)

    def backward(self, gy):
        xp = get_array_module(gy)
        # one-hot of the winner in every window, times that window's gradient
        onehot = xp.arange(self.k * self.k) == self.arg[..., None]  # (N, C, OH, OW, k*k)
        gwin = onehot * gy[..., None]
        return _unwindows(gwin.astype(gy.dtype, copy=False), self.k)


def max_pool2d_solution(x, k=2):
    """Apply :class:`MaxPool2dSolution` with a k x k window and stride k."""
    return MaxPool2dSolution(k)(x)
