"""Checkpoints within an epoch (``--checkpoint-every N``), and the epoch's training sums they carry.

A tiny run: 32 images in batches of 8, so 4 steps per epoch. A checkpoint
written in the middle of an epoch holds the epoch's training sums so far, so a
run interrupted after it and resumed ends with the weights *and* the metrics
lines of the uninterrupted run; the data-parallel case is in test_parallel.py.
"""

import json

import numpy as np
import pytest

from miniran.train import trainer
from miniran.train.checkpoint import Checkpoint
from miniran.train.trainer import TrainConfig, train

from cli_helpers import TINY_ARGS, assert_one_line_error, quiet, run_cli

TINY = dict(model="attention56", dataset="cifar10-sample", subset=32, test_subset=10, batch_size=8, seed=3)
ROW_KEYS = ("epoch", "step", "train_loss", "train_acc", "test_loss", "test_acc", "lr")


def tiny_config(out, **kw):
    return TrainConfig(**{**TINY, "out": str(out), **kw})


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def same_rows(a, b):
    return [[r[k] for k in ROW_KEYS] for r in a] == [[r[k] for k in ROW_KEYS] for r in b]


def test_the_checkpoint_is_written_every_n_steps_within_an_epoch(tmp_path):
    seen = {}

    def look(step):  # the checkpoint on disk after each step, and the metrics lines so far
        ckpt = Checkpoint(tmp_path / "checkpoint.npz") if (tmp_path / "checkpoint.npz").exists() else None
        lines = len((tmp_path / "metrics.jsonl").read_text().splitlines()) if (tmp_path / "metrics.jsonl").exists() else 0
        seen[step] = (None if ckpt is None else ckpt.step, None if ckpt is None else ckpt.epoch_sums, lines)

    train(tiny_config(tmp_path, epochs=2, checkpoint_every=3), progress=False, log=quiet, on_step=look)
    # on_step runs before an epoch's own checkpoint (after its evaluation): step 4's is seen from step 5 on
    assert [seen[s][0] for s in range(1, 9)] == [None, None, 3, 3, 4, 6, 6, 6]
    assert [seen[s][2] for s in range(1, 9)] == [0, 0, 0, 0, 1, 1, 1, 1]  # lines only at the epochs' ends
    sums = seen[3][1]
    assert sums["seen"] == 24 and 0 <= sums["correct"] <= 24 and sums["loss_sum"] > 0 and sums["train_seconds"] > 0
    assert seen[5][1] is None  # an epoch's end: its line holds the averages
    assert seen[6][1]["seen"] == 16  # 2 steps into epoch 2
    final = Checkpoint(tmp_path / "checkpoint.npz")
    assert (final.step, final.epoch_sums, final.config["checkpoint_every"]) == (8, None, 3)


@pytest.mark.parametrize("stop", [7, 3])
def test_interrupted_after_a_checkpoint_within_an_epoch_resumes_to_the_uninterrupted_run(tmp_path, stop):
    """Stopped after step 7 (on disk: step 6, half way through epoch 2) or step 3 (before any epoch ended)."""
    full = tmp_path / "full"
    train(tiny_config(full, epochs=2, schedule="cosine"), progress=False, log=quiet)

    def interrupt(step):
        if step == stop:
            raise KeyboardInterrupt

    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(cut, epochs=2, schedule="cosine", checkpoint_every=3), progress=False, log=quiet,
              on_step=interrupt)
    assert Checkpoint(cut / "checkpoint.npz").step == stop // 3 * 3
    history = train(tiny_config(cut, epochs=2), resume=True, progress=False, log=quiet)

    a, b = Checkpoint(full / "checkpoint.npz").model, Checkpoint(cut / "checkpoint.npz").model
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # the resumed epoch averages over all of its steps, the ones before the interruption included
    assert same_rows(rows(full), rows(cut)) and rows(cut) == history


def test_an_epoch_stopped_by_max_steps_and_resumed_averages_over_all_its_steps(tmp_path, monkeypatch):
    """--max-steps 6 stops half way through epoch 2; resumed to 8 steps, epoch 2's line covers steps 5 to 8.

    Before the checkpoint carried the epoch's sums, the line averaged over steps 7 and 8 only.
    """
    per_step = {}
    original = trainer._eager_step

    def recording(run, x, y, loss_sum, correct):
        before = float(loss_sum), int(correct)
        original(run, x, y, loss_sum, correct)
        per_step[run.step + 1] = (float(loss_sum) - before[0], int(correct) - before[1])

    monkeypatch.setattr(trainer, "_eager_step", recording)
    train(tiny_config(tmp_path, max_steps=6), progress=False, log=quiet)
    assert Checkpoint(tmp_path / "checkpoint.npz").epoch_sums["seen"] == 16
    history = train(tiny_config(tmp_path, max_steps=8), resume=True, progress=False, log=quiet)

    last = history[-1]
    assert (last["epoch"], last["step"]) == (2, 8) and rows(tmp_path) == history
    assert last["train_acc"] == sum(per_step[s][1] for s in range(5, 9)) / 32
    assert last["train_loss"] == pytest.approx(sum(per_step[s][0] for s in range(5, 9)) / 32, rel=1e-12)


def test_checkpoint_every_may_change_on_resume_without_a_warning(tmp_path):
    train(tiny_config(tmp_path, epochs=1), progress=False, log=quiet)
    said, steps = [], []
    train(tiny_config(tmp_path, epochs=2, checkpoint_every=2), resume=True, progress=False, log=said.append,
          on_step=lambda step: steps.append(Checkpoint(tmp_path / "checkpoint.npz").step))
    assert not [line for line in said if line.startswith("warning")], said
    assert steps == [4, 6, 6, 6]  # step 6 is saved half way through epoch 2 (step 8's after the last on_step)


def test_a_bad_checkpoint_every_is_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"--checkpoint-every must be >= 1, got 0"):
        tiny_config(tmp_path, epochs=1, checkpoint_every=0).validate()
    status, _, err = run_cli("train", *TINY_ARGS, "--epochs", "1", "--checkpoint-every", "0", "--out",
                             tmp_path / "run")
    assert_one_line_error(status, err, "--checkpoint-every", ">= 1")
    assert not (tmp_path / "run").exists()


def test_the_command_line_option_reaches_the_run(tmp_path):
    status, _, err = run_cli("train", *TINY_ARGS, "--max-steps", "3", "--checkpoint-every", "2", "--out",
                             tmp_path / "run")
    assert status == 0, err
    ckpt = Checkpoint(tmp_path / "run" / "checkpoint.npz")
    assert ckpt.config["checkpoint_every"] == 2 and ckpt.step == 3 and ckpt.epoch_sums["seen"] == 24


# ------------------------------------------------------------------ sums that contradict their checkpoint


@pytest.fixture(scope="module")
def within_epoch(tmp_path_factory):
    """The checkpoint of a run stopped by --max-steps 6: 2 of epoch 2's 4 steps done, 16 images seen."""
    out = tmp_path_factory.mktemp("within")
    train(TrainConfig(**TINY, out=str(out), max_steps=6), progress=False, log=quiet)
    return out / "checkpoint.npz"


def _changed_copy(src, dest, change):
    arrays = dict(np.load(src))
    change(arrays)
    np.savez(dest, **arrays)
    return dest


def _at_the_epochs_end(arrays):  # the sums kept, the loader moved to the end of epoch 2
    arrays["loader/position"], arrays["meta/step"] = np.int64(4), np.int64(8)


CONTRADICTIONS = {
    "seen_beyond_the_batches": (lambda a: a.__setitem__("epoch/seen", np.int64(17)), "epoch/seen"),
    "more_correct_than_seen": (lambda a: a.__setitem__("epoch/correct", np.int64(20)), "epoch/correct"),
    "negative_loss_sum": (lambda a: a.__setitem__("epoch/loss_sum", np.float64(-1.5)), "'epoch/loss_sum' is -1.5"),
    "nan_loss_sum": (lambda a: a.__setitem__("epoch/loss_sum", np.float64(np.nan)), "epoch/loss_sum"),
    "one_sum_missing": (lambda a: a.pop("epoch/train_seconds"), "epoch/train_seconds"),
    "sums_at_an_epochs_end": (_at_the_epochs_end, "epoch/seen"),
}


@pytest.mark.parametrize("kind", sorted(CONTRADICTIONS))
def test_epoch_sums_that_contradict_the_checkpoint_are_refused_by_name(kind, within_epoch, tmp_path):
    change, entry = CONTRADICTIONS[kind]
    path = _changed_copy(within_epoch, tmp_path / f"{kind}.npz", change)
    with pytest.raises(ValueError) as info:
        Checkpoint(path)
    message = str(info.value)
    assert str(path) in message and entry in message and "\n" not in message, message


def test_a_checkpoint_without_sums_still_resumes(within_epoch, tmp_path):
    """Checkpoints written before the sums existed load; their resumed epoch averages over its later steps."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_bytes((within_epoch.parent / "metrics.jsonl").read_bytes())
    _changed_copy(within_epoch, run / "checkpoint.npz",
                  lambda a: [a.pop(k) for k in ("epoch/loss_sum", "epoch/correct", "epoch/seen", "epoch/train_seconds")])
    assert Checkpoint(run / "checkpoint.npz").epoch_sums is None
    history = train(tiny_config(run, max_steps=8), resume=True, progress=False, log=quiet)
    assert [(r["epoch"], r["step"]) for r in history] == [(1, 4), (2, 8)]
