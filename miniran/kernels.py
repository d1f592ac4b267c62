"""Declarations of miniran's fused GPU kernels (CuPy ``ElementwiseKernel``, ``ReductionKernel``, ``RawKernel``).

Every fused GPU kernel of miniran is declared through one of the three
functions below. Each records its source in :data:`KERNELS`, so that the tests
can compile every kernel with NVRTC (a CUDA syntax error fails CI without a
GPU) and run every kernel on the CPU through the CuPy stand-in of the test
suite. The CuPy object itself is built on first use, when CuPy is known to
work. Only the engine (:mod:`miniran.fast`) and the optimiser declare kernels;
the reference Functions of :mod:`miniran.functional` never do.
"""

from __future__ import annotations

from miniran.backend import cupy_module


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
