"""Every declared GPU kernel compiles with NVRTC, exactly as CuPy would generate it.

No GPU is needed: tools/nvrtc_check.py builds CuPy's source for each kernel of
``miniran.kernels.KERNELS`` and compiles it with NVRTC for fixed architectures.
It needs the real CuPy with NVRTC and the CUDA runtime headers, which the test
suite's own environment may not have (and must not be the CuPy stand-in), so it
runs in a subprocess with the first of:

* ``$MINIRAN_NVRTC_PYTHON``;
* ``.venv-nvrtc/bin/python`` (made by ``make nvrtc-venv``);
* the interpreter running the tests.

Without a usable real CuPy/NVRTC these tests skip, saying why, except in CI
(``CI`` set) or with ``MINIRAN_REQUIRE_NVRTC=1``, where they fail.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "nvrtc_check.py"
STANDIN = ROOT / "tests" / "standin"
NO_NVRTC = 3  # exit status of `nvrtc_check.py --probe` without a usable CuPy/NVRTC


def _required() -> bool:
    ci = os.environ.get("CI", "").strip().lower()
    return ci not in ("", "0", "false", "no") or os.environ.get("MINIRAN_REQUIRE_NVRTC") == "1"


def _interpreter() -> str:
    explicit = os.environ.get("MINIRAN_NVRTC_PYTHON")
    if explicit:
        return explicit
    venv = ROOT / ".venv-nvrtc" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def _env() -> dict:
    """The environment of the check: without the CuPy stand-in."""
    env = dict(os.environ)
    env.pop("MINIRAN_CUPY_STANDIN", None)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
             if p and Path(p).resolve() != STANDIN.resolve()]
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    else:
        env.pop("PYTHONPATH", None)
    return env


def _run(python, *args, timeout=900):
    return subprocess.run([python, *args], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def nvrtc_python():
    """The interpreter with the real CuPy and NVRTC; skips (or fails in CI) without one."""
    python = _interpreter()
    try:
        proc = _run(python, str(SCRIPT), "--probe", timeout=300)
        ok, why = proc.returncode == 0, (proc.stderr or proc.stdout).strip()
        if proc.returncode not in (0, NO_NVRTC):
            pytest.fail(f"{SCRIPT.name} --probe with {python} exited {proc.returncode}:\n"
                        f"{proc.stdout}\n{proc.stderr}")
    except OSError as exc:
        ok, why = False, f"cannot run {python}: {exc}"
    if not ok:
        reason = (f"real CuPy with NVRTC not usable with {python}: {why} "
                  "(`make nvrtc-venv`, or set MINIRAN_NVRTC_PYTHON)")
        if _required():
            pytest.fail(reason + "; required because CI or MINIRAN_REQUIRE_NVRTC=1 is set")
        pytest.skip(reason)
    return python


def test_every_declared_kernel_compiles_with_nvrtc(nvrtc_python):
    proc = _run(nvrtc_python, str(SCRIPT))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"a GPU kernel does not compile:\n{out}"
    # every kernel that miniran declares (all of its modules imported here too) was checked
    import miniran
    from miniran import kernels

    for info in pkgutil.walk_packages(miniran.__path__, "miniran."):
        if not info.name.endswith(".__main__"):
            importlib.import_module(info.name)
    assert kernels.KERNELS, "miniran declares no GPU kernel?"
    for name in kernels.KERNELS:
        assert f"OK   {name} [" in out, f"{name} was not checked:\n{out}"
    print(out)  # compile times, shown with -s or on failure


def test_generated_source_is_cupys_elementwise_template(nvrtc_python):
    proc = _run(nvrtc_python, str(SCRIPT), "--show-source", "miniran_im2col_batched")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    src = proc.stdout
    for piece in ("#include <cupy/carray.cuh>",  # CuPy's headers come first
                  "typedef float T;",  # placeholder bound per dtype
                  "typedef double T;",
                  'extern "C" __global__ void miniran_im2col_batched(',
                  "const CArray<float, 1, 1, 1> img",  # raw input: the array itself
                  "const int batch",  # int32 scalar argument
                  "CArray<float, 1, 1, 1> _raw_col",  # non-raw output, bound per element:
                  "T &col = _raw_col[_ind.get()];",
                  "CIndexer<1, 1> _ind",
                  "CUPY_FOR(i, _ind.size())",
                  "--device-as-default-execution-space"):
        assert piece in src, f"{piece!r} missing from the generated source:\n{src}"


# Scratch kernels: KernelSpec objects built directly, never registered in KERNELS.
_BROKEN = textwrap.dedent('''
    import json, sys
    sys.path.insert(0, {tools!r})
    import nvrtc_check
    from miniran import kernels
    from miniran.kernels import KernelSpec

    def ew(name, op, **kw):
        return KernelSpec("elementwise", name, dict(
            in_params="T x, float32 s", out_params="T y", operation=op, name=name, **kw))

    specs = [
        ew("scratch_good", "y = x * s"),
        ew("scratch_syntax_error", "y = x * s +;"),
        ew("scratch_undefined", "y = x * undefined_scale"),
        KernelSpec("reduction", "scratch_reduce_undefined", dict(
            in_params="T x, T w", out_params="T y", map_expr="x * w * missing_weight", reduce_expr="a + b",
            post_map_expr="y = a", identity="0", name="scratch_reduce_undefined")),
        KernelSpec("raw", "scratch_raw_syntax", dict(name="scratch_raw_syntax", code=(
            'extern "C" __global__ void scratch_raw_syntax(float* x) {{ x[threadIdx.x] = 1 }}'))),
        KernelSpec("raw", "scratch_raw_not_extern_c", dict(name="scratch_raw_not_extern_c", code=(
            '__global__ void scratch_raw_not_extern_c(float* x) {{ x[threadIdx.x] = 1; }}'))),
    ]
    specs[0].dtypes = ["float32"]
    results = nvrtc_check.check_specs(specs, archs=("80",))
    assert not any(s.name in kernels.KERNELS for s in specs)
    print(json.dumps([r._asdict() for r in results]))
''')


def test_checker_reports_syntax_errors_and_undefined_identifiers(nvrtc_python):
    code = _BROKEN.format(tools=str(ROOT / "tools"))
    proc = _run(nvrtc_python, "-c", code)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    by_name = {}
    for r in results:
        by_name.setdefault(r["name"], []).append(r)

    assert [(r["dtype"], r["ok"]) for r in by_name["scratch_good"]] == [("float32", True)]
    for name in ("scratch_syntax_error", "scratch_undefined", "scratch_reduce_undefined"):
        assert [r["dtype"] for r in by_name[name]] == ["float32", "float64"], by_name[name]
    for name, rs in by_name.items():
        if name != "scratch_good":
            assert rs and not any(r["ok"] for r in rs), f"{name} should fail: {rs}"
    for r in by_name["scratch_syntax_error"] + by_name["scratch_raw_syntax"]:
        assert "error" in r["log"] and "sm_80" in r["log"], r["log"]
    for r in by_name["scratch_undefined"]:
        assert 'identifier "undefined_scale" is undefined' in r["log"], r["log"]
    for r in by_name["scratch_reduce_undefined"]:
        assert 'identifier "missing_weight" is undefined' in r["log"], r["log"]
    assert 'no kernel named "scratch_raw_not_extern_c"' in by_name["scratch_raw_not_extern_c"][0]["log"]


def test_command_exits_non_zero_on_a_broken_kernel(nvrtc_python, tmp_path):
    module = tmp_path / "broken_kernels.py"
    module.write_text(textwrap.dedent('''
        from miniran import kernels
        kernels.elementwise_kernel("scratch_cli_broken", "T x", "T y", "y = x +* 2")
    '''))
    proc = _run(nvrtc_python, str(SCRIPT), "--arch", "80", "--import", str(module),
                "scratch_cli_broken", "miniran_im2col_batched")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "FAIL scratch_cli_broken [float32]" in out and "FAIL scratch_cli_broken [float64]" in out, out
    assert "OK   miniran_im2col_batched [float32]" in out, out
    assert "error" in out, out
