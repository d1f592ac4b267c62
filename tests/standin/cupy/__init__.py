"""CPU stand-in for CuPy, for miniran's test suite (see tests/standin/README.md).

Arrays live in host memory (a private NumPy array inside ``cupy.ndarray``),
but the rules that break GPU code are CuPy's: no implicit conversion to or
from NumPy, ``empty`` returns garbage, fancy indices wrap, reductions return
0-d device arrays, user kernels run their own CUDA C source. Every operation
is counted (launches, syncs, host-to-device copies) in ``cupy_standin``.
Only names that the real CuPy has exist; a real name that the stand-in does
not implement raises a loud error on access.
"""

from __future__ import annotations

import builtins as _builtins
import json as _json
import os as _os
import weakref as _weakref

import numpy as _np

import cupy_standin as _ctl

_IS_MINIRAN_STANDIN = True
__version__ = "14.0.0+standin"

with open(_os.path.join(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))),
                       "cupy_names.json")) as _f:
    _NAMES = _json.load(_f)
_REAL = frozenset(_NAMES["cupy"])
_REAL_NDARRAY = frozenset(_NAMES["cupy.ndarray"])
_REAL_UFUNCS = frozenset(_NAMES["_ufuncs"])
_rng_garbage = _np.random.default_rng(12345)
_live: dict = {}  # id -> weakref of each owning buffer, for the memory pool's used_bytes


def _track(a):
    _ctl.allocated(a)
    key = id(a)
    _live[key] = _weakref.ref(a, lambda _r, key=key: _live.pop(key, None))

# --------------------------------------------------------------------------- helpers


def _unsupported(x):
    return TypeError(f"Unsupported type {type(x)}")


def _unwrap(x, strict=False):
    """Host view of a stand-in argument; refuses NumPy arrays like CuPy does.

    ``strict`` (ufuncs and operators): lists and tuples are refused as well.
    """
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, _np.ndarray):
        raise _unsupported(x)
    if isinstance(x, (list, tuple)):
        if strict:
            raise _unsupported(x)
        return type(x)(_unwrap(v) for v in x)
    return x


def _wrap(res):
    """Device result of a NumPy computation: arrays and NumPy scalars become ndarrays."""
    if isinstance(res, _np.ndarray):
        out = object.__new__(ndarray)
        out._a = res
        if res.base is None:
            _track(res)
        _ctl.wrapped(out)
        return out
    if isinstance(res, (_np.generic, _builtins.bool, _builtins.int, _builtins.float)):
        # CuPy computes on the device: reductions and tests give 0-d arrays, never scalars
        return _wrap(_np.asarray(res))
    if isinstance(res, tuple):
        return tuple(_wrap(r) for r in res)
    if isinstance(res, list):
        return [_wrap(r) for r in res]
    return res


def _shares(res, inputs) -> bool:
    """True when ``res`` (or every array of a list/tuple result) is a view of an input."""
    if isinstance(res, (list, tuple)) and res:
        return _builtins.all(_shares(r, inputs) for r in res)
    return isinstance(res, _np.ndarray) and _builtins.any(
        isinstance(a, _np.ndarray) and _np.may_share_memory(res, a) for a in inputs)


def _host_arrays(args):
    for a in args:
        if isinstance(a, _np.ndarray):
            yield a
        elif isinstance(a, (list, tuple)):
            yield from _host_arrays(a)


def _garbage(shape, dtype, order="C"):
    """Uninitialised device memory: NaN for floats, random bits otherwise."""
    dtype = _np.dtype(dtype)
    a = _np.empty(shape, dtype, order=order)
    if dtype.kind in "fc":
        a.fill(_np.nan)
    elif a.nbytes:  # (through a 1-d view: a 0-d array cannot change its itemsize)
        a.reshape(-1, order="A").view(_np.uint8)[:] = _rng_garbage.integers(0, 256, a.nbytes, dtype=_np.uint8)
    if dtype.kind == "b":
        a.reshape(-1, order="A").view(_np.uint8)[...] &= 1
    return a


def _func(name, npfunc=None, sync=False, view_ok=True, scalar_result=False):
    """A CuPy function built on the NumPy function of the same name.

    Results that share memory with an argument are views (no launch); others
    count one launch. ``sync``: CuPy must read data back to size the result.
    """
    npfunc = npfunc or getattr(_np, name)

    @_ctl.captured
    def f(*args, **kwargs):
        out = kwargs.get("out")
        a = _unwrap(list(args))
        k = {key: _unwrap(v) for key, v in kwargs.items()}
        res = npfunc(*a, **k)
        if scalar_result:  # metadata (shape, ndim, result_type...): no device work
            return res
        if sync:
            _ctl.sync(name)
        if out is not None:
            _ctl.launch(name)
            return out
        if not (view_ok and _shares(res, list(_host_arrays(a)))):
            _ctl.launch(name)
        return _wrap(res)

    f.__name__ = f.__qualname__ = name
    f.__doc__ = f"cupy stand-in for ``cupy.{name}`` (built on ``numpy.{name}``)."
    return f


# --------------------------------------------------------------------------- ufuncs


class ufunc:
    """A CuPy ufunc: refuses NumPy arrays and lists; ``at`` is CuPy's scatter."""

    # CuPy's ufunc.at scatter ops and the dtypes it allows (what its atomics support)
    _AT = {"add": ("add", "int32 int64 float16 float32 float64 uint32 uint64"),
           "subtract": ("sub", "int32 uint32"),
           "maximum": ("max", "int32 int64 float32 float64 uint32 uint64"),
           "minimum": ("min", "int32 int64 float32 float64 uint32 uint64"),
           "bitwise_and": ("and", "int32 int64 uint32 uint64"),
           "bitwise_or": ("or", "int32 int64 uint32 uint64"),
           "bitwise_xor": ("xor", "int32 int64 uint32 uint64")}

    def __init__(self, name):
        self.__name__ = name
        self.name = "cupy_" + name
        self._np = getattr(_np, name)
        self.nin, self.nout, self.nargs = self._np.nin, self._np.nout, self._np.nargs
        self.types = self._np.types

    def __repr__(self):
        return f"<ufunc '{self.name}'>"

    @_ctl.captured
    def __call__(self, *args, out=None, dtype=None, casting="same_kind", **kwargs):
        a = [_unwrap(x, strict=True) for x in args]
        kw = {}
        if out is not None:
            if isinstance(out, tuple):
                out = out[0]
            if not isinstance(out, ndarray):
                raise TypeError("Output argument must be a cupy.ndarray")
            kw["out"] = out._a
        if dtype is not None:
            kw["dtype"] = dtype
        res = self._np(*a, casting=casting, **kw, **kwargs)
        _ctl.launch(self.__name__)
        return out if out is not None else _wrap(res)

    def reduce(self, array, axis=0, dtype=None, out=None, keepdims=False):
        if self.__name__ == "add":
            return array.sum(axis, dtype, out, keepdims)
        if self.__name__ == "multiply":
            return array.prod(axis, dtype, out, keepdims)
        raise NotImplementedError(f"`{self.name}.reduce` is not supported yet")

    def accumulate(self, array, axis=0, dtype=None, out=None):
        if self.__name__ == "add":
            return array.cumsum(axis, dtype, out)
        if self.__name__ == "multiply":
            return array.cumprod(axis, dtype, out)
        raise NotImplementedError(f"`{self.name}.accumulate` is not supported yet")

    def reduceat(self, array, indices, axis=0, dtype=None, out=None):
        raise NotImplementedError(f"cupy stand-in: `{self.name}.reduceat` is not implemented")

    @_ctl.captured
    def outer(self, A, B, **kwargs):
        res = self._np.outer(_unwrap(A, True), _unwrap(B, True), **kwargs)
        _ctl.launch(self.__name__ + ".outer")
        return _wrap(res)

    def at(self, a, indices, b=None):
        if self.__name__ not in self._AT:
            raise NotImplementedError(f"`{self.name}.at` is not supported yet")
        op, dtypes = self._AT[self.__name__]
        _scatter(a, indices, b, self.__name__, op, dtypes.split())


@_ctl.captured
def _scatter(a, slices, value, uname, op, allowed):
    """Unbuffered a[slices] op= value (CuPy's scatter kernels; indices wrap)."""
    if not isinstance(a, ndarray):
        raise TypeError(f"Unsupported type {type(a)}")
    v = value._a if isinstance(value, ndarray) else _np.asarray(value, dtype=a.dtype)
    if isinstance(value, _np.ndarray):  # CuPy copies a host value to the device
        _ctl.host_to_device("scatter")
    if v.dtype.name not in allowed:
        raise TypeError(f"cupy.{uname}.at only supports {', '.join(allowed)} as data type")
    key, mask = _index(a, slices)
    if mask:
        _ctl.sync("scatter_mask")
    getattr(_np, uname).at(a._a, key, v.astype(a.dtype, copy=False))
    _ctl.launch("scatter_" + op)


# --------------------------------------------------------------------------- indexing


def _index(arr, key):
    """Host index for ``arr[key]``: integer arrays wrap, like CuPy's kernels.

    Returns (key, has_bool_mask). Host (NumPy) index arrays are copied over.
    """
    if not isinstance(key, tuple):
        key = (key,)
    out, axis, mask = [], 0, False
    n_used = _builtins.sum(
        (k.ndim if isinstance(k, (ndarray, _np.ndarray)) and k.dtype == bool else
         0 if k is None or k is Ellipsis else 1) for k in key)
    for k in key:
        if isinstance(k, ndarray):
            k = k._a
        elif isinstance(k, _np.ndarray):
            _ctl.host_to_device("index")
        elif isinstance(k, list):
            k = _np.asarray(k)
            _ctl.host_to_device("index")
        if k is None:
            out.append(k)
        elif k is Ellipsis:
            out.append(k)
            axis += arr.ndim - n_used
        elif isinstance(k, _np.ndarray) and k.dtype == bool:
            mask = True
            out.append(k)
            axis += k.ndim
        elif isinstance(k, _np.ndarray):
            if k.dtype.kind not in "iu":
                raise IndexError("arrays used as indices must be of integer (or boolean) type")
            size = arr.shape[axis]
            out.append(k % size if size else k)  # CuPy wraps instead of raising
            axis += 1
        else:
            out.append(k)
            axis += 1
    return tuple(out), mask


def _is_basic(key):
    key = key if isinstance(key, tuple) else (key,)
    return _builtins.all(k is None or k is Ellipsis or isinstance(k, (slice, int, _np.integer)) for k in key)


# --------------------------------------------------------------------------- ndarray


class _Flags:
    def __init__(self, a):
        self.c_contiguous = a.flags.c_contiguous
        self.f_contiguous = a.flags.f_contiguous
        self.owndata = a.flags.owndata

    def __getitem__(self, name):
        return {"C_CONTIGUOUS": self.c_contiguous, "F_CONTIGUOUS": self.f_contiguous,
                "OWNDATA": self.owndata}[name]

    def __repr__(self):
        return f"  C_CONTIGUOUS : {self.c_contiguous}\n  F_CONTIGUOUS : {self.f_contiguous}\n  OWNDATA : {self.owndata}"


def _binop(name, reflected=False):
    def op(self, other):
        if isinstance(other, _np.ndarray):
            raise _unsupported(other)
        if not isinstance(other, (ndarray, _np.generic, _builtins.int, _builtins.float,
                                  _builtins.complex, _builtins.bool)):
            return NotImplemented
        u = globals()[name]
        return u(other, self) if reflected else u(self, other)
    return op


def _inplace(name):
    def op(self, other):
        globals()[name](self, other, out=self)
        return self
    return op


class ndarray:
    """Device array of the stand-in: a private NumPy array, CuPy's rules.

    Not a ``numpy.ndarray`` subclass; ``.data`` is a ``cupy.cuda.MemoryPointer``.
    """

    __array_priority__ = 100

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        if memptr is not None or strides is not None:
            raise NotImplementedError("cupy stand-in: ndarray(memptr=..., strides=...)")
        self._a = _garbage(shape, dtype, order=order)
        _track(self._a)
        _ctl.wrapped(self)

    # ---- attributes
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    strides = property(lambda self: self._a.strides)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    flags = property(lambda self: _Flags(self._a))
    T = property(lambda self: _wrap(self._a.T))
    mT = property(lambda self: _wrap(self._a.mT))

    @property
    def base(self):
        return None if self._a.base is None else _wrap(self._a.base) if isinstance(self._a.base, _np.ndarray) else None

    @property
    def data(self):
        from cupy import cuda
        return cuda.MemoryPointer(self._a)

    @property
    def device(self):
        from cupy import cuda
        return cuda.Device(0)

    @property
    def __cuda_array_interface__(self):
        ai = self._a.__array_interface__
        return {"shape": ai["shape"], "typestr": ai["typestr"], "data": ai["data"],
                "strides": ai["strides"], "version": 3, "descr": ai["descr"]}

    # ---- conversions (host): each is a device-to-host copy, i.e. a sync
    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    def get(self, stream=None, order="C", out=None, blocking=True):
        _ctl.sync("get")
        if out is not None:
            out[...] = self._a
            return out
        return _np.array(self._a, order=order)

    def set(self, arr, stream=None):
        if not isinstance(arr, _np.ndarray):
            raise TypeError(f"Only numpy.ndarray can be set to cupy.ndarray, got {type(arr)}")
        if arr.shape != self.shape:
            raise ValueError(f"Shape mismatch. Old shape: {self.shape}, new shape: {arr.shape}")
        if arr.dtype != self.dtype:
            raise TypeError(f"{arr.dtype} array cannot be set to {self.dtype} array")
        _ctl.host_to_device("set")
        self._a[...] = arr

    def _scalar(self, what):
        _ctl.sync(what)
        if self.size != 1:
            raise TypeError("only length-1 arrays can be converted to Python scalars")
        return self._a.reshape(())

    def item(self, *args):
        _ctl.sync("item")
        return self._a.item(*args)

    def tolist(self):
        _ctl.sync("tolist")
        return self._a.tolist()

    def __float__(self):
        return float(self._scalar("float"))

    def __int__(self):
        return int(self._scalar("int"))

    def __complex__(self):
        return complex(self._scalar("complex"))

    def __index__(self):
        _ctl.sync("index")
        return self._a.__index__()

    def __bool__(self):
        _ctl.sync("bool")
        return _builtins.bool(self._a)

    def __repr__(self):
        _ctl.sync("repr")
        return repr(self._a).replace("array(", "array(", 1)

    def __str__(self):
        _ctl.sync("str")
        return str(self._a)

    def __format__(self, spec):
        _ctl.sync("format")
        return format(self._a.item() if self.ndim == 0 else self._a, spec)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(len(self)))

    def __hash__(self):
        raise TypeError("unhashable type: 'cupy.ndarray'")

    def __reduce__(self):
        return (array, (self.get(),))

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()

    # ---- NumPy protocol: dispatch only to names CuPy has
    def __array_ufunc__(self, uf, method, *inputs, **kwargs):
        if method not in ("__call__", "outer", "at", "reduce", "accumulate", "reduceat"):
            return NotImplemented
        if uf.__name__ not in _REAL:
            return NotImplemented
        func = globals().get(uf.__name__)
        if func is None:
            _missing(uf.__name__)
        if "out" in kwargs:
            out = kwargs["out"]
            if len(out) != 1:
                raise ValueError("The 'out' parameter must have exactly one array value")
            kwargs["out"] = out[0]
        if method != "__call__":
            func = getattr(func, method)
        return func(*inputs, **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        # numpy.linalg, numpy.fft...: CuPy has counterparts, the stand-in does not
        if func.__module__.split(".")[1:] or func.__name__ not in _REAL:
            return NotImplemented
        ours = globals().get(func.__name__)
        if ours is None:
            _missing(func.__name__)
        for t in types:
            if not issubclass(t, (ndarray, _np.ndarray)):
                return NotImplemented
        return ours(*args, **kwargs)

    # ---- indexing
    @_ctl.captured
    def __getitem__(self, key):
        if isinstance(key, ndarray) or not _is_basic(key):
            k, mask = _index(self, key)
            res = self._a[k]
            if mask:  # the output size depends on the data: CuPy reads it back
                _ctl.sync("getitem_mask")
            _ctl.launch("getitem_fancy")
            return _wrap(res)
        res = self._a[key]
        if not isinstance(res, _np.ndarray):  # x[i] of a 1-d array: a 0-d view in CuPy, not a copy
            res = self._a[(key if isinstance(key, tuple) else (key,)) + (Ellipsis,)]
        return _wrap(res)  # a view

    @_ctl.captured
    def __setitem__(self, key, value):
        if isinstance(value, _np.ndarray) and _is_basic(key) and not isinstance(key, ndarray):
            if value.ndim:  # CuPy's basic-slice assignment refuses host arrays
                raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
            value = value.item()
        if isinstance(value, _np.ndarray):  # fancy assignment copies the host value over
            _ctl.host_to_device("setitem")
            v = value
        else:
            v = _unwrap(value, strict=False)
        if isinstance(key, ndarray) or not _is_basic(key):
            k, mask = _index(self, key)
            if mask:
                _ctl.sync("setitem_mask")
            self._a[k] = v
            _ctl.launch("setitem_fancy")
        else:
            self._a[key] = v
            _ctl.launch("setitem")

    # ---- shape and copies
    @_ctl.captured
    def reshape(self, *shape, order="C"):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        res = self._a.reshape(shape, order=order)
        if not _np.may_share_memory(res, self._a):
            _ctl.launch("reshape_copy")
        return _wrap(res)

    def transpose(self, *axes):
        return _wrap(self._a.transpose(*axes))

    def swapaxes(self, a, b):
        return _wrap(self._a.swapaxes(a, b))

    def squeeze(self, axis=None):
        return _wrap(self._a.squeeze(axis))

    @_ctl.captured
    def ravel(self, order="C"):
        res = self._a.ravel(order)
        if not _np.may_share_memory(res, self._a):
            _ctl.launch("ravel_copy")
        return _wrap(res)

    @_ctl.captured
    def flatten(self, order="C"):
        _ctl.launch("copy")
        return _wrap(self._a.flatten(order))

    def view(self, dtype=None, type=None):
        if type is not None:
            raise NotImplementedError("cupy stand-in: view(type=...)")
        return _wrap(self._a.view() if dtype is None else self._a.view(dtype))

    @_ctl.captured
    def copy(self, order="C"):
        _ctl.launch("copy")
        return _wrap(self._a.copy(order))

    @_ctl.captured
    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        if not copy and _np.dtype(dtype) == self.dtype:
            return self
        _ctl.launch("astype")
        return _wrap(self._a.astype(dtype, order=order))

    @_ctl.captured
    def fill(self, value):
        if isinstance(value, _np.ndarray):
            if value.ndim:
                raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
            value = value.item()
        if isinstance(value, ndarray):
            raise NotImplementedError("cupy stand-in: fill with a device array")
        self._a.fill(value)
        _ctl.launch("fill")

    def __setstate__(self, state):
        raise NotImplementedError("cupy stand-in: __setstate__")

    real = property(lambda self: _wrap(self._a.real))
    imag = property(lambda self: _wrap(self._a.imag))

    def reduced_view(self, dtype=None):
        return _wrap(self._a.view())

    def tobytes(self, order="C"):
        _ctl.sync("tobytes")
        return self._a.tobytes(order)

    def scatter_add(self, slices, value):
        import cupyx
        cupyx.scatter_add(self, slices, value)

    def scatter_max(self, slices, value):
        import cupyx
        cupyx.scatter_max(self, slices, value)

    def scatter_min(self, slices, value):
        import cupyx
        cupyx.scatter_min(self, slices, value)

    def __matmul__(self, other):
        return matmul(self, other)

    def __rmatmul__(self, other):
        return matmul(other, self)

    def __imatmul__(self, other):
        self[...] = matmul(self, other)
        return self

    def __neg__(self):
        return negative(self)

    def __pos__(self):
        return positive(self)

    def __abs__(self):
        return absolute(self)

    def __invert__(self):
        return invert(self)


for _name, _uf in [("add", "add"), ("sub", "subtract"), ("mul", "multiply"),
                   ("truediv", "true_divide"), ("floordiv", "floor_divide"), ("mod", "remainder"),
                   ("pow", "power"), ("and", "bitwise_and"), ("or", "bitwise_or"),
                   ("xor", "bitwise_xor"), ("lshift", "left_shift"), ("rshift", "right_shift"),
                   ("divmod", "divmod")]:
    setattr(ndarray, f"__{_name}__", _binop(_uf))
    setattr(ndarray, f"__r{_name}__", _binop(_uf, reflected=True))
    if _name != "divmod":
        setattr(ndarray, f"__i{_name}__", _inplace(_uf))
for _name, _uf in [("eq", "equal"), ("ne", "not_equal"), ("lt", "less"), ("le", "less_equal"),
                   ("gt", "greater"), ("ge", "greater_equal")]:
    setattr(ndarray, f"__{_name}__", _binop(_uf))


def _method(name, npname=None):
    """An ndarray method that runs the module-level function of the same name."""
    def m(self, *args, **kwargs):
        return globals()[npname or name](self, *args, **kwargs)
    m.__name__ = name
    return m


for _name in ["sum", "prod", "mean", "var", "std", "max", "min", "argmax", "argmin", "any", "all",
              "cumsum", "cumprod", "clip", "dot", "round", "conj", "nonzero", "sort", "argsort",
              "take", "repeat", "trace", "diagonal", "ptp", "conjugate", "searchsorted", "choose",
              "compress", "argpartition", "partition", "put"]:
    if _name in _REAL_NDARRAY and not hasattr(ndarray, _name):
        setattr(ndarray, _name, _method(_name))
ndarray.round = _method("round", "around")


def _nd_getattr(self, name):
    if name in _REAL_NDARRAY:
        raise NotImplementedError(f"cupy stand-in: cupy.ndarray.{name} is not implemented")
    raise AttributeError(f"'cupy.ndarray' object has no attribute '{name}'")


ndarray.__getattr__ = _nd_getattr

# --------------------------------------------------------------------------- module functions

_SYNC = {"nonzero", "argwhere", "flatnonzero", "unique", "bincount", "compress", "extract",
         "trim_zeros", "unique_values", "unique_counts", "unique_inverse", "unique_all"}
_META = {"ndim", "shape", "size", "result_type", "can_cast", "min_scalar_type", "isscalar",
         "promote_types", "common_type", "iscomplexobj", "isrealobj", "may_share_memory",
         "shares_memory", "broadcast_shapes", "issubdtype", "isdtype"}
_FUNCS = """
abs absolute add all allclose amax amin angle any append arange arccos arccosh arcsin arcsinh
arctan arctan2 arctanh argmax argmin argpartition argsort argwhere around array_equal array_split
atleast_1d atleast_2d atleast_3d average bitwise_and bitwise_not bitwise_or bitwise_xor
broadcast_arrays broadcast_to cbrt ceil choose clip column_stack concatenate conj conjugate
copysign cos cosh count_nonzero cov cross cumprod cumsum deg2rad degrees diag diagflat diagonal
diff divide divmod dot dsplit dstack einsum equal exp exp2 expand_dims expm1 extract eye fabs
flatnonzero flip fliplr flipud float_power floor floor_divide fmax fmin fmod frexp full
gcd greater greater_equal heaviside hsplit hstack hypot identity inner invert isclose isfinite
isinf isnan isneginf isposinf kron lcm ldexp left_shift less less_equal linspace log log10 log1p
log2 logaddexp logaddexp2 logical_and logical_not logical_or logical_xor logspace matmul maximum
mean median meshgrid minimum mod modf moveaxis multiply nan_to_num nanargmax nanargmin nancumprod
nancumsum nanmax nanmean nanmedian nanmin nanprod nanstd nansum nanvar negative nextafter nonzero
not_equal outer pad partition percentile positive power prod ptp put put_along_axis quantile
rad2deg radians ravel reciprocal remainder repeat reshape resize right_shift rint roll rollaxis
rot90 round searchsorted select sign signbit sin sinc sinh sort split sqrt square squeeze stack
std subtract sum swapaxes take take_along_axis tan tanh tensordot tile trace transpose trapezoid
tri tril triu true_divide trunc unique var vdot vsplit vstack bincount histogram cumulative_sum
trim_zeros ndim shape size result_type can_cast min_scalar_type isscalar promote_types common_type
iscomplexobj isrealobj may_share_memory shares_memory broadcast_shapes issubdtype isdtype
unravel_index ravel_multi_index indices tril_indices triu_indices diag_indices fill_diagonal
argwhere copyto array_repr array_str lexsort packbits unpackbits interp digitize
max min concat permute_dims matrix_transpose astype cumulative_prod delete isin fix real imag
bitwise_count convolve correlate corrcoef ediff1d gradient in1d intersect1d union1d setdiff1d
setxor1d i0 isreal iscomplex apply_along_axis vander diag_indices_from tril_indices_from
triu_indices_from unwrap place putmask row_stack sort_complex nan_to_num
compress unique_values unique_counts unique_inverse unique_all
""".split()


def _install():
    g = globals()
    for name in _FUNCS:
        if name not in _REAL or not hasattr(_np, name) or name in g:
            continue
        if name in _REAL_UFUNCS:
            continue  # installed as a ufunc below
        g[name] = _func(name, sync=name in _SYNC, scalar_result=name in _META)
    for name in _REAL_UFUNCS:
        if hasattr(_np, name) and isinstance(getattr(_np, name), _np.ufunc):
            g[name] = ufunc(name)
    # dtypes, scalar types and constants are NumPy's own objects in CuPy too
    for name in _REAL:
        if name not in g and hasattr(_np, name):
            obj = getattr(_np, name)
            if (isinstance(obj, type) and issubclass(obj, _np.generic)) or name in (
                    "dtype", "finfo", "iinfo", "newaxis", "e", "pi", "inf", "nan", "euler_gamma",
                    "AxisError", "ComplexWarning", "Inf", "Infinity", "NaN", "NAN", "PINF", "NINF",
                    "PZERO", "NZERO", "infty", "index_exp", "s_"):
                g[name] = obj


_install()


# --------------------------------------------------------------------------- matrix products as CuPy 14 issues them
#
# CuPy 14's matmul (cupy/_core/_routines_linalg.pyx) for operands of more than
# two dimensions: each operand is expanded to the common ndim (a view), then
# made C-contiguous in the computed dtype (a copy when it is not: a transposed
# operand, or one of another dtype). When no batch axis broadcasts, one
# gemmStridedBatchedEx does the product; when one does (a 2-D weight against a
# batch), cuBLAS's gemmBatched needs arrays of matrix pointers, built by one
# `cupy_mat_ptrs` kernel per batch axis for each operand and for the output,
# then one gemmBatched. An `out=` that is not C-contiguous or not of the
# computed dtype gets the result by one more copy. Two-dimensional products
# go through `dot` (tensordot_core): an operand that is C- or F-contiguous is
# passed with a transpose flag, any other is copied first.


def _product_dtype(A, B):
    dtype = _np.promote_types(A.dtype, B.dtype)
    return _np.dtype("f") if dtype.char == "e" else dtype


def _dot2d_launches(A, B, out):
    dtype = _product_dtype(A, B)
    n = 1  # the GEMM (or GEMV/dot) itself
    for x in (A, B):
        if x.ndim == 2 and not (x.flags.c_contiguous or x.flags.f_contiguous) or x.dtype != dtype:
            n += 1
    if out is not None and not (out.flags.c_contiguous and out.dtype == dtype):
        n += 1
    return n


def _matmul_launches(A, B, out):
    """[(name, count)] of the device operations CuPy 14's matmul issues for host operands A, B."""
    nd = _builtins.max(A.ndim, B.ndim)
    if nd <= 2:
        return [("gemm", 1), ("matmul_copy", _dot2d_launches(A, B, out) - 1)]
    dtype = _product_dtype(A, B)
    a = A.reshape(1, -1) if A.ndim == 1 else A
    b = B.reshape(-1, 1) if B.ndim == 1 else B
    copies = _builtins.sum(1 for x in (a, b) if not x.flags.c_contiguous or x.dtype != dtype)
    a_batch = (1,) * (nd - a.ndim) + a.shape[:-2]
    b_batch = (1,) * (nd - b.ndim) + b.shape[:-2]
    broadcast = _builtins.any(x != y and _builtins.max(x, y) > 1 for x, y in zip(a_batch, b_batch))
    if out is not None and not (out.flags.c_contiguous and out.dtype == dtype
                                and not _np.may_share_memory(out, A) and not _np.may_share_memory(out, B)):
        copies += 1
    pointers = 3 * (nd - 2) if broadcast else 0
    return [("matmul_copy", copies), ("cupy_mat_ptrs", pointers),
            ("gemmBatched" if broadcast else "gemmStridedBatched", 1)]


def _count_product(launches):
    for name, n in launches:
        if n:
            _ctl.launch(name, n)


@_ctl.captured
def matmul(a, b, out=None, **kwargs):
    """cupy.matmul, with the device operations CuPy 14 issues for it (see above)."""
    if kwargs:
        raise TypeError(f"matmul: the stand-in supports out= only, got {sorted(kwargs)}")
    A, B = _unwrap(a, strict=True), _unwrap(b, strict=True)
    if not isinstance(A, _np.ndarray) or not isinstance(B, _np.ndarray):
        raise ValueError("Scalar operands are not allowed, use '*' instead")
    res = _np.matmul(A, B)
    _count_product(_matmul_launches(A, B, None if out is None else out._a))
    if out is not None:
        out._a[...] = res
        return out
    return _wrap(res)


@_ctl.captured
def dot(a, b, out=None):
    """cupy.dot: one GEMM, plus a copy of each operand that is neither C- nor F-contiguous."""
    A, B = _unwrap(a, strict=True), _unwrap(b, strict=True)
    res = _np.dot(A, B)
    if isinstance(A, _np.ndarray) and isinstance(B, _np.ndarray) and A.ndim <= 2 and B.ndim <= 2:
        _count_product([("gemm", 1), ("matmul_copy", _dot2d_launches(A, B, None if out is None else out._a) - 1)])
    else:
        _ctl.launch("dot")
    if out is not None:
        out._a[...] = res
        return out
    return _wrap(res)


@_ctl.captured
def take(a, indices, axis=None, out=None):
    """cupy.take: out-of-range indices wrap (CuPy has no mode='raise')."""
    idx = indices._a if isinstance(indices, ndarray) else _np.asarray(_unwrap(indices))
    size = a.size if axis is None else a.shape[axis]
    res = _np.take(a._a, idx, axis=axis, mode="wrap" if size else "raise")
    _ctl.launch("take")
    if out is not None:
        out._a[...] = res
        return out
    return _wrap(res)


def _allocating(name):
    """zeros/ones/full/...: allocation plus one fill launch."""
    npf = getattr(_np, name)

    @_ctl.captured
    def f(*args, **kwargs):
        res = npf(*_unwrap(list(args)), **{k: _unwrap(v) for k, v in kwargs.items()})
        _ctl.launch(name)
        return _wrap(res)
    f.__name__ = name
    return f


for _name in ["zeros", "ones", "full", "zeros_like", "ones_like", "full_like", "arange",
              "linspace", "eye", "identity", "tri", "logspace"]:
    globals()[_name] = _allocating(_name)


def empty(shape, dtype=float, order="C"):
    """Uninitialised memory (garbage, never reliably zeros); no launch."""
    return _wrap(_garbage(shape, dtype, order))


def empty_like(prototype, dtype=None, order="K", subok=None, shape=None):
    if isinstance(prototype, _np.ndarray) or not isinstance(prototype, ndarray):
        raise _unsupported(prototype)
    return _wrap(_garbage(prototype.shape if shape is None else shape,
                          prototype.dtype if dtype is None else dtype))


@_ctl.captured
def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, blocking=False):
    """Device copy of ``obj``: from the host it is one host-to-device copy."""
    if isinstance(obj, ndarray):
        if not copy and (dtype is None or _np.dtype(dtype) == obj.dtype) and obj.ndim >= ndmin:
            return obj
        _ctl.launch("copy")
        return _wrap(_np.array(obj._a, dtype=dtype, copy=True, order=order, ndmin=ndmin))
    if isinstance(obj, (list, tuple)) and _builtins.any(isinstance(o, ndarray) for o in _flat(obj)):
        _ctl.launch("stack")
        return _wrap(_np.array(_unwrap(obj), dtype=dtype, order=order, ndmin=ndmin))
    _ctl.host_to_device("array")
    return _wrap(_np.array(obj, dtype=dtype, copy=True, order="C" if order in "KA" else order, ndmin=ndmin))


def _flat(seq):
    for o in seq:
        if isinstance(o, (list, tuple)):
            yield from _flat(o)
        else:
            yield o


def asarray(a, dtype=None, order=None, blocking=False):
    if isinstance(a, ndarray):
        return array(a, dtype=dtype, copy=False, order=order or "K")
    return array(a, dtype=dtype, order=order or "K")


asanyarray = asarray


@_ctl.captured
def where(condition, x=None, y=None):
    """cupy.where: with one argument it is ``nonzero`` (its size needs a sync)."""
    if x is None and y is None:
        return nonzero(condition)
    if (x is None) != (y is None):
        raise ValueError("Must provide both 'x' and 'y' or neither.")
    res = _np.where(*_unwrap([condition, x, y]))
    _ctl.launch("where")
    return _wrap(res)


@_ctl.captured
def ascontiguousarray(a, dtype=None):
    if isinstance(a, ndarray) and a.flags.c_contiguous and (dtype is None or _np.dtype(dtype) == a.dtype):
        return a
    if not isinstance(a, ndarray):
        return array(a, dtype=dtype, order="C")
    _ctl.launch("ascontiguousarray")
    return _wrap(_np.ascontiguousarray(a._a, dtype=dtype))


@_ctl.captured
def asfortranarray(a, dtype=None):
    if not isinstance(a, ndarray):
        return array(a, dtype=dtype, order="F")
    _ctl.launch("asfortranarray")
    return _wrap(_np.asfortranarray(a._a, dtype=dtype))


def asnumpy(a, stream=None, order="C", out=None, blocking=True):
    """Host copy of a device array (one device-to-host copy: a sync)."""
    if isinstance(a, ndarray):
        return a.get(stream=stream, order=order, out=out)
    return _np.asarray(a, order=order)


def get_array_module(*args):
    for a in args:
        if isinstance(a, ndarray):
            import cupy
            return cupy
    return _np


def is_available():
    return True


@_ctl.captured
def copy(a, order="K"):
    _ctl.launch("copy")
    return _wrap(_np.array(_unwrap(a), copy=True, order=order))


class _MemoryPool:
    """Default memory pool: ``used_bytes`` counts the live stand-in buffers."""

    def malloc(self, size):
        from cupy import cuda
        return cuda.MemoryPointer(_garbage((int(size),), "uint8"))

    def used_bytes(self):
        return _builtins.sum(a.nbytes for a in (r() for r in list(_live.values())) if a is not None)

    def total_bytes(self):
        return self.used_bytes()

    def free_bytes(self):
        return 0

    def free_all_blocks(self, stream=None):
        pass

    def n_free_blocks(self):
        return 0

    def set_limit(self, size=None, fraction=None):
        pass

    def get_limit(self):
        return 0


_pool, _pinned_pool = _MemoryPool(), _MemoryPool()


def get_default_memory_pool():
    return _pool


def get_default_pinned_memory_pool():
    return _pinned_pool


from cupy._standin_kernels import ElementwiseKernel, ReductionKernel, RawKernel  # noqa: E402
from cupy import cuda, random  # noqa: E402



def _missing(name):
    raise NotImplementedError(f"cupy stand-in: cupy.{name} is not implemented")


def __getattr__(name):
    if name in _REAL:
        _missing(name)
    raise AttributeError(f"module 'cupy' has no attribute '{name}'")


def __dir__():
    return sorted(n for n in globals() if n in _REAL)


