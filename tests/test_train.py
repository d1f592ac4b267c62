"""The training command: metrics, checkpoints, resume equivalence, NaN stop, eval and plot."""

import json
import os

import numpy as np
import pytest

import miniran.functional as F
from miniran.train import cli
from miniran.train.checkpoint import Checkpoint
from miniran.train.trainer import TrainConfig, TrainingDiverged, train

TINY = dict(model="attention56", dataset="cifar10-sample", subset=32, test_subset=10, batch_size=8, seed=3)


def tiny_config(out, **kw):
    return TrainConfig(**{**TINY, "out": str(out), **kw})


def weights(path):
    return Checkpoint(path).model


def test_metrics_and_checkpoint_are_written(tmp_path):
    history = train(tiny_config(tmp_path, epochs=2), progress=False, log=lambda *a: None)
    assert [r["epoch"] for r in history] == [1, 2]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == history
    for key in ("epoch", "step", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds", "images_per_second"):
        assert key in rows[0]
    assert rows[1]["step"] == 8 and rows[0]["test_images"] == 10
    ckpt = Checkpoint(tmp_path / "checkpoint.npz")
    assert ckpt.step == 8 and ckpt.epoch == 2 and ckpt.config["model"] == "attention56"


def test_resumed_run_ends_with_the_same_weights(tmp_path):
    """Interrupt half way through the second epoch, resume, and compare with an uninterrupted run."""
    full = tmp_path / "full"
    train(tiny_config(full, epochs=3, schedule="cosine"), progress=False, log=lambda *a: None)

    cut = tmp_path / "cut"

    def interrupt(step):
        if step == 6:  # mid-epoch 2: the checkpoint on disk is the one from step 4
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(cut, epochs=3, schedule="cosine"), progress=False, log=lambda *a: None, on_step=interrupt)
    assert Checkpoint(cut / "checkpoint.npz").step == 4
    history = train(tiny_config(cut, epochs=3), resume=True, progress=False, log=lambda *a: None)

    a, b = weights(full / "checkpoint.npz"), weights(cut / "checkpoint.npz")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    full_rows = (full / "metrics.jsonl").read_text().splitlines()
    cut_rows = (cut / "metrics.jsonl").read_text().splitlines()
    for x, y in zip(full_rows, cut_rows):
        x, y = json.loads(x), json.loads(y)
        assert (x["step"], x["train_loss"], x["test_acc"]) == (y["step"], y["train_loss"], y["test_acc"])


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    original = F.cross_entropy
    calls = {"n": 0}

    def poisoned(logits, labels):
        calls["n"] += 1
        loss = original(logits, labels)
        return loss * float("nan") if calls["n"] > 2 else loss  # steps 5 and 6 are fine, 7 is not

    train(tiny_config(tmp_path, epochs=1), progress=False, log=lambda *a: None)
    before = (tmp_path / "checkpoint.npz").read_bytes()
    monkeypatch.setattr(F, "cross_entropy", poisoned)
    with pytest.raises(TrainingDiverged, match=r"nan at step \d+.*last good checkpoint.*step 4"):
        train(tiny_config(tmp_path, epochs=3), resume=True, progress=False, log=lambda *a: None)
    assert (tmp_path / "checkpoint.npz").read_bytes() == before
    assert Checkpoint(tmp_path / "checkpoint.npz").step == 4


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    train(tiny_config(tmp_path, epochs=1), progress=False, log=lambda *a: None)
    before = (tmp_path / "checkpoint.npz").read_bytes()
    real_savez = np.savez

    def crash_half_way(f, **arrays):
        real_savez(f, **dict(list(arrays.items())[:3]))  # some bytes reach the disk...
        raise OSError("power cut")  # ...then the write dies

    monkeypatch.setattr(np, "savez", crash_half_way)
    with pytest.raises(OSError, match="power cut"):
        train(tiny_config(tmp_path, epochs=2), resume=True, progress=False, log=lambda *a: None)
    assert (tmp_path / "checkpoint.npz").read_bytes() == before
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]
    monkeypatch.undo()
    # and the run can still be resumed from the intact checkpoint
    history = train(tiny_config(tmp_path, epochs=2), resume=True, progress=False, log=lambda *a: None)
    assert [r["epoch"] for r in history] == [1, 2]


def test_cli_train_eval_plot(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["train", "--dataset", "cifar10-sample", "--subset", "32", "--test-subset", "20",
                     "--batch-size", "16", "--max-steps", "3", "--out", str(out), "--no-progress",
                     "--attention", "spatial", "--mask-bn", "--label-noise", "0.3"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "curves.png" in printed and (out / "curves.png").stat().st_size > 1000
    ckpt = Checkpoint(out / "checkpoint.npz")
    assert ckpt.config["attention"] == "spatial" and ckpt.config["mask_bn"] and ckpt.config["label_noise"] == 0.3
    assert cli.main(["eval", "--checkpoint", str(out / "checkpoint.npz")]) == 0
    text = capsys.readouterr().out
    assert "test accuracy on cifar10-sample (1000 images)" in text and "airplane" in text
    assert cli.main(["plot", str(out), "--output", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").exists()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--model", "attention57"], "--model must be one of"),
        (["train", "--model", "resnet164", "--nal"], "resnet164 has no attention modules"),
        (["train", "--model", "attention56_imagenet"], "224x224"),
        (["train", "--dataset", "cifar10-sample", "--subset", "999999"], "larger than the training set"),
        (["train", "--label-noise", "1.5"], "--label-noise"),
        (["eval", "--checkpoint", "/nonexistent/ckpt.npz"], "checkpoint not found"),
        (["plot", "/nonexistent/run"], "no metrics.jsonl"),
    ],
)
def test_cli_errors_are_one_clear_line(argv, message, tmp_path, capsys):
    if argv[0] == "train":
        argv = argv + ["--out", str(tmp_path / "r"), "--no-progress"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["train", "--resume", "--out", str(tmp_path / "none"), "--no-progress"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


@pytest.mark.skipif(__import__("miniran").cuda_available(), reason="checks the message shown without a GPU")
def test_gpu_without_gpu_explains_how_to_install(tmp_path, capsys):
    code = cli.main(["train", "--device", "gpu", "--dataset", "cifar10-sample", "--out", str(tmp_path), "--no-progress"])
    assert code == 2
    assert "cuda12" in capsys.readouterr().err


@pytest.mark.gpu
def test_gpu_training_matches_cpu_for_a_few_steps(tmp_path, cp):
    cpu = train(tiny_config(tmp_path / "cpu", max_steps=3), progress=False, log=lambda *a: None)
    gpu = train(tiny_config(tmp_path / "gpu", max_steps=3, device="gpu"), progress=False, log=lambda *a: None)
    assert gpu[0]["train_loss"] == pytest.approx(cpu[0]["train_loss"], rel=1e-3)


def test_resume_keeps_the_saved_device_unless_given(tmp_path):
    """`--resume` without `--device` must not move a GPU run to the CPU: the option stays
    unset, so train() keeps the device stored in the checkpoint's config."""
    args = cli.build_parser().parse_args(["train", "--resume", "--out", str(tmp_path)])
    assert cli._config_from_args(args).device is None
    args = cli.build_parser().parse_args(["train", "--resume", "--device", "cpu", "--out", str(tmp_path)])
    assert cli._config_from_args(args).device == "cpu"
