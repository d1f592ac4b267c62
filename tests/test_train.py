"""The training command: metrics, checkpoints, resume equivalence, NaN stop, eval and plot."""

import json
import math
import os

import numpy as np
import pytest

import miniran.functional as F
from miniran import backend, models
from miniran.autograd import Tensor
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

    def poisoned(logits, labels, **options):
        calls["n"] += 1
        loss = original(logits, labels, **options)
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
    # float32 sums in another order drift apart over three updates (some weight
    # gradients of Attention-56 are mostly cancellation); the exact agreement is
    # checked in float64 by test_attention56_gradients_agree_on_gpu_in_float64
    assert gpu[0]["train_loss"] == pytest.approx(cpu[0]["train_loss"], rel=2e-2)
    assert gpu[0]["test_images"] == cpu[0]["test_images"] == 10


@pytest.mark.gpu
def test_attention56_gradients_agree_on_gpu_in_float64(cp):
    """One forward and backward pass of the whole network: CuPy equals NumPy in float64."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 32, 32))
    y = rng.integers(0, 10, 4)
    results = []
    for xp in (np, cp):
        net = models.attention56(num_classes=10, seed=0).astype(np.float64)
        if xp is cp:
            net.to("gpu")
        loss = F.cross_entropy(net(Tensor(xp.asarray(x))), xp.asarray(y))
        loss.backward()
        results.append([float(loss.data)] + [backend.to_numpy(p.grad) for p in net.parameters()])
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-12)
    for a, b in zip(results[0][1:], results[1][1:]):
        np.testing.assert_allclose(b, a, rtol=1e-7, atol=1e-9 * np.abs(a).max())


def test_resume_keeps_the_saved_device_unless_given(tmp_path):
    """`--resume` without `--device` must not move a GPU run to the CPU: the option stays
    unset, so train() keeps the device stored in the checkpoint's config."""
    args = cli.build_parser().parse_args(["train", "--resume", "--out", str(tmp_path)])
    assert cli._config_from_args(args).device is None
    args = cli.build_parser().parse_args(["train", "--resume", "--device", "cpu", "--out", str(tmp_path)])
    assert cli._config_from_args(args).device == "cpu"


# ============================================================================ issue 10: no data loss, one clear line

import errno  # noqa: E402
from pathlib import Path  # noqa: E402

from miniran import _io  # noqa: E402
from miniran.train import trainer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
from cli_helpers import TINY_ARGS, assert_one_line_error, quiet, run_cli, snapshot  # noqa: E402,F401


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A one-epoch tiny run (4 steps), made once for the tests below; copy before changing it."""
    out = tmp_path_factory.mktemp("finished")
    train(tiny_config(out, epochs=1), progress=False, log=quiet)
    return out


def copy_run(src, dest):
    dest.mkdir(parents=True, exist_ok=True)
    for name, data in snapshot(src).items():
        (dest / name).write_bytes(data)
    return dest


def test_train_refuses_an_out_folder_that_holds_a_run(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "run")
    before = snapshot(run)
    status, _, err = run_cli("train", *TINY_ARGS, "--max-steps", "1", "--out", run)
    assert_one_line_error(status, err, str(run), "--resume", "--force")
    assert snapshot(run) == before
    # --force starts over, on purpose
    history = train(tiny_config(run, max_steps=2), force=True, progress=False, log=quiet)
    assert [r["step"] for r in history] == [2]
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [2]


def test_cli_force_flag_is_passed(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(trainer, "train", lambda config, **kw: seen.update(kw) or [])
    monkeypatch.setattr("miniran.train.plot.plot_curves", lambda out: "curves.png")
    assert cli.main(["train", "--force", "--out", str(tmp_path), "--no-progress"]) == 0
    assert seen["force"] is True


def test_torn_metrics_tail_is_reported_and_the_rest_kept(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    good = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(good + '{"epoch": 2, "step": 8, "train_lo')  # a crash mid-append
    messages = []
    rows = trainer.read_metrics(run / "metrics.jsonl", warn=messages.append)
    assert rows == [json.loads(good)]
    assert len(messages) == 1 and "metrics.jsonl" in messages[0] and "line 2" in messages[0]
    # plot survives it and says so
    assert cli.main(["plot", str(run)]) == 0
    err = capsys.readouterr().err
    assert "line 2" in err and "Traceback" not in err
    # resume survives it, and rewrites the file without the torn line
    history = train(tiny_config(run, epochs=2), resume=True, progress=False, log=quiet)
    assert [r["epoch"] for r in history] == [1, 2]
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_damaged_metrics_line_in_the_middle_is_one_clear_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "step": 4}\nnot json\n{"epoch": 3, "step": 12}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl.*line 2"):
        trainer.read_metrics(path)


def test_metrics_append_never_tears(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    _io.append_line(path, json.dumps({"epoch": 1}))
    before = path.read_bytes()
    real_write = os.write
    calls = []

    def half_write(fd, data):  # the disk fills up half way through the line
        calls.append(len(data))
        return real_write(fd, data[: len(data) // 2])

    monkeypatch.setattr(os, "write", half_write)
    with pytest.raises(OSError):
        _io.append_line(path, json.dumps({"epoch": 2, "step": 8}))
    assert len(calls) == 1  # the whole line in one write
    assert path.read_bytes() == before


def test_metrics_rewrite_leaves_no_tmp_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\n')

    def unserialisable(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(json, "dumps", unserialisable)
    with pytest.raises(OSError):
        trainer.write_metrics(path, [{"epoch": 1}])
    assert os.listdir(tmp_path) == ["metrics.jsonl"] and path.read_text() == '{"epoch": 1}\n'


def test_saving_never_changes_the_umask(tmp_path, monkeypatch):
    def forbidden(*a):
        raise AssertionError("os.umask called: it changes the mask of the whole process")

    monkeypatch.setattr(os, "umask", forbidden)
    from miniran.nn import save_arrays

    save_arrays(tmp_path / "a.npz", {"x": np.zeros(3)})
    _io.atomic_write(tmp_path / "b.bin", lambda f: f.write(b"x"))
    assert (tmp_path / "a.npz").exists() and (tmp_path / "b.bin").read_bytes() == b"x"


def _damaged_checkpoints(src, folder):
    """name -> path of a damaged copy of the checkpoint ``src``."""
    data = Path(src).read_bytes()
    out = {}
    out["truncated"] = folder / "truncated.npz"
    out["truncated"].write_bytes(data[: len(data) // 2])
    corrupt = bytearray(data)
    corrupt[len(data) // 2: len(data) // 2 + 4096] = b"\0" * 4096
    out["corrupt"] = folder / "corrupt.npz"
    out["corrupt"].write_bytes(bytes(corrupt))
    out["npy"] = folder / "weights.npy"
    np.save(out["npy"], np.zeros(3))
    out["text"] = folder / "notes.npz"
    out["text"].write_text("hello")
    arrays = dict(np.load(src))

    def with_config(**changes):
        config = {**json.loads(str(arrays["meta/config"])), **changes}
        return lambda a: a.__setitem__("meta/config", np.array(json.dumps(config)))

    for name, change in [
        ("unknown_key", with_config(colour=1)),
        ("wrong_type", with_config(lr="fast")),
        ("not_a_dict", lambda a: a.__setitem__("meta/config", np.array("[1, 2]"))),
        ("no_step", lambda a: a.pop("meta/step")),
    ]:
        copy = dict(arrays)
        change(copy)
        out[name] = folder / f"{name}.npz"
        np.savez(out[name], **copy)
    return out


DAMAGE = ["truncated", "corrupt", "npy", "text", "unknown_key", "wrong_type", "not_a_dict", "no_step"]


@pytest.fixture(scope="module")
def damaged(finished_run, tmp_path_factory):
    return _damaged_checkpoints(finished_run / "checkpoint.npz", tmp_path_factory.mktemp("damaged"))


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_checkpoint_is_one_clear_line(kind, damaged):
    path = damaged[kind]
    before = path.read_bytes()
    status, _, err = run_cli("eval", "--checkpoint", path)
    assert_one_line_error(status, err, path.name)
    assert path.read_bytes() == before


def test_damaged_checkpoint_on_resume_is_one_clear_line(damaged, finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "run")
    (run / "checkpoint.npz").write_bytes(damaged["truncated"].read_bytes())
    before = snapshot(run)
    status, _, err = run_cli("train", "--resume", "--out", run, "--no-progress")
    assert_one_line_error(status, err, "checkpoint.npz")
    assert snapshot(run) == before


def test_weights_that_do_not_match_the_config_are_summarised(finished_run, tmp_path):
    arrays = dict(np.load(finished_run / "checkpoint.npz"))
    config = json.loads(str(arrays["meta/config"]))
    arrays["meta/config"] = np.array(json.dumps({**config, "model": "attention92"}))
    path = tmp_path / "mismatch.npz"
    np.savez(path, **arrays)
    status, _, err = run_cli("eval", "--checkpoint", path)
    assert_one_line_error(status, err, "missing")
    assert len(err) < 600, err


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_out_that_is_a_file_is_one_clear_line(where, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("my notes\n")
    out = blocker if where == "file" else blocker / "run"
    status, _, err = run_cli("train", *TINY_ARGS, "--max-steps", "1", "--out", out)
    assert_one_line_error(status, err, str(blocker))
    assert blocker.read_text() == "my notes\n"


def test_read_only_out_is_one_clear_line(tmp_path, monkeypatch, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if Path(p) == out else real_access(p, mode, **k))
    assert cli.main(["train", *TINY_ARGS, "--max-steps", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert_one_line_error(2, err, str(out), "not writable")
    assert list(out.iterdir()) == []


def test_disk_full_during_checkpoint_write_keeps_the_earlier_one(finished_run, tmp_path, monkeypatch, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    before = (run / "checkpoint.npz").read_bytes()

    def disk_full(f, **arrays):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    code = cli.main(["train", "--resume", "--epochs", "2", "--out", str(run), "--no-progress"])
    err = capsys.readouterr().err
    assert_one_line_error(code, err, "No space left on device", "checkpoint.npz", "safe")
    assert (run / "checkpoint.npz").read_bytes() == before
    assert not [p for p in os.listdir(run) if p.startswith(".tmp")]


def test_resume_after_mid_epoch_stop_writes_one_row_per_epoch(tmp_path):
    train(tiny_config(tmp_path, max_steps=6), progress=False, log=quiet)  # epoch 2 stopped half way
    history = train(tiny_config(tmp_path, max_steps=8), resume=True, progress=False, log=quiet)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and [r["step"] for r in rows] == [4, 8]
    assert rows == history


def test_ctrl_c_hint_does_not_offer_resume_when_nothing_was_saved(tmp_path, monkeypatch, capsys):
    def interrupted(config, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train", interrupted)
    assert cli.main(["train", "--out", str(tmp_path / "fresh"), "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert "--resume" not in err and "nothing was saved" in err


# ---------------------------------------------------------------- issue 10: options and settings


def test_resume_with_epochs_after_a_max_steps_run(tmp_path):
    train(tiny_config(tmp_path, max_steps=6), progress=False, log=quiet)
    history = train(tiny_config(tmp_path, epochs=3), resume=True, progress=False, log=quiet)
    assert [r["step"] for r in history] == [4, 8, 12]
    with pytest.raises(ValueError, match=r"already at step 12.*--epochs 2"):
        train(tiny_config(tmp_path, epochs=2), resume=True, progress=False, log=quiet)


def test_resume_warns_about_ignored_options(finished_run, tmp_path, monkeypatch):
    run = copy_run(finished_run, tmp_path / "run")
    messages = []
    monkeypatch.setattr(trainer, "load_data", lambda config: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):  # stop right after the set-up's messages
        train(tiny_config(run, epochs=2, lr=0.05, seed=9), resume=True, progress=False, log=messages.append)
    warning = [m for m in messages if m.startswith("warning:")]
    assert len(warning) == 1
    assert "--lr 0.05" in warning[0] and "--seed 9" in warning[0] and "--epochs" in warning[0]
    assert "--batch-size" not in warning[0]  # same value as the saved run: nothing to say


@pytest.mark.parametrize("argv", [["--lr", "nan"], ["--lr", "inf"], ["--weight-decay", "nan"],
                                  ["--label-noise", "nan"], ["--weight-decay", "-1"]])
def test_non_finite_settings_are_one_clear_line(argv, tmp_path):
    status, _, err = run_cli("train", *TINY_ARGS, "--max-steps", "1", "--out", tmp_path / "r", *argv)
    assert_one_line_error(status, err, argv[0])
    assert not (tmp_path / "r").exists()


def test_resume_and_force_together_are_refused(tmp_path, capsys):
    assert cli.main(["train", "--resume", "--force", "--out", str(tmp_path), "--no-progress"]) == 2
    assert_one_line_error(2, capsys.readouterr().err, "--resume", "--force")


def test_demo_does_not_overwrite_an_earlier_demo(tmp_path, monkeypatch, capsys):
    seen = {}
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(trainer, "train", lambda config, **kw: seen.update(kw, out=config.out) or [])
    monkeypatch.setattr("miniran.train.plot.plot_curves", lambda out: "curves.png")
    monkeypatch.setattr(cli, "_demo_masks", lambda out: None)  # the masks: the next test
    assert cli.main(["demo", "--no-progress"]) == 0 and seen["force"] is False and seen["out"] == "runs/demo"
    assert cli.main(["demo", "--no-progress", "--force"]) == 0 and seen["force"] is True


def test_demo_ends_with_the_shipped_networks_masks(tmp_path, monkeypatch, capsys):
    """After its run, `miniran demo` draws the pretrained Attention-56's mask channels to runs/demo/masks.png."""
    if not models.pretrained_available():
        pytest.skip("this copy of miniran has no pretrained weights")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(trainer, "train", lambda config, **kw: [])  # the run itself is tested elsewhere
    monkeypatch.setattr("miniran.train.plot.plot_curves", lambda out: "curves.png")
    assert cli.main(["demo", "--no-progress"]) == 0
    png = tmp_path / "runs" / "demo" / "masks.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert f"attention masks: {os.path.join('runs', 'demo', 'masks.png')}" in capsys.readouterr().out


# --------------------------------------------------------------------------- the GPU end to end


@pytest.mark.gpu
def test_gpu_run_resumes_to_the_same_weights(tmp_path, cp):
    """Checkpoint save and resume from the GPU: interrupted + resumed == uninterrupted."""
    full = tmp_path / "full"
    train(tiny_config(full, epochs=2, schedule="cosine", device="gpu"), progress=False, log=quiet)

    def interrupt(step):
        if step == 6:  # mid-epoch 2: the checkpoint on disk is the one from step 4
            raise KeyboardInterrupt

    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(cut, epochs=2, schedule="cosine", device="gpu"), progress=False, log=quiet,
              on_step=interrupt)
    assert Checkpoint(cut / "checkpoint.npz").config["device"] == "gpu"
    history = train(tiny_config(cut, epochs=2), resume=True, progress=False, log=quiet)
    assert [r["epoch"] for r in history] == [1, 2]
    a, b = weights(full / "checkpoint.npz"), weights(cut / "checkpoint.npz")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.gpu
def test_cli_trains_and_evaluates_on_the_gpu(tmp_path, cp):
    """`miniran train --device gpu` for a few steps, with its evaluation on the test images."""
    out = tmp_path / "run"
    status, stdout, err = run_cli("train", *TINY_ARGS, "--max-steps", "4", "--device", "gpu", "--out", out)
    assert status == 0, err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 4 and rows[-1]["test_images"] == 10
    assert math.isfinite(rows[-1]["test_loss"]) and 0 <= rows[-1]["test_acc"] <= 1
    assert "device gpu" in stdout + err
