"""The graph walk offers a Function the gradient already waiting for an input (``waiting``).

A Function that adds it into its own result (a GPU kernel doing the addition
in the same pass) lists the input in ``folded``, and the walk then adds
nothing; the gradients are the same as without folding.
"""

import numpy as np

from miniran import Function, Tensor


class Triple(Function):
    """y = 3x; backward may fold the waiting gradient of x into its own."""

    def __init__(self, fold):
        self.fold, self.seen = fold, []

    def forward(self, x):
        return x * 3

    def backward(self, gy):
        self.seen.append(self.waiting)
        gx = 3 * gy
        if self.fold and self.waiting[0] is not None:
            gx = gx + self.waiting[0]
            self.folded = (0,)
        return gx


def _residual(fold):
    """out = Triple(h) + h with h = 2x: dout/dx = 2 * (3 + 1) per element."""
    x = Tensor(np.arange(1.0, 5.0), requires_grad=True)
    h = x * 2.0
    triple = Triple(fold)
    out = triple(h) + h
    out.backward(np.ones(4), retain_graph=True)  # (freeing the graph would drop triple.seen)
    return x.grad, triple


def test_a_folded_gradient_is_added_once():
    plain, seen_plain = _residual(fold=False)
    folded, seen_folded = _residual(fold=True)
    np.testing.assert_array_equal(plain, [8.0] * 4)
    np.testing.assert_array_equal(folded, plain)  # not 2 * (3 + 1 + 1): the walk added nothing more
    assert seen_folded.seen[0][0] is not None and seen_folded.folded == (0,)
    assert seen_plain.folded == ()  # a function that does not fold says nothing


def test_nothing_waits_for_a_leaf_or_for_an_input_given_twice():
    class Pair(Function):
        def forward(self, a, b):
            return a * b

        def backward(self, gy):
            Pair.waiting_seen = self.waiting
            return gy * self.inputs[1].data, gy * self.inputs[0].data

    x = Tensor(np.array([2.0]), requires_grad=True)
    h = x * 1.0
    (Pair()(h, h) + h).backward(np.ones(1))
    assert Pair.waiting_seen == (None, None)  # h twice: folding both would count the gradient twice
    np.testing.assert_array_equal(x.grad, [2 * 2.0 + 1])
    (Pair()(x, x * 1.0) + x).backward(np.ones(1))
    assert Pair.waiting_seen[0] is None  # a leaf keeps its own gradient


def test_the_walk_keeps_no_reference_to_waiting_gradients():
    x = Tensor(np.arange(3.0), requires_grad=True)
    h = x * 2.0
    triple = Triple(fold=True)
    (triple(h) + h).backward(np.ones(3), retain_graph=True)
    assert triple.waiting == ()
