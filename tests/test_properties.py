"""Property tests: every vision function against a naive loop reference, forward and backward.

Hypothesis draws the shapes, kernel sizes, strides, paddings and dtypes; the
references below are plain Python loops over output pixels, written from the
definitions and sharing no code with miniran. Backward is compared with the
vector-Jacobian product of the *reference*: central differences in float64 of
``sum(gy * reference(x))``, exact for these piecewise-linear functions away
from ties (random inputs have none) and accurate to ~1e-8 for batch norm.

The runs are deterministic (``derandomize=True``) and small, so the file takes
a few seconds; raise ``max_examples`` locally to hunt for new edge cases.
"""

import math

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import miniran.functional as F  # noqa: E402
from miniran import Tensor  # noqa: E402

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


# --------------------------------------------------------------------------- naive references


def naive_conv2d(x, w, b, stride, padding):
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    oh, ow = (h + 2 * padding - kh) // stride + 1, (wd + 2 * padding - kw) // stride + 1
    y = np.zeros((n, o, oh, ow))
    for i in range(n):
        for j in range(o):
            for r in range(oh):
                for s in range(ow):
                    y[i, j, r, s] = np.sum(xp[i, :, r * stride:r * stride + kh, s * stride:s * stride + kw] * w[j]) + b[j]
    return y


def naive_pool(x, k, stride, padding, ceil_mode, kind, count_include_pad=True):
    n, c, h, w = x.shape
    size = []
    for d in (h, w):
        span = d + 2 * padding - k
        out = (math.ceil if ceil_mode else math.floor)(span / stride) + 1
        if ceil_mode and (out - 1) * stride >= d + padding:
            out -= 1
        size.append(out)
    y = np.zeros((n, c, *size))
    for r in range(size[0]):
        for s in range(size[1]):
            r0, s0 = r * stride - padding, s * stride - padding
            r1, s1 = min(r0 + k, h + padding), min(s0 + k, w + padding)
            real = x[:, :, max(r0, 0):min(r1, h), max(s0, 0):min(s1, w)]
            if kind == "max":
                y[:, :, r, s] = real.max(axis=(2, 3))
            else:
                count = (r1 - r0) * (s1 - s0) if count_include_pad else real.shape[2] * real.shape[3]
                y[:, :, r, s] = real.sum(axis=(2, 3)) / count
    return y


def naive_batch_norm(x, gamma, beta, eps=1e-5):
    y = np.zeros_like(x)
    for c in range(x.shape[1]):
        v = x[:, c]
        y[:, c] = gamma[c] * (v - v.mean()) / np.sqrt(v.var() + eps) + beta[c]
    return y


def naive_bilinear(x, size, align_corners):
    n, c, h, w = x.shape
    oh, ow = size
    y = np.zeros((n, c, oh, ow))

    def source(i, n_in, n_out):
        if align_corners:
            return i * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        return max((i + 0.5) * n_in / n_out - 0.5, 0.0)

    for r in range(oh):
        for s in range(ow):
            fy, fx = source(r, h, oh), source(s, w, ow)
            y0, x0 = min(int(math.floor(fy)), h - 1), min(int(math.floor(fx)), w - 1)
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            ly, lx = fy - y0, fx - x0
            y[:, :, r, s] = ((1 - ly) * (1 - lx) * x[:, :, y0, x0] + (1 - ly) * lx * x[:, :, y0, x1]
                             + ly * (1 - lx) * x[:, :, y1, x0] + ly * lx * x[:, :, y1, x1])
    return y


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
          lambda x, wt, b: naive_conv2d(x, wt, b, stride, padding), [x, wt, b], dtype, rng)


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
    check(fn, lambda x: naive_pool(x, k, stride, padding, ceil_mode, kind, count_include_pad), [x], dtype, rng)


@SETTINGS
@given(n=st.integers(2, 3), c=st.integers(1, 3), h=st.integers(1, 3), w=st.integers(1, 3), dtype=DTYPES,
       seed=st.integers(0, 99))
def test_batch_norm_matches_naive_loops(n, c, h, w, dtype, seed):
    rng = np.random.default_rng(seed)
    x, gamma, beta = rng.normal(size=(n, c, h, w)), rng.normal(size=c), rng.normal(size=c)
    tol = TOL[dtype]
    TOL[dtype] = {k: 5 * v for k, v in tol.items()}  # normalising divides by a small std now and then
    try:
        check(lambda x, g, b: F.batch_norm(x, weight=g, bias=b, training=True), naive_batch_norm, [x, gamma, beta], dtype, rng)
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
