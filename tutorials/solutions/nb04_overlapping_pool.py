"""Solution to exercise 1 of notebook 04: max pooling with overlapping 3x3 windows, stride 2, padding 1.

This is the pooling of the mask branch (section 3.2). Windows overlap (stride
2 < kernel 3), so the reshape trick of non-overlapping pooling does not apply.

Forward. Pad with -inf (padding must never win), then loop over the 9 taps:
for tap (ky, kx) the strided slice ``xpad[:, :, ky::2, kx::2]`` (OH x OW of
it) holds, for every window, the pixel at that tap. Keep the running maximum
and the tap that holds it; replace only when *strictly* greater, so on ties
the first tap wins (one winner per window).

Backward. Only the winner of a window influenced its output, so the window's
upstream gradient goes to that pixel and nowhere else. A pixel can win two
or more overlapping windows (the centre of a 3x3 ridge, say): it must receive
the *sum* of their gradients. Hence ``+=`` into a zero image, tap by tap, and
``np.add.at``-free because within one tap the windows' pixels are distinct.
Two classic mistakes: ``gx[x == max] = gy`` (every tied pixel gets the whole
gradient, and an overlapping window overwrites the other), and forgetting the
padding offset of 1 when mapping window (i, j) to pixel rows ``2i - 1 + ky``.
"""

from __future__ import annotations

import numpy as np

from miniran import Function

K, S, P = 3, 2, 1


class MaxPool3x3s2Solution(Function):
    """Max pooling, 3x3 windows, stride 2, padding 1, on (N, C, H, W)."""

    def forward(self, x):
        n, c, h, w = x.shape
        oh, ow = (h + 2 * P - K) // S + 1, (w + 2 * P - K) // S + 1
        xpad = np.pad(x, ((0, 0), (0, 0), (P, P), (P, P)), constant_values=-np.inf)
        best = np.full((n, c, oh, ow), -np.inf, dtype=x.dtype)
        arg = np.zeros((n, c, oh, ow), dtype=np.int64)
        for tap in range(K * K):
            ky, kx = divmod(tap, K)
            win = xpad[:, :, ky:ky + (oh - 1) * S + 1:S, kx:kx + (ow - 1) * S + 1:S]
            beats = win > best  # strictly greater: on ties the first tap stays
            arg[beats] = tap
            best = np.where(beats, win, best)
        self.arg, self.x_shape, self.out = arg, x.shape, (oh, ow)
        return best

    def backward(self, gy):
        n, c, h, w = self.x_shape
        oh, ow = self.out
        gpad = np.zeros((n, c, h + 2 * P, w + 2 * P), dtype=gy.dtype)
        for tap in range(K * K):
            ky, kx = divmod(tap, K)
            # += : a pixel that wins overlapping windows collects all their gradients
            gpad[:, :, ky:ky + (oh - 1) * S + 1:S, kx:kx + (ow - 1) * S + 1:S] += np.where(self.arg == tap, gy, 0)
        return gpad[:, :, P:P + h, P:P + w]
