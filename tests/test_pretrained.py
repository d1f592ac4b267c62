"""The pretrained Attention-56: export from a run, the loader, its errors, and the shipped file.

* ``tools/export_pretrained.py`` on a one-step run: float16 parameters, float32
  batch-norm statistics, no pickle, a complete json, and a loader that gives
  back the exported network in evaluation mode with float32 weights.
* ``attention56(pretrained=True)`` / ``load_pretrained``: one clear error for a
  missing file and for arguments the shipped weights cannot satisfy.
* The shipped file (skipped, with the reason, when this copy has none): its
  accuracy on the 1,000 embedded test images is at least the threshold its
  json records.
"""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest

import miniran
from miniran import data, models
from miniran.models import pretrained as pt
from miniran.nn import load_arrays, save_arrays
from miniran.train.trainer import TrainConfig, evaluate, train
from conftest import load_tool


def _tool():
    return load_tool("export_pretrained")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    config = TrainConfig(dataset="cifar10-sample", subset=20, test_subset=10, batch_size=10, max_steps=1,
                         schedule="cosine", out=str(out))
    train(config, progress=False, log=lambda *a: None)
    return out


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("pretrained")
    npz, js = _tool().export(tiny_run, out_dir=out_dir, sample_images=20, log=lambda *a: None)
    return tiny_run, npz, js


def test_export_writes_half_weights_and_float32_statistics(exported):
    _, npz, _ = exported
    assert npz.name == "attention56_cifar10.npz"
    with np.load(npz, allow_pickle=False) as f:  # no object arrays anywhere
        arrays = {k: f[k] for k in f.files}
    weights = {k: v for k, v in arrays.items() if k.startswith("model/")}
    stats = {k: v for k, v in weights.items() if k.endswith(("running_mean", "running_var"))}
    params = {k: v for k, v in weights.items() if k not in stats}
    assert stats and params
    assert {v.dtype for v in stats.values()} == {np.dtype(np.float32)}
    assert {v.dtype for v in params.values()} == {np.dtype(np.float16)}
    assert str(arrays["meta/weights_dtype"]) == "float16"
    assert str(arrays["meta/model"]) == "attention56" and int(arrays["meta/num_classes"]) == 10
    assert arrays["data/mean"].shape == (3, 32, 32) and arrays["data/mean"].dtype == np.float32
    assert json.loads(str(arrays["meta/config"]))["max_steps"] == 1


def test_export_json_records_the_run(exported):
    run, npz, js = exported
    meta = json.loads(js.read_text())
    for key in ("command", "metrics", "accuracy", "epochs", "steps", "miniran_version", "machine",
                "exported", "trained_until", "test_accuracy_float32", "test_accuracy_float16",
                "sample_accuracy_threshold", "weights_dtype"):
        assert key in meta, key
    assert meta["command"].startswith("miniran train --model attention56 --dataset cifar10-sample")
    assert "--max-steps 1" in meta["command"] and "--subset 20" in meta["command"]
    assert meta["epochs"] == 1 and meta["steps"] == 1
    assert meta["metrics"] == [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert meta["miniran_version"] == miniran.__version__
    sample = meta["accuracy"]["embedded_sample"]
    assert sample["float32"]["images"] == 20 and 0 <= sample["float16_round_trip"]["accuracy"] <= 1
    assert meta["sample_accuracy_threshold"] == pytest.approx(meta["sample_accuracy"] - 0.01, abs=1e-4)
    assert meta["file_bytes"] == npz.stat().st_size


def test_loader_gives_back_the_exported_network(exported):
    run, npz, _ = exported
    from miniran.train.checkpoint import Checkpoint

    ckpt = Checkpoint(run / "checkpoint.npz")
    net = models.load_pretrained(path=npz)
    assert not net.training and all(not m.training for m in net.modules())
    state = net.state_dict()
    assert {v.dtype for v in state.values()} == {np.dtype(np.float32)}
    for key, value in ckpt.model.items():
        if key.endswith(("running_mean", "running_var")):
            np.testing.assert_array_equal(state[key], value)
        else:  # float16 rounding: relative error below 2^-11
            np.testing.assert_allclose(state[key], value.astype(np.float16).astype(np.float32), rtol=0, atol=0)
    info = net.pretrained_info
    np.testing.assert_array_equal(info["mean"], ckpt.mean)
    assert info["classes"] == list(data.CIFAR10_CLASSES) and info["weights_dtype"] == "float16"
    # the same predictions as the checkpoint's float32 network, up to float16 rounding
    x, y = data.load_cifar10_sample(train=False)
    ref = models.attention56(seed=0)
    ref.load_state_dict(ckpt.model)
    a = evaluate(net, x[:20], y[:20], ckpt.mean, ckpt.std)
    b = evaluate(ref, x[:20], y[:20], ckpt.mean, ckpt.std)
    assert abs(a["loss"] - b["loss"]) < 1e-2


def test_command_from_config():
    tool = _tool()
    config = {**TrainConfig().__dict__, "nal": True, "augment": False, "epochs": 5, "weight_decay": 5e-4}
    cmd = tool.command_from_config(config)
    assert cmd.startswith("miniran train --model attention56 --dataset cifar10 --epochs 5")
    assert "--nal" in cmd and "--no-augment" in cmd and "--weight-decay 0.0005" in cmd
    assert "--mask-bn" not in cmd and "--label-noise" not in cmd


def test_export_of_a_fine_tuned_run_records_what_it_started_from(tmp_path):
    """A run given --init attention56_cifar10: the json keeps the shipped weights' own command,
    epochs and metrics (read before the export replaces them) and counts the epochs in all."""
    if not models.pretrained_available():
        pytest.skip("the shipped weights are not in this copy")
    before = models.pretrained_metadata()
    config = TrainConfig(dataset="cifar10-sample", subset=20, test_subset=10, batch_size=10, max_steps=1,
                         schedule="onecycle", label_smoothing=0.1, init="attention56_cifar10", out=str(tmp_path / "run"))
    train(config, progress=False, log=lambda *a: None)
    _, js = _tool().export(tmp_path / "run", out_dir=tmp_path / "out", sample_images=20, log=lambda *a: None)
    meta = json.loads(js.read_text())
    origin = meta["started_from"]
    assert origin["pretrained"] == "attention56_cifar10" and origin["command"] == before["command"]
    assert origin["metrics"] == before["metrics"] and origin["test_accuracy"] == before["test_accuracy"]
    assert meta["epochs_in_all"] == before.get("epochs_in_all", before["epochs"]) + 1
    assert meta["steps_in_all"] == before.get("steps_in_all", before["steps"]) + 1
    assert "--init attention56_cifar10" in meta["command"] and "--label-smoothing 0.1" in meta["command"]
    assert "--schedule onecycle" in meta["command"]


def test_the_shipped_files_name_no_data_folder_of_the_training_machine():
    tool = _tool()
    config = {**TrainConfig().__dict__, "data_dir": "/home/someone/cifar", "epochs": 2}
    public = tool.public_config(config)
    assert public["data_dir"] == "DIR" and config["data_dir"] == "/home/someone/cifar"
    assert "--data-dir DIR" in tool.command_from_config(public) and "/home/someone" not in tool.command_from_config(public)
    assert tool.public_config({**config, "data_dir": None})["data_dir"] is None


def test_export_of_a_chain_of_fine_tunes_records_every_run(tmp_path):
    """Shipped weights -> run A (--init the name) -> run B (--init A's checkpoint): B's json
    names A's checkpoint, A's command and metrics, and under it the shipped weights;
    the epochs in all add up along the chain."""
    if not models.pretrained_available():
        pytest.skip("the shipped weights are not in this copy")
    before = models.pretrained_metadata()
    common = dict(dataset="cifar10-sample", subset=20, test_subset=10, batch_size=10, max_steps=1)
    first = TrainConfig(**common, init="attention56_cifar10", out=str(tmp_path / "a"))
    train(first, progress=False, log=lambda *a: None)
    second = TrainConfig(**common, init=str(tmp_path / "a" / "checkpoint.npz"), lr=0.01, out=str(tmp_path / "b"))
    train(second, progress=False, log=lambda *a: None)
    tool = _tool()
    _, js = tool.export(tmp_path / "b", out_dir=tmp_path / "out", sample_images=20, log=lambda *a: None)
    meta = json.loads(js.read_text())
    parent = meta["started_from"]
    assert parent["file"] == str(tmp_path / "a" / "checkpoint.npz")
    assert "--init attention56_cifar10" in parent["command"] and parent["epochs"] == 1 and parent["steps"] == 1
    assert len(parent["metrics"]) == 1 and parent["test_accuracy"] == parent["metrics"][0]["test_acc"]
    root = parent["started_from"]
    assert root["pretrained"] == "attention56_cifar10" and root["command"] == before["command"]
    assert meta["epochs_in_all"] == before.get("epochs_in_all", before["epochs"]) + 2
    assert meta["steps_in_all"] == before.get("steps_in_all", before["steps"]) + 2
    # a weights file that is not a run's checkpoint is named by its path only
    assert tool.started_from(str(models.pretrained_path("attention56_cifar10"))) == {
        "file": str(models.pretrained_path("attention56_cifar10"))}


def test_a_chain_through_a_replaced_shipped_file_is_recorded_as_it_was(tmp_path, monkeypatch):
    """Shipped weights S -> run A (--init the name) -> run B (--init A's checkpoint), B exported
    as the new shipped file -> run C (--init B's checkpoint). C's chain must end with A starting
    from S as it was, not from B's export that replaced it (which would count B twice)."""
    if not models.pretrained_available():
        pytest.skip("the shipped weights are not in this copy")
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    for suffix in (".npz", ".json"):
        src = models.pretrained_path("attention56_cifar10").with_suffix(suffix)
        (shipped / src.name).write_bytes(src.read_bytes())
    monkeypatch.setattr(pt, "PRETRAINED_DIR", shipped)
    before = models.pretrained_metadata()
    common = dict(dataset="cifar10-sample", subset=20, test_subset=10, batch_size=10, max_steps=1)
    runs = {"a": "attention56_cifar10", "b": str(tmp_path / "a" / "checkpoint.npz"),
            "c": str(tmp_path / "b" / "checkpoint.npz")}
    tool = _tool()
    for name, init in runs.items():
        train(TrainConfig(**common, init=init, lr=0.01, out=str(tmp_path / name)), progress=False, log=lambda *a: None)
        if name == "b":  # B becomes the shipped file, as a release does
            tool.export(tmp_path / "b", sample_images=20, skip_test_set=True, log=lambda *a: None)
    assert models.pretrained_metadata()["started_from"]["file"] == runs["b"]
    _, js = tool.export(tmp_path / "c", out_dir=tmp_path / "out", sample_images=20, log=lambda *a: None)
    meta = json.loads(js.read_text())
    b = meta["started_from"]
    a = b["started_from"]
    root = a["started_from"]
    assert b["file"] == runs["c"] and a["file"] == runs["b"]
    assert root["pretrained"] == "attention56_cifar10" and root["command"] == before["command"]
    assert root["metrics"] == before["metrics"]
    assert meta["epochs_in_all"] == before.get("epochs_in_all", before["epochs"]) + 3
    assert meta["steps_in_all"] == before.get("steps_in_all", before["steps"]) + 3


def test_export_refuses_another_network(tiny_run, tmp_path):
    arrays = load_arrays(tiny_run / "checkpoint.npz")
    config = json.loads(str(arrays["meta/config"]))
    config["nal"] = True
    arrays["meta/config"] = np.array(json.dumps(config))
    run = tmp_path / "nal-run"
    save_arrays(run / "checkpoint.npz", arrays)
    with pytest.raises(ValueError, match="residual=False"):
        _tool().export(run, out_dir=tmp_path / "out", sample_images=10, log=lambda *a: None)
    assert not (tmp_path / "out" / "attention56_cifar10.npz").exists()


def test_tool_command_line_error_is_one_line(tmp_path, capsys):
    assert _tool().main([str(tmp_path / "no-such-run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("export_pretrained: error: checkpoint not found") and "\n" not in err


# ------------------------------------------------------------------ the loader's errors


def test_missing_file_is_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setattr(pt, "PRETRAINED_DIR", tmp_path)
    assert not models.pretrained_available()
    for call in (lambda: models.attention56(pretrained=True), lambda: models.load_pretrained()):
        with pytest.raises(FileNotFoundError) as info:
            call()
        message = str(info.value)
        assert "\n" not in message and "attention56_cifar10.npz" in message
        assert "tools/export_pretrained.py" in message
    with pytest.raises(FileNotFoundError, match="metadata"):
        models.pretrained_metadata()


@pytest.mark.parametrize("kwargs, words", [
    ({"num_classes": 100}, "num_classes=100"),
    ({"attention": "spatial"}, "attention='spatial'"),
    ({"residual": False}, "residual=False"),
    ({"mask": "local_conv"}, "mask='local_conv'"),
    ({"mask_bn": True}, "mask_bn=True"),
    ({"pools": (2, 2, 1)}, "pools=(2, 2, 1)"),
    ({"t": 4}, "t=4"),
])
def test_incompatible_arguments(kwargs, words, monkeypatch, tmp_path):
    monkeypatch.setattr(pt, "PRETRAINED_DIR", tmp_path)  # checked before the file is looked for
    with pytest.raises(ValueError) as info:
        models.attention56(pretrained=True, **kwargs)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_matching_defaults_are_accepted(monkeypatch, tmp_path):
    monkeypatch.setattr(pt, "PRETRAINED_DIR", tmp_path)
    with pytest.raises(FileNotFoundError):  # past the argument check: only the file is missing
        models.attention56(pretrained=True, num_classes=10, attention="mixed", residual=True, seed=3)


@pytest.mark.parametrize("build", [
    lambda: models.attention92(pretrained=True),
    lambda: models.get_model("attention164", pretrained=True),
    lambda: models.attention56_imagenet(pretrained=True),
])
def test_other_networks_have_no_pretrained_weights(build):
    with pytest.raises(ValueError, match="only attention56"):
        build()


def test_unknown_name_and_unreadable_file(tmp_path):
    with pytest.raises(ValueError, match="available: attention56_cifar10"):
        models.load_pretrained("resnet164_cifar10")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="not a readable .npz file"):
        models.load_pretrained(path=bad)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(ValueError, match="not a pretrained miniran file"):
        models.load_pretrained(path=other)


# ------------------------------------------------------------------ the shipped file

shipped = pytest.mark.skipif(
    not models.pretrained_available(),
    reason=f"the trained weights are not in this copy ({pt.pretrained_path()} is missing; "
           "write them with `python tools/export_pretrained.py RUN_DIR`)",
)


@shipped
def test_shipped_model_reaches_its_recorded_accuracy():
    meta = models.pretrained_metadata()
    assert meta["sample_images"] == 1000, "the shipped threshold must come from all 1,000 embedded test images"
    net = models.attention56(pretrained=True)
    assert not net.training
    assert {v.dtype for v in net.state_dict().values()} == {np.dtype(np.float32)}
    x, y = data.load_cifar10_sample(train=False)
    info = net.pretrained_info
    result = evaluate(net, x, y, info["mean"], info["std"], batch_size=250)
    assert result["count"] == 1000
    assert result["acc"] >= meta["sample_accuracy_threshold"], (
        f"shipped model: {100 * result['acc']:.1f}% on the embedded test sample, below the recorded "
        f"threshold {100 * meta['sample_accuracy_threshold']:.1f}%"
    )


@shipped
def test_shipped_files_agree():
    meta = models.pretrained_metadata()
    path = models.pretrained_path()
    assert meta["file_bytes"] == path.stat().st_size
    assert meta["model"] == "attention56" and meta["metrics"] and meta["epochs"] == meta["metrics"][-1]["epoch"]
    with np.load(path, allow_pickle=False) as f:
        assert str(f["meta/weights_dtype"]) == meta["weights_dtype"]
        assert json.loads(str(f["meta/config"]))["data_dir"] in (None, "DIR")


@shipped
def test_shipped_json_chain_adds_up():
    """A file fine-tuned from earlier runs: every run of the chain has its command and metrics, and
    epochs_in_all / steps_in_all are the sums along the chain."""
    meta = models.pretrained_metadata()
    epochs, steps, record = 0, 0, meta
    while record:
        assert record["command"].startswith("miniran train ") and record["metrics"], record.get("file")
        assert record["metrics"][-1]["epoch"] == record["epochs"] and record["metrics"][-1]["step"] == record["steps"]
        assert "config" not in record or record["config"]["data_dir"] in (None, "DIR")
        epochs, steps = epochs + record["epochs"], steps + record["steps"]
        record = record.get("started_from")
    assert meta.get("epochs_in_all", meta["epochs"]) == epochs
    assert meta.get("steps_in_all", meta["steps"]) == steps


# ------------------------------------------------------------------ damaged copies of the shipped file
# Issue 17: load_pretrained checks its file as carefully as the checkpoint reader. Every damaged
# copy below gives one ValueError line that names the file (and the entry, where there is one).


@pytest.fixture(scope="module")
def shipped_arrays():
    if not models.pretrained_available():
        pytest.skip(f"the trained weights are not in this copy ({pt.pretrained_path()} is missing)")
    return load_arrays(pt.pretrained_path())


def _one_line_naming(info, path, *words):
    message = str(info.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    for word in words:
        assert word in message, message
    return message


def _weight(arrays):
    """The first parameter of the file (a convolution's weight)."""
    return next(k for k in arrays if k.startswith("model/") and k.endswith(".weight") and arrays[k].ndim == 4)


def _set(key, value):
    return lambda a: a.__setitem__(key, value(a) if callable(value) else value)


def _del(key):
    return lambda a: a.pop(key)


def _on_weight(change):
    return lambda a: a.__setitem__(_weight(a), change(a[_weight(a)]))


def _nan(w):
    w = w.copy()
    w.flat[0] = np.nan
    return w


def _inf(w):
    w = w.copy()
    w.flat[-1] = -np.inf
    return w


DAMAGES = {
    # the network the file says it holds
    "model resnet164": (_set("meta/model", np.array("resnet164")), "meta/model"),
    "model nope": (_set("meta/model", np.array("nope")), "meta/model"),
    "model attention92": (_set("meta/model", np.array("attention92")), "meta/model"),
    "model not a string": (_set("meta/model", np.int64(56)), "meta/model"),
    "num_classes 100": (_set("meta/num_classes", np.int64(100)), "meta/num_classes"),
    "num_classes text": (_set("meta/num_classes", np.array("ten")), "meta/num_classes"),
    "no num_classes": (_del("meta/num_classes"), "meta/num_classes"),
    "no model": (_del("meta/model"), "meta/model"),
    "format 2": (_set("meta/format", np.int64(2)), "meta/format"),
    "other name": (_set("meta/name", np.array("resnet164_cifar10")), "meta/name"),
    "weights_dtype int8": (_set("meta/weights_dtype", np.array("int8")), "meta/weights_dtype"),
    # the normalisation
    "no std": (_del("data/std"), "data/std"),
    "no mean": (_del("data/mean"), "data/mean"),
    "mean of shape (5,)": (_set("data/mean", np.zeros(5, np.float32)), "data/mean"),
    "std of zeros": (_set("data/std", lambda a: np.zeros_like(a["data/std"])), "data/std"),
    "negative std": (_set("data/std", lambda a: -np.ones_like(a["data/std"])), "data/std"),
    "NaN mean": (_set("data/mean", lambda a: np.full_like(a["data/mean"], np.nan)), "data/mean"),
    "mean as text": (_set("data/mean", lambda a: a["data/mean"].astype(str)), "data/mean"),
    # the class names
    "one class name": (_set("meta/classes", np.array(["airplane"])), "meta/classes"),
    "classes as numbers": (_set("meta/classes", np.arange(10)), "meta/classes"),
    # the weights
    "complex weights": (_on_weight(lambda w: w.astype(np.complex64) + 1j), "model/"),
    "weights as strings": (_on_weight(lambda w: w.astype(str)), "model/"),
    "integer weights": (_on_weight(lambda w: w.astype(np.int64)), "model/"),
    "NaN weight": (_on_weight(_nan), "model/"),
    "infinite weight": (_on_weight(_inf), "model/"),
    "weight of another shape": (_on_weight(lambda w: w[:1]), "model/"),
    "a weight missing": (lambda a: a.pop(_weight(a)), "model/"),
    "an extra weight": (_set("model/extra.weight", np.zeros(3, np.float16)), "model/extra.weight"),
    "no weights at all": (lambda a: [a.pop(k) for k in [k for k in a if k.startswith("model/")]], "model/"),
}


@pytest.mark.parametrize("case", list(DAMAGES))
def test_a_damaged_entry_is_refused_by_name(case, shipped_arrays, tmp_path):
    damage, entry = DAMAGES[case]
    arrays = dict(shipped_arrays)
    damage(arrays)
    path = tmp_path / "damaged.npz"
    save_arrays(path, arrays)
    if entry == "model/":  # the message names the weight itself
        entry = _weight(shipped_arrays) if case != "no weights at all" else "model/"
    with pytest.raises(ValueError) as info:
        models.load_pretrained(path=path)
    _one_line_naming(info, path, entry)


def test_an_intact_copy_still_loads(shipped_arrays, tmp_path):
    path = tmp_path / "copy.npz"
    save_arrays(path, shipped_arrays)
    net = models.load_pretrained(path=path)
    assert net.pretrained_info["classes"] == list(data.CIFAR10_CLASSES)


def _flip(offset):
    def damage(raw):
        raw = bytearray(raw)
        raw[offset(raw)] ^= 0xFF
        return bytes(raw)
    return damage


def _central_directory(raw):
    return raw.rindex(b"PK\x01\x02")  # the last entry of the zip's table of contents


FILE_DAMAGES = {
    "truncated to half": lambda raw: raw[: len(raw) // 2],
    "last byte cut": lambda raw: raw[:-1],
    "empty": lambda raw: b"",
    "a byte of the weights flipped": _flip(lambda raw: len(raw) // 2),
    "the compression method flipped": _flip(lambda raw: _central_directory(raw) + 10),
    "the zip version flipped": _flip(lambda raw: _central_directory(raw) + 6),
    "the directory offset flipped": _flip(lambda raw: len(raw) - 5),
}


@pytest.mark.parametrize("case", list(FILE_DAMAGES))
def test_a_truncated_or_flipped_file_is_one_clear_line(case, tmp_path):
    if not models.pretrained_available():
        pytest.skip(f"the trained weights are not in this copy ({pt.pretrained_path()} is missing)")
    path = tmp_path / "damaged.npz"
    path.write_bytes(FILE_DAMAGES[case](pt.pretrained_path().read_bytes()))
    with pytest.raises(ValueError) as info:
        models.load_pretrained(path=path)
    _one_line_naming(info, path)


def test_a_npy_file_is_one_clear_line(tmp_path):
    path = tmp_path / "weights.npy"
    np.save(path, np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError) as info:
        models.load_pretrained(path=path)
    _one_line_naming(info, path, ".npy")


def test_an_unknown_name_with_a_path_is_one_clear_line(tmp_path):
    path = tmp_path / "weights.npz"
    np.savez(path, x=np.zeros(3))
    with pytest.raises(ValueError) as info:
        models.load_pretrained(name="nope", path=path)
    assert "'nope'" in str(info.value) and "available: attention56_cifar10" in str(info.value)


@pytest.mark.parametrize("model", [m for m in models.MODELS if m != "attention56"])
def test_every_other_network_refuses_pretrained_in_one_line(model):
    """resnet164(pretrained=True) said "unexpected keyword argument"; every builder now names the argument."""
    assert "pretrained" in inspect.signature(models.MODELS[model]).parameters
    with pytest.raises(ValueError) as info:
        models.MODELS[model](pretrained=True)
    message = str(info.value)
    assert "only attention56(pretrained=True) ships with miniran" in message and "\n" not in message


def test_resnet164_still_builds_without_pretrained():
    assert models.resnet164(pretrained=False).fc.weight.shape == (10, 256)
