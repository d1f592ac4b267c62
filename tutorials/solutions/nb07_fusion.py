"""Solution to the exercise of notebook 07: the attention fusion as one Function.

Attention residual learning (paper Eq. 3) and naive attention learning (Eq. 1):

    H = (1 + M) * T        (ARL, ``residual=True``)
    H =      M  * T        (NAL, ``residual=False``)

Both are elementwise products, so the backward pass is the product rule,
element by element, with the upstream gradient ``gy = dL/dH``:

    dL/dT = gy * (1 + M)   (ARL)   or   gy * M   (NAL)
    dL/dM = gy * T                              (both)

The first line is the paper's Eq. 2: the mask multiplies the gradient that
reaches the trunk, so it filters the trunk's updates as well as its output.
With ARL the factor is in [1, 2] (for a mask in [0, 1]): the trunk always
keeps at least its plain gradient. With NAL it is in [0, 1]: where the mask
is near 0, the trunk gets (almost) no gradient at all.
"""

from __future__ import annotations

from miniran import Function


class AttentionFusionSolution(Function):
    """``H = (1 + M) * T`` (``residual=True``) or ``H = M * T``; M and T of the same shape."""

    def __init__(self, residual=True):
        self.residual = bool(residual)

    def forward(self, m, t):
        if m.shape != t.shape:
            raise ValueError(f"AttentionFusionSolution: M has shape {m.shape} but T has shape {t.shape}")
        self.m, self.t = m, t
        return (1 + m) * t if self.residual else m * t

    def backward(self, gy):
        gm = gy * self.t
        gt = gy * (1 + self.m) if self.residual else gy * self.m
        return gm, gt


def attention_fusion_solution(m, t, residual=True):
    return AttentionFusionSolution(residual)(m, t)
