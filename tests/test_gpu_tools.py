"""The GPU benchmark and the gpu-check script run (under the CuPy stand-in in CI).

The gpu-check tests run on a machine without a GPU and install nothing: a fake
``nvidia-smi`` on PATH stands in for the driver, ``--dry-run`` prints the
commands instead of running them, and the judging functions of
tools/gpu_check.py are called in-process on made-up pytest results."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.gpu
def test_bench_gpu_smoke_run(cp, tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "benchmarks/bench_gpu.py", "--smoke", "--no-torch",
                           "--models", "attention56", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert rows[0]["model"] == "attention56" and rows[0]["miniran"]["train_img_s"] > 0
    assert rows[0]["miniran"]["peak_mib"] > 0 and rows[0]["miniran"]["graph_train_img_s"] > 0


def test_gpu_check_summarises_what_it_ran(tmp_path):
    proc = subprocess.run([sys.executable, "tools/gpu_check.py", "--skip-setup", "--skip-tests", "--skip-bench",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "MINIRAN_DATA"})
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stages"]["train"]["status"].startswith("skipped")
    assert (tmp_path / "summary.md").exists()


sys.path.insert(0, str(ROOT / "tools"))
import gpu_check  # noqa: E402

SMI_HEADER = """+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 555.42.06              Driver Version: 555.42.06      CUDA Version: {cuda}     |
|-----------------------------------------+------------------------+----------------------+
"""


def fake_smi(tmp_path, cuda="12.4", gpus=("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)",), status=0):
    """A directory holding a fake `nvidia-smi` (header with `cuda`, `-L` listing `gpus`)."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    (bindir / "header.txt").write_text(SMI_HEADER.format(cuda=cuda) if status == 0 else
                                       "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n")
    (bindir / "list.txt").write_text("".join(g + "\n" for g in gpus))
    smi = bindir / "nvidia-smi"
    cat = shutil.which("cat")  # absolute: the tests run the check with PATH holding only `bindir`
    smi.write_text(f'#!/bin/sh\nif [ "$1" = "-L" ]; then {cat} "{bindir}/list.txt"; exit {status}; fi\n'
                   f'{cat} "{bindir}/header.txt"; exit {status}\n')
    smi.chmod(0o755)
    return bindir


def run_check(path_dir, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("MINIRAN_DATA", "MINIRAN_CUPY_STANDIN")}
    env["PATH"] = str(path_dir)
    return subprocess.run([sys.executable, "tools/gpu_check.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=env)


def only_failure_line(proc):
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("gpu-check: FAILED: ")
    return lines[0]


def test_gpu_check_without_nvidia_smi_fails_in_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_check(empty, "--out", str(tmp_path / "out"))
    assert proc.returncode != 0
    assert "nvidia-smi not found" in only_failure_line(proc)
    assert not (tmp_path / "out").exists()  # failed before installing or writing anything


@pytest.mark.parametrize("case, needle", [
    (dict(status=9), "nvidia-smi failed (status 9)"),          # driver not loaded
    (dict(gpus=()), "lists no GPU"),
    (dict(cuda="11.8"), "CUDA 11.8"),                           # no CuPy extra for it
])
def test_gpu_check_driver_problems_fail_in_one_line(tmp_path, case, needle):
    proc = run_check(fake_smi(tmp_path, **case), "--dry-run")
    assert proc.returncode != 0
    assert needle in only_failure_line(proc)


@pytest.mark.parametrize("cuda, extra, torch_spec", [("12.4", "cuda12", "torch==2.9.1"),
                                                     ("12.8", "cuda12", "torch==2.9.1"),
                                                     ("13.0", "cuda13", "torch")])
def test_gpu_check_picks_the_extra_of_the_driver(tmp_path, cuda, extra, torch_spec):
    proc = run_check(fake_smi(tmp_path, cuda=cuda), "--dry-run", "--out", str(tmp_path / "out"),
                     "--torch-env", str(tmp_path / "venv-torch"))
    if "is installed, but this driver needs" in proc.stderr:  # a CuPy of the other line is here
        pytest.skip(proc.stderr.strip())
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"gpu-check: driver for CUDA {cuda}, 1 GPU(s)") and lines[0].endswith(f".[{extra}]")
    cmds = [line.removeprefix("would run: ") for line in lines[1:]]
    assert any(c.endswith(f"-m pip install -q -e '.[{extra}]'") for c in cmds), cmds
    other = "cuda13" if extra == "cuda12" else "cuda12"
    assert not any(other in c for c in cmds)
    torch_install = [c for c in cmds if "venv-torch/bin/python -m pip install" in c]
    assert torch_install and torch_install[0].endswith(f"-e . {torch_spec}")  # torch in its own environment
    assert any("-m pytest -m gpu" in c and "-rs" in c and "--junitxml=" in c for c in cmds)
    assert any("bench_gpu.py --no-torch" in c for c in cmds)
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def test_driver_and_extra_in_process(tmp_path):
    smi = fake_smi(tmp_path, cuda="13.1") / "nvidia-smi"
    driver = gpu_check.probe_driver(str(smi))
    assert driver["cuda"] == (13, 1) and driver["gpus"][0].startswith("GPU 0:")
    assert gpu_check.cuda_extra((12, 2)) == "cuda12" and gpu_check.cuda_extra((13, 0)) == "cuda13"
    assert gpu_check.parse_driver_cuda("no header here") is None
    with pytest.raises(gpu_check.CheckFailed, match="uninstall cupy-cuda13x"):
        gpu_check.check_no_other_cupy("cuda12", ["cupy-cuda13x"])
    gpu_check.check_no_other_cupy("cuda12", ["cupy-cuda12x"])


def test_cupy_missing_or_no_gpu_fails_in_one_line():
    with pytest.raises(gpu_check.CheckFailed, match="CuPy is not importable") as err:
        gpu_check.judge_cupy({"ok": False, "cupy_error": "ModuleNotFoundError(\"No module named 'cupy'\")",
                              "gpu_error": None})
    assert "\n" not in str(err.value)
    with pytest.raises(gpu_check.CheckFailed, match=r"no usable GPU .*cudaErrorNoDevice"):
        gpu_check.judge_cupy({"ok": False, "cupy_error": None,
                              "gpu_error": "CUDARuntimeError('cudaErrorNoDevice:\\nno CUDA-capable device')"})
    gpu_check.judge_cupy({"ok": True, "cupy_error": None, "gpu_error": None})


def test_gpu_check_without_cupy_fails_in_one_line_end_to_end(tmp_path):
    """A fake driver, no install: this environment's real CuPy (or its absence) is probed."""
    probe = gpu_check.probe_cupy(sys.executable)
    if probe.get("ok"):
        pytest.skip("this machine has a usable GPU")
    proc = run_check(fake_smi(tmp_path), "--no-install", "--no-torch", "--out", str(tmp_path / "out"))
    if "is installed, but this driver needs" in proc.stderr:
        pytest.skip(proc.stderr.strip())
    assert proc.returncode != 0
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert lines[0].startswith("gpu-check: driver for CUDA 12.4")
    assert len(lines) == 2 and lines[1].startswith("gpu-check: FAILED: CuPy")


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="{e}" failures="{f}"
 skipped="{s}" tests="{t}">{cases}</testsuite></testsuites>"""
SKIP_CASE = ('<testcase classname="tests.test_x" name="test_y[cupy]"><skipped type="pytest.skip" '
             'message="no usable CUDA GPU (CuPy missing or no device)"/></testcase>')


def junit(tmp_path, t, f=0, e=0, s=0):
    path = tmp_path / "pytest.xml"
    path.write_text(JUNIT.format(t=t, f=f, e=e, s=s, cases=SKIP_CASE * s))
    return path


def test_skipped_gpu_tests_fail_the_check(tmp_path):
    ok, line = gpu_check.judge_gpu_tests(0, junit(tmp_path, t=812, s=812))
    assert not ok and "812 of 812 SKIPPED" in line and "no usable CUDA GPU" in line and "\n" not in line
    ok, line = gpu_check.judge_gpu_tests(0, junit(tmp_path, t=812, s=1))
    assert not ok and "1 of 812 SKIPPED" in line
    log = ("SKIPPED [3] tests/conftest.py:40: no usable CUDA GPU (CuPy missing or no device)\n"
           "====== 5 passed, 3 skipped in 2.01s ======\n")  # no XML: the summary line decides
    ok, line = gpu_check.judge_gpu_tests(0, None, log)
    assert not ok and "3 of 8 SKIPPED" in line and "tests/conftest.py:40" in line


def test_no_failed_or_missing_gpu_tests_fail_the_check(tmp_path):
    assert gpu_check.judge_gpu_tests(5, None, "=== 900 deselected in 1.0s ===")[0] is False
    assert "none collected" in gpu_check.judge_gpu_tests(5, junit(tmp_path, t=0))[1]
    assert "none collected" in gpu_check.judge_gpu_tests(2, tmp_path / "missing.xml", "")[1]
    ok, line = gpu_check.judge_gpu_tests(1, junit(tmp_path, t=10, f=2))
    assert not ok and "2 failed" in line
    assert gpu_check.judge_gpu_tests("timeout", junit(tmp_path, t=10))[0] is False


def test_all_gpu_tests_passed_is_success(tmp_path):
    assert gpu_check.judge_gpu_tests(0, junit(tmp_path, t=812)) == (True, "gpu tests: 812 passed")
    assert gpu_check.judge_gpu_tests(0, None, "==== 812 passed, 900 deselected in 60.1s ====") == \
        (True, "gpu tests: 812 passed")


def test_torch_figures_merge_beside_miniran():
    bench = {"rows": [{"model": "attention56", "batch": 64, "miniran": {"train_img_s": 700.0, "eval_img_s": 2000.0}},
                      {"model": "attention92", "batch": 64, "miniran": {"train_img_s": 400.0, "eval_img_s": 1000.0}}]}
    torch_result = {"torch": "2.9.1", "cuda": "12.8", "gpu": "H100",
                    "rows": [{"model": "attention56", "batch": 64,
                              "torch": {"train_img_s": 1000.0, "eval_img_s": 4000.0, "peak_mib": 1.0}}]}
    rows = gpu_check.merge_torch(bench, torch_result)["rows"]
    assert rows[0]["train_ratio"] == 0.7 and rows[0]["eval_ratio"] == 0.5
    assert "torch" not in rows[1]
