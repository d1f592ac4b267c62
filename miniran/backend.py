"""Array backend: one entry point that picks NumPy or CuPy.

Every function in miniran computes on *raw* arrays obtained through
:func:`get_array_module`, so the same code runs on a NumPy array (CPU) and on a
CuPy array (GPU). CuPy is optional: it is imported lazily inside a
``try/except`` and the import error is kept, to be shown only when the user
actually asks for the GPU.

This is the lowest layer of the package; it imports nothing from miniran.
"""

from __future__ import annotations

import sys

import numpy as np

#: dtype of new floating-point tensors and parameters.
DEFAULT_DTYPE = np.float32

_cupy = None
_cupy_import_error: BaseException | None = None
_cupy_checked = False
_gpu_usable: bool | None = None
_gpu_error: BaseException | None = None

INSTALL_HINT = (
    "Install the CuPy build that matches your CUDA driver together with the CUDA "
    "libraries it needs (NVRTC, cuBLAS, ...): `pip install -e '.[cuda12]'` (CUDA 12.x "
    "driver) or `pip install -e '.[cuda13]'` (CUDA 13.x driver); these extras install "
    "`cupy-cudaNNx[ctk]`, which brings the CUDA libraries as wheels, so only the NVIDIA "
    "driver is needed. `nvidia-smi` shows the CUDA version your driver supports."
)


def _import_cupy():
    """Import CuPy once; remember the failure instead of raising it."""
    global _cupy, _cupy_import_error, _cupy_checked
    if not _cupy_checked:
        _cupy_checked = True
        try:
            import cupy  # noqa: F401

            _cupy = cupy
        except Exception as exc:  # ImportError, or a CUDA library that fails to load
            _cupy_import_error = exc
    return _cupy


def cuda_available() -> bool:
    """True only when CuPy imports *and* a CUDA device can run a kernel."""
    global _gpu_usable, _gpu_error
    if _gpu_usable is None:
        cp = _import_cupy()
        if cp is None:
            _gpu_usable = False
        else:
            try:
                _gpu_usable = bool(cp.is_available())
                if _gpu_usable:
                    # is_available() only counts devices; run a tiny kernel to be sure.
                    (cp.arange(2) + 1).sum().item()
                else:
                    _gpu_error = RuntimeError("CuPy found no usable CUDA device")
            except Exception as exc:
                _gpu_usable = False
                _gpu_error = exc
    return _gpu_usable


def check_cuda_available() -> None:
    """Raise a RuntimeError that says how to get a working GPU setup."""
    if cuda_available():
        return
    if _cupy is None:
        reason = f"CuPy could not be imported ({_cupy_import_error!r})."
    else:
        reason = f"CuPy is installed but no GPU is usable ({_gpu_error!r})."
    raise RuntimeError(f"The GPU was requested but is not available: {reason} {INSTALL_HINT}")


def cupy_module():
    """The ``cupy`` module (raises the helpful error when it is not usable)."""
    check_cuda_available()
    return _cupy


def _cupy_ndarray_type():
    """CuPy's ndarray class if CuPy has been imported by anyone, else None.

    Looks in ``sys.modules`` as well as at miniran's own import, so an array made
    by a user who imported CuPy before miniran did is still recognised, and a
    type check never triggers the (slow) CuPy import itself.
    """
    return getattr(_loaded_cupy(), "ndarray", None)


def _loaded_cupy():
    """The ``cupy`` module if miniran or the user has imported it, else None."""
    return _cupy if _cupy is not None else sys.modules.get("cupy")


def is_cupy_array(array) -> bool:
    """True for a raw CuPy array (not for a miniran Tensor holding one)."""
    nd = _cupy_ndarray_type()
    return nd is not None and isinstance(array, nd)


def get_array_module(*arrays):
    """Return ``numpy`` or ``cupy``, whichever holds the given arrays.

    Accepts raw arrays (NumPy or CuPy), Python and NumPy scalars, ``None`` and
    miniran tensors. NumPy is returned unless at least one argument is a CuPy
    array or a tensor holding one. Raw arrays are checked first: a CuPy array
    also has a ``.data`` attribute (its device memory pointer), which must not
    be mistaken for a tensor's data.
    """
    nd = _cupy_ndarray_type()
    if nd is None:
        return np
    for a in arrays:
        if isinstance(a, nd) or isinstance(getattr(a, "data", None), nd):
            return _loaded_cupy()
    return np


def normalize_device(device) -> str:
    """Map user spellings ('cpu', 'gpu', 'cuda', 'cuda:0') to 'cpu' or 'gpu'.

    miniran drives one GPU, CuPy's current device. ``cuda:N`` with N other than
    0 is refused rather than silently meaning device 0: choose the card with
    ``CUDA_VISIBLE_DEVICES=N``, which makes it device 0 for the process.
    """
    if device is None:
        return "cpu"
    name = str(device).strip().lower()
    if name == "cpu":
        return "cpu"
    if name in ("gpu", "cuda"):
        return "gpu"
    for prefix in ("cuda:", "gpu:"):
        if name.startswith(prefix):
            index = name[len(prefix):]
            if index == "0":
                return "gpu"
            if index.isdigit():
                raise ValueError(
                    f"device {device!r}: miniran uses one GPU, device 0; to run on GPU {index}, "
                    f"start Python with CUDA_VISIBLE_DEVICES={index} and pass device='gpu'")
    raise ValueError(f"device must be 'cpu' or 'gpu' (or 'cuda', 'cuda:0'), got {device!r}")


def device_of(array) -> str:
    return "gpu" if is_cupy_array(array) else "cpu"


def to_device(array, device):
    """Copy a raw array to 'cpu' (NumPy) or 'gpu' (CuPy); no copy if already there."""
    device = normalize_device(device)
    if device == "cpu":
        return _loaded_cupy().asnumpy(array) if is_cupy_array(array) else np.asarray(array)
    cp = cupy_module()
    return array if is_cupy_array(array) else cp.asarray(array)


def to_numpy(array) -> np.ndarray:
    """Host copy of any array (NumPy arrays are returned as they are)."""
    return to_device(array, "cpu")


# --------------------------------------------------------------------------- GPU kernels
#
# Every fused GPU kernel of miniran is declared through one of the three
# functions below. Each records its source in KERNELS, so that the tests can
# compile every kernel with NVRTC (a CUDA syntax error fails CI without a GPU)
# and run every kernel on the CPU through the CuPy stand-in of the test suite.
# The CuPy object itself is built on first use, when CuPy is known to work.


class KernelSpec:
    """The source of one CuPy kernel: ``kind`` is 'elementwise', 'reduction' or 'raw'.

    ``params`` holds the keyword arguments of the CuPy constructor
    (``cupy.ElementwiseKernel``, ``cupy.ReductionKernel`` or ``cupy.RawKernel``).
    """

    def __init__(self, kind: str, name: str, params: dict):
        self.kind, self.name, self.params = kind, name, dict(params)
        self._kernel = None

    def build(self):
        """The CuPy kernel object (built once, compiled by CuPy per dtype on first launch)."""
        if self._kernel is None:
            cp = cupy_module()
            cls = {"elementwise": cp.ElementwiseKernel, "reduction": cp.ReductionKernel,
                   "raw": cp.RawKernel}[self.kind]
            self._kernel = cls(**self.params)
        return self._kernel

    def __call__(self, *args, **kwargs):
        return self.build()(*args, **kwargs)

    def __repr__(self):
        return f"KernelSpec({self.kind!r}, {self.name!r})"


#: every kernel declared by miniran, by name
KERNELS: dict[str, KernelSpec] = {}


def _register(spec: KernelSpec) -> KernelSpec:
    if spec.name in KERNELS:
        raise ValueError(f"a GPU kernel named {spec.name!r} is already declared")
    KERNELS[spec.name] = spec
    return spec


def elementwise_kernel(name, in_params, out_params, operation, preamble="", **options) -> KernelSpec:
    """Declare a ``cupy.ElementwiseKernel`` (one CUDA thread per output element)."""
    return _register(KernelSpec("elementwise", name, dict(
        in_params=in_params, out_params=out_params, operation=operation, name=name,
        preamble=preamble, **options)))


def reduction_kernel(name, in_params, out_params, map_expr, reduce_expr, post_map_expr,
                     identity, reduce_type=None, preamble="", **options) -> KernelSpec:
    """Declare a ``cupy.ReductionKernel`` (map, reduce over ``axis``, post-map)."""
    params = dict(in_params=in_params, out_params=out_params, map_expr=map_expr,
                  reduce_expr=reduce_expr, post_map_expr=post_map_expr, identity=identity,
                  name=name, preamble=preamble, **options)
    if reduce_type is not None:
        params["reduce_type"] = reduce_type
    return _register(KernelSpec("reduction", name, params))


def raw_kernel(name, code, **options) -> KernelSpec:
    """Declare a ``cupy.RawKernel`` (full CUDA C; the caller picks grid and block)."""
    return _register(KernelSpec("raw", name, dict(code=code, name=name, **options)))


# --------------------------------------------------------------------------- CPU threads
#
# BLAS splits every matrix product over the cores, but the memory-bound work
# around the products (batch norm, im2col/col2im copies, pooling, transposes)
# would run on one core. NumPy releases the GIL inside its ufunc loops,
# reductions and copies, so a few Python threads, each working on its own
# slice of the batch, use the other cores for that work too, with no new
# dependency. The functions below are that small thread pool.

_cpu_threads: int | None = None
_pool = None
_pool_size = 0

#: below this many elements an array operation is split over no threads:
#: handing work to a thread costs tens of microseconds
PARALLEL_MIN_ELEMENTS = 1 << 17


def available_cores() -> int:
    """Cores this process may actually use: its CPU affinity, capped by a cgroup CPU quota.

    ``os.cpu_count()`` counts the machine's cores; a container or ``taskset``
    often allows fewer, and a thread more than the cores allowed only waits.
    """
    import os

    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = period = None
    try:  # cgroup v2: "max 100000" or "<quota> <period>"
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
    except (OSError, ValueError):
        try:  # cgroup v1: a quota of -1 means none
            with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f, \
                    open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as g:
                quota, period = f.read().strip(), g.read().strip()
        except OSError:
            pass
    try:
        if quota not in (None, "max", "-1") and int(period) > 0 and int(quota) > 0:
            cores = min(cores, max(1, -(-int(quota) // int(period))))
    except ValueError:
        pass
    return max(1, cores)


def cpu_threads() -> int:
    """How many threads miniran's own CPU loops use (matrix products follow the BLAS setting).

    The first of these that is set decides: :func:`set_cpu_threads`, the
    environment variables ``MINIRAN_NUM_THREADS``, ``OMP_NUM_THREADS``,
    ``OPENBLAS_NUM_THREADS`` (so ``OMP_NUM_THREADS=1`` makes all of miniran run
    on one core, as it does NumPy's BLAS), else :func:`available_cores`.
    """
    global _cpu_threads
    if _cpu_threads is None:
        import os

        for var in ("MINIRAN_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            value = os.environ.get(var, "").strip()
            if not value:
                continue
            try:
                n = int(value.split(",")[0])  # OpenMP allows a list per nesting level
            except ValueError:
                n = 0
            if n >= 1:
                _cpu_threads = n
                break
            if var == "MINIRAN_NUM_THREADS":  # ours: refuse; the others belong to other libraries
                raise ValueError(f"MINIRAN_NUM_THREADS must be a positive integer, got {value!r}")
        else:
            _cpu_threads = available_cores()
    return _cpu_threads


def set_cpu_threads(n: int | None) -> None:
    """Set the thread count of miniran's CPU loops (``None``: back to :func:`cpu_threads`' default)."""
    global _cpu_threads
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"set_cpu_threads: n must be a positive integer or None, got {n!r}")
    _cpu_threads = n


def parallel_chunks(total: int, work, elements: int, blas: bool = False):
    """Run ``work(start, stop)`` over contiguous pieces of ``range(total)`` on :func:`cpu_threads` threads.

    Used with ``total`` = the batch size N: each call handles images
    ``start:stop`` and must write only its own part of any output. There are
    twice as many pieces as threads, taken in turn by whichever thread is
    free (the calling thread works too), so a thread that lost its core to
    another program delays the others less. Returns the results in piece
    order. Small jobs (``elements`` below :data:`PARALLEL_MIN_ELEMENTS`) and a
    thread count of 1 run as the single call ``work(0, total)``.

    ``blas=True`` says that ``work`` calls matrix products: BLAS is then kept
    to one thread while the pieces run (each product is already one thread's
    share; two layers of threads would fight over the cores, and OpenBLAS
    threads busy-wait), and without a way to do that (a BLAS that
    :func:`blas_threads` cannot set) the job runs as one call with BLAS's own
    threads.
    """
    global _pool, _pool_size
    threads = min(cpu_threads(), total, max(1, elements // PARALLEL_MIN_ELEMENTS))
    if threads <= 1 or (blas and _openblas() is None):
        return [work(0, total)]
    if _pool is None or _pool_size < threads - 1:
        from concurrent.futures import ThreadPoolExecutor

        if _pool is not None:
            _pool.shutdown(wait=False)
        _pool_size = threads - 1
        _pool = ThreadPoolExecutor(_pool_size, thread_name_prefix="miniran")
    import itertools

    pieces = min(total, 2 * threads)
    bounds = [total * k // pieces for k in range(pieces + 1)]
    results = [None] * pieces
    taken = itertools.count()  # next() on it is atomic under the GIL

    def drain():
        while (k := next(taken)) < pieces:
            results[k] = work(bounds[k], bounds[k + 1])

    previous = blas_threads(1) if blas else None
    try:
        helpers = [_pool.submit(drain) for _ in range(threads - 1)]
        try:
            drain()
        finally:
            for h in helpers:
                h.result()
    finally:
        if previous is not None:
            blas_threads(previous)
    return results


class cpu_region:
    """Context manager around every function's forward and backward on the CPU.

    While miniran computes with its own threads (:func:`cpu_threads` > 1),
    NumPy's OpenBLAS is held at one thread, then given back its own count.
    Why: after each product OpenBLAS keeps its idle threads busy-waiting for
    the next one (up to about 0.1 s), on the very cores miniran's threads
    need; the step of Attention-56 took 1.3x longer with them spinning.
    Nested regions change nothing. Outside miniran's functions BLAS keeps
    the thread count the user set.
    """

    _depth = 0
    _previous = None

    def __enter__(self):
        cls = cpu_region
        cls._depth += 1
        if cls._depth == 1 and cpu_threads() > 1:
            cls._previous = blas_threads(1)
        return self

    def __exit__(self, *exc):
        cls = cpu_region
        cls._depth -= 1
        if cls._depth == 0 and cls._previous is not None:
            blas_threads(cls._previous)
            cls._previous = None
        return False


def splits_on_threads(*arrays) -> bool:
    """Whether NumPy arrays of one shape and dtype may take a fast CPU path split over the threads by rows.

    (Rows: the first axis, the batch for image arrays.) False for CuPy arrays,
    scalars, mixed shapes or dtypes, and inside :class:`reference_cpu_paths`.
    """
    first = arrays[0]
    return (_fast_cpu_paths and all(type(a) is np.ndarray for a in arrays) and first.ndim >= 1
            and all(a.shape == first.shape and a.dtype == first.dtype for a in arrays))


def elementwise(ufunc, a, b):
    """``a + b`` (``np.add``) or ``a * b`` (``np.multiply``) as a new array.

    Arrays that :func:`splits_on_threads` are computed by groups of rows on
    miniran's CPU threads; anything else (CuPy arrays stay CuPy's, scalars,
    broadcasting) takes the plain operator.
    """
    if splits_on_threads(a, b):
        out = np.empty_like(a)
        parallel_chunks(a.shape[0], lambda i, j: ufunc(a[i:j], b[i:j], out=out[i:j]), a.size)
        return out
    return a + b if ufunc is np.add else a * b


_openblas_lib = False  # False: not looked for yet; None: not found


def _openblas():
    """(set, get) of the OpenBLAS that NumPy uses, through ctypes, or None.

    NumPy's wheels bundle OpenBLAS with prefixed names (``scipy_openblas_set_num_threads64_``);
    a system OpenBLAS has the plain ones. Other BLAS libraries (MKL,
    Accelerate) are not driven: miniran then leaves their threads alone.
    """
    global _openblas_lib
    if _openblas_lib is False:
        _openblas_lib = None
        try:
            import ctypes
            import glob
            import os

            libs_dir = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
            candidates = sorted(glob.glob(os.path.join(libs_dir, "*openblas*")))
            candidates += ["libopenblas.so.0", "libopenblas.so"]
            for path in candidates:
                try:
                    lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                except OSError:
                    continue
                for prefix, suffix in (("scipy_openblas_", "64_"), ("scipy_openblas_", ""), ("openblas_", "")):
                    setter = getattr(lib, f"{prefix}set_num_threads{suffix}", None)
                    getter = getattr(lib, f"{prefix}get_num_threads{suffix}", None)
                    if setter is not None and getter is not None:
                        setter.argtypes, setter.restype, getter.restype = [ctypes.c_int], None, ctypes.c_int
                        _openblas_lib = (setter, getter)
                        return _openblas_lib
        except Exception:  # never fail an import over a speed-up
            _openblas_lib = None
    return _openblas_lib


def blas_threads(n: int | None = None) -> int | None:
    """The thread count of NumPy's OpenBLAS; with ``n``, set it and return the previous one.

    Returns None when NumPy's BLAS is not an OpenBLAS that can be driven.
    """
    lib = _openblas()
    if lib is None:
        return None
    setter, getter = lib
    previous = getter()
    if n is not None and n != previous:
        setter(int(n))
    return previous


# --------------------------------------------------------------------------- fast CPU paths
#
# Where a function has a fast CPU path (threads, Winograd convolution, batched
# 1x1 products), the readable array code stays beside it as the reference the
# fast path is tested against. This switch picks between them.

_fast_cpu_paths = True


def fast_cpu_paths() -> bool:
    """Whether functions use their fast CPU paths (the default) or their reference array code."""
    return _fast_cpu_paths


class reference_cpu_paths:
    """Context manager: run the readable reference code of every function on the CPU.

    ``with backend.reference_cpu_paths(): ...`` gives the same results (up to
    float rounding) more slowly, and is what the fast paths are tested against.
    """

    def __enter__(self):
        global _fast_cpu_paths
        self._previous, _fast_cpu_paths = _fast_cpu_paths, False
        return self

    def __exit__(self, *exc):
        global _fast_cpu_paths
        _fast_cpu_paths = self._previous
        return False
