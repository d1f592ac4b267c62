#!/usr/bin/env python3
"""Compile every GPU kernel of miniran with NVRTC, as CuPy would, without a GPU.

Every CuPy kernel of miniran is declared through ``miniran.kernels``
(``elementwise_kernel``, ``reduction_kernel``, ``raw_kernel``), which records a
``KernelSpec`` in ``miniran.kernels.KERNELS``. CuPy compiles a kernel only on
its first launch, on a GPU, so a CUDA syntax error would otherwise only show up
there. This script builds, for every declared kernel and every dtype it is
checked for, the exact CUDA source CuPy generates at launch and compiles it with
NVRTC for fixed GPU architectures, with CuPy's own headers and options.

How the source is obtained (CuPy 14):

* ElementwiseKernel: CuPy's own generator,
  ``cupy._core._kernel._get_elementwise_kernel_code``, is called with argument
  descriptions (``_ArgInfo``) and the type map that ``ElementwiseKernel.
  _decide_params_type`` returns, as ``ElementwiseKernel.__call__`` does.
* ReductionKernel: CuPy's own generator,
  ``cupy._core._reduction._ReductionKernel_get_cached_function_code`` (the
  generic kernel). When CuPy's CUB accelerator is on (CuPy's default) and the
  kernel has one input and one output, CuPy may instead wrap the same map,
  reduce and post-map expressions in a CUB BlockReduce kernel; its generator
  is not reachable from Python, and it is NOT compiled here: the expressions
  themselves are checked through the generic kernel.
* RawKernel: the code as is (no CuPy headers), as ``RawKernel`` compiles it.

The CuPy headers (``cupy._core.core._cupy_header_list``) are prepended to the
generated kernels, and the options are CuPy's
(``cupy._core.core.assemble_cupy_compiler_options`` plus what
``cupy.cuda.compiler`` adds: ``-ftz=true``, ``-arch=sm_XX``,
``--device-as-default-execution-space``). Only the architecture is fixed here
instead of read from a device. The compiled cubin must export the kernel under
its name, as CuPy's ``Module.get_function`` requires.

Type placeholders (``T``) are bound to float32 and float64 unless the
KernelSpec carries a ``dtypes`` attribute: a sequence whose entries are either
a dtype (bound to every placeholder) or a dict ``{placeholder: dtype}``. An
optional ``scalars`` attribute names the inputs passed as Python scalars
(default: the non-raw inputs with a concrete dtype, such as ``int32 n``).

Needs the real CuPy with NVRTC and the CUDA runtime headers, e.g.
``pip install cupy-cuda12x 'cuda-toolkit[nvrtc,cudart]==12.*'``; no GPU and no
driver. The CPU stand-in for CuPy of the test suite (``tests/standin``) is
removed from ``sys.path`` and ``MINIRAN_CUPY_STANDIN`` is ignored.

Usage::

    python tools/nvrtc_check.py              # check every kernel; exit 1 on a failure
    python tools/nvrtc_check.py --arch 80    # other architectures (comma-separated)
    python tools/nvrtc_check.py --show-source miniran_im2col
    python tools/nvrtc_check.py --probe      # exit 3 (with the reason) if CuPy/NVRTC is unusable
    python tools/nvrtc_check.py --import my_kernels.py NAME...  # also kernels declared elsewhere

Exit status: 0 all kernels compiled, 1 a kernel failed, 2 usage or import
error of miniran, 3 real CuPy/NVRTC not usable here.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import pkgutil
import re
import struct
import sys
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]

#: architectures compiled for by default: Turing (T4, the oldest that NVRTC 12.9
#: does not call deprecated) and Hopper (H100/H200).
DEFAULT_ARCHS = ("75", "90")
#: dtypes bound to the type placeholders of a kernel without a ``dtypes`` hint.
DEFAULT_DTYPES = ("float32", "float64")

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_NO_NVRTC = 0, 1, 2, 3


def _drop_standin() -> None:
    """Remove the test suite's CuPy stand-in from the path: this check needs the real CuPy."""
    os.environ.pop("MINIRAN_CUPY_STANDIN", None)
    standin = (ROOT / "tests" / "standin").resolve()

    def is_standin(entry: str) -> bool:
        try:
            p = Path(entry or ".").resolve()
        except OSError:
            return False
        return p == standin or p.parts[-2:] == ("tests", "standin")

    sys.path[:] = [p for p in sys.path if not is_standin(p)]
    pp = os.environ.get("PYTHONPATH")
    if pp is not None:
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in pp.split(os.pathsep) if p and not is_standin(p))
    cp = sys.modules.get("cupy")
    if cp is not None and is_standin(str(Path(getattr(cp, "__file__", "") or ".").parent.parent)):
        raise ImportError("the CuPy stand-in (tests/standin) is already imported; run this check in a fresh process")


_drop_standin()
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class CheckResult(NamedTuple):
    """One kernel at one dtype binding: ``ok`` is False with the NVRTC log in ``log``."""

    name: str
    dtype: str
    ok: bool
    log: str
    seconds: float = 0.0


class NvrtcUnavailable(RuntimeError):
    """Real CuPy, NVRTC or the CUDA headers cannot be used here."""


# --------------------------------------------------------------------------- CuPy access


_CUPY = None


def _cupy():
    """The real CuPy modules this check uses (raises NvrtcUnavailable with the reason)."""
    global _CUPY
    if _CUPY is not None:
        return _CUPY
    try:
        import cupy
        from cupy._core import _kernel, _reduction, _scalar, core
        from cupy.cuda import compiler, nvrtc
    except Exception as exc:  # ImportError, or a CUDA library that fails to load
        raise NvrtcUnavailable(f"the real CuPy cannot be imported ({exc!r})") from exc
    if not hasattr(_kernel, "_get_elementwise_kernel_code"):
        raise NvrtcUnavailable(f"{cupy.__file__} is not a CuPy whose kernel generators this check knows (CuPy 14)")
    try:
        version = nvrtc.getVersion()
    except Exception as exc:
        raise NvrtcUnavailable(f"NVRTC cannot be loaded ({exc!r}); install nvidia-cuda-nvrtc-cu12") from exc
    try:
        core.assemble_cupy_compiler_options(())
    except Exception as exc:
        raise NvrtcUnavailable(f"the CUDA runtime headers are missing ({exc}); install nvidia-cuda-runtime-cu12") from exc
    _CUPY = (cupy, _kernel, _reduction, _scalar, core, compiler, version)
    return _CUPY


def probe() -> str:
    """A one-line description of the CuPy/NVRTC found (raises NvrtcUnavailable)."""
    cupy, *_, version = _cupy()
    try:  # NVRTC also needs its builtins library: compile an empty kernel
        log = compile_unit(_Unit("raw", 'extern "C" __global__ void nvrtc_probe() {}', (), "nvrtc_probe"),
                           DEFAULT_ARCHS[-1])
    except Exception as exc:
        log = repr(exc)
    if log is not None:
        raise NvrtcUnavailable(f"NVRTC cannot compile an empty kernel: {log}")
    return f"CuPy {cupy.__version__} ({Path(cupy.__file__).parent}), NVRTC {version[0]}.{version[1]}"


# --------------------------------------------------------------------------- source generation

# _ArgKind of cupy/_core/_kernel.pxd
_ND, _INDEXER, _SCALAR, _POINTER = 1, 2, 3, 4


def _placeholders(params) -> list[str]:
    """Type placeholders (one-letter types such as T) of a kernel's parameters, in order."""
    seen = []
    for p in params:
        if p.dtype is None and p.ctype is not None and p.ctype not in seen:
            seen.append(p.ctype)
    return seen


def _bindings(spec, placeholders, np):
    """The dtype bindings to check: a list of (label, {placeholder: numpy dtype})."""
    hint = getattr(spec, "dtypes", None)
    entries = list(hint) if hint is not None else list(DEFAULT_DTYPES)
    if not placeholders:
        return [("-", {})]
    out = []
    for entry in entries:
        if isinstance(entry, dict):
            missing = [t for t in placeholders if t not in entry]
            if missing:
                raise ValueError(f"{spec.name}: dtypes entry {entry!r} binds no dtype to {missing}")
            binding = {t: np.dtype(entry[t]) for t in placeholders}
            label = ",".join(f"{t}={binding[t].name}" for t in placeholders)
        else:
            binding = {t: np.dtype(entry) for t in placeholders}
            label = np.dtype(entry).name
        out.append((label, binding))
    return out


def _is_scalar_input(p, spec) -> bool:
    """How an input is passed at run time, which CuPy's generated code depends on.

    The KernelSpec may say it with a ``scalars`` attribute (names of the inputs
    passed as Python scalars). Otherwise a non-raw input is taken for a scalar
    when it has a concrete dtype (``int32 batch``), or when it is used where
    CuPy binds only scalars and raw arrays: in the ``post_map_expr`` of a
    reduction, or in the ``loop_prep``/``after_loop`` of an elementwise kernel
    (an array argument is bound to its element only inside the loop). Any other
    input is an array. Scalars are declared ``const T x``, array elements
    ``const T &x``: the same code compiles against both.
    """
    if p.raw:
        return False
    hint = getattr(spec, "scalars", None)
    if hint is not None:
        return p.name in hint
    if p.dtype is not None:
        return True
    outside = " ".join(str(spec.params.get(key) or "") for key in ("post_map_expr", "loop_prep", "after_loop"))
    return re.search(r"(?<![\w.])%s\b" % re.escape(p.name), outside) is not None


class _Unit(NamedTuple):
    variant: str  # 'elementwise', 'reduction' or 'raw'
    source: str  # complete source given to NVRTC
    options: tuple  # options before CuPy's own are added
    name: str  # the kernel's symbol in the module


def _elementwise_units(spec, binding):
    cupy, _kernel, _reduction, _scalar, core, compiler, _ = _cupy()
    np = __import__("numpy")
    k = cupy.ElementwiseKernel(**spec.params)
    nin = k.nin
    in_params, out_params = k.params[:nin], k.params[nin:k.nargs]

    def dtype_of(p):
        return np.dtype(p.dtype) if p.dtype is not None else binding[p.ctype]

    in_nd = tuple(None if _is_scalar_input(p, spec) else dtype_of(p) for p in in_params)
    out_nd = tuple(dtype_of(p) for p in out_params)
    in_types, out_types, type_map = k._decide_params_type(in_nd, out_nd)
    A = _kernel._ArgInfo
    arginfos = []
    for p, t, nd in zip(in_params, in_types, in_nd):
        if nd is None:
            arginfos.append(A(_SCALAR, _scalar.CScalar, np.dtype(t), 0, True, True))
        else:  # after _reduce_dims: contiguous non-raw arrays are 1-D
            arginfos.append(A(_ND, cupy.ndarray, np.dtype(t), 1, True, True))
    for t in out_types:
        arginfos.append(A(_ND, cupy.ndarray, np.dtype(t), 1, True, True))
    arginfos.append(A(_INDEXER, cupy._core._carray.Indexer, None, 1, True, True))
    code = _kernel._get_elementwise_kernel_code(
        tuple(arginfos), type_map, k.params, k.operation, k.name, k.preamble, **k.kwargs)
    return [_Unit("elementwise", _with_cupy_headers(core, code), tuple(k.kwargs.get("options", ())), k.name)]


def _reduction_units(spec, binding):
    cupy, _kernel, _reduction, _scalar, core, compiler, _ = _cupy()
    np = __import__("numpy")
    k = cupy.ReductionKernel(**spec.params)
    nin, nout = k.nin, k.nout
    in_params, out_params = k.in_params, k.out_params

    def dtype_of(p):
        return np.dtype(p.dtype) if p.dtype is not None else binding[p.ctype]

    # ReductionKernel._get_expressions_and_types passes dtype.type, not dtypes
    in_nd = tuple(None if _is_scalar_input(p, spec) else dtype_of(p).type for p in in_params)
    out_nd = tuple(dtype_of(p).type for p in out_params)
    in_types, out_types, type_map = _kernel._decide_params_type(in_params, out_params, in_nd, out_nd)
    type_map = _kernel._TypeMap(type_map._pairs + (("IndexT", "int32"),))  # as in _AbstractReductionKernel._call
    A = _kernel._ArgInfo
    # A (4, 8) array reduced over its last axis: the input is a 2-D array (a
    # non-contiguous view after CuPy's axis permutation), the output 1-D.
    arginfos = []
    for p, t, nd in zip(in_params, in_types, in_nd):
        if nd is None:
            arginfos.append(A(_SCALAR, _scalar.CScalar, np.dtype(t), 0, True, True))
        else:
            arginfos.append(A(_ND, cupy.ndarray, np.dtype(t), 2, False, True))
    for t in out_types:
        arginfos.append(A(_ND, cupy.ndarray, np.dtype(t), 1, True, True))
    arginfos += [A(_INDEXER, cupy._core._carray.Indexer, None, 2, True, True),
                 A(_INDEXER, cupy._core._carray.Indexer, None, 1, True, True),
                 A(_SCALAR, _scalar.CScalar, np.dtype("int32"), 0, True, True)]  # _block_stride
    code = _reduction._ReductionKernel_get_cached_function_code(
        nin, nout, k._params, tuple(arginfos), type_map, k.name, 512, k.reduce_type, k.identity,
        k.map_expr, k.reduce_expr, k.post_map_expr, k.preamble, k.options)
    units = [_Unit("reduction", _with_cupy_headers(core, code), tuple(k.options), k.name)]

    return units


def _with_cupy_headers(core, code: str) -> str:
    # compile_with_cache(prepend_cupy_headers=True): core._cupy_header + source
    return "".join("#include <%s>\n" % h for h in core._cupy_header_list) + code


def _raw_units(spec):
    cupy, _kernel, _reduction, _scalar, core, compiler, _ = _cupy()
    k = cupy.RawKernel(**spec.params)
    if getattr(k, "jitify", None):
        raise ValueError(f"{spec.name}: jitify=True is not supported by this check")
    if getattr(k, "backend", "nvrtc") != "nvrtc":
        raise ValueError(f"{spec.name}: backend {k.backend!r} is not supported by this check (nvrtc only)")
    code = k.code
    if getattr(k, "translate_cucomplex", False):
        # compile_with_cache(translate_cucomplex=True): swap <cuComplex.h> for CuPy's bridge, and
        # prepend CuPy's headers (core._cupy_header, a string fixed when CuPy is imported)
        pattern = re.compile(r"\s*".join(["", "#", "include", "<", r"cuComplex\.h", ">"]))
        code = "".join("#include <cupy/cuComplex_bridge.h>  // translate_cucomplex\n" if pattern.match(line)
                       else line for line in code.splitlines(keepends=True))
        code = _with_cupy_headers(core, code)
    return [_Unit("raw", code, tuple(k.options), k.name)]


def kernel_sources(spec):
    """[(dtype label, [_Unit, ...])] for one KernelSpec: what CuPy would compile."""
    import numpy as np

    cupy, _kernel, *_ = _cupy()
    if spec.kind == "raw":
        return [("-", _raw_units(spec))]
    if spec.kind == "elementwise":
        k = cupy.ElementwiseKernel(**spec.params)
        return [(label, _elementwise_units(spec, b)) for label, b in _bindings(spec, _placeholders(k.params), np)]
    if spec.kind == "reduction":
        k = cupy.ReductionKernel(**spec.params)
        return [(label, _reduction_units(spec, b))
                for label, b in _bindings(spec, _placeholders(k.in_params + k.out_params), np)]
    raise ValueError(f"{spec.name}: unknown kernel kind {spec.kind!r}")


# --------------------------------------------------------------------------- compilation


def compiler_options(options, arch: str) -> tuple:
    """NVRTC options of CuPy for a kernel's own options, with a fixed architecture."""
    _, _, _, _, core, compiler, version = _cupy()
    opts = core.assemble_cupy_compiler_options(tuple(options))  # --std, CCCL, CuPy and cudart includes
    opts += ("-ftz=true",)  # cupy.cuda.compiler._compile_with_cache_cuda
    if compiler._get_bool_env_variable("CUPY_CUDA_COMPILE_WITH_DEBUG", False):
        opts += ("--device-debug", "--generate-line-info")
    # _compile_using_nvrtc_no_warning: cubin for a known architecture, PTX on request
    ptx = compiler._use_ptx or int(arch) > int(compiler._get_max_compute_capability())
    opts += (f"-arch=compute_{arch}" if ptx else f"-arch=sm_{arch}",)
    opts += ("--device-as-default-execution-space",)
    if (version[0] >= 13 or (version[0] == 12 and version[1] >= 8)) and compiler._use_pch:
        opts += ("--pch",)
    return opts, ("ptx" if ptx else "cubin")


def _elf_function_symbols(image: bytes) -> set:
    """Names of the function symbols of an ELF64 image (a cubin)."""
    if image[:4] != b"\x7fELF" or image[4] != 2:
        return set()
    e_shoff, = struct.unpack_from("<Q", image, 0x28)
    e_shentsize, e_shnum = struct.unpack_from("<HH", image, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", image, e_shoff + i * e_shentsize) for i in range(e_shnum)]
    names = set()
    for sh in sections:
        if sh[1] != 2:  # SHT_SYMTAB
            continue
        strtab = sections[sh[6]]
        s_off = strtab[4]
        for off in range(sh[4], sh[4] + sh[5], sh[9] or 24):
            st_name, st_info = struct.unpack_from("<IB", image, off)
            if st_info & 0xF == 2:  # STT_FUNC
                end = image.index(b"\0", s_off + st_name)
                names.add(image[s_off + st_name:end].decode("ascii", "replace"))
    return names


def compile_unit(unit: _Unit, arch: str) -> str | None:
    """Compile one source with NVRTC; None when it compiles and exports its kernel, else the log."""
    _, _, _, _, core, compiler, _ = _cupy()
    opts, method = compiler_options(unit.options, arch)
    prog = compiler._NVRTCProgram(unit.source, unit.name + ".cu", method=method)
    try:
        image, _ = prog.compile(opts)
    except compiler.CompileException as exc:
        return exc.get_message().strip() or "NVRTC failed without a log"
    if method == "cubin":
        if unit.name not in _elf_function_symbols(bytes(image)):
            return f'the module defines no kernel named "{unit.name}" (is it extern "C" __global__?)'
    else:
        text = image.decode("utf-8", "replace") if isinstance(image, bytes) else str(image)
        if f".entry {unit.name}(" not in text:
            return f'the module defines no kernel named "{unit.name}" (is it extern "C" __global__?)'
    return None


def check_specs(specs, archs=DEFAULT_ARCHS) -> list[CheckResult]:
    """Compile each KernelSpec at each of its dtype bindings for every architecture.

    Returns one CheckResult per kernel and dtype binding (raw kernels: dtype '-').
    A failed binding's ``log`` holds, for each failing variant and architecture,
    a header line and NVRTC's log. Raises NvrtcUnavailable without CuPy/NVRTC.
    """
    _cupy()
    results = []
    for spec in specs:
        start = time.perf_counter()
        try:
            sources = kernel_sources(spec)
        except Exception as exc:  # CuPy rejects the declaration itself
            results.append(CheckResult(spec.name, "-", False, f"CuPy rejects the kernel: {exc!r}",
                                       time.perf_counter() - start))
            continue
        for index, (label, units) in enumerate(sources):
            start = time.perf_counter()
            logs = []
            for unit in units:
                for arch in archs:
                    log = compile_unit(unit, arch)
                    if log is not None:
                        logs.append(f"[{unit.variant} kernel {unit.name}, sm_{arch}]\n{log}")
            results.append(CheckResult(spec.name, label, not logs, "\n".join(logs), time.perf_counter() - start))
    return results


# --------------------------------------------------------------------------- command line


def declared_kernels(extra_modules=()) -> dict:
    """Import every module of miniran (so that each declares its kernels), then
    ``extra_modules`` (dotted names or .py paths), and return KERNELS."""
    import miniran
    from miniran import kernels

    for info in pkgutil.walk_packages(miniran.__path__, "miniran."):
        if info.name.rsplit(".", 1)[-1] == "__main__":
            continue
        importlib.import_module(info.name)
    for module in extra_modules:
        if module.endswith(".py"):
            spec = importlib.util.spec_from_file_location(Path(module).stem, module)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
        else:
            importlib.import_module(module)
    return dict(kernels.KERNELS)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default=",".join(DEFAULT_ARCHS),
                    help="comma-separated compute capabilities (default %(default)s)")
    ap.add_argument("--probe", action="store_true", help="only check that the real CuPy and NVRTC are usable")
    ap.add_argument("--list", action="store_true", help="list the declared kernels and exit")
    ap.add_argument("--show-source", metavar="NAME", help="print the generated CUDA sources of one kernel")
    ap.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                    help="also import this module (dotted name or .py file) that declares kernels")
    ap.add_argument("names", nargs="*", help="check only these kernels")
    args = ap.parse_args(argv)
    archs = tuple(a.strip().removeprefix("sm_").removeprefix("compute_") for a in args.arch.split(",") if a.strip())

    try:
        found = probe()
    except NvrtcUnavailable as exc:
        print(f"nvrtc_check: {exc}", file=sys.stderr)
        return EXIT_NO_NVRTC
    if args.probe:
        print(found)
        return EXIT_OK
    try:
        kernels = declared_kernels(args.imports)
    except Exception as exc:
        print(f"nvrtc_check: cannot import miniran: {exc!r}", file=sys.stderr)
        return EXIT_USAGE
    if args.list:
        for name, spec in kernels.items():
            print(f"{spec.kind:12s} {name}")
        return EXIT_OK
    if args.show_source:
        spec = kernels.get(args.show_source)
        if spec is None:
            print(f"nvrtc_check: no kernel named {args.show_source!r}", file=sys.stderr)
            return EXIT_USAGE
        for label, units in kernel_sources(spec):
            for unit in units:
                print(f"// ===== {unit.name} [{label}] {unit.variant}; options "
                      f"{' '.join(compiler_options(unit.options, archs[0])[0])}")
                print(unit.source)
        return EXIT_OK
    unknown = [n for n in args.names if n not in kernels]
    if unknown:
        print(f"nvrtc_check: no kernel named {', '.join(unknown)}", file=sys.stderr)
        return EXIT_USAGE
    specs = [kernels[n] for n in (args.names or kernels)]
    print(f"nvrtc_check: {found}; {len(specs)} kernels; sm_{', sm_'.join(archs)}")
    start = time.perf_counter()
    results = check_specs(specs, archs)
    for r in results:
        print(f"{'OK  ' if r.ok else 'FAIL'} {r.name} [{r.dtype}] ({r.seconds:.2f} s)")
        if not r.ok:
            print("    " + r.log.replace("\n", "\n    "))
    failed = sum(not r.ok for r in results)
    print(f"nvrtc_check: {len(results) - failed} kernel/dtype pairs compiled, {failed} failed, in {time.perf_counter() - start:.1f} s")
    return EXIT_FAIL if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
