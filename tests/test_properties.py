"""Property tests: every vision function against a naive loop reference, forward and backward.

Hypothesis draws the shapes, kernel sizes, strides, paddings and dtypes; the
references are the naive oracles of ``tests/function_cases.py``: plain Python
loops over output pixels, written from the definitions and sharing no code
with miniran. Backward is compared with the
vector-Jacobian product of the *reference*: central differences in float64 of
``sum(gy * reference(x))``, exact for these piecewise-linear functions away
from ties (random inputs have none) and accurate to ~1e-8 for batch norm.

The runs are deterministic (``derandomize=True``) and small, so the file takes
a few seconds; raise ``max_examples`` locally to hunt for new edge cases.
"""

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import miniran.functional as F  # noqa: E402
from miniran import Tensor  # noqa: E402

from function_cases import naive_batch_norm, naive_bilinear, naive_conv2d, naive_pool2d  # noqa: E402

SETTINGS = settings(max_examples=30, derandomize=True, deadline=None, database=None)
DTYPES = st.sampled_from([np.float32, np.float64])
TOL = {np.float32: dict(rtol=2e-4, atol=2e-4), np.float64: dict(rtol=1e-6, atol=1e-7)}


def reference_vjp(fn, inputs, gy, eps=1e-6):
    """Gradients of ``sum(gy * fn(*inputs))`` by central differences (float64 in, float64 out)."""
    grads = []
    for i, x in enumerate(inputs):
        g = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            plus = [a.copy() for a in inputs]
            minus = [a.copy() for a in inputs]
            plus[i][idx] += eps
            minus[i][idx] -= eps
            g[idx] = (np.sum(gy * fn(*plus)) - np.sum(gy * fn(*minus))) / (2 * eps)
        grads.append(g)
    return grads


def check(miniran_fn, reference_fn, inputs, dtype, rng):
    """Forward and backward of ``miniran_fn`` (in ``dtype``) against ``reference_fn`` (float64)."""
    expected = reference_fn(*inputs)
    tensors = [Tensor(x.astype(dtype), requires_grad=True) for x in inputs]
    y = miniran_fn(*tensors)
    assert y.dtype == dtype and y.shape == expected.shape
    np.testing.assert_allclose(y.data, expected, **TOL[dtype])
    gy = rng.uniform(-1, 1, size=expected.shape)
    y.backward(gy.astype(dtype))
    for t, g in zip(tensors, reference_vjp(reference_fn, inputs, gy)):
        np.testing.assert_allclose(t.grad, g, **{k: 10 * v for k, v in TOL[dtype].items()})


# --------------------------------------------------------------------------- properties


@SETTINGS
@given(n=st.integers(1, 2), c=st.integers(1, 3), o=st.integers(1, 3), h=st.integers(1, 6), w=st.integers(1, 6),
       k=st.integers(1, 3), stride=st.integers(1, 3), padding=st.integers(0, 2), dtype=DTYPES, seed=st.integers(0, 99))
def test_conv2d_matches_naive_loops(n, c, o, h, w, k, stride, padding, dtype, seed):
    if k > h + 2 * padding or k > w + 2 * padding:
        return
    rng = np.random.default_rng(seed)
    x, wt, b = rng.normal(size=(n, c, h, w)), rng.normal(size=(o, c, k, k)), rng.normal(size=o)
    check(lambda x, wt, b: F.conv2d(x, wt, b, stride, padding),
          lambda x, wt, b: naive_conv2d(x, wt, b, stride=stride, padding=padding), [x, wt, b], dtype, rng)


@SETTINGS
@given(n=st.integers(1, 2), c=st.integers(1, 2), h=st.integers(1, 7), w=st.integers(1, 7), k=st.integers(1, 3),
       stride=st.integers(1, 3), padding=st.integers(0, 1), ceil_mode=st.booleans(), kind=st.sampled_from(["max", "avg"]),
       count_include_pad=st.booleans(), dtype=DTYPES, seed=st.integers(0, 99))
def test_pooling_matches_naive_loops(n, c, h, w, k, stride, padding, ceil_mode, kind, count_include_pad, dtype, seed):
    if 2 * padding > k or k > h + 2 * padding or k > w + 2 * padding:
        return
    rng = np.random.default_rng(seed)
    x = rng.permutation(n * c * h * w).reshape(n, c, h, w) / 7.0  # distinct values: no ties for max
    if kind == "max":
        fn = lambda x: F.max_pool2d(x, k, stride, padding, ceil_mode)  # noqa: E731
    else:
        fn = lambda x: F.avg_pool2d(x, k, stride, padding, ceil_mode, count_include_pad)  # noqa: E731
    check(fn, lambda x: naive_pool2d(x, k, stride, padding, ceil_mode=ceil_mode, kind=kind,
                                     count_include_pad=count_include_pad), [x], dtype, rng)


@SETTINGS
@given(n=st.integers(2, 3), c=st.integers(1, 3), h=st.integers(1, 3), w=st.integers(1, 3), dtype=DTYPES,
       seed=st.integers(0, 99))
def test_batch_norm_matches_naive_loops(n, c, h, w, dtype, seed):
    rng = np.random.default_rng(seed)
    x, gamma, beta = rng.normal(size=(n, c, h, w)), rng.normal(size=c), rng.normal(size=c)
    tol = TOL[dtype]
    TOL[dtype] = {k: 5 * v for k, v in tol.items()}  # normalising divides by a small std now and then
    try:
        check(lambda x, g, b: F.batch_norm(x, weight=g, bias=b, training=True),
              lambda x, g, b: naive_batch_norm(x, g, b, training=True, eps=1e-5), [x, gamma, beta], dtype, rng)
    finally:
        TOL[dtype] = tol


@SETTINGS
@given(n=st.integers(1, 2), c=st.integers(1, 2), h=st.integers(1, 5), w=st.integers(1, 5), oh=st.integers(1, 7),
       ow=st.integers(1, 7), align_corners=st.booleans(), dtype=DTYPES, seed=st.integers(0, 99))
def test_interpolate_bilinear_matches_naive_loops(n, c, h, w, oh, ow, align_corners, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, c, h, w))
    check(lambda x: F.interpolate_bilinear(x, (oh, ow), align_corners),
          lambda x: naive_bilinear(x, (oh, ow), align_corners), [x], dtype, rng)
