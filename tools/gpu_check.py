"""Everything to run on the first GPU machine, in one command (``make gpu-check``).

First the set-up, which stops at once, with one line, when something is missing:

0. the driver: ``nvidia-smi`` must exist, list a GPU and report the CUDA version
   its driver supports (the ``CUDA Version: 12.4`` of its header); 12.x selects
   the extra ``.[cuda12]`` (``cupy-cuda12x[ctk]``), 13.x ``.[cuda13]``
   (``cupy-cuda13x[ctk]``), which is then installed into this Python's
   environment (``pip install -e '.[cudaNN]'``); a ``cupy-*`` package of the
   other CUDA line already installed is refused, never installed beside it;
   then CuPy must import and ``miniran.cuda_available()`` must be True (a
   tiny kernel runs), checked in a fresh process;
0b. PyTorch, for the comparison only, in its own environment (``--torch-env``,
   default ``.venv-torch``): ``torch==2.9.1`` on a CUDA 12.x driver, the
   current ``torch`` wheel (built for CUDA 13) on a 13.x driver. A failure
   here skips the torch figures with one line; it does not fail the check.

Then three stages, each with its own time limit so they end in under 8 minutes:

1. the real ``gpu`` tests (``pytest -m gpu``: NumPy against CuPy for every
   operation, kernels, training, resume); the check fails if the stage
   collected no test, or if any gpu test failed or was SKIPPED (on a GPU
   machine a skip means the GPU path was not tested);
2. ``benchmarks/bench_gpu.py --no-torch`` (Attention-56 and -92, batch
   64/128/256) in this environment, and the PyTorch eager twin of Attention-56
   in the torch environment (``--torch-bench``), merged into one table;
3. a timed Attention-56 run on the full CIFAR-10 (``miniran train --device
   gpu``, cosine schedule) for a few epochs: seconds per epoch, images per
   second and test accuracy from its ``metrics.jsonl``.

Everything lands in one folder (``--out``, default ``benchmarks/results/gpu-check``):
``pytest.log``/``pytest.xml``, ``bench_gpu.json``/``.txt``, ``bench_torch.json``,
``train.log``, ``metrics.jsonl`` and ``summary.json`` + ``summary.md``, the
figures ``docs/performance.md`` quotes. The last line printed is the verdict,
``gpu-check: OK`` or ``gpu-check: FAILED: <why>``.

Usage (from the repository root)::

    python tools/gpu_check.py --data-dir PATH/TO/cifar-10-batches-bin/..   # or $MINIRAN_DATA
    python tools/gpu_check.py --dry-run          # the driver, the extra and the commands, nothing run
    python tools/gpu_check.py --epochs 2 --no-torch
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The CUDA line the driver supports -> the extra of pyproject.toml (its CuPy wheel).
EXTRAS = {12: "cuda12", 13: "cuda13"}
# The torch build that pairs with each CUDA line, AS THE ISSUE REPORTS IT (not yet
# confirmed on a GPU machine): the current torch wheel on PyPI is built for
# CUDA 13 (its nvidia-*-cu13 libraries need a 13.x driver); torch 2.9.1 is the
# one for CUDA 12. torch lives in its own environment so that its CUDA wheels
# never meet the ones CuPy's `ctk` extra installs.
TORCH_FOR = {"cuda12": "torch==2.9.1", "cuda13": "torch"}
TORCH_BATCHES = (64, 128, 256)

# Run in a fresh process: is CuPy importable, and can miniran run a kernel on a GPU?
CUPY_PROBE = """
import json
import miniran
from miniran import backend
ok = bool(miniran.cuda_available())
print(json.dumps({"ok": ok,
                  "cupy_error": None if backend._cupy is not None else repr(backend._cupy_import_error),
                  "gpu_error": None if ok else repr(backend._gpu_error)}))
"""


class CheckFailed(Exception):
    """A set-up failure, said in one line."""


def one_line(text, limit=300):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def stage_env():
    """This environment without the CuPy stand-in of the tests: the check is about the real CuPy."""
    env = {k: v for k, v in os.environ.items() if k != "MINIRAN_CUPY_STANDIN"}
    standin = str(REPO / "tests" / "standin")
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != Path(standin)]
    if parts:
        env["PYTHONPATH"] = os.pathsep.join(parts)
    else:
        env.pop("PYTHONPATH", None)
    return env


# --------------------------------------------------------------------------- the driver

def parse_driver_cuda(smi_output):
    """``(major, minor)`` from nvidia-smi's header (``CUDA Version: 12.4``), or None."""
    m = re.search(r"CUDA Version\s*:\s*(\d+)\.(\d+)", smi_output)
    return (int(m.group(1)), int(m.group(2))) if m else None


def probe_driver(smi=None):
    """``{"nvidia_smi", "cuda": (major, minor), "gpus": [...]}``, or CheckFailed in one line."""
    smi = smi or shutil.which("nvidia-smi")
    if not smi:
        raise CheckFailed("nvidia-smi not found on PATH: no NVIDIA driver on this machine, so no GPU to check")
    try:
        head = subprocess.run([smi], capture_output=True, text=True, timeout=60)
        listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CheckFailed(f"nvidia-smi could not run: {exc!r}") from None
    if head.returncode != 0:
        raise CheckFailed(f"nvidia-smi failed (status {head.returncode}): "
                          f"{one_line(head.stdout + ' ' + head.stderr) or 'no output'}")
    cuda = parse_driver_cuda(head.stdout)
    if cuda is None:
        raise CheckFailed("nvidia-smi's header shows no 'CUDA Version: N.M': cannot tell which CuPy build fits")
    gpus = [line.strip() for line in listing.stdout.splitlines() if line.strip().startswith("GPU ")]
    if not gpus:
        raise CheckFailed(f"nvidia-smi lists no GPU (driver for CUDA {cuda[0]}.{cuda[1]} found, but no device)")
    return {"nvidia_smi": smi, "cuda": cuda, "gpus": gpus}


def cuda_extra(cuda):
    """The extra of pyproject.toml that fits a driver for CUDA ``(major, minor)``."""
    if cuda[0] not in EXTRAS:
        raise CheckFailed(f"the driver supports CUDA {cuda[0]}.{cuda[1]}; miniran's CuPy extras need a "
                          f"12.x or 13.x driver (cuda12, cuda13)")
    return EXTRAS[cuda[0]]


def installed_cupy():
    """Names of the installed ``cupy*`` distributions of this environment."""
    from importlib import metadata

    names = set()
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name.startswith("cupy"):
            names.add(name)
    return sorted(names)


def check_no_other_cupy(extra, installed):
    """Refuse a CuPy of the other CUDA line: two cupy-* packages side by side break each other."""
    wanted = "cupy-cuda12x" if extra == "cuda12" else "cupy-cuda13x"
    others = [n for n in installed if n != wanted]
    if others:
        raise CheckFailed(f"{', '.join(others)} is installed, but this driver needs {wanted}: "
                          f"`pip uninstall {' '.join(others)}` first (never two cupy-* packages side by side)")


def install_command(py, extra):
    return [str(py), "-m", "pip", "install", "-q", "-e", f".[{extra}]"]


def judge_cupy(probe):
    """None when CuPy runs a kernel on a GPU; CheckFailed (one line) otherwise."""
    if probe.get("cupy_error"):
        raise CheckFailed(f"CuPy is not importable: {one_line(probe['cupy_error'], 200)}")
    if not probe.get("ok"):
        raise CheckFailed(f"CuPy imports but sees no usable GPU (miniran.cuda_available() is False): "
                          f"{one_line(probe.get('gpu_error'), 200)}")


def probe_cupy(py):
    proc = subprocess.run([str(py), "-c", CUPY_PROBE], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=stage_env())
    lines = proc.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        return {"ok": False, "cupy_error": f"the probe failed (status {proc.returncode}): "
                                           f"{one_line(proc.stderr[-400:])}"}


# --------------------------------------------------------------------------- the gpu tests

def pytest_counts(junit_xml=None, log_text=""):
    """``{"tests", "passed", "failed", "errors", "skipped", "skip_reasons"}`` from pytest's
    JUnit XML when there is one, else from the summary line of its log; None when neither says."""
    if junit_xml and Path(junit_xml).exists():
        try:
            root = ET.parse(junit_xml).getroot()
        except ET.ParseError:
            root = None
        if root is not None:
            suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
            c = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
            reasons = [el.get("message", "") for el in root.iter("skipped")]
            return {"tests": c["tests"], "failed": c["failures"], "errors": c["errors"],
                    "skipped": c["skipped"], "passed": c["tests"] - c["failures"] - c["errors"] - c["skipped"],
                    "skip_reasons": reasons}
    lines = [line for line in log_text.splitlines()
             if re.search(r"\d+ (passed|failed|skipped|errors?|deselected)|no tests ran", line)]
    if not lines:
        return None
    found = dict((w, int(n)) for n, w in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)",
                                                    lines[-1]))
    c = {"passed": found.get("passed", 0) + found.get("xpassed", 0), "failed": found.get("failed", 0),
         "errors": found.get("errors", 0) + found.get("error", 0),
         "skipped": found.get("skipped", 0) + found.get("xfailed", 0)}
    c["tests"] = sum(c.values())
    c["skip_reasons"] = re.findall(r"^SKIPPED \[\d+\] (.*)$", log_text, flags=re.M)
    return c


def judge_gpu_tests(status, junit_xml=None, log_text=""):
    """``(ok, line)`` for the gpu test stage: any skip, failure, error, or no test at all fails it."""
    if status == "timeout":
        return False, "gpu tests: timed out"
    c = pytest_counts(junit_xml, log_text)
    if c is None or c["tests"] == 0:
        return False, f"gpu tests: none collected or run (pytest status {status})"
    if c["skipped"]:
        first = one_line(c["skip_reasons"][0], 150) if c["skip_reasons"] else "no reason given"
        return False, (f"gpu tests: {c['skipped']} of {c['tests']} SKIPPED on a GPU machine "
                       f"(first reason: {first})")
    if c["failed"] or c["errors"] or status != 0:
        return False, f"gpu tests: {c['failed']} failed, {c['errors']} errors of {c['tests']} (pytest status {status})"
    return True, f"gpu tests: {c['passed']} passed"


# --------------------------------------------------------------------------- stages

def run_stage(name, cmd, log_path, limit_s, env=None):
    """Run ``cmd`` with a time limit, its output to ``log_path``; return (status, seconds)."""
    print(f"== {name}: {' '.join(map(str, cmd))}  (limit {limit_s} s)", flush=True)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        try:
            status = subprocess.run(list(map(str, cmd)), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                    timeout=limit_s, env=env).returncode
        except subprocess.TimeoutExpired:
            status = "timeout"
    seconds = round(time.perf_counter() - start, 1)
    print(f"   {name}: status {status} in {seconds} s (log {log_path})", flush=True)
    return status, seconds


def torch_env_commands(torch_env, extra):
    """The commands that create/update the torch environment (miniran without CuPy + the paired torch)."""
    tpy = Path(torch_env) / "bin" / "python"
    cmds = []
    if not tpy.exists():
        cmds.append([sys.executable, "-m", "venv", str(torch_env)])
    cmds.append([str(tpy), "-m", "pip", "install", "-q", "-e", ".", TORCH_FOR[extra]])
    return cmds


def torch_bench_main(out_json, steps, warmup=3, batches=TORCH_BATCHES):
    """Run in the torch environment: the PyTorch eager Attention-56 of bench_gpu.py, to JSON."""
    try:
        import torch
    except ImportError as exc:
        print(f"torch: skipped, not importable here ({exc})", file=sys.stderr)
        return 3
    if not torch.cuda.is_available():
        print(f"torch: skipped, torch {torch.__version__} (built for CUDA {torch.version.cuda}) sees no GPU",
              file=sys.stderr)
        return 3
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_gpu import bench_torch

    torch.backends.cudnn.allow_tf32 = False  # plain FP32, like CuPy's float32 products (bench_functions.gpu_setup)
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = [{"model": "attention56", "batch": b, "torch": bench_torch(torch, "attention56", b, steps, warmup)}
            for b in batches]
    Path(out_json).write_text(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda,
                                          "gpu": torch.cuda.get_device_name(0), "rows": rows}, indent=1))
    return 0


def merge_torch(bench, torch_result):
    """Put torch's figures beside miniran's rows of bench_gpu.json (same model and batch)."""
    by_key = {(r["model"], r["batch"]): r["torch"] for r in torch_result.get("rows", [])}
    for row in bench.get("rows", []):
        tt = by_key.get((row["model"], row["batch"]))
        if tt:
            row["torch"] = tt
            row["train_ratio"] = row["miniran"]["train_img_s"] / tt["train_img_s"]
            row["eval_ratio"] = row["miniran"]["eval_img_s"] / tt["eval_img_s"]
    bench.setdefault("machine", {})["torch_env"] = {k: torch_result.get(k) for k in ("torch", "cuda", "gpu")}
    return bench


def fail(line, code=2):
    print(f"gpu-check: FAILED: {one_line(line, 400)}", file=sys.stderr, flush=True)
    return code


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gpu-check"))
    parser.add_argument("--data-dir", default=os.environ.get("MINIRAN_DATA"),
                        help="folder holding cifar-10-batches-bin (default $MINIRAN_DATA)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--dry-run", action="store_true",
                        help="read the driver, print the extra and every command, run nothing")
    parser.add_argument("--no-install", action="store_true",
                        help="do not pip-install the CUDA extra (CuPy must already be there)")
    parser.add_argument("--skip-setup", action="store_true",
                        help="skip the driver/CuPy checks (only to test the reporting; "
                             "`make gpu-check` never passes it)")
    parser.add_argument("--torch-env", default=str(REPO / ".venv-torch"),
                        help="the separate environment for PyTorch (default .venv-torch)")
    parser.add_argument("--no-torch", action="store_true", help="time miniran alone")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--skip-bench", action="store_true")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--torch-bench", metavar="JSON", help=argparse.SUPPRESS)  # run inside the torch env
    parser.add_argument("--steps", type=int, default=10, help="timed steps per benchmark figure")
    args = parser.parse_args(argv)
    if args.torch_bench:
        return torch_bench_main(args.torch_bench, args.steps)
    py = sys.executable
    env = stage_env()
    out = Path(args.out)

    # ---- set-up: fail at once, one line, before anything is installed
    extra = None
    driver = None
    if not args.skip_setup:
        try:
            driver = probe_driver()
            extra = cuda_extra(driver["cuda"])
            check_no_other_cupy(extra, installed_cupy())
        except CheckFailed as exc:
            return fail(exc)
        cuda = "{}.{}".format(*driver["cuda"])
        print(f"gpu-check: driver for CUDA {cuda}, {len(driver['gpus'])} GPU(s) ({driver['gpus'][0]}): "
              f"extra .[{extra}]", flush=True)
    torch_cmds = (torch_env_commands(args.torch_env, extra)
                  if extra and not (args.no_torch or args.skip_bench) else [])
    torch_py = Path(args.torch_env) / "bin" / "python"
    if args.dry_run:
        plan = []
        if extra and not args.no_install:
            plan.append(install_command(py, extra))
        if extra:
            plan.append([py, "-c", "<miniran.cuda_available() probe>"])
        plan += torch_cmds
        if not args.skip_tests:
            plan.append(pytest_command(py, out))
        if not args.skip_bench:
            plan.append(bench_command(py, out, args.steps))
            if not args.no_torch:
                plan.append([str(torch_py), "tools/gpu_check.py", "--torch-bench", str(out / "bench_torch.json"),
                             "--steps", str(args.steps)])
        if not args.skip_train:
            plan.append([py, "-m", "miniran", "train", "--device", "gpu", "..."])
        for cmd in plan:
            print("would run: " + shlex.join(map(str, cmd)))
        return 0

    out.mkdir(parents=True, exist_ok=True)
    summary = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "stages": {}}
    if driver:
        summary["driver"] = {"cuda": "{}.{}".format(*driver["cuda"]), "gpus": driver["gpus"], "extra": extra}
    if extra:
        if not args.no_install:
            status, _ = run_stage(f"install .[{extra}]", install_command(py, extra), out / "install.log", 600, env)
            if status != 0:
                tail = (out / "install.log").read_text().strip().splitlines()[-1:] or [""]
                return fail(f"pip install -e '.[{extra}]' failed (status {status}): {tail[0]}")
        try:
            judge_cupy(probe_cupy(py))
        except CheckFailed as exc:
            return fail(exc)

    failures = []
    if not args.skip_tests:
        (out / "pytest.xml").unlink(missing_ok=True)
        status, secs = run_stage("gpu tests", pytest_command(py, out), out / "pytest.log", 150, env)
        ok, line = judge_gpu_tests(status, out / "pytest.xml", (out / "pytest.log").read_text())
        summary["stages"]["tests"] = {"status": status if ok else "failed", "seconds": secs, "result": line}
        print(f"   {line}", flush=True)
        if not ok:
            failures.append(line)

    if not args.skip_bench:
        status, secs = run_stage("benchmark (miniran)", bench_command(py, out, args.steps),
                                 out / "bench_gpu.txt", 180, env)
        summary["stages"]["bench"] = {"status": status, "seconds": secs}
        if status != 0:
            failures.append(f"benchmark: status {status} (see bench_gpu.txt)")
        if (out / "bench_gpu.json").exists():
            summary["bench"] = json.loads((out / "bench_gpu.json").read_text())
        summary["stages"]["torch"] = {"status": "skipped: --no-torch"} if args.no_torch else \
            run_torch(torch_cmds, torch_py, out, args.steps, env, summary)

    if not args.skip_train:
        if not args.data_dir:
            print("   train: skipped, no --data-dir or $MINIRAN_DATA (full CIFAR-10 is needed)", flush=True)
            summary["stages"]["train"] = {"status": "skipped: no data"}
        else:
            run_dir = out / "train"
            shutil.rmtree(run_dir, ignore_errors=True)
            cmd = [py, "-m", "miniran", "train", "--model", "attention56", "--dataset", "cifar10",
                   "--data-dir", args.data_dir, "--epochs", args.epochs, "--batch-size", args.batch_size,
                   "--schedule", "cosine", "--device", "gpu", "--no-progress", "--out", run_dir]
            status, secs = run_stage("train", cmd, out / "train.log", 240, env)
            if status != 0:
                failures.append(f"train: status {status} (see train.log)")
            rows = []
            metrics = run_dir / "metrics.jsonl"
            if metrics.exists():
                rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
                shutil.copy(metrics, out / "metrics.jsonl")
            summary["stages"]["train"] = {"status": status, "seconds": secs, "command": " ".join(map(str, cmd))}
            summary["train"] = [{k: r[k] for k in ("epoch", "train_seconds", "seconds", "images_per_second",
                                                   "train_acc", "test_acc")} for r in rows]

    write_summary(out, summary)
    if failures:
        return fail("; ".join(failures), code=1)
    print("gpu-check: OK", flush=True)
    return 0


def pytest_command(py, out):
    return [py, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider",
            f"--junitxml={Path(out) / 'pytest.xml'}"]


def bench_command(py, out, steps):
    return [py, "benchmarks/bench_gpu.py", "--no-torch", "--steps", str(steps),
            "--json", str(Path(out) / "bench_gpu.json")]


def run_torch(torch_cmds, torch_py, out, steps, env, summary):
    """Set up the torch environment and time the torch twin there; any failure only skips torch."""
    env = {k: v for k, v in env.items() if k != "VIRTUAL_ENV"}
    for i, cmd in enumerate(torch_cmds):
        status, _ = run_stage("torch environment", cmd, out / f"torch_env_{i}.log", 600, env)
        if status != 0:
            line = f"torch: skipped, `{shlex.join(map(str, cmd))}` failed (status {status}, see torch_env_{i}.log)"
            print(f"   {line}", flush=True)
            return {"status": line}
    if not torch_py.exists():
        line = f"torch: skipped, no torch environment at {torch_py.parent.parent}"
        print(f"   {line}", flush=True)
        return {"status": line}
    result = out / "bench_torch.json"
    result.unlink(missing_ok=True)
    status, secs = run_stage("benchmark (torch)", [torch_py, "tools/gpu_check.py", "--torch-bench", result,
                                                   "--steps", steps], out / "bench_torch.txt", 120, env)
    if status != 0 or not result.exists():
        tail = (out / "bench_torch.txt").read_text().strip().splitlines()[-1:] or [""]
        line = f"torch: skipped ({tail[0] or f'status {status}'})"
        print(f"   {line}", flush=True)
        return {"status": line, "seconds": secs}
    if "bench" in summary:
        merge_torch(summary["bench"], json.loads(result.read_text()))
    return {"status": 0, "seconds": secs}


def write_summary(out, summary):
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    lines = [f"# GPU check, {summary['date']}", ""]
    if "driver" in summary:
        d = summary["driver"]
        lines.append(f"- driver: CUDA {d['cuda']}, {', '.join(d['gpus'])}; extra .[{d['extra']}]")
    for name, stage in summary["stages"].items():
        lines.append(f"- {name}: {stage}")
    for row in summary.get("bench", {}).get("rows", []):
        mr, tt = row["miniran"], row.get("torch")
        graph = f" ({mr['graph_train_img_s']:.0f} as a CUDA graph)" if "graph_train_img_s" in mr else ""
        lines.append(f"- {row['model']} batch {row['batch']}: train {mr['train_img_s']:.0f} img/s{graph}, "
                     f"eval {mr['eval_img_s']:.0f} img/s, peak {mr['peak_mib']:.0f} MiB"
                     + (f"; torch train {tt['train_img_s']:.0f} img/s (ratio {row['train_ratio']:.2f}), "
                        f"eval {tt['eval_img_s']:.0f} img/s (ratio {row['eval_ratio']:.2f})" if tt else ""))
    for row in summary.get("train", []):
        lines.append(f"- epoch {row['epoch']}: {row['train_seconds']:.1f} s training "
                     f"({row['images_per_second']:.0f} img/s), test accuracy {100 * row['test_acc']:.2f}%")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
