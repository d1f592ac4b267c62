"""Data-parallel training on CPU processes: ``mpiexec -n 2`` runs of ``miniran train`` (issue 19).

Every test here (but the last two) starts two processes with the ``mpiexec``
of this Python environment (the ``mpich`` wheel, next to ``sys.executable``),
one CPU thread each, on the sample data shipped with the package, and gives
up after a timeout, so a hang fails the test instead of blocking CI. They are
skipped, with the reason shown, where mpi4py or that ``mpiexec`` is missing
(``pip install -e '.[mpi]'``).

What they show:

1. with ``--sync-bn``, 2 processes give the weights of 1 process: up to
   float32 rounding through ``miniran train`` (relative 1e-3 after 3 steps),
   and to 1e-10 in float64 (``parallel_scripts/sync_bn_float64.py``);
2. with per-process batch norm (the default) both processes hold the same
   weights after training (the all-reduce keeps them in step);
3. a global batch that does not split is refused by both processes with one
   line each, at once, before the --out folder is made;
4. an exception on one process ends both within seconds with one line, and the
   checkpoint saved before it is intact;
5. a 1-process checkpoint resumes on 2 processes, and the checkpoint stays the
   same file format; with ``--checkpoint-every``, a 2-process run interrupted
   within an epoch and resumed ends as the uninterrupted one;
6. rank 0 alone writes the metrics, logs and shows the progress bar;
7. without mpiexec (or without mpi4py) the run is a single process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from miniran import distributed, models
from miniran.train.checkpoint import Checkpoint

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent / "parallel_scripts"
MPIEXEC = Path(sys.executable).parent / "mpiexec"  # the launcher of the MPI that mpi4py was built against
HAVE_MPI = importlib.util.find_spec("mpi4py") is not None and MPIEXEC.exists()
requires_mpi = pytest.mark.skipif(not HAVE_MPI, reason=f"needs mpi4py and {MPIEXEC} (pip install -e '.[mpi]')")

TINY = ["--dataset", "cifar10-sample", "--subset", "16", "--test-subset", "10", "--batch-size", "8", "--seed", "3"]
TIMEOUT = 120  # seconds for a run that should succeed: a hang fails the test
FAIL_TIMEOUT = 60  # seconds for a run that should fail at once


def launch(argv, processes=2, timeout=TIMEOUT):
    """``mpiexec -n PROCESSES ARGV`` (or ARGV alone for 1 process), one thread each: (status, stdout, stderr, seconds).

    On timeout every process of the run is killed (its own session) and the test fails.
    """
    command = [str(a) for a in argv]
    if processes > 1:
        command = [str(MPIEXEC), "-n", str(processes)] + command
    env = dict(os.environ, MINIRAN_NUM_THREADS="1", OMP_NUM_THREADS="1")
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(command)} did not end within {timeout} s (a hang?)\nstdout:\n{out}\nstderr:\n{err}")
    return proc.returncode, out, err, time.perf_counter() - start


def train_cli(*args, processes=2, timeout=TIMEOUT):
    return launch([sys.executable, "-m", "miniran", "train", *args], processes, timeout)


def script(name, *args, processes=2, timeout=TIMEOUT):
    return launch([sys.executable, SCRIPTS / name, *args], processes, timeout)


def ok(result):
    status, out, err, _ = result
    assert status == 0, f"status {status}\nstdout:\n{out}\nstderr:\n{err}"
    return out, err


def metrics(folder):
    return [json.loads(line) for line in (Path(folder) / "metrics.jsonl").read_text().splitlines() if line.strip()]


def relative_difference(a, b, keys):
    """Global relative L2 difference ||a - b|| / ||a|| over the arrays ``keys`` of two npz files, in float64."""
    diff = sum(float(np.sum((a[k].astype(np.float64) - b[k].astype(np.float64)) ** 2)) for k in keys)
    norm = sum(float(np.sum(a[k].astype(np.float64) ** 2)) for k in keys)
    return (diff / norm) ** 0.5


def split_statistics(keys):
    """(learned weights, running statistics) among ``keys``."""
    stats = [k for k in keys if k.rsplit(".", 1)[-1].startswith("running_")]
    return [k for k in keys if k not in stats], stats


def checkpoint_format(path):
    """{key: (shape, dtype)} of every array of a checkpoint (a text's dtype without its length: the JSON varies)."""
    with np.load(path) as arrays:
        return {k: (arrays[k].shape, "text" if arrays[k].dtype.kind == "U" else arrays[k].dtype.str)
                for k in arrays.files}


# -- 1. sync batch norm: 2 processes compute what 1 process computes --------------------------------


@requires_mpi
def test_sync_bn_two_processes_give_the_weights_of_one(tmp_path):
    """float32, through ``miniran train``: relative 1e-3 after 3 steps (the issue's bound).

    The difference is float32 rounding amplified by a young network (measured
    on 2 CPU cores): one process on 1 thread vs 2 threads already differs by
    1.7e-4 to 2.5e-4; 2 processes vs 1 give 2.6e-4 to 9.4e-4 for seeds 0-3 of
    this setting (seed 2 here: 2.7e-4). The running statistics move more
    (1.5e-2 here; 4e-3 to 2e-2 between 1 and 2 threads) and are printed, not
    bounded. In float64 both agree to 1e-10 (the next test).
    """
    args = ["--dataset", "cifar10-sample", "--subset", "24", "--test-subset", "10", "--batch-size", "8",
            "--max-steps", "3", "--seed", "2", "--sync-bn", "--no-progress"]
    ok(train_cli(*args, "--out", tmp_path / "one", processes=1))
    out, _ = ok(train_cli(*args, "--out", tmp_path / "two", processes=2))
    assert "2 processes (4 images each per step, sync batch norm)" in out
    with np.load(tmp_path / "one" / "checkpoint.npz") as one, np.load(tmp_path / "two" / "checkpoint.npz") as two:
        assert sorted(one.files) == sorted(two.files)
        weights, stats = split_statistics([k for k in one.files if k.startswith("model/")])
        assert weights and stats
        weight_diff, stats_diff = relative_difference(one, two, weights), relative_difference(one, two, stats)
    print(f"sync BN, float32, 3 steps: weights {weight_diff:.2e}, running statistics {stats_diff:.2e}")
    assert weight_diff <= 1e-3, (weight_diff, stats_diff)
    assert [r["step"] for r in metrics(tmp_path / "two")] == [3]


@requires_mpi
def test_sync_bn_in_float64_two_processes_equal_one_to_1e_10(tmp_path):
    """Attention-56 in float64, one fixed batch of 8, 2 steps of Nesterov SGD: 1 process vs 2 (4 images each)."""
    out1, _ = ok(script("sync_bn_float64.py", tmp_path / "one.npz", 2, processes=1))
    out2, _ = ok(script("sync_bn_float64.py", tmp_path / "two.npz", 2, processes=2))
    losses1 = [float(line.split()[-1]) for line in out1.splitlines() if line.startswith("step ")]
    losses2 = [float(line.split()[-1]) for line in out2.splitlines() if line.startswith("step ")]
    assert len(losses1) == len(losses2) == 2
    np.testing.assert_allclose(losses2, losses1, rtol=1e-12)
    with np.load(tmp_path / "one.npz") as one, np.load(tmp_path / "two.npz") as two:
        assert sorted(one.files) == sorted(two.files)
        assert all(one[k].dtype == np.float64 for k in one.files)
        weights, stats = split_statistics(one.files)
        assert weights and stats
        weight_diff, stats_diff = relative_difference(one, two, weights), relative_difference(one, two, stats)
    print(f"sync BN, float64, 2 steps: weights {weight_diff:.2e}, running statistics {stats_diff:.2e}")
    assert weight_diff <= 1e-10 and stats_diff <= 1e-10, (weight_diff, stats_diff)


# -- 2. per-process batch norm (the default) ------------------------------------------------------


@pytest.fixture(scope="module")
def per_process_bn_run(tmp_path_factory):
    """A 2-process run, per-process batch norm, 2 steps, whose processes each saved their model: (folder, stdout)."""
    out_dir = tmp_path_factory.mktemp("per_process_bn") / "run"
    out, _ = ok(script("each_rank_state.py", out_dir))
    return out_dir, out


@requires_mpi
def test_per_process_batch_norm_trains_and_keeps_the_weights_identical(per_process_bn_run):
    out_dir, out = per_process_bn_run
    losses = {line.split(":")[0]: line.split()[-1] for line in out.splitlines() if line.startswith("rank ")}
    assert sorted(losses) == ["rank 0", "rank 1"]
    assert losses["rank 0"] == losses["rank 1"] and np.isfinite(float(losses["rank 0"]))  # the same reduced loss
    rows = metrics(out_dir)
    assert [(r["epoch"], r["step"]) for r in rows] == [(1, 2)] and np.isfinite(rows[0]["test_loss"])
    with np.load(out_dir / "rank0.npz") as r0, np.load(out_dir / "rank1.npz") as r1, \
            np.load(out_dir / "checkpoint.npz") as ckpt:
        weights, _ = split_statistics(r0.files)
        assert sorted(r0.files) == sorted(r1.files) and weights
        different = [k for k in weights if not np.array_equal(r0[k], r1[k])]
        assert not different, f"the processes' weights differ after training: {different[:5]}"
        # what rank 0 holds is what it saved
        assert all(np.array_equal(r0[k], ckpt[f"model/{k}"]) for k in r0.files)
        # and training moved the weights away from their initial values
        initial = models.attention56(num_classes=10, seed=3).state_dict()
        assert any(not np.array_equal(r0[k], np.asarray(initial[k])) for k in weights)


@requires_mpi
def test_per_process_batch_norm_running_statistics_agree_before_evaluation(per_process_bn_run):
    out_dir, _ = per_process_bn_run
    with np.load(out_dir / "rank0.npz") as r0, np.load(out_dir / "rank1.npz") as r1:
        _, stats = split_statistics(r0.files)
        assert stats and all(np.array_equal(r0[k], r1[k]) for k in stats)


# -- 3. a global batch that does not split ------------------------------------------------------


@requires_mpi
def test_a_batch_that_does_not_split_is_refused_by_every_process_at_once(tmp_path):
    out_dir = tmp_path / "never"
    status, out, err, seconds = train_cli("--dataset", "cifar10-sample", "--subset", "16", "--batch-size", "7",
                                          "--max-steps", "2", "--no-progress", "--out", out_dir, timeout=FAIL_TIMEOUT)
    assert status == 2, (status, out, err)
    line = ("miniran train: error: --batch-size 7 is the global batch and does not split over 2 processes: "
            "give a multiple of 2")
    # one line from each process and nothing else (counted, not split at newlines: with PYTHONUNBUFFERED=1
    # print() writes the text and its newline apart, so the two processes' lines can interleave in the pipe)
    assert err.count(line) == 2 and not err.replace(line, "").strip(), err
    assert "Traceback" not in err + out
    assert not out_dir.exists() and list(tmp_path.iterdir()) == []
    assert seconds < 30, seconds


# -- 4. an exception on one process ends every process --------------------------------------------


@requires_mpi
def test_an_exception_on_one_process_ends_both_with_one_line(tmp_path):
    out_dir = tmp_path / "run"
    status, out, err, seconds = script("fail_on_rank1.py", out_dir, timeout=FAIL_TIMEOUT)
    assert status != 0, (out, err)
    assert seconds < 30, seconds  # the other process did not wait in an all-reduce forever
    ours = [line for line in err.splitlines() if line.startswith("miniran train:")]
    assert ours == ["miniran train: error on process 1 of 2: a failure made up by the test on rank 1; ending every "
                    "process (checkpoints already saved are kept)"], err
    assert "Traceback" not in err + out and "ended normally" not in out
    # the checkpoint of epoch 1 (step 1), written before the failure, is whole and loads
    ckpt = Checkpoint(out_dir / "checkpoint.npz")
    assert (ckpt.step, ckpt.epoch) == (1, 1)
    assert [(r["epoch"], r["step"]) for r in metrics(out_dir)] == [(1, 1)]
    assert sorted(p.name for p in out_dir.iterdir() if p.name != ".lock") == ["checkpoint.npz", "metrics.jsonl"]


# -- 5. resume a 1-process run on 2 processes --------------------------------------------------------


@requires_mpi
def test_a_one_process_checkpoint_resumes_on_two_processes(tmp_path):
    out_dir = tmp_path / "run"
    ok(train_cli(*TINY, "--epochs", "1", "--no-progress", "--out", out_dir, processes=1))  # 2 steps
    one_process_format = checkpoint_format(out_dir / "checkpoint.npz")
    assert [(r["epoch"], r["step"]) for r in metrics(out_dir)] == [(1, 2)]

    # half of epoch 2 on 2 processes, then the rest of it
    for max_steps, rows in ((3, [(1, 2), (2, 3)]), (4, [(1, 2), (2, 4)])):
        out, _ = ok(train_cli("--resume", "--max-steps", max_steps, "--no-progress", "--out", out_dir))
        assert out.count("resumed from") == 1 and out.count("training attention56") == 1, out
        assert "2 processes" in out
        assert [(r["epoch"], r["step"]) for r in metrics(out_dir)] == rows  # one row per epoch, written once
        ckpt = Checkpoint(out_dir / "checkpoint.npz")
        assert ckpt.step == max_steps and ckpt.epoch == 2
        saved = checkpoint_format(out_dir / "checkpoint.npz")
        within_epoch = {k: saved.pop(k) for k in list(saved) if k.startswith("epoch/")}  # the epoch's sums so far
        assert saved == one_process_format
        assert (ckpt.epoch_sums is not None, len(within_epoch)) == ((True, 4) if max_steps == 3 else (False, 0))


@requires_mpi
def test_two_processes_resume_from_a_checkpoint_within_the_epoch(tmp_path):
    """--checkpoint-every on 2 processes: interrupted after step 7 (the checkpoint of step 6, half way
    through epoch 2, is on disk), resumed on 2 processes, it ends as the uninterrupted run."""
    args = ["--dataset", "cifar10-sample", "--subset", "32", "--test-subset", "10", "--batch-size", "8",
            "--seed", "3", "--epochs", "2", "--schedule", "cosine", "--checkpoint-every", "3", "--no-progress"]
    ok(train_cli(*args, "--out", tmp_path / "full"))
    status, out, err, _ = script("interrupt_at_step.py", tmp_path / "cut", 7, 3)
    assert status != 0 and "interrupted" in err, f"status {status}\nstdout:\n{out}\nstderr:\n{err}"
    ckpt = Checkpoint(tmp_path / "cut" / "checkpoint.npz")
    assert ckpt.step == 6 and ckpt.epoch_sums["seen"] == 16  # 2 steps of 8 images, over both processes
    ok(train_cli("--resume", "--no-progress", "--out", tmp_path / "cut"))
    with np.load(tmp_path / "full" / "checkpoint.npz") as a, np.load(tmp_path / "cut" / "checkpoint.npz") as b:
        for key in (k for k in a.files if k.startswith("model/")):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    full, cut = metrics(tmp_path / "full"), metrics(tmp_path / "cut")
    keys = ("epoch", "step", "train_loss", "train_acc", "test_loss", "test_acc")
    assert [[r[k] for k in keys] for r in full] == [[r[k] for k in keys] for r in cut]


# -- 6. rank 0 alone writes, logs and shows progress ------------------------------------------------


@requires_mpi
def test_rank_0_alone_writes_metrics_logs_and_shows_the_progress_bar(tmp_path):
    out_dir = tmp_path / "run"
    out, err = ok(train_cli(*TINY, "--epochs", "2", "--out", out_dir))  # with the progress bar, 4 steps
    assert out.count("training attention56 on cifar10-sample") == 1, out
    assert out.count("epoch 1/2") == 1 and out.count("epoch 2/2") == 1, out
    assert out.count("learning curves:") == 1, out
    assert [(r["epoch"], r["step"]) for r in metrics(out_dir)] == [(1, 2), (2, 4)]
    # tqdm draws its empty bar once when it starts, and ends with one newline when closed
    assert err.count("0/4 [00:00<?, ?step/s]") == 1, err
    assert err.count("4/4 [") >= 1, err
    assert (out_dir / "curves.png").exists() and (out_dir / "checkpoint.npz").exists()


# -- 7. one process, without mpiexec or without mpi4py ----------------------------------------------

LAUNCH_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


@pytest.fixture
def fresh_world(monkeypatch):
    """No launcher in the environment and no world made yet (both restored after the test)."""
    for var in LAUNCH_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(distributed, "_WORLD", None)
    return monkeypatch


def test_without_mpiexec_the_world_is_one_process(fresh_world):
    fresh_world.setitem(sys.modules, "mpi4py", None)  # not even importable: a single process does not need it
    comm = distributed.world()
    assert isinstance(comm, distributed.SingleProcess) and distributed.world() is comm
    assert (comm.size, comm.rank, comm.local_rank, comm.is_root) == (1, 0, 0, True)
    array = np.arange(4.0)
    assert comm.allreduce_mean(array) is array and comm.allreduce_sum(array) is array
    assert np.array_equal(array, np.arange(4.0))
    assert comm.sum_values([1, 2.5]) == [1.0, 2.5] and comm.broadcast("x") == "x"
    assert comm.all_agree(True) and not comm.all_agree(False)


def test_launched_size_reads_the_launchers_environment(fresh_world):
    assert distributed.launched_size() == 1
    fresh_world.setenv("OMPI_COMM_WORLD_SIZE", "3")  # Open MPI
    assert distributed.launched_size() == 3
    fresh_world.setenv("PMI_SIZE", "4")  # MPICH (read first)
    assert distributed.launched_size() == 4
    fresh_world.setenv("PMI_SIZE", "1")
    assert distributed.launched_size() == 1
    assert isinstance(distributed.world(), distributed.SingleProcess)  # one launched process: no MPI


def test_launched_by_mpiexec_without_mpi4py_says_so_in_one_line(fresh_world):
    fresh_world.setenv("PMI_SIZE", "2")
    fresh_world.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(RuntimeError, match=r"started by mpiexec with 2 processes, but mpi4py cannot be imported") \
            as info:
        distributed.world()
    assert "\n" not in str(info.value) and "pip install -e '.[mpi]'" in str(info.value)
