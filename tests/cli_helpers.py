"""What the command-line tests share: running ``python -m miniran``, its one-line errors, folder snapshots."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY_ARGS = ["--dataset", "cifar10-sample", "--subset", "32", "--test-subset", "10", "--batch-size", "8",
             "--seed", "3", "--no-progress"]


def quiet(*args):
    pass


def run_cli(*argv, timeout=300):
    """``python -m miniran ARGV`` in a subprocess: (status, stdout, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "miniran", *map(str, argv)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def assert_one_line_error(status, err, *needles):
    assert status == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def snapshot(folder):
    return {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}
