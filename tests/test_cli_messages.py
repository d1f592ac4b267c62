"""Issue 17: the command line's one-line messages for ``--seed`` and for a dataset that is not there.

Each case runs ``python -m miniran`` in a subprocess and checks the exit status
(2), that stderr holds one line (no traceback, no multi-line help), and that
the files of a run written earlier are byte-identical afterwards. No network is
used: the download the loader tries goes to a proxy on a closed local port.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from miniran.train.trainer import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
TINY = dict(model="attention56", dataset="cifar10-sample", subset=16, test_subset=10, batch_size=8, seed=3)
TINY_ARGS = ["--dataset", "cifar10-sample", "--subset", "16", "--test-subset", "10", "--batch-size", "8",
             "--no-progress"]
DOWNLOAD_NOTICE = "miniran: downloading "  # printed by the loader before it tries to fetch


def run_cli(*argv, env=None, timeout=300):
    """``python -m miniran ARGV`` in a subprocess: (status, stdout, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "miniran", *map(str, argv)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=env)
    return proc.returncode, proc.stdout, proc.stderr


def offline_env(cache):
    """No $MINIRAN_DATA, an empty per-user cache, and every download refused at once (a closed port)."""
    env = {k: v for k, v in os.environ.items() if k.upper() not in (
        "MINIRAN_DATA", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")}
    closed = "http://127.0.0.1:9"
    env.update(XDG_CACHE_HOME=str(cache), http_proxy=closed, https_proxy=closed, no_proxy="")
    return env


def error_line(status, err, *needles):
    """The one line of stderr (beside the loader's download notice), checked; returned."""
    assert status == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(DOWNLOAD_NOTICE)]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in Path(folder).rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A one-step tiny run: its checkpoint.npz and metrics.jsonl are the files that must survive."""
    out = tmp_path_factory.mktemp("run")
    train(TrainConfig(**TINY, max_steps=1, out=str(out)), progress=False, log=lambda *a: None)
    assert {p.name for p in out.iterdir()} >= {"checkpoint.npz", "metrics.jsonl"}
    return out


@pytest.mark.parametrize("form", [["--seed=-1"], ["--seed", "-1"], ["--seed=-7"]])
def test_negative_seed_is_one_line_naming_seed(form, tmp_path):
    """It gave NumPy's "expected non-negative integer", without naming --seed."""
    status, _, err = run_cli("train", *TINY_ARGS, "--max-steps", "1", "--out", tmp_path / "r", *form)
    line = error_line(status, err, "miniran train: error: --seed must be >= 0", f"got {form[-1].split('=')[-1]}")
    assert "non-negative integer" not in line
    assert not (tmp_path / "r").exists()  # refused before anything was made


def test_negative_seed_on_resume_leaves_the_run_unchanged(run):
    before = snapshot(run)
    status, _, err = run_cli("train", *TINY_ARGS, "--resume", "--max-steps", "2", "--out", run, "--seed=-1")
    error_line(status, err, "--seed must be >= 0")
    assert snapshot(run) == before


@pytest.mark.parametrize("data_dir", [None, "empty"])
def test_eval_without_the_dataset_is_one_line(run, tmp_path, data_dir):
    """It printed the loader's multi-line help (folders searched, steps to get the data) squeezed into
    one very long line; now: one short line naming --dataset, the download that failed, where to put
    the files, and the docs page with the details."""
    before = snapshot(run)
    cache = tmp_path / "cache"
    argv = ["eval", "--checkpoint", run / "checkpoint.npz", "--dataset", "cifar100"]
    if data_dir is not None:
        (tmp_path / data_dir).mkdir()
        argv += ["--data-dir", tmp_path / data_dir]
    status, out, err = run_cli(*argv, env=offline_env(cache))
    line = error_line(status, err, "miniran eval: error: --dataset cifar100: CIFAR-100 was not found",
                      "downloading it failed", "cifar-100-binary.tar.gz", "--data-dir", "$MINIRAN_DATA",
                      "docs/data.md")
    assert len(line) < 400, line
    assert "Looked for" not in line and "To get it" not in line  # the details are in the docs
    assert out == ""
    assert snapshot(run) == before
    assert not cache.exists() or not any(cache.rglob("*"))  # a failed download leaves nothing behind
    if data_dir is not None:
        assert not any((tmp_path / data_dir).iterdir())


def test_the_api_refuses_a_negative_seed_in_one_line():
    from miniran.train.trainer import TrainConfig

    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match=r"^--seed must be an integer >= 0, got "):
            TrainConfig(seed=bad).validate()
