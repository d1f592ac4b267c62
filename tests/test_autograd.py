"""The autograd engine: graph order, accumulation, freeing, no_grad, broadcasting."""

import gc
import weakref

import numpy as np
import pytest

import miniran
import miniran.functional as F
from miniran import Function, Tensor, no_grad


def test_chain_of_2000_ops_is_iterative():
    x = Tensor(np.array([1.0]), requires_grad=True)
    y = x
    for _ in range(2000):
        y = y * 1.0001
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [1.0001 ** 2000], rtol=1e-10)


def test_diamond_graph_runs_each_function_once_and_sums_paths():
    calls = []

    class Spy(Function):
        def forward(self, x):
            return x * 3

        def backward(self, gy):
            calls.append(1)
            return gy * 3

    x = Tensor(np.array([2.0]), requires_grad=True)
    a = Spy()(x)
    b = a * a + a  # a used twice
    b.backward(np.array([1.0]))
    # d/dx (9x^2 + 3x) = 18x + 3
    np.testing.assert_allclose(x.grad, [39.0])
    assert len(calls) == 1


def test_gradients_accumulate_across_backward_calls():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    (x * 2).sum().backward()
    (x * 3).sum().backward()
    np.testing.assert_allclose(x.grad, [5.0, 5.0])
    x.zero_grad()
    assert x.grad is None


def test_graph_is_freed_after_backward():
    x = Tensor(np.ones(3), requires_grad=True)
    y = x * 2
    z = y.sum()
    func = y.creator
    z.backward()
    assert func.inputs is None  # released
    with pytest.raises(RuntimeError, match="retain_graph"):
        # a second backward reaches a freed function
        y2 = x * 2
        w = (y2 * y2).sum()
        w.backward(retain_graph=False)
        w.backward()


def test_retain_graph_allows_second_backward():
    x = Tensor(np.array([3.0]), requires_grad=True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad, [12.0])


def test_intermediate_arrays_are_released():
    x = Tensor(np.ones((100,)), requires_grad=True)
    y = F.exp(x)
    saved = weakref.ref(y.creator)
    z = y.sum()
    z.backward()
    del y, z
    gc.collect()
    assert saved() is None


def test_no_grad_records_nothing():
    x = Tensor(np.ones(2), requires_grad=True)
    with no_grad():
        y = x * 2
    assert not y.requires_grad and y.creator is None
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.sum().backward()
    z = x * 2  # recording is back on after the block
    assert z.requires_grad


def test_retain_grad_keeps_intermediate_gradient():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    h = (x * 3).retain_grad()
    (h * h).sum().backward()
    np.testing.assert_allclose(h.grad, 2 * h.data)


@pytest.mark.parametrize(
    "sa,sb",
    [((3, 4), (4,)), ((3, 1), (1, 4)), ((2, 3, 4), (3, 1)), ((5,), ()), ((1,), (2, 3))],
)
def test_broadcasting_reduces_in_backward(sa, sb, rng):
    a = rng.standard_normal(sa)
    b = rng.standard_normal(sb) + 3.0
    for op in (F.add, F.sub, F.mul, F.div):
        miniran.gradcheck(op, [a, b])


def test_backward_needs_grad_for_non_scalar():
    x = Tensor(np.ones(3), requires_grad=True)
    with pytest.raises(ValueError, match="grad must be given"):
        (x * 2).backward()
    with pytest.raises(ValueError, match="shape"):
        (x * 2).backward(np.ones(4))


def test_default_dtype_is_float32_and_arrays_keep_theirs():
    assert Tensor([1, 2.5]).dtype == np.float32
    assert Tensor([1, 2]).dtype.kind == "i"  # Python integers stay integers (labels)
    assert miniran.tensor([[1.0]]).dtype == np.float32
    assert Tensor(np.zeros(2, dtype=np.float64)).dtype == np.float64
    assert Tensor(np.arange(3)).dtype.kind == "i"
    x = Tensor(np.ones(2, dtype=np.float32))
    assert (x * 2.5).dtype == np.float32  # Python scalars follow the tensor


def test_requires_grad_on_integer_tensor_is_rejected():
    with pytest.raises(TypeError, match="floating-point"):
        Tensor(np.arange(3), requires_grad=True)


def test_operators_match_numpy(rng):
    a = rng.standard_normal((3, 4))
    b = rng.standard_normal((3, 4)) + 5
    ta, tb = Tensor(a), Tensor(b)
    np.testing.assert_allclose((ta + tb).data, a + b)
    np.testing.assert_allclose((ta - tb).data, a - b)
    np.testing.assert_allclose((ta * tb).data, a * b)
    np.testing.assert_allclose((ta / tb).data, a / b)
    np.testing.assert_allclose((-ta).data, -a)
    np.testing.assert_allclose((tb ** 2).data, b ** 2)
    np.testing.assert_allclose((2 - ta).data, 2 - a)
    np.testing.assert_allclose((1 / tb).data, 1 / b)
    np.testing.assert_allclose((ta @ tb.T).data, a @ b.T)
    np.testing.assert_allclose(ta[1:, ::2].data, a[1:, ::2])
    assert ((ta > 0).data == (a > 0)).all()
