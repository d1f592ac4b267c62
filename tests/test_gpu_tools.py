"""The GPU benchmark and the gpu-check script run (under the CuPy stand-in in CI)."""

import json
import os
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
    assert rows[0]["miniran"]["peak_mib"] > 0


def test_gpu_check_summarises_what_it_ran(tmp_path):
    proc = subprocess.run([sys.executable, "tools/gpu_check.py", "--skip-tests", "--skip-bench", "--out",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "MINIRAN_DATA"})
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stages"]["train"]["status"].startswith("skipped")
    assert (tmp_path / "summary.md").exists()
