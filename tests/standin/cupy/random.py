"""``cupy.random`` of the stand-in: NumPy generators, results on the device.

The streams differ from real CuPy's (cuRAND); only shapes, dtypes and the
launch count are faithful. Every draw counts one launch.
"""

from __future__ import annotations

import numpy as _np

import cupy_standin as _ctl
from cupy import _NAMES, _wrap
from cupy import ndarray as _ndarray

_REAL = frozenset(_NAMES["cupy.random"])


def _float_dtype(dtype):
    dtype = _np.dtype(dtype)
    if dtype not in (_np.float32, _np.float64):
        raise TypeError(f"cupy.random only supports float32 and float64, got {dtype}")
    return dtype


class RandomState:
    """``cupy.random.RandomState``: float draws take ``dtype`` (float32 or float64)."""

    def __init__(self, seed=None, method=None):
        self._rs = _np.random.RandomState(seed)

    def seed(self, seed=None):
        self._rs.seed(seed)

    def _draw(self, name, res, dtype=None):
        _ctl.launch("random." + name)
        res = _np.asarray(res)
        return _wrap(res.astype(dtype) if dtype is not None else res)

    def rand(self, *size, dtype=float):
        return self._draw("rand", self._rs.random_sample(size), _float_dtype(dtype))

    def randn(self, *size, dtype=float):
        return self._draw("randn", self._rs.standard_normal(size), _float_dtype(dtype))

    def random_sample(self, size=None, dtype=float):
        return self._draw("random_sample", self._rs.random_sample(size), _float_dtype(dtype))

    random = ranf = sample = random_sample

    def standard_normal(self, size=None, dtype=float):
        return self._draw("standard_normal", self._rs.standard_normal(size), _float_dtype(dtype))

    def normal(self, loc=0.0, scale=1.0, size=None, dtype=float):
        return self._draw("normal", self._rs.normal(_host(loc), _host(scale), size), _float_dtype(dtype))

    def uniform(self, low=0.0, high=1.0, size=None, dtype=float):
        return self._draw("uniform", self._rs.uniform(_host(low), _host(high), size), _float_dtype(dtype))

    def randint(self, low, high=None, size=None, dtype=int):
        return self._draw("randint", self._rs.randint(low, high, size, dtype=dtype))

    def permutation(self, num):
        if isinstance(num, _ndarray):
            res = num._a[self._rs.permutation(len(num))]
        else:
            res = self._rs.permutation(int(num))
        return self._draw("permutation", res)

    def shuffle(self, a):
        if not isinstance(a, _ndarray):
            raise TypeError("The array must be cupy.ndarray")
        self._rs.shuffle(a._a)
        _ctl.launch("random.shuffle")

    def choice(self, a, size=None, replace=True, p=None):
        a = a._a if isinstance(a, _ndarray) else a
        p = p._a if isinstance(p, _ndarray) else p
        return self._draw("choice", self._rs.choice(a, size, replace, p))

    def binomial(self, n, p, size=None, dtype=int):
        return self._draw("binomial", self._rs.binomial(n, p, size), dtype)


def _host(x):
    if isinstance(x, _np.ndarray):
        raise TypeError(f"Unsupported type {type(x)}")
    return x._a if isinstance(x, _ndarray) else x


class _Generator:
    """What ``cupy.random.default_rng`` returns (a subset of its methods)."""

    def __init__(self, seed=None):
        self._g = _np.random.default_rng(seed)

    def _draw(self, name, res, dtype=None):
        _ctl.launch("random." + name)
        res = _np.asarray(res)
        return _wrap(res.astype(dtype) if dtype is not None else res)

    def random(self, size=None, dtype=_np.float64, out=None):
        return self._draw("random", self._g.random(size), _float_dtype(dtype))

    def standard_normal(self, size=None, dtype=_np.float64, out=None):
        return self._draw("standard_normal", self._g.standard_normal(size), _float_dtype(dtype))

    def normal(self, loc=0.0, scale=1.0, size=None):
        return self._draw("normal", self._g.normal(_host(loc), _host(scale), size))

    def uniform(self, low=0.0, high=1.0, size=None, dtype=_np.float64):
        return self._draw("uniform", self._g.uniform(_host(low), _host(high), size), _float_dtype(dtype))

    def integers(self, low, high=None, size=None, dtype=_np.int64, endpoint=False):
        return self._draw("integers", self._g.integers(low, high, size, dtype=dtype, endpoint=endpoint))

    def permutation(self, x):
        return self._draw("permutation", self._g.permutation(x._a if isinstance(x, _ndarray) else x))


def default_rng(seed=None):
    return _Generator(seed)


_state = [RandomState()]


def get_random_state():
    return _state[0]


def set_random_state(rs):
    _state[0] = rs


def seed(seed=None):
    _state[0].seed(seed)


def reset_states():
    _state[0] = RandomState()


def _delegate(name):
    def f(*args, **kwargs):
        return getattr(_state[0], name)(*args, **kwargs)
    f.__name__ = name
    return f


for _n in ["rand", "randn", "random_sample", "random", "ranf", "sample", "standard_normal",
           "normal", "uniform", "randint", "permutation", "shuffle", "choice", "binomial"]:
    globals()[_n] = _delegate(_n)


def __getattr__(name):
    if name in _REAL:
        raise NotImplementedError(f"cupy stand-in: cupy.random.{name} is not implemented")
    raise AttributeError(f"module 'cupy.random' has no attribute '{name}'")
