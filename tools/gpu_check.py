"""Everything to run on the first GPU machine, in one command (``make gpu-check``).

Three stages, each with its own time limit so the whole check ends in under
8 minutes:

1. the real ``gpu`` tests (``pytest -m gpu``: NumPy against CuPy for every
   operation, kernels, training, resume);
2. ``benchmarks/bench_gpu.py`` (Attention-56 and -92, batch 64/128/256,
   miniran against PyTorch eager when torch with CUDA is importable);
3. a timed Attention-56 run on the full CIFAR-10 (``miniran train --device
   gpu``, cosine schedule) for a few epochs: seconds per epoch, images per
   second and test accuracy from its ``metrics.jsonl``.

Everything lands in one folder (``--out``, default ``benchmarks/results/gpu-check``):
``pytest.log``, ``bench_gpu.json``/``.txt``, ``train.log``, ``metrics.jsonl`` and
``summary.json`` + ``summary.md``, the figures ``docs/performance.md`` quotes.

Usage (from the repository root)::

    python tools/gpu_check.py --data-dir PATH/TO/cifar-10-batches-bin/..   # or $MINIRAN_DATA
    python tools/gpu_check.py --epochs 2 --skip-tests
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gpu-check"))
    parser.add_argument("--data-dir", default=os.environ.get("MINIRAN_DATA"),
                        help="folder holding cifar-10-batches-bin (default $MINIRAN_DATA)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--skip-bench", action="store_true")
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    summary = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "stages": {}}

    if not args.skip_tests:
        status, secs = run_stage("gpu tests", [py, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"],
                                 out / "pytest.log", 150)
        tail = (out / "pytest.log").read_text().strip().splitlines()[-1:] or [""]
        summary["stages"]["tests"] = {"status": status, "seconds": secs, "result": tail[0]}

    if not args.skip_bench:
        status, secs = run_stage("benchmark", [py, "benchmarks/bench_gpu.py", "--steps", "10",
                                               "--json", out / "bench_gpu.json"], out / "bench_gpu.txt", 180)
        summary["stages"]["bench"] = {"status": status, "seconds": secs}
        if (out / "bench_gpu.json").exists():
            summary["bench"] = json.loads((out / "bench_gpu.json").read_text())

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
            status, secs = run_stage("train", cmd, out / "train.log", 240)
            rows = []
            metrics = run_dir / "metrics.jsonl"
            if metrics.exists():
                rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
                shutil.copy(metrics, out / "metrics.jsonl")
            summary["stages"]["train"] = {"status": status, "seconds": secs, "command": " ".join(map(str, cmd))}
            summary["train"] = [{k: r[k] for k in ("epoch", "train_seconds", "seconds", "images_per_second",
                                                   "train_acc", "test_acc")} for r in rows]

    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    lines = [f"# GPU check, {summary['date']}", ""]
    for name, stage in summary["stages"].items():
        lines.append(f"- {name}: {stage}")
    for row in summary.get("bench", {}).get("rows", []):
        mr, tt = row["miniran"], row.get("torch")
        lines.append(f"- {row['model']} batch {row['batch']}: train {mr['train_img_s']:.0f} img/s, "
                     f"eval {mr['eval_img_s']:.0f} img/s, peak {mr['peak_mib']:.0f} MiB"
                     + (f"; torch train {tt['train_img_s']:.0f} img/s (ratio {row['train_ratio']:.2f}), "
                        f"eval {tt['eval_img_s']:.0f} img/s (ratio {row['eval_ratio']:.2f})" if tt else ""))
    for row in summary.get("train", []):
        lines.append(f"- epoch {row['epoch']}: {row['train_seconds']:.1f} s training "
                     f"({row['images_per_second']:.0f} img/s), test accuracy {100 * row['test_acc']:.2f}%")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(s.get("status") in (0, "skipped: no data") for s in summary["stages"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
