"""Gradient checks (float64, random upstream gradient) and forward references for the basic functions."""

import contextlib

import numpy as np
import pytest

import miniran
import miniran.functional as F
import miniran.threads
from miniran import Tensor, gradcheck

SHAPES = [(3,), (2, 3), (2, 3, 4)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    "fn,ref,domain",
    [
        (F.exp, np.exp, (-2, 2)),
        (F.log, np.log, (0.5, 3)),
        (F.tanh, np.tanh, (-2, 2)),
        (F.sigmoid, lambda x: 1 / (1 + np.exp(-x)), (-4, 4)),
        (F.neg, np.negative, (-2, 2)),
        (lambda x: F.pow(x, 3), lambda x: x ** 3, (-2, 2)),
        (lambda x: F.pow(x, 0.5), np.sqrt, (0.5, 3)),
    ],
)
def test_unary(fn, ref, domain, shape, rng):
    x = rng.uniform(*domain, size=shape)
    np.testing.assert_allclose(fn(Tensor(x)).data, ref(x), rtol=1e-12)
    gradcheck(fn, [x])


@pytest.mark.parametrize("shape", SHAPES)
def test_relu_away_from_kink(shape, rng):
    x = rng.uniform(0.1, 1, size=shape) * rng.choice([-1, 1], size=shape)
    np.testing.assert_array_equal(F.relu(Tensor(x)).data, np.maximum(x, 0))
    gradcheck(F.relu, [x])


def test_sigmoid_is_finite_for_huge_inputs():
    y = F.sigmoid(Tensor(np.array([-1000.0, 0.0, 1000.0]))).data
    np.testing.assert_allclose(y, [0.0, 0.5, 1.0])


@pytest.mark.parametrize("axis", [None, 0, 1, (0, 2), -1])
@pytest.mark.parametrize("keepdims", [False, True])
def test_reductions(axis, keepdims, rng):
    x = rng.permutation(24).reshape(2, 3, 4).astype(np.float64) / 7.0  # distinct: no ties for max
    for fn, ref in ((F.sum, np.sum), (F.mean, np.mean), (F.max, np.max)):
        out = fn(Tensor(x), axis=axis, keepdims=keepdims)
        np.testing.assert_allclose(out.data, ref(x, axis=axis, keepdims=keepdims))
        gradcheck(lambda t: fn(t, axis=axis, keepdims=keepdims), [x])


def test_max_splits_gradient_between_ties():
    x = Tensor(np.array([1.0, 3.0, 3.0]), requires_grad=True)
    F.max(x).backward()
    np.testing.assert_allclose(x.grad, [0.0, 0.5, 0.5])


def test_shape_ops(rng):
    x = rng.standard_normal((2, 3, 4))
    np.testing.assert_array_equal(F.reshape(Tensor(x), (6, 4)).data, x.reshape(6, 4))
    np.testing.assert_array_equal(F.transpose(Tensor(x), (2, 0, 1)).data, x.transpose(2, 0, 1))
    np.testing.assert_array_equal(F.transpose(Tensor(x)).data, x.T)
    np.testing.assert_array_equal(F.flatten(Tensor(x)).data, x.reshape(2, 12))
    gradcheck(lambda t: F.reshape(t, (4, 6)), [x])
    gradcheck(lambda t: F.transpose(t, (1, 2, 0)), [x])
    gradcheck(lambda t: F.flatten(t), [x])
    with pytest.raises(ValueError, match="cannot reshape"):
        F.reshape(Tensor(x), (5, 5))


@pytest.mark.parametrize(
    "index",
    [(1,), (slice(None), 2), (Ellipsis, slice(1, 3)), (np.array([0, 2, 2, 1]),), (slice(None), np.array([0, 0, 1]))],
)
def test_getitem(index, rng):
    x = rng.standard_normal((3, 4, 2))
    np.testing.assert_array_equal(F.getitem(Tensor(x), index).data, x[index])
    gradcheck(lambda t: F.getitem(t, index), [x])


def test_getitem_repeated_indices_accumulate():
    x = Tensor(np.zeros(3), requires_grad=True)
    F.getitem(x, np.array([1, 1, 2])).backward(np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(x.grad, [0.0, 3.0, 3.0])


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(axis, rng):
    shapes = {0: [(1, 3), (2, 3)], 1: [(2, 1), (2, 3)], -1: [(2, 2), (2, 1)]}[axis]
    a, b = (rng.standard_normal(s) for s in shapes)
    np.testing.assert_array_equal(F.concat([Tensor(a), Tensor(b)], axis).data, np.concatenate([a, b], axis))
    gradcheck(lambda s, t: F.concat([s, t], axis), [a, b])
    with pytest.raises(ValueError, match="differ"):
        F.concat([Tensor(np.ones((2, 2))), Tensor(np.ones((3, 3)))], axis=0)


@pytest.mark.parametrize("sa,sb", [((2, 3), (3, 4)), ((5, 2, 3), (3, 2)), ((2, 2, 3), (2, 3, 4)), ((3,), (3, 2))])
def test_matmul(sa, sb, rng):
    a, b = rng.standard_normal(sa), rng.standard_normal(sb)
    np.testing.assert_allclose(F.matmul(Tensor(a), Tensor(b)).data, a @ b)
    gradcheck(F.matmul, [a, b])
    with pytest.raises(ValueError, match="inner dimensions"):
        F.matmul(Tensor(a), Tensor(np.ones((7, 2))))


@pytest.mark.parametrize("bias", [True, False])
def test_linear(bias, rng):
    x, w, b = rng.standard_normal((4, 3)), rng.standard_normal((5, 3)), rng.standard_normal(5)
    args = [x, w, b] if bias else [x, w]
    expected = x @ w.T + (b if bias else 0)
    np.testing.assert_allclose(F.linear(*map(Tensor, args)).data, expected)
    gradcheck(F.linear, args)
    with pytest.raises(ValueError, match="weight must have shape"):
        F.linear(Tensor(x), Tensor(np.ones((5, 4))))


@pytest.mark.parametrize("shape,axis", [((4, 5), 1), ((3, 4, 2), 1), ((2, 6), 0), ((2, 3, 4), -1)])
def test_softmax_and_log_softmax(shape, axis, rng):
    x = rng.standard_normal(shape) * 3

    def ref(v):
        e = np.exp(v - v.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)

    np.testing.assert_allclose(F.softmax(Tensor(x), axis).data, ref(x), rtol=1e-12)
    np.testing.assert_allclose(F.log_softmax(Tensor(x), axis).data, np.log(ref(x)), rtol=1e-10)
    gradcheck(lambda t: F.softmax(t, axis), [x])
    gradcheck(lambda t: F.log_softmax(t, axis), [x])


def test_softmax_stable_for_large_logits():
    y = F.softmax(Tensor(np.array([[1000.0, 0.0, -1000.0]]))).data
    np.testing.assert_allclose(y, [[1.0, 0.0, 0.0]])


def test_cross_entropy(rng):
    logits = rng.standard_normal((6, 4)) * 2
    labels = rng.integers(0, 4, size=6)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    expected = -np.mean(np.log(p[np.arange(6), labels]))
    np.testing.assert_allclose(F.cross_entropy(Tensor(logits), labels).data, expected, rtol=1e-12)
    gradcheck(lambda t: F.cross_entropy(t, labels), [logits])
    big = F.cross_entropy(Tensor(np.array([[1e4, -1e4]])), np.array([1]))
    assert np.isfinite(big.data) and big.data == pytest.approx(2e4)


def test_cross_entropy_rejects_bad_labels():
    logits = Tensor(np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\)"):
        F.cross_entropy(logits, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        F.cross_entropy(logits, np.array([0, 1, 4]))
    with pytest.raises(ValueError, match="integer"):
        F.cross_entropy(logits, np.array([0.0, 1.0, 2.0]))


@pytest.mark.gpu
def test_basic_functions_agree_on_gpu(cp, rng):
    """The same code on CuPy gives NumPy's results (float32 tolerance)."""
    x = rng.standard_normal((4, 5)).astype(np.float32)
    labels = rng.integers(0, 4, size=4)  # the logits below have 4 classes
    results = {}
    for mod in (np, cp):
        t = Tensor(mod.asarray(x), requires_grad=True)
        loss = F.cross_entropy(F.tanh(t) @ Tensor(mod.asarray(x.T)) * 0.5 + F.sigmoid(t).sum(1, keepdims=True), mod.asarray(labels))
        loss.backward()
        results[mod.__name__] = (float(loss.data), miniran.backend.to_numpy(t.grad))
    (l0, g0), (l1, g1) = results.values()
    assert l0 == pytest.approx(l1, rel=1e-5)
    np.testing.assert_allclose(g0, g1, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- issue 10: autograd edge cases


@pytest.mark.parametrize("sa,sb", [((4,), (2, 4, 3)), ((2, 3, 4), (4,)), ((4,), (4,)), ((4,), (4, 3)),
                                   ((3, 4), (4,)), ((2, 1, 3, 4), (4,)), ((4,), (2, 2, 4, 3))])
def test_matmul_with_a_vector_and_a_batch(sa, sb):
    """1-D @ N-D and N-D @ 1-D: gradients equal a naive reference, and gradcheck passes."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=sa), rng.normal(size=sb)
    gy = rng.normal(size=np.matmul(a, b).shape)
    ta, tb = Tensor(a, requires_grad=True), Tensor(b, requires_grad=True)
    (F.matmul(ta, tb) * Tensor(gy)).sum().backward()
    # naive reference: d(sum gy * (a @ b)) / da and / db by finite structure (einsum over promoted shapes)
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    g2 = gy
    if b.ndim == 1:
        g2 = np.expand_dims(g2, -1)
    if a.ndim == 1:
        g2 = np.expand_dims(g2, -2)
    ga = np.matmul(g2, np.swapaxes(b2, -1, -2))
    gb = np.matmul(np.swapaxes(a2, -1, -2), g2)
    ga = ga.reshape(-1, *a2.shape).sum(axis=0) if ga.ndim > a2.ndim else ga
    gb = gb.reshape(-1, *b2.shape).sum(axis=0) if gb.ndim > b2.ndim else gb
    np.testing.assert_allclose(ta.grad, ga.reshape(a.shape), rtol=1e-10)
    np.testing.assert_allclose(tb.grad, gb.reshape(b.shape), rtol=1e-10)
    gradcheck(F.matmul, [a, b])


def test_tensor_factory_with_requires_grad_is_float():
    t = miniran.tensor([1, 2, 3], requires_grad=True)
    assert t.dtype.kind == "f" and t.requires_grad
    (t * t).sum().backward()
    np.testing.assert_allclose(t.grad, [2, 4, 6])
    assert miniran.tensor([1, 2, 3]).dtype.kind == "i"  # no gradient asked: integers stay integers
    with pytest.raises(TypeError, match="floating-point"):
        miniran.tensor([1, 2, 3], requires_grad=True, dtype=np.int64)


def test_tensor_truth_value_is_numpy_s():
    a, b = Tensor(np.array([1.0, 2.0])), Tensor(np.array([1.0, 3.0]))
    with pytest.raises(ValueError, match="ambiguous"):
        bool(a == b)
    with pytest.raises(ValueError, match="ambiguous"):
        if a == b:
            pass
    with pytest.raises(ValueError, match="ambiguous"):
        a in [b]  # noqa: B015
    assert a in [a]  # the same object: found without a comparison, as for arrays
    loss = Tensor(np.float32(0.25))
    assert loss < 0.5 and not loss > 0.5  # a single element has a truth value
    assert bool(Tensor(np.array([0.0]))) is False


def test_pow_zero_gradient_at_zero():
    x = Tensor(np.array([0.0, 2.0]), requires_grad=True)
    (x ** 0).sum().backward()
    np.testing.assert_array_equal(x.grad, [0.0, 0.0])


# ---------------------------------------------------------------- the cross-entropy's label check, one code path


def test_cross_entropy_function_poisons_out_of_range_labels_on_the_cpu_too():
    """The wrapper refuses NumPy labels out of range on the host; the Function itself
    (as on the GPU) returns a NaN loss instead of raising or reading a wrapped label."""
    from miniran.functional.loss import CrossEntropy

    logits = Tensor(np.zeros((3, 4)), requires_grad=True)
    for labels in ([0, 1, 4], [0, 1, -5], [0, -1, 2]):
        loss = CrossEntropy()(logits, Tensor(np.array(labels)))
        assert np.isnan(float(loss.data)), labels
    loss = CrossEntropy()(logits, Tensor(np.array([0, 3, 2])))
    assert float(loss.data) == pytest.approx(np.log(4))
    loss.backward()
    assert np.isfinite(logits.grad).all()


@pytest.mark.gpu
def test_cross_entropy_label_check_waits_for_nothing_on_the_gpu(cp):
    cupy_standin = pytest.importorskip("cupy_standin", reason="counts syncs: stand-in only")
    logits = Tensor(cp.zeros((3, 4), dtype=cp.float32), requires_grad=True)
    labels = cp.asarray([0, 1, 4])
    with cupy_standin.counting() as c:
        loss = F.cross_entropy(logits, labels)
        loss.backward()
    assert c.syncs == 0 and c.host_to_device == 0, dict(c.syncs_by_name)
    assert c.launches <= 24, c.launches_by_name  # what the former GPU-only branch took, forward and backward
    assert np.isnan(float(loss.data))


# ---------------------------------------------------------------- the elementwise twins against the reference




def _run(fn, *arrays, upstream, reference):
    """Output, input gradients and the class that computed the output, of ``fn`` on Tensors of ``arrays``."""
    ts = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    with miniran.reference_only() if reference else contextlib.nullcontext():
        y = fn(*ts)
        y.backward(upstream)
    return [y.data] + [t.grad for t in ts], type(y.creator).__name__


def _assert_close(fast, ref, rtol, what):
    for i, (a, b) in enumerate(zip(fast, ref)):
        assert a.dtype == b.dtype, what
        err = np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)
        assert err <= rtol, f"{what}: output {i} differs from the reference by {err:.2e} (relative)"


# name: (function of tensors, the twin that computes it on same-shape NumPy arrays, arity, rtol)
ELEMENTWISE_TWINS = {
    "add": (lambda a, b: a + b, "AddCPU", 2, 0.0),
    "mul": (lambda a, b: a * b, "MulCPU", 2, 0.0),
    "F.add": (F.add, "AddCPU", 2, 0.0),
    "F.mul": (F.mul, "MulCPU", 2, 0.0),
    "sigmoid": (F.sigmoid, "SigmoidCPU", 1, 1e-15),  # the backward product in another order
}


@pytest.mark.parametrize("shape", [(7, 3, 5, 4), (5,), (3, 7)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", sorted(ELEMENTWISE_TWINS))
def test_elementwise_cpu_twins_match_the_reference(name, dtype, shape, cpu_threads, rng):
    fn, twin, arity, rtol = ELEMENTWISE_TWINS[name]
    arrays = [(rng.standard_normal(shape) * 30).astype(dtype) for _ in range(arity)]  # large |x| too
    gy = rng.standard_normal(shape).astype(dtype)
    fast, fast_name = _run(fn, *arrays, upstream=gy, reference=False)
    ref, ref_name = _run(fn, *arrays, upstream=gy, reference=True)
    splits = cpu_threads > 1 and shape[0] > 1
    assert fast_name == (twin if splits or twin == "SigmoidCPU" else ref_name)
    assert ref_name == {"AddCPU": "Add", "MulCPU": "Mul", "SigmoidCPU": "SigmoidFunction"}[twin]
    _assert_close(fast, ref, rtol if dtype == np.float64 or rtol == 0 else 1e-6, f"{name} {dtype.__name__} {shape}")


def test_elementwise_twins_gradcheck(cpu_threads, rng):
    a, b = rng.standard_normal((4, 3, 2)), rng.standard_normal((4, 3, 2))
    gradcheck(lambda s, t: s * t + s, [a, b])
    gradcheck(F.sigmoid, [a])


def test_which_elementwise_code_runs(monkeypatch, rng):
    """Twins take same-shape, same-dtype NumPy arrays that split over several threads; all else the reference."""
    monkeypatch.setattr(miniran.threads, "PARALLEL_MIN_ELEMENTS", 4)
    miniran.threads.set_cpu_threads(2)
    try:
        a, b = (Tensor(rng.standard_normal((4, 3)), requires_grad=True) for _ in range(2))

        def name(y):
            return type(y.creator).__name__
        assert [name(a + b), name(a * b), name(F.sigmoid(a)), name(F.relu(a))] == [
            "AddCPU", "MulCPU", "SigmoidCPU", "ReLUFunction"]
        assert name(a + Tensor(np.ones(3))) == "Add"  # broadcasting
        assert name(a * Tensor(np.ones((4, 3), np.float32))) == "Mul"  # two dtypes
        assert name(a[:1] + b[:1]) == "Add"  # one row: nothing to split
        assert name(a + 1.0) == "ScalarOp"
        miniran.threads.set_cpu_threads(1)
        assert name(a + b) == "Add"
        miniran.threads.set_cpu_threads(2)
        with miniran.reference_only():
            assert [name(a + b), name(a * b), name(F.sigmoid(a)), name(F.relu(a))] == [
                "Add", "Mul", "SigmoidFunction", "ReLUFunction"]
    finally:
        miniran.threads.set_cpu_threads(None)


# ---------------------------------------------------------------- the GPU twin against the reference, on the device


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_gpu_twin_matches_the_reference_on_the_device(cp, dtype, rng):
    x = rng.standard_normal((2, 3, 5, 7)).astype(dtype)
    x[0, 0, 0, :3] = 0.0  # the kink: the gradient there is 0
    gy = cp.asarray(rng.standard_normal(x.shape).astype(dtype))
    results = []
    for reference in (True, False):
        t = Tensor(cp.asarray(x), requires_grad=True)
        with miniran.reference_only() if reference else contextlib.nullcontext():
            y = F.relu(t)
        y.backward(gy)
        assert isinstance(t.grad, cp.ndarray) and t.grad.dtype == dtype
        results.append((type(y.creator).__name__, miniran.backend.to_numpy(y.data), miniran.backend.to_numpy(t.grad)))
    (ref_name, y_ref, g_ref), (gpu_name, y_gpu, g_gpu) = results
    assert (ref_name, gpu_name) == ("ReLUFunction", "ReLUGPU")
    np.testing.assert_array_equal(y_gpu, y_ref)
    np.testing.assert_array_equal(g_gpu, g_ref)


@pytest.mark.gpu
def test_elementwise_functions_run_their_reference_on_the_device(cp, rng):
    """Add, Mul and the sigmoid have no GPU twin: CuPy arrays take the reference code."""
    a, b = (Tensor(cp.asarray(rng.standard_normal((4, 3)).astype(np.float32)), requires_grad=True) for _ in range(2))
    for y, name in ((a + b, "Add"), (a * b, "Mul"), (F.sigmoid(a), "SigmoidFunction")):
        assert type(y.creator).__name__ == name and isinstance(y.data, cp.ndarray)


@pytest.mark.gpu
def test_relu_gpu_backward_is_one_launch(cp):
    cupy_standin = pytest.importorskip("cupy_standin", reason="counts launches: stand-in only")
    y = F.relu(Tensor(cp.linspace(-1, 1, 12, dtype=cp.float32), requires_grad=True))
    gy = cp.ones(12, dtype=cp.float32)
    with cupy_standin.counting() as c:
        y.creator.backward(gy)
    assert c.launches == 1, c.launches_by_name
