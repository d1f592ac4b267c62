"""The run folder (issue 17): one run per folder, a full disk at the first checkpoint, SIGTERM and stale
temporary files, and checkpoints that contradict themselves.

Command-line behaviour goes through ``python -m miniran`` in a subprocess; where a run must be held at a
precise moment (holding the folder, in the middle of a checkpoint write), the subprocess is
``python -c`` with one function of miniran patched to wait for the test.
"""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from miniran import _io
from miniran.train import cli, metrics, trainer
from miniran.train.checkpoint import Checkpoint
from miniran.train.trainer import TrainConfig, train

from cli_helpers import TINY_ARGS, assert_one_line_error, quiet, run_cli, snapshot  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
TINY = dict(model="attention56", dataset="cifar10-sample", subset=32, test_subset=10, batch_size=8, seed=3)
WAIT = 120  # seconds a test waits for a subprocess to reach a point (it takes about one)


def copy_run(src, dest):
    dest.mkdir(parents=True, exist_ok=True)
    for name, data in snapshot(src).items():
        (dest / name).write_bytes(data)
    return dest


def metrics_steps(out):
    return [json.loads(line)["step"] for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def temporaries(folder):
    return sorted(p for p in os.listdir(folder) if p.startswith(".tmp"))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A one-epoch tiny run (4 steps), made once; copy it before changing it."""
    out = tmp_path_factory.mktemp("finished")
    train(TrainConfig(**TINY, out=str(out), epochs=1), progress=False, log=quiet)
    return out


# A miniran command in a subprocess, with one function patched to stop at a point: it touches READY
# there and waits (sleeping in Python, so signals are handled) until GO exists or WAIT seconds passed.
HELD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    ready, go, where, argv = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4:]

    def hold():
        ready.touch()
        deadline = time.monotonic() + {wait}
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.02)

    if where == "load_data":  # after the run's set-up checks, before the data is loaded
        from miniran.train import trainer
        real_load = trainer.load_data

        def load_data(config):
            hold()
            return real_load(config)

        trainer.load_data = load_data
    elif where == "second_checkpoint":  # half way through writing the second checkpoint
        import numpy as np
        real_savez, calls = np.savez, []

        def savez(f, **arrays):
            calls.append(1)
            if len(calls) == 2:
                real_savez(f, **dict(list(arrays.items())[:3]))  # some bytes reach the disk...
                f.flush()
                hold()  # ...and the write is still going on
            return real_savez(f, **arrays)

        np.savez = savez
    from miniran.train import cli
    sys.exit(cli.main(argv))
""").replace("{wait}", str(WAIT))


class Held:
    """``miniran ARGV`` in a subprocess that stops at ``where`` until :meth:`go` is called."""

    def __init__(self, tmp_path, where, *argv):
        self.ready, self.go_file = tmp_path / f"ready-{where}", tmp_path / f"go-{where}"
        self.proc = subprocess.Popen([sys.executable, "-c", HELD, str(self.ready), str(self.go_file), where,
                                      *map(str, argv)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)

    def wait_ready(self):
        deadline = time.monotonic() + WAIT
        while not self.ready.exists():
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                pytest.fail(f"the held command ended with status {self.proc.returncode} first: {err}")
            if time.monotonic() > deadline:
                self.go_file.touch()
                pytest.fail("the held command did not reach its stopping point")
            time.sleep(0.02)

    def finish(self, timeout=300):
        """Wait for the end: (status, stdout, stderr)."""
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err

    def go(self):
        self.go_file.touch()
        return self.finish()

    def kill(self):
        if self.proc.returncode is None:
            self.proc.kill()
            self.proc.communicate()


# ---------------------------------------------------------------------------- one run per folder


@pytest.mark.parametrize("resume", [False, True], ids=["train", "resume"])
def test_a_second_run_on_a_busy_folder_is_refused(resume, finished_run, tmp_path):
    out = tmp_path / "r"
    if resume:
        copy_run(finished_run, out)
        argv = ["train", "--resume", "--epochs", "2", "--out", out, "--no-progress"]
    else:
        argv = ["train", *TINY_ARGS, "--max-steps", "4", "--out", out]
    first = Held(tmp_path, "load_data", *argv)
    try:
        first.wait_ready()  # the first run has passed its checks and holds the folder
        before = snapshot(out) if out.exists() else None
        status, _, err = run_cli(*argv)
        assert_one_line_error(status, err, str(out), "in use by another")
        assert snapshot(out) == before
    finally:
        status, _, err = first.go()
    assert status == 0, err
    assert metrics_steps(out) == ([4, 8] if resume else [4])  # rows of one run only
    assert Checkpoint(out / "checkpoint.npz").step == (8 if resume else 4)
    assert not (out / ".lock").exists()  # the lock goes with the run


def test_a_lock_left_by_a_dead_run_does_not_block(tmp_path):
    out = tmp_path / "r"
    argv = ["train", *TINY_ARGS, "--max-steps", "4", "--out", out]
    first = Held(tmp_path, "load_data", *argv)
    try:
        first.wait_ready()
    finally:
        first.kill()  # SIGKILL: no clean-up at all, the kernel drops the lock
    status, _, err = run_cli(*argv)
    assert status == 0, err
    assert metrics_steps(out) == [4]


def test_the_folder_lock_is_exclusive_and_released(tmp_path):
    folder = tmp_path / "r"
    folder.mkdir()
    lock = _io.lock_folder(folder)
    assert lock is not None and (folder / ".lock").exists()
    assert _io.lock_folder(folder) is None  # a second holder, even in the same process, is refused
    lock.release()
    assert not (folder / ".lock").exists()
    again = _io.lock_folder(folder)
    assert again is not None
    again.release()


def test_train_api_refuses_a_busy_folder(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    lock = _io.lock_folder(out)
    try:
        with pytest.raises(ValueError, match=r"--out .*r is in use by another"):
            train(TrainConfig(**TINY, out=str(out), max_steps=1), progress=False, log=quiet)
    finally:
        lock.release()
    assert os.listdir(out) == []


def test_a_refused_set_up_leaves_no_new_folder(tmp_path):
    out = tmp_path / "a" / "b"
    status, _, err = run_cli("train", *TINY_ARGS, "--subset", "999999", "--out", out)
    assert_one_line_error(status, err, "--subset")
    assert not (tmp_path / "a").exists()


# ---------------------------------------------------------------------------- a full disk at the first checkpoint


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("failing", ["checkpoint", "metrics"])
def test_full_disk_at_the_first_epoch_leaves_nothing_and_the_hint_works(failing, tmp_path, monkeypatch, capsys):
    out = tmp_path / "r"
    argv = ["train", *TINY_ARGS, "--epochs", "1", "--out", str(out)]
    if failing == "checkpoint":
        monkeypatch.setattr(trainer, "save_checkpoint", _disk_full)
    else:  # the append creates metrics.jsonl, then the disk is full: the file is cut back to nothing
        real_append = metrics.append_line

        def full_append(path, line):
            with monkeypatch.context() as m:
                m.setattr(os, "write", _disk_full)
                real_append(path, line)

        monkeypatch.setattr(metrics, "append_line", full_append)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert_one_line_error(2, err, "No space left on device", "same command again")
    assert "--resume" not in err  # there is no checkpoint to resume from
    assert os.listdir(out) == []  # no metrics row outlives the checkpoint that was not written
    monkeypatch.undo()
    status, _, err = run_cli(*argv[:-2], "--out", out)  # the hint: the same command again
    assert status == 0, err
    assert metrics_steps(out) == [4] and Checkpoint(out / "checkpoint.npz").step == 4


def test_ctrl_c_during_the_first_checkpoint_leaves_nothing(tmp_path, monkeypatch, capsys):
    out = tmp_path / "r"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "save_checkpoint", interrupted)
    assert cli.main(["train", *TINY_ARGS, "--epochs", "1", "--out", str(out)]) == 130
    assert "run the same command again" in capsys.readouterr().err
    assert os.listdir(out) == []  # so the same command again is not refused


# ---------------------------------------------------------------------------- SIGTERM and stale temporary files


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix", reason="POSIX signals")
def test_sigterm_during_a_checkpoint_write_stops_like_ctrl_c(tmp_path):
    out = tmp_path / "r"
    held = Held(tmp_path, "second_checkpoint", "train", *TINY_ARGS, "--epochs", "2", "--out", out)
    try:
        held.wait_ready()
        first = (out / "checkpoint.npz").read_bytes()
        assert len(temporaries(out)) == 1  # the second checkpoint is being written
        held.proc.send_signal(signal.SIGTERM)
        status, _, err = held.finish(timeout=WAIT)
    finally:
        held.kill()
    assert status == 130, err
    assert err.strip().splitlines()[-1].startswith("interrupted; resume with the same --out and --resume")
    assert "Traceback" not in err
    assert temporaries(out) == [] and (out / "checkpoint.npz").read_bytes() == first
    status, _, err = run_cli("train", "--resume", "--out", out, "--no-progress")  # the hint works
    assert status == 0, err
    assert metrics_steps(out) == [4, 8]


STALE = ".tmp-0123456789ab-checkpoint.npz"


@pytest.mark.parametrize("resume", [False, True], ids=["train", "resume"])
def test_stale_temporary_files_are_removed_by_the_next_run(resume, finished_run, tmp_path):
    out = tmp_path / "r"
    if resume:
        copy_run(finished_run, out)
    else:
        out.mkdir()
    (out / STALE).write_bytes(b"PK\x03\x04 half a checkpoint")
    (out / ".tmp-0123456789ab-metrics.jsonl").write_text('{"epoch": 2, "ste')
    # not this run's temporaries: another name, or not the pattern of miniran/_io.py
    keep = {".tmp-0123456789ab-notes.txt": b"mine", ".tmp-notes-checkpoint.npz": b"mine too",
            "my.tmp-0123456789ab-checkpoint.npz": b"and mine"}
    for name, data in keep.items():
        (out / name).write_bytes(data)
    argv = ["--resume", "--epochs", "2", "--no-progress"] if resume else [*TINY_ARGS, "--max-steps", "4"]
    status, stdout, err = run_cli("train", *argv, "--out", out)
    assert status == 0, err
    assert not (out / STALE).exists() and not (out / ".tmp-0123456789ab-metrics.jsonl").exists()
    assert STALE in stdout + err  # the run says what it removed
    for name, data in keep.items():
        assert (out / name).read_bytes() == data
    assert metrics_steps(out) == ([4, 8] if resume else [4])


def test_stale_temporary_names_follow_the_writer(tmp_path):
    """The pattern the clean-up matches is the one the writer uses."""
    with _io.atomic_path(tmp_path / "checkpoint.npz") as tmp:
        name = os.path.basename(tmp)
        assert _io.temporary_target(name) == "checkpoint.npz"
        Path(tmp).write_bytes(b"x")
    assert _io.temporary_target("checkpoint.npz") is None
    assert _io.temporary_target(".tmp-0123456789ab-") is None


# ---------------------------------------------------------------------------- checkpoints that contradict themselves


def _changed_copy(src, dest, change):
    arrays = dict(np.load(src))
    change(arrays)
    np.savez(dest, **arrays)
    return dest


def _first_weight(arrays):
    return next(k for k in sorted(arrays) if k.startswith("model/") and arrays[k].dtype.kind == "f")


def _nan_weight(arrays):
    key = _first_weight(arrays)
    weight = arrays[key].copy()
    weight.flat[0] = np.nan
    arrays[key] = weight


CONTRADICTIONS = {
    # name: (change, the entry the message names)
    "negative_step": (lambda a: a.__setitem__("meta/step", np.int64(-4)), "meta/step"),
    "no_lr": (lambda a: a.pop("optim/lr"), "optim/lr"),
    "position_outside_epoch": (lambda a: a.__setitem__("loader/position", np.int64(99)), "loader/position"),
    "nan_weights": (_nan_weight, "model/"),
    "negative_epoch": (lambda a: a.__setitem__("meta/epoch", np.int64(-1)), "meta/epoch"),
    "step_against_loader": (lambda a: a.__setitem__("meta/step", np.int64(3)), "meta/step"),
    "no_schedule": (lambda a: a.pop("schedule/last_step"), "schedule/last_step"),
    "no_rng_state": (lambda a: a.pop("loader/rng_state"), "loader/rng_state"),
    "lr_array": (lambda a: a.__setitem__("optim/lr", np.array([0.1, 0.2])), "optim/lr"),
    "inf_velocity": (lambda a: a.__setitem__("optim/velocity.0", np.full_like(a["optim/velocity.0"], np.inf)),
                     "optim/velocity.0"),
    "nan_mean": (lambda a: a.__setitem__("data/mean", np.full_like(a["data/mean"], np.nan)), "data/mean"),
    "zero_batch_size": (lambda a: a.__setitem__("loader/batch_size", np.int64(0)), "loader/batch_size"),
    "complex_velocity": (lambda a: a.__setitem__("optim/velocity.0", a["optim/velocity.0"] + 1j),
                         "optim/velocity.0"),
}


@pytest.mark.parametrize("kind", sorted(CONTRADICTIONS))
def test_a_checkpoint_that_contradicts_itself_is_refused_by_name(kind, finished_run, tmp_path):
    change, entry = CONTRADICTIONS[kind]
    path = _changed_copy(finished_run / "checkpoint.npz", tmp_path / f"{kind}.npz", change)
    with pytest.raises(ValueError) as info:
        Checkpoint(path)
    message = str(info.value)
    assert str(path) in message and entry in message, message
    assert "\n" not in message


@pytest.mark.parametrize("kind", ["negative_step", "no_lr", "position_outside_epoch", "nan_weights"])
def test_resume_refuses_a_checkpoint_that_contradicts_itself(kind, finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "run")
    change, entry = CONTRADICTIONS[kind]
    _changed_copy(finished_run / "checkpoint.npz", run / "checkpoint.npz", change)
    before = snapshot(run)
    status, _, err = run_cli("train", "--resume", "--epochs", "3", "--out", run, "--no-progress")
    assert_one_line_error(status, err, str(run / "checkpoint.npz"), entry)
    assert snapshot(run) == before


def test_eval_refuses_non_finite_weights(finished_run, tmp_path):
    path = _changed_copy(finished_run / "checkpoint.npz", tmp_path / "nan.npz", _nan_weight)
    status, _, err = run_cli("eval", "--checkpoint", path)
    assert_one_line_error(status, err, str(path), "model/", "NaN")


def test_a_state_that_does_not_fit_the_run_names_the_checkpoint(finished_run, tmp_path):
    """What only the run can check (the loader's size against the data) still names the file."""
    run = copy_run(finished_run, tmp_path / "run")
    _changed_copy(finished_run / "checkpoint.npz", run / "checkpoint.npz",
                  lambda a: a.__setitem__("loader/num_samples", np.int64(40)))
    with pytest.raises(ValueError, match=r"checkpoint\.npz.*loader"):
        train(TrainConfig(out=str(run), epochs=3), resume=True, progress=False, log=quiet)
