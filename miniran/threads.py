"""miniran's CPU threads and the BLAS thread hold (the engine's tools; the reference code uses neither).

BLAS splits every matrix product over the cores, but the memory-bound work
around the products (batch norm, im2col/col2im copies, pooling, transposes)
would run on one core. NumPy releases the GIL inside its ufunc loops,
reductions and copies, so a few Python threads, each working on its own
slice of the batch, use the other cores for that work too, with no new
dependency. This module is that small thread pool (:func:`parallel_chunks`),
its setting (:func:`cpu_threads`, :func:`set_cpu_threads`) and the control of
NumPy's OpenBLAS threads through ctypes (:func:`blas_threads`,
:class:`cpu_region`). The faster twins of :mod:`miniran.fast` use it.
"""

from __future__ import annotations

import numpy as np

_cpu_threads: int | None = None
_pool = None
_pool_size = 0

#: an array operation gets one thread per this many elements (so below it, none):
#: handing work to a thread costs tens of microseconds, more on a busy machine.
#: benchmarks/bench_threads.py chose the value (docs/performance.md)
PARALLEL_MIN_ELEMENTS = 1 << 19


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
    need (docs/performance.md has what that cost the training step).
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
