"""User kernels of the stand-in: CuPy's CUDA C source compiled for the CPU.

``ElementwiseKernel``, ``ReductionKernel`` and ``RawKernel`` build a C++
translation unit from the user's own CUDA source plus a small prelude that
defines the CUDA keywords, built-in index variables, atomics and math
functions. It is compiled with the system C++ compiler into a shared library
(cached on disk by a hash of the source), loaded with ctypes and run with
one loop iteration per CUDA thread (one at a time, so atomics are plain
read-modify-writes). A wrong index in the CUDA source therefore gives a
wrong result here too; raw-array accesses of Elementwise/Reduction kernels
are bounds-checked and raise ``IndexError`` (on a GPU they would read
garbage or crash).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import subprocess
import tempfile

import numpy as np

import cupy_standin as _ctl

# --------------------------------------------------------------------------- compiling

_PRELUDE = r"""
#include <math.h>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __restrict__ __restrict
#define __launch_bounds__(...)
struct _standin_dim3 { unsigned int x, y, z; };
static _standin_dim3 threadIdx, blockIdx, blockDim, gridDim;
static const int warpSize = 32;
using std::isnan; using std::isinf; using std::isfinite; using std::signbit;
// CUDA's min/max accept mixed argument types
template <typename A, typename B> inline auto max(A a, B b) -> decltype(a + b) { return a > b ? a : b; }
template <typename A, typename B> inline auto min(A a, B b) -> decltype(a + b) { return a < b ? a : b; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline float __int_as_float(int x) { float f; memcpy(&f, &x, 4); return f; }
inline int __float_as_int(float f) { int x; memcpy(&x, &f, 4); return x; }
template <typename T> inline T __ldg(const T* p) { return *p; }
// threads run one at a time: an atomic is a plain read-modify-write
template <typename T, typename U> inline T atomicAdd(T* p, U v) { T o = *p; *p = o + (T)v; return o; }
template <typename T, typename U> inline T atomicSub(T* p, U v) { T o = *p; *p = o - (T)v; return o; }
template <typename T, typename U> inline T atomicMax(T* p, U v) { T o = *p; if ((T)v > o) *p = (T)v; return o; }
template <typename T, typename U> inline T atomicMin(T* p, U v) { T o = *p; if ((T)v < o) *p = (T)v; return o; }
template <typename T, typename U> inline T atomicExch(T* p, U v) { T o = *p; *p = (T)v; return o; }
template <typename T> inline T atomicCAS(T* p, T cmp, T v) { T o = *p; if (o == cmp) *p = v; return o; }
// the first out-of-bounds raw-array access of a launch (reported to Python)
static long long _standin_oob_index = 0, _standin_oob_size = -1;
static int _standin_oob_param = -1;
extern "C" int _standin_oob(long long* info) {
    info[0] = _standin_oob_index; info[1] = _standin_oob_size;
    int p = _standin_oob_param; _standin_oob_param = -1; return p; }
// a raw array of an Elementwise/Reduction kernel: flat C-order index, bounds-checked
template <typename T, int ndim> struct CArray {
    T* _p; ptrdiff_t _n; int _param; ptrdiff_t _shape[ndim > 0 ? ndim : 1];
    T& operator[](ptrdiff_t i) const {
        if (i < 0 || i >= _n) {
            if (_standin_oob_param < 0) { _standin_oob_param = _param; _standin_oob_index = i; _standin_oob_size = _n; }
            static T dummy; return dummy;
        }
        return _p[i];
    }
    ptrdiff_t size() const { return _n; }
    const ptrdiff_t* shape() const { return _shape; }
    T* data() const { return _p; }
};
struct _StandinIndexer { ptrdiff_t _n; ptrdiff_t size() const { return _n; } };
"""

_FORBIDDEN = {"__syncthreads": "__syncthreads()", "__shared__": "__shared__ memory",
              "__shfl": "warp shuffles", "cooperative_groups": "cooperative groups"}
# a RawKernel's block barrier and shared memory are simulated (see _RAW_PRELUDE); warp-level
# operations are not
_RAW_FORBIDDEN = {k: v for k, v in _FORBIDDEN.items() if k not in ("__syncthreads", "__shared__")}

# RawKernel only. __shared__ memory: one copy per program (blocks run one after the other),
# in a section of its own that is filled with garbage (0xff bytes: NaN, -1) as each block
# starts, since CUDA leaves shared memory uninitialised. __syncthreads(): each thread of
# the block is a fiber (its own stack) that runs until it reaches a barrier; when every thread
# waits at the same barrier (the same source line) they all go on. A barrier some threads
# skip (they exit, or wait at another line) is an error here; on a GPU it hangs or
# corrupts the block's data.
_RAW_PRELUDE = r"""
#define __shared__ __attribute__((section("_standin_shared"))) static
extern char __start__standin_shared[] __attribute__((weak));
extern char __stop__standin_shared[] __attribute__((weak));
static int _standin_state[1024], _standin_line[1024];  // state: 0 runs, 1 waits at a barrier, 2 done
static unsigned _standin_cur;
static void _standin_entry();
#if defined(__x86_64__)
// a fiber switch: the callee-saved registers and the FPU control words on the old stack,
// then the new stack (glibc's swapcontext would make a system call each time)
extern "C" __attribute__((visibility("hidden"))) void _standin_switch(void** save_sp, void* to_sp);
asm(".text\n.globl _standin_switch\n.hidden _standin_switch\n.type _standin_switch,@function\n"
    "_standin_switch:\n pushq %rbp\n pushq %rbx\n pushq %r12\n pushq %r13\n pushq %r14\n pushq %r15\n"
    " subq $8, %rsp\n stmxcsr (%rsp)\n fnstcw 4(%rsp)\n movq %rsp, (%rdi)\n movq %rsi, %rsp\n"
    " ldmxcsr (%rsp)\n fldcw 4(%rsp)\n addq $8, %rsp\n"
    " popq %r15\n popq %r14\n popq %r13\n popq %r12\n popq %rbx\n popq %rbp\n ret\n");
static void* _standin_sched_sp;
static void* _standin_sp[1024];
static void _standin_to_sched() { _standin_switch(&_standin_sp[_standin_cur], _standin_sched_sp); }
static void _standin_to_fiber(unsigned t) { _standin_switch(&_standin_sched_sp, _standin_sp[t]); }
static void _standin_fiber_main() { _standin_entry(); _standin_to_sched(); __builtin_trap(); }
static void _standin_make_fiber(unsigned t, char* stack, size_t size) {
    unsigned long long* sp = (unsigned long long*)(((uintptr_t)(stack + size) & ~(uintptr_t)15) - 72);
    unsigned int csr[2]; asm volatile("stmxcsr %0\n fnstcw %1" : "=m"(csr[0]), "=m"(csr[1]));
    memcpy(sp, csr, 8);
    for (int k = 1; k <= 6; ++k) sp[k] = 0;  // r15 r14 r13 r12 rbx rbp
    sp[7] = (unsigned long long)(uintptr_t)&_standin_fiber_main; sp[8] = 0;
    _standin_sp[t] = sp;
}
#else
#include <ucontext.h>
static ucontext_t _standin_sched, _standin_ctx[1024];
static void _standin_to_sched() { swapcontext(&_standin_ctx[_standin_cur], &_standin_sched); }
static void _standin_to_fiber(unsigned t) { swapcontext(&_standin_sched, &_standin_ctx[t]); }
static void _standin_make_fiber(unsigned t, char* stack, size_t size) {
    getcontext(&_standin_ctx[t]);
    _standin_ctx[t].uc_stack.ss_sp = stack; _standin_ctx[t].uc_stack.ss_size = size;
    _standin_ctx[t].uc_link = &_standin_sched;
    makecontext(&_standin_ctx[t], _standin_entry, 0);
}
#endif
static void _standin_sync(int line) {
    _standin_state[_standin_cur] = 1; _standin_line[_standin_cur] = line;
    _standin_to_sched();
}
#define __syncthreads() _standin_sync(__LINE__)
static void _standin_poison_shared() {
    if (__start__standin_shared) memset(__start__standin_shared, 0xff, __stop__standin_shared - __start__standin_shared);
}
"""


def _cache_dir() -> str:
    d = os.environ.get("MINIRAN_STANDIN_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "miniran-cupy-standin")
    os.makedirs(d, exist_ok=True)
    return d


_loaded: dict[str, ctypes.CDLL] = {}
compile_count = 0  # compilations run by this process (the tests check the cache)


def _check_supported(code: str, name: str, forbidden=_FORBIDDEN) -> None:
    for token, what in forbidden.items():
        if token in code:
            raise NotImplementedError(
                f"cupy stand-in: kernel {name!r} uses {what}; the CPU stand-in runs one "
                "thread at a time and cannot simulate it")


def compile_source(source: str, name: str) -> ctypes.CDLL:
    """Compile (or load from the cache) a C++ translation unit; return the library."""
    global compile_count
    key = hashlib.sha256(source.encode()).hexdigest()[:24]
    lib = _loaded.get(key)
    if lib is not None:
        return lib
    d = _cache_dir()
    so = os.path.join(d, f"{key}.so")
    if not os.path.exists(so):
        cpp = os.path.join(d, f"{key}.cpp")
        fd, tmp = tempfile.mkstemp(prefix=f"{key}.", suffix=".so.tmp", dir=d)
        os.close(fd)
        with open(cpp + f".{os.getpid()}", "w") as f:
            f.write(source)
        os.replace(cpp + f".{os.getpid()}", cpp)
        cmd = ["g++", "-O1", "-std=c++17", "-shared", "-fPIC", "-w", "-o", tmp, cpp]
        res = subprocess.run(cmd, capture_output=True, text=True)
        compile_count += 1
        if res.returncode != 0:
            os.unlink(tmp)
            raise RuntimeError(  # real CuPy raises cupy.cuda.compiler.CompileException
                f"cupy stand-in: kernel {name!r} failed to compile (source {cpp}):\n"
                + res.stderr[-4000:])
        os.replace(tmp, so)  # atomic: a concurrent compile of the same source is harmless
    lib = ctypes.CDLL(so)
    _loaded[key] = lib
    return lib


# --------------------------------------------------------------------------- types

_CTYPES = {"bool": "bool", "int8": "signed char", "int16": "short", "int32": "int",
           "int64": "long long", "uint8": "unsigned char", "uint16": "unsigned short",
           "uint32": "unsigned int", "uint64": "unsigned long long",
           "float32": "float", "float64": "double"}
_DTYPE_ALIASES = {"float": "float64", "int": "int64", "double": "float64",
                  "bool_": "bool", "intp": "int64", "uintp": "uint64",
                  "longlong": "int64", "ulonglong": "uint64", "int_": "int64"}


def _dtype_name(name: str) -> str | None:
    """The NumPy dtype name a parameter type names, or None for a placeholder."""
    name = _DTYPE_ALIASES.get(name, name)
    if name in _CTYPES:
        return name
    if name in ("float16", "complex64", "complex128"):
        raise NotImplementedError(f"cupy stand-in: kernel parameters of type {name} are not supported")
    return None


def _ctype(dtype) -> str:
    name = np.dtype(dtype).name
    if name not in _CTYPES:
        raise NotImplementedError(f"cupy stand-in: arrays of dtype {name} in user kernels")
    return _CTYPES[name]


class _Param:
    def __init__(self, text: str):
        parts = text.split()
        self.raw = parts[0] == "raw"
        if self.raw:
            parts = parts[1:]
        if len(parts) != 2 or not re.fullmatch(r"[A-Za-z_]\w*", parts[1]):
            raise ValueError(f"Invalid parameter: {text!r}")
        self.type_name, self.name = parts
        self.dtype = _dtype_name(self.type_name)  # None: a placeholder like T

    def __repr__(self):
        return ("raw " if self.raw else "") + f"{self.type_name} {self.name}"


def _parse_params(text: str) -> list[_Param]:
    params = [_Param(p.strip()) for p in text.split(",") if p.strip()]
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicated parameter names in {text!r}")
    for n in names:
        if n == "i" or n.startswith("_"):  # CuPy reserves these
            raise ValueError(f"parameter name {n!r} is reserved")
    return params


def _bind(params, args, types: dict) -> None:
    """Bind type placeholders (T, S...) from the arrays given for them."""
    from cupy import ndarray
    for p, a in zip(params, args):
        # a fixed-type parameter takes an array of exactly that dtype: CuPy casts
        # scalars, never arrays (_decide_params_type_core raises)
        if p.dtype is not None and isinstance(a, ndarray) and a.dtype != np.dtype(p.dtype):
            raise TypeError(f"Type is mismatched. {p.name} {a.dtype} {np.dtype(p.dtype)}")
        if p.dtype is None and isinstance(a, ndarray):
            t = types.get(p.type_name)
            if t is not None and t != a.dtype:
                raise TypeError(f"Type is mismatched. {p.name} {p.type_name} {a.dtype} {t}")
            types[p.type_name] = a.dtype
    for p, a in zip(params, args):  # scalars bind only what no array bound
        if p.dtype is None and a is not None and not isinstance(a, ndarray) and p.type_name not in types:
            types[p.type_name] = np.result_type(a) if not isinstance(a, (bool, int, float)) else \
                np.dtype({bool: "bool", int: "int64", float: "float64"}[type(a)])


def _param_dtype(p: _Param, types: dict):
    if p.dtype is not None:
        return np.dtype(p.dtype)
    if p.type_name not in types:
        raise TypeError(f"Cannot determine the type of {p.name!r} ({p.type_name})")
    return types[p.type_name]


def _typedefs(types: dict) -> str:
    return "".join(f"typedef {_ctype(t)} {k};\n" for k, t in sorted(types.items()))


class _Buffers:
    """Contiguous NumPy buffers handed to the compiled code, and their write-backs."""

    def __init__(self):
        self.arrays, self.copy_back = [], []

    def add(self, arr: np.ndarray, target=None):
        self.arrays.append(arr)
        if target is not None and arr is not target:
            self.copy_back.append((target, arr))
        return len(self.arrays) - 1

    def pointers(self):
        return (ctypes.c_void_p * max(1, len(self.arrays)))(*[a.ctypes.data for a in self.arrays])

    def finish(self):
        for target, arr in self.copy_back:
            target[...] = arr.reshape(target.shape)


def _contiguous(a: np.ndarray, dtype) -> np.ndarray:
    # keeps the very buffer when it already fits, so that aliasing is preserved
    return np.ascontiguousarray(a, dtype=dtype)


def _check_oob(lib, params_by_slot, kernel_name):
    info = (ctypes.c_longlong * 2)()
    lib._standin_oob.restype = ctypes.c_int
    slot = lib._standin_oob(info)
    if slot >= 0:
        raise IndexError(
            f"cupy stand-in: kernel {kernel_name!r} accessed raw array {params_by_slot[slot]!r} "
            f"at index {info[0]} (size {info[1]}); on a GPU this reads or writes foreign memory")


def _scalar_buffer(value, dtype):
    from cupy import ndarray
    if isinstance(value, np.ndarray):
        raise TypeError(f"Unsupported type {type(value)}")
    if isinstance(value, ndarray):
        raise TypeError(f"a scalar parameter got an array of shape {value.shape}")
    return np.array([value]).astype(dtype)


# --------------------------------------------------------------------------- ElementwiseKernel


class ElementwiseKernel:
    """User-defined elementwise kernel: one (simulated) CUDA thread per output element."""

    def __init__(self, in_params, out_params, operation, name="kernel", reduce_dims=True,
                 preamble="", no_return=False, return_tuple=False, loop_prep="",
                 after_loop="", options=(), **kwargs):
        self.in_params = _parse_params(in_params)
        self.out_params = _parse_params(out_params)
        self.nin, self.nout = len(self.in_params), len(self.out_params)
        self.nargs = self.nin + self.nout
        self.operation, self.name, self.preamble = operation, name, preamble
        self.no_return, self.return_tuple = no_return, return_tuple
        self.loop_prep, self.after_loop = loop_prep, after_loop
        self.options = options
        _check_supported(preamble + operation + loop_prep + after_loop, name)

    @_ctl.captured
    def __call__(self, *args, size=None, block_size=None, stream=None):
        from cupy import ndarray, _wrap
        if len(args) not in (self.nin, self.nargs):
            raise TypeError(f"Wrong number of arguments for {self.name!r}")
        for a in args:
            if isinstance(a, np.ndarray):
                raise TypeError(f"Unsupported type {type(a)}")
        ins = list(args[:self.nin])
        outs = list(args[self.nin:]) or [None] * self.nout
        params = self.in_params + self.out_params
        types: dict = {}
        _bind(params, ins + outs, types)
        # the loop shape: broadcast of the non-raw arrays
        shapes = [a.shape for p, a in zip(params, ins + outs) if not p.raw and isinstance(a, ndarray)]
        if shapes:
            if size is not None:
                raise ValueError("The size parameter cannot be used with non-raw arrays")
            shape = np.broadcast_shapes(*shapes)
        elif size is not None:
            shape = (int(size),)
        else:
            raise ValueError("Loop size is undecided")
        for k, (p, o) in enumerate(zip(self.out_params, outs)):
            if o is None:
                if p.raw:
                    raise ValueError(f"Output array of raw parameter {p.name!r} must be given")
                outs[k] = _wrap(np.empty(shape, _param_dtype(p, types)))
            elif not isinstance(o, ndarray):
                raise TypeError(f"Output {p.name!r} must be a cupy.ndarray")
            elif o.dtype != _param_dtype(p, types):
                raise TypeError(f"Type is mismatched: output {p.name!r} {o.dtype}")
            elif not p.raw and o.shape != shape:
                raise ValueError(f"Out shape is mismatched: {o.shape} vs {shape}")
        n = int(np.prod(shape))
        source = self._source(params, ins + outs, types)
        lib = compile_source(source, self.name)
        bufs = _Buffers()
        for p, a in zip(params, ins + outs):
            dt = _param_dtype(p, types)
            is_out = p in self.out_params
            if isinstance(a, ndarray):
                arr = a._a
                if not p.raw and not is_out:
                    arr = np.broadcast_to(arr, shape)
                if is_out:
                    bufs.add(_contiguous(arr, dt), arr)
                else:
                    bufs.add(_contiguous(arr, dt) if arr.dtype == dt or np.can_cast(arr.dtype, dt, "same_kind")
                             else _fail_cast(p, arr.dtype, dt))
            else:
                bufs.add(_scalar_buffer(a, dt))
        fn = getattr(lib, "_standin_run")
        fn.argtypes = [ctypes.c_void_p, ctypes.c_longlong]
        if n > 0:
            fn(bufs.pointers(), n)
        _check_oob(lib, [p.name for p in params], self.name)
        bufs.finish()
        _ctl.launch(self.name)
        if self.no_return:
            return None
        if self.nout == 1 and not self.return_tuple:
            return outs[0]
        return tuple(outs)

    def _source(self, params, values, types) -> str:
        from cupy import ndarray
        head, body = [], []
        for k, (p, a) in enumerate(zip(params, values)):
            is_out = p in self.out_params
            ct = p.type_name if p.dtype is None else _CTYPES[p.dtype]
            if isinstance(a, ndarray) and p.raw:
                dims = ", ".join(str(s) for s in a.shape) or "0"
                head.append(f"CArray<{ct}, {a.ndim}> {p.name} = {{({ct}*)_args[{k}], {a.size}, {k}, {{{dims}}}}};")
            elif isinstance(a, ndarray):
                head.append(f"{ct}* _raw_{p.name} = ({ct}*)_args[{k}];")
                body.append(f"{ct} &{p.name} = _raw_{p.name}[i];" if is_out
                            else f"const {ct} {p.name} = _raw_{p.name}[i];")
            else:
                head.append(f"const {ct} {p.name} = *({ct}*)_args[{k}];")
        return (_PRELUDE + _typedefs(types) + self.preamble + "\n"
                + 'extern "C" void _standin_run(void** _args, long long _n) {\n'
                + "  _StandinIndexer _ind{(ptrdiff_t)_n};\n  " + "\n  ".join(head) + "\n"
                + self.loop_prep + "\n"
                + "  for (ptrdiff_t i = 0; i < (ptrdiff_t)_n; ++i) {\n    "
                + "\n    ".join(body) + "\n" + self.operation + "\n;  }\n"
                + self.after_loop + "\n}\n")


def _fail_cast(p, have, want):
    raise TypeError(f"cupy stand-in: cannot cast {p.name!r} from {have} to {want} (same_kind)")


# --------------------------------------------------------------------------- ReductionKernel


_REDUCTION_BLOCK_SIZE = 512  # CuPy's default block size for reductions (256 on ROCm)


def _clp2(x: int) -> int:
    """The smallest power of 2 at or above x (CuPy's internal.clp2)."""
    return 1 << (max(1, x) - 1).bit_length()


def _threads_per_output(arrays, axes, keep, nred, nout) -> int:
    """How many threads of one block cooperate on each output, as CuPy 14 lays out a reduction.

    CuPy (cupy/_core/_reduction.pyx, ``_get_block_specs``): a block of 512
    threads serves ``block_stride`` outputs, so ``512 // block_stride`` threads
    share one output, each starting from the identity and stepping through
    the reduced elements; their partial results are then combined in a tree.
    ``block_stride = clp2(max(contiguous, 512 // nred) // 2 + 1)``, where
    ``contiguous`` (at most 32) counts the output elements that lie next to
    each other in memory.
    """
    contiguous = 1
    for a in arrays:
        run, itemsize = 1, a.dtype.itemsize
        for d in reversed(keep):  # output axes, innermost first
            if a.strides[d] != run * itemsize:
                break
            run *= a.shape[d]
        contiguous = max(contiguous, run)
    reduce_block = max(1, nred)  # in_size // out_size
    stride = max(min(contiguous, 32), _REDUCTION_BLOCK_SIZE // reduce_block)
    stride = _clp2(stride // 2 + 1)
    return max(1, _REDUCTION_BLOCK_SIZE // stride)


class ReductionKernel:
    """User-defined reduction: map each element, REDUCE(a, b) over ``axis``, POST_MAP(a)."""

    def __init__(self, in_params, out_params, map_expr, reduce_expr, post_map_expr,
                 identity, name="reduce_kernel", reduce_type=None, reduce_dims=True,
                 preamble="", options=(), **kwargs):
        self.in_params = _parse_params(in_params)
        self.out_params = _parse_params(out_params)
        self.nin, self.nout = len(self.in_params), len(self.out_params)
        self.nargs = self.nin + self.nout
        self.map_expr, self.reduce_expr, self.post_map_expr = map_expr, reduce_expr, post_map_expr
        self.identity = None if identity is None else str(identity)
        self.name, self.preamble, self.options = name, preamble, options
        p0 = self.out_params[0]
        self.reduce_type = reduce_type if reduce_type is not None else (
            p0.type_name if p0.dtype is None else _CTYPES[p0.dtype])
        _check_supported(preamble + map_expr + reduce_expr + post_map_expr, name)

    @_ctl.captured
    def __call__(self, *args, out=None, axis=None, keepdims=False, stream=None, reduce_dims=True):
        from cupy import ndarray, _wrap
        if len(args) not in (self.nin, self.nargs):
            raise TypeError(f"Wrong number of arguments for {self.name!r}")
        for a in args:
            if isinstance(a, np.ndarray):
                raise TypeError(f"Unsupported type {type(a)}")
        ins = list(args[:self.nin])
        outs = list(args[self.nin:]) or ([out] if out is not None else [None] * self.nout)
        params = self.in_params + self.out_params
        types: dict = {}
        _bind(params, ins + outs, types)
        arrays = [a for p, a in zip(self.in_params, ins) if not p.raw and isinstance(a, ndarray)]
        if not arrays:
            raise ValueError("cupy stand-in: a ReductionKernel needs a non-raw input array")
        shape = np.broadcast_shapes(*[a.shape for a in arrays])
        ndim = len(shape)
        if axis is None:
            axes = tuple(range(ndim))
        else:
            axes = tuple(sorted(ax % ndim for ax in ((axis,) if np.isscalar(axis) else axis)))
        keep = tuple(d for d in range(ndim) if d not in axes)
        out_shape = tuple(shape[d] for d in keep)
        kd_shape = tuple(1 if d in axes else shape[d] for d in range(ndim))
        nred = int(np.prod([shape[d] for d in axes]))
        nout = int(np.prod(out_shape))
        if nred == 0 and self.identity is None:
            raise ValueError("zero-size reduction without identity")
        final_shape = kd_shape if keepdims else out_shape
        for k, (p, o) in enumerate(zip(self.out_params, outs)):
            if o is None:
                outs[k] = _wrap(np.empty(final_shape, _param_dtype(p, types)))
            elif o.dtype != _param_dtype(p, types):
                raise TypeError(f"Type is mismatched: output {p.name!r} {o.dtype}")
        source = self._source(params, ins + outs, types)
        lib = compile_source(source, self.name)
        bufs = _Buffers()
        perm = keep + axes  # reduced axes last: element (j, k) at j * nred + k
        for p, a in zip(params, ins + outs):
            dt = _param_dtype(p, types)
            if p in self.out_params:
                bufs.add(_contiguous(a._a, dt), a._a)
            elif isinstance(a, ndarray) and not p.raw:
                arr = np.broadcast_to(a._a, shape).transpose(perm)
                bufs.add(np.ascontiguousarray(arr, dtype=dt))
            elif isinstance(a, ndarray):
                bufs.add(_contiguous(a._a, dt))
            else:
                bufs.add(_scalar_buffer(a, dt))
        nthreads = _threads_per_output([np.broadcast_to(a._a, shape) for a in arrays], axes, keep, nred, nout)
        fn = lib._standin_run
        fn.argtypes = [ctypes.c_void_p, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_longlong]
        fn(bufs.pointers(), nout, nred, nthreads)
        _check_oob(lib, [p.name for p in params], self.name)
        bufs.finish()
        _ctl.launch(self.name)
        return outs[0] if self.nout == 1 else tuple(outs)

    def _source(self, params, values, types) -> str:
        from cupy import ndarray
        head, inner, post = [], [], []
        for k, (p, a) in enumerate(zip(params, values)):
            ct = p.type_name if p.dtype is None else _CTYPES[p.dtype]
            if p in self.out_params:
                head.append(f"{ct}* _raw_{p.name} = ({ct}*)_args[{k}];")
                post.append(f"{ct} &{p.name} = _raw_{p.name}[_j];")
            elif isinstance(a, ndarray) and p.raw:
                dims = ", ".join(str(s) for s in a.shape) or "0"
                head.append(f"CArray<{ct}, {a.ndim}> {p.name} = {{({ct}*)_args[{k}], {a.size}, {k}, {{{dims}}}}};")
            elif isinstance(a, ndarray):
                head.append(f"const {ct}* _raw_{p.name} = (const {ct}*)_args[{k}];")
                inner.append(f"const {ct} {p.name} = _raw_{p.name}[_j * _nred + _k];")
            else:
                head.append(f"const {ct} {p.name} = *({ct}*)_args[{k}];")
        map_line = f"_type_reduce _a = static_cast<_type_reduce>({self.map_expr});"
        if self.identity is None:  # no identity: the first mapped element starts the reduction
            body = ("    _type_reduce _s = _type_reduce(); bool _first = true;\n"
                    "    for (ptrdiff_t _k = 0; _k < (ptrdiff_t)_nred; ++_k) {\n      "
                    + "\n      ".join(inner) + f"\n      {map_line}\n"
                    "      if (_first) { _s = _a; _first = false; } else { _s = REDUCE(_s, _a); }\n    }\n")
        else:  # as CuPy: every thread starts from the identity, then a tree joins the threads
            body = ("    _type_reduce _p[" + str(_REDUCTION_BLOCK_SIZE) + "];\n"
                    "    for (long long _t = 0; _t < _nthr; ++_t) {\n"
                    f"      _p[_t] = _type_reduce({self.identity});\n"
                    "      for (ptrdiff_t _k = _t; _k < (ptrdiff_t)_nred; _k += _nthr) {\n        "
                    + "\n        ".join(inner) + f"\n        {map_line}\n"
                    "        _p[_t] = REDUCE(_p[_t], _a);\n      }\n    }\n"
                    "    for (long long _w = _nthr / 2; _w >= 1; _w /= 2)\n"
                    "      for (long long _t = 0; _t < _w; ++_t) _p[_t] = REDUCE(_p[_t], _p[_t + _w]);\n"
                    "    _type_reduce _s = _p[0];\n")
        return (_PRELUDE + _typedefs(types) + self.preamble + "\n"
                + f"#define REDUCE(a, b) ({self.reduce_expr})\n"
                + f"#define POST_MAP(a) ({self.post_map_expr})\n"
                + f"typedef {self.reduce_type} _type_reduce;\n"
                + 'extern "C" void _standin_run(void** _args, long long _nout, long long _nred, long long _nthr) {\n'
                + "  " + "\n  ".join(head) + "\n"
                + "  for (ptrdiff_t _j = 0; _j < (ptrdiff_t)_nout; ++_j) {\n"
                + body
                + "    " + "\n    ".join(post) + "\n    POST_MAP(_s);\n  }\n}\n")


# --------------------------------------------------------------------------- RawKernel

_SIG = r'(?:extern\s+"C"\s+)?__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?{name}\s*\(([^)]*)\)'


# One block of a RawKernel that uses __syncthreads(): every thread a fiber; the threads run in
# index order, each up to its next barrier, and the block goes on when all wait at the same one.
_FIBER_BLOCK = r"""
    const unsigned n = bx * by * bz;
    static char* stacks = nullptr;
    const size_t stack_size = 64 * 1024;
    if (!stacks) stacks = (char*)malloc(1024 * stack_size);
    for (unsigned t = 0; t < n; ++t) {
      _standin_make_fiber(t, stacks + t * stack_size, stack_size);
      _standin_state[t] = 0;
    }
    for (long long phase = 0;; ++phase) {
      unsigned waiting = 0, done = 0;
      for (unsigned t = 0; t < n; ++t) {
        if (_standin_state[t] == 2) { ++done; continue; }
        _standin_state[t] = 0; _standin_cur = t;
        threadIdx = {t % bx, (t / bx) % by, t / (bx * by)};
        _standin_to_fiber(t);
        if (_standin_state[t] == 2) ++done; else ++waiting;
      }
      if (waiting == 0) break;
      int first = -1;
      for (unsigned t = 0; t < n; ++t) {
        if (_standin_state[t] != 1) continue;
        if (first < 0) first = (int)t;
        if (_standin_line[t] != _standin_line[first]) {  // two barriers at once
          info[0] = x + gx * (y + gy * z); info[1] = first; info[2] = _standin_line[first]; info[3] = t; info[4] = _standin_line[t];
          return 2;
        }
      }
      if (done > 0) {  // some threads left, the others wait for them
        info[0] = x + gx * (y + gy * z); info[1] = first; info[2] = _standin_line[first]; info[3] = waiting; info[4] = done;
        return 1;
      }
    }
  }
  return 0;
}
"""


class RawKernel:
    """Full CUDA C kernel; ``kern(grid, block, args, shared_mem=0)`` runs every thread in turn."""

    def __init__(self, code, name, options=(), backend="nvrtc", translate_cucomplex=False,
                 enable_cooperative_groups=False, jitify=False):
        self.code, self.name, self.options, self.backend = code, name, options, backend
        _check_supported(code, name, _RAW_FORBIDDEN)
        m = re.search(_SIG.format(name=re.escape(name)), code)
        if m is None:
            raise ValueError(f"cupy stand-in: no `__global__ void {name}(...)` in the code")
        self.params = []  # (C type, name, is_pointer)
        for text in [t.strip() for t in m.group(1).split(",") if t.strip()]:
            pm = re.fullmatch(r"(.*?)([A-Za-z_]\w*)\s*(\[\s*\])?", text, re.S)
            ctype = pm.group(1).strip() + (" *" if pm.group(3) else "")
            self.params.append((ctype, pm.group(2), "*" in ctype))
        self._lib = None

    def _source(self) -> str:
        calls = ", ".join(f"*({c}*)_args[{k}]" for k, (c, _, _) in enumerate(self.params))
        head = (_PRELUDE + _RAW_PRELUDE + '#line 1 "kernel source"\n' + self.code + "\n"
                + "static void** _args;\n"
                + 'extern "C" int _standin_launch(void** args, unsigned gx, unsigned gy, unsigned gz,'
                + " unsigned bx, unsigned by, unsigned bz, long long* info) {\n"
                + "  _args = args; gridDim = {gx, gy, gz}; blockDim = {bx, by, bz};\n"
                + "  for (unsigned z = 0; z < gz; ++z) for (unsigned y = 0; y < gy; ++y) for (unsigned x = 0; x < gx; ++x) {\n"
                + "    blockIdx = {x, y, z}; _standin_poison_shared();\n")
        if "__syncthreads" not in self.code:  # one thread after the other
            head = head.replace("static void** _args;\n", "static void** _args;\nstatic void _standin_entry() {}\n")
            return (head + "  for (unsigned tz = 0; tz < bz; ++tz) for (unsigned ty = 0; ty < by; ++ty)"
                    + " for (unsigned tx = 0; tx < bx; ++tx) {\n"
                    + f"    threadIdx = {{tx, ty, tz}};\n    {self.name}({calls});\n  }}\n  }}\n  return 0;\n}}\n")
        entry = f"static void _standin_entry() {{ {self.name}({calls}); _standin_state[_standin_cur] = 2; }}\n"
        return head.replace("static void** _args;\n", "static void** _args;\n" + entry) + _FIBER_BLOCK

    @_ctl.captured
    def __call__(self, grid, block, args, *, shared_mem=0, stream=None, enable_cooperative_groups=False):
        from cupy import ndarray
        grid = tuple(grid) + (1,) * (3 - len(grid)) if isinstance(grid, tuple) else (int(grid), 1, 1)
        block = tuple(block) + (1,) * (3 - len(block)) if isinstance(block, tuple) else (int(block), 1, 1)
        if int(np.prod(block)) > 1024:
            raise RuntimeError("cupy stand-in: more than 1024 threads per block "
                               "(CUDA: cudaErrorInvalidValue / too many resources requested)")
        if shared_mem:
            raise NotImplementedError("cupy stand-in: dynamic shared memory is not simulated")
        if len(args) != len(self.params):
            raise TypeError(f"kernel {self.name!r} takes {len(self.params)} arguments, got {len(args)}")
        if self._lib is None:
            self._lib = compile_source(self._source(), self.name)
        keep = []  # buffers that must live through the call
        ptrs = []
        for (ctype, pname, is_ptr), a in zip(self.params, args):
            if isinstance(a, ndarray):
                if not is_ptr:
                    raise TypeError(f"cupy stand-in: array passed for by-value parameter "
                                    f"{ctype} {pname} of {self.name!r}")
                # the device pointer of the array as it is (strides are the kernel's business)
                cell = np.array([a._a.__array_interface__["data"][0]], dtype=np.uintp)
            else:
                if is_ptr:
                    raise TypeError(f"cupy stand-in: a {type(a).__name__} passed for pointer "
                                    f"parameter {ctype} {pname} of {self.name!r}")
                if isinstance(a, np.ndarray) and a.size != 1:
                    raise TypeError(f"You are trying to pass a numpy.ndarray of shape {a.shape} as a kernel parameter.")
                # CuPy passes Python int/float/bool as int64/float64/bool
                cell = np.array([a]) if not isinstance(a, (np.generic, np.ndarray)) else np.asarray(a).reshape(1)
                if isinstance(a, bool):
                    cell = cell.astype(np.bool_)
                size = _c_sizeof(ctype)
                if size is not None and size != cell.itemsize:
                    raise TypeError(
                        f"cupy stand-in: parameter {ctype} {pname} of {self.name!r} ({size} bytes) got a "
                        f"{cell.dtype} ({cell.itemsize} bytes); on a GPU the arguments would be misread. "
                        f"Pass numpy.{_np_for_c(ctype)}(value).")
            keep.append(cell)
            ptrs.append(cell.ctypes.data)
        fn = self._lib._standin_launch
        fn.argtypes = [ctypes.c_void_p] + [ctypes.c_uint] * 6 + [ctypes.c_void_p]
        info = (ctypes.c_longlong * 5)()
        status = fn((ctypes.c_void_p * max(1, len(ptrs)))(*ptrs), *grid, *block, info)
        if status:
            _barrier_error(self.name, status, list(info))
        _ctl.launch(self.name)

    @property
    def attributes(self):
        return {"max_threads_per_block": 1024}


def _barrier_error(name, status, info):
    block, first, line, other, other_line = info
    if status == 2:
        what = (f"thread {first} waits at __syncthreads() on line {line}, thread {other} at the one on "
                f"line {other_line}")
    else:
        what = f"{other} threads wait at __syncthreads() on line {line} for {other_line} threads that have exited"
    raise RuntimeError(f"cupy stand-in: kernel {name!r}, block {block}: {what}; on a GPU the block "
                       "hangs or reads data not yet written (every thread must reach the same barriers)")


_C_SIZES = {"float": 4, "double": 8, "int": 4, "unsigned int": 4, "unsigned": 4, "long long": 8,
            "unsigned long long": 8, "long": 8, "unsigned long": 8, "short": 2, "char": 1,
            "signed char": 1, "unsigned char": 1, "bool": 1, "size_t": 8, "ptrdiff_t": 8,
            "int32_t": 4, "int64_t": 8, "uint32_t": 4, "uint64_t": 8}
_C_TO_NP = {"float": "float32", "double": "float64", "int": "int32", "long long": "int64",
            "unsigned int": "uint32", "bool": "bool_", "ptrdiff_t": "int64", "size_t": "uint64"}


def _c_sizeof(ctype: str):
    t = " ".join(w for w in ctype.split() if w not in ("const", "volatile", "__restrict__"))
    return _C_SIZES.get(t)


def _np_for_c(ctype: str) -> str:
    t = " ".join(w for w in ctype.split() if w not in ("const", "volatile"))
    return _C_TO_NP.get(t, "<matching type>")
