#!/usr/bin/env python3
"""Turn a ``miniran train`` run into the pretrained weights shipped in the package.

    python tools/export_pretrained.py RUN_DIR [--data-dir DIR] [--command "miniran train ..."]

reads ``RUN_DIR/checkpoint.npz`` and ``RUN_DIR/metrics.jsonl`` and writes, in
``miniran/models/pretrained/`` (or ``--out-dir``):

* ``attention56_cifar10.npz``: the weights (parameters in float16, batch-norm
  running statistics in float32), the normalisation statistics of the
  training set and the run's configuration; plain ``np.savez``, readable with
  ``allow_pickle=False``. If the float16 round trip costs more than
  ``--max-drop`` accuracy points on the test set, the parameters are stored
  in float32 instead (the json says which).
* ``attention56_cifar10.json``: the training command, the metrics rows, the
  test accuracy in float32 and after the float16 round trip (on the run's
  test set and on the 1,000 test images embedded in the package), the
  threshold ``tests/test_pretrained.py`` checks, the dates, the machine, the
  miniran version and the number of epochs.

The run must be an Attention-56 with the default module options (mixed
attention, attention residual learning, encoder-decoder mask, no mask BN)
trained on a 10-class dataset. The test set of the run (``--dataset cifar10``)
is read from ``--data-dir``, else from the run's own ``--data-dir``, else
``$MINIRAN_DATA``/the cache; nothing is downloaded. ``--skip-test-set``
evaluates on the embedded sample only.

The float32 accuracy on the test set is the last row of ``metrics.jsonl``
(``miniran train`` evaluated that very checkpoint on all the test images;
``--reevaluate`` measures it again); the float16 network is evaluated here.
The 10,000 test images take several minutes on two CPU cores (``--device
gpu`` is faster); the 1,000 embedded ones about a minute.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import miniran  # noqa: E402
from miniran import backend, data  # noqa: E402
from miniran.models import pretrained as pt  # noqa: E402
from miniran.nn import save_arrays  # noqa: E402
from miniran.train.checkpoint import Checkpoint  # noqa: E402
from miniran.train.plot import read_metrics  # noqa: E402
from miniran.train.trainer import TrainConfig, build_model, evaluate  # noqa: E402

NAME = "attention56_cifar10"

# TrainConfig field -> command-line flag (booleans: the flag that flips the default)
_FLAGS = {
    "model": "--model", "dataset": "--dataset", "data_dir": "--data-dir", "epochs": "--epochs",
    "max_steps": "--max-steps", "subset": "--subset", "test_subset": "--test-subset",
    "batch_size": "--batch-size", "lr": "--lr", "schedule": "--schedule",
    "weight_decay": "--weight-decay", "label_smoothing": "--label-smoothing", "init": "--init",
    "attention": "--attention", "nal": "--nal", "mask": "--mask",
    "mask_bn": "--mask-bn", "label_noise": "--label-noise", "normalize": "--normalize",
    "augment": "--no-augment", "device": "--device", "seed": "--seed", "out": "--out",
}
_ALWAYS = ("model", "dataset", "data_dir", "epochs", "max_steps", "batch_size", "lr", "schedule",
           "seed", "device", "out")


def command_from_config(config: dict) -> str:
    """The ``miniran train`` command of a run's configuration: the main options always,
    the others when they differ from their default."""
    default = dataclasses.asdict(TrainConfig())
    words = ["miniran", "train"]
    for key, flag in _FLAGS.items():
        value = config.get(key, default[key])
        if isinstance(default[key], bool):
            if value != default[key]:
                words.append(flag)
        elif value is not None and (key in _ALWAYS or value != default[key]):
            words += [flag, str(value)]
    return " ".join(shlex.quote(w) for w in words)


def public_config(config: dict) -> dict:
    """A run's configuration as the shipped files record it: the data folder, a path on the machine
    that trained it and meaningless elsewhere, becomes ``DIR`` (as in the documented commands)."""
    return {**config, "data_dir": "DIR"} if config.get("data_dir") else dict(config)


def seconds_of(rows) -> float:
    """The training time of a run: the sum of its metrics rows' seconds."""
    return round(sum(r.get("seconds", 0.0) for r in rows), 1)


def half_state(state: dict) -> dict:
    """Parameters in float16, batch-norm running statistics (and anything else) in float32."""
    out = {}
    for key, value in state.items():
        value = np.asarray(backend.to_numpy(value))
        if value.dtype.kind == "f":
            is_stat = key.endswith("running_mean") or key.endswith("running_var")
            value = value.astype(np.float32 if is_stat else np.float16)
        out[key] = value
    return out


def _machine(config: TrainConfig) -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "numpy": np.__version__, "cpu": cpu, "cpu_count": os.cpu_count(),
            "training_device": config.device or "cpu"}
    if (config.device or "cpu") == "gpu" and miniran.cuda_available():
        cp = backend.cupy_module()
        props = cp.cuda.runtime.getDeviceProperties(0)
        info["gpu"] = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return info


def started_from(init, _seen=()) -> dict | None:
    """What a run given ``--init`` started from, back to the first run of the chain.

    A pretrained name: the summary of those weights' own json (read before an
    export replaces it). A run's ``checkpoint.npz``: its command, epochs, steps
    and metrics, and, under ``started_from``, what that run started from in
    turn. Any other file (an exported weights file): its path only. A name
    whose file was exported again after a run of this chain trained from it:
    what that file's json kept for the run (see ``_record_of_a_run_seen``).
    """
    if init is None:
        return None
    if init not in pt.PRETRAINED:
        record = {"file": init}
        try:
            ckpt = Checkpoint(init)
        except (OSError, ValueError):  # an exported weights file, or a file that is gone
            return record
        here = os.path.realpath(init)
        if here in _seen:
            return {**record, "note": "this file appears twice in the chain; not followed further"}
        try:
            rows = [r for r in read_metrics(os.path.dirname(init) or ".") if r["step"] <= ckpt.step]
        except (OSError, ValueError):
            rows = []
        record.update(command=command_from_config(public_config(ckpt.config)), epochs=ckpt.epoch, steps=ckpt.step)
        if rows:
            record.update(test_accuracy=rows[-1].get("test_acc"),
                          training_seconds=seconds_of(rows), metrics=rows)
        record["started_from"] = started_from(ckpt.config.get("init"), _seen + (here,))
        return record
    try:
        before = pt.pretrained_metadata(init)
    except (OSError, ValueError):
        return {"pretrained": init, "note": "its json could not be read"}
    replaced = _record_of_a_run_seen(before, _seen)
    if replaced is not None:
        # The shipped file was exported again after this chain's run trained from it: its
        # json now describes a later run of this same chain. What the run started from is
        # what that json recorded for it, when the file it had been given was still shipped.
        return replaced.get("started_from")
    keys = ("command", "epochs", "epochs_in_all", "steps", "steps_in_all", "training_seconds", "test_accuracy", "trained_until",
            "started_from", "metrics")
    return {"pretrained": init, **{k: before[k] for k in keys if k in before}}


def _record_of_a_run_seen(meta, seen) -> dict | None:
    """The record, along ``meta``'s ``started_from`` chain, of a run checkpoint in ``seen``."""
    record = meta.get("started_from")
    while isinstance(record, dict):
        if "file" in record and os.path.realpath(record["file"]) in seen:
            return record
        record = record.get("started_from")
    return None


def trained_before(origin, what="epochs") -> int:
    """The epochs (or steps) trained before a run, summed along its ``started_from`` chain."""
    if not origin:
        return 0
    if "pretrained" in origin:  # a shipped file already counts everything before it
        return int(origin.get(f"{what}_in_all", origin.get(what)) or 0)
    return int(origin.get(what) or 0) + trained_before(origin.get("started_from"), what)


def _evaluate(model, images, labels, mean, std, device):
    t0 = time.perf_counter()
    result = evaluate(model, images, labels, mean, std, batch_size=250, device=device, num_classes=10)
    return {"accuracy": result["acc"], "loss": result["loss"], "images": result["count"],
            "seconds": round(time.perf_counter() - t0, 1)}


def export(run_dir, out_dir=None, data_dir=None, command=None, max_drop=0.2, skip_test_set=False,
           device="cpu", reevaluate=False, sample_images=None, log=print) -> tuple[Path, Path]:
    """Write ``NAME.npz`` and ``NAME.json`` from a run; returns their paths."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else pt.PRETRAINED_DIR
    ckpt = Checkpoint(run_dir / "checkpoint.npz")
    config = TrainConfig(**ckpt.config)
    recorded = public_config(ckpt.config)  # what the shipped files say of the run
    origin = started_from(config.init)  # before this export replaces the weights it names
    if data.num_classes(config.dataset) != 10:
        raise ValueError(f"the run was trained on {config.dataset}; {NAME} needs a 10-class dataset")
    options = {"attention": config.attention, "residual": not config.nal, "mask": config.mask,
               "mask_bn": config.mask_bn}
    pt.check_pretrained_arguments(config.model, 10, options)
    if config.dataset != "cifar10":
        log(f"note: this run was trained on {config.dataset}, not the full cifar10 (fine for a test export)")

    model = build_model(config, 10)
    model.load_state_dict(ckpt.model)
    model.eval()
    stored = half_state(model.state_dict())
    rounded = build_model(config, 10)
    rounded.load_state_dict({k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in stored.items()})
    rounded.eval()
    if device == "gpu":
        model.to("gpu")
        rounded.to("gpu")

    # the accuracies: the run's test set, and the 1,000 test images embedded in the package
    sets = {}
    sample_x, sample_y = data.load_cifar10_sample(train=False)
    what = "the 1,000 CIFAR-10 test images embedded in miniran"
    if sample_images is not None and sample_images < len(sample_y):  # quick exports (the tests)
        idx = data.balanced_subset(sample_y, sample_images, seed=0)
        sample_x, sample_y = sample_x[idx], sample_y[idx]
        what = f"{sample_images} of the CIFAR-10 test images embedded in miniran"
    sets["embedded_sample"] = (sample_x, sample_y, what)
    if config.dataset != "cifar10-sample" and not skip_test_set:
        root = data_dir if data_dir is not None else config.data_dir
        try:
            x, y = data.load_dataset(config.dataset, root, train=False, download=False)
        except data.DatasetNotFoundError as exc:
            raise FileNotFoundError(f"the test set of {config.dataset} was not found ({exc}); pass "
                                    f"--data-dir DIR, or --skip-test-set to use the embedded sample only") from exc
        sets["test_set"] = (x, y, f"the {len(y):,} test images of {config.dataset}")
    metrics = [r for r in read_metrics(run_dir) if r["step"] <= ckpt.step]
    accuracy = {}
    for key, (x, y, what) in sets.items():
        last = metrics[-1] if metrics else {}
        if (key == "test_set" and not reevaluate and last.get("step") == ckpt.step
                and last.get("test_images") == len(y)):
            # miniran train evaluated exactly this network on exactly these images after its last epoch
            r32 = {"accuracy": last["test_acc"], "loss": last["test_loss"], "images": len(y),
                   "source": "metrics.jsonl, last row (miniran train's evaluation of this checkpoint)"}
        else:
            r32 = _evaluate(model, x, y, ckpt.mean, ckpt.std, device)
        r16 = _evaluate(rounded, x, y, ckpt.mean, ckpt.std, device)
        accuracy[key] = {"images": what, "float32": r32, "float16_round_trip": r16}
        log(f"{what}: accuracy {100 * r32['accuracy']:.2f}% in float32, "
            f"{100 * r16['accuracy']:.2f}% after the float16 round trip")
    main = "test_set" if "test_set" in accuracy else "embedded_sample"
    drop = 100 * (accuracy[main]["float32"]["accuracy"] - accuracy[main]["float16_round_trip"]["accuracy"])
    use_half = drop <= max_drop
    if not use_half:
        log(f"float16 costs {drop:.2f} points (> --max-drop {max_drop}): storing the parameters in float32")
        stored = {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in stored.items()}
    shipped = "float16_round_trip" if use_half else "float32"
    sample_acc = accuracy["embedded_sample"][shipped]["accuracy"]

    arrays = {f"model/{k}": v for k, v in stored.items()}
    arrays["data/mean"] = np.asarray(ckpt.mean, np.float32)
    arrays["data/std"] = np.asarray(ckpt.std, np.float32)
    arrays["meta/name"] = np.array(NAME)
    arrays["meta/model"] = np.array(config.model)
    arrays["meta/num_classes"] = np.int64(10)
    arrays["meta/weights_dtype"] = np.array("float16" if use_half else "float32")
    arrays["meta/format"] = np.int64(pt.FORMAT_VERSION)
    arrays["meta/config"] = np.array(json.dumps(recorded, sort_keys=True))
    arrays["meta/classes"] = np.array(data.class_names(config.dataset))
    npz_path = out_dir / f"{NAME}.npz"
    save_arrays(npz_path, arrays)

    # the written file must load through the package's loader and give the network just evaluated
    loaded = pt.load_pretrained(NAME, device=device, path=npz_path)
    probe = data.normalize(sample_x[:8], ckpt.mean, ckpt.std)
    with miniran.no_grad():
        a = backend.to_numpy(loaded(miniran.Tensor(backend.to_device(probe, device))).data)
        b = backend.to_numpy((rounded if use_half else model)(miniran.Tensor(backend.to_device(probe, device))).data)
    if not np.allclose(a, b, rtol=1e-4, atol=1e-4):
        raise RuntimeError(f"{npz_path} does not load back to the exported network (largest difference "
                           f"{np.abs(a - b).max():.3g})")

    finished = datetime.datetime.fromtimestamp((run_dir / "checkpoint.npz").stat().st_mtime, datetime.timezone.utc)
    meta = {
        "name": NAME,
        "model": config.model,
        "dataset": config.dataset,
        "command": command or command_from_config(recorded),
        "command_source": "given with --command" if command else "rebuilt from the checkpoint's configuration",
        "config": recorded,
        "epochs": ckpt.epoch,
        "steps": ckpt.step,
        "started_from": origin,
        "epochs_in_all": ckpt.epoch + trained_before(origin, "epochs"),
        "steps_in_all": ckpt.step + trained_before(origin, "steps"),
        "training_seconds": seconds_of(metrics),
        "metrics": metrics,
        "accuracy": accuracy,
        "weights_dtype": "float16" if use_half else "float32",
        "float16_rule": f"parameters in float16 when the round trip costs at most {max_drop} points on the "
                        f"{'test set' if main == 'test_set' else 'embedded sample'}; batch-norm statistics in float32",
        "test_accuracy": accuracy[main][shipped]["accuracy"],
        "test_accuracy_float32": accuracy[main]["float32"]["accuracy"],
        "test_accuracy_float16": accuracy[main]["float16_round_trip"]["accuracy"],
        "sample_images": int(len(sample_y)),
        "sample_accuracy": sample_acc,
        "sample_accuracy_threshold": round(sample_acc - 0.01, 4),
        "parameters": int(sum(v.size for k, v in stored.items() if "running_" not in k)),
        "file_bytes": npz_path.stat().st_size,
        "trained_until": finished.isoformat(timespec="seconds"),
        "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(config),
        "miniran_version": miniran.__version__,
        "format": pt.FORMAT_VERSION,
    }
    json_path = out_dir / f"{NAME}.json"
    tmp = json_path.with_suffix(".json.tmp")
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    os.replace(tmp, json_path)
    log(f"wrote {npz_path} ({npz_path.stat().st_size / 1e6:.2f} MB, {meta['weights_dtype']} parameters) "
        f"and {json_path}")
    log(f"epoch {ckpt.epoch}, step {ckpt.step}; embedded-sample threshold for the tests: "
        f"{100 * meta['sample_accuracy_threshold']:.1f}%")
    return npz_path, json_path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="output folder of `miniran train` (checkpoint.npz, metrics.jsonl)")
    parser.add_argument("--out-dir", default=None, help=f"where to write (default {pt.PRETRAINED_DIR})")
    parser.add_argument("--data-dir", default=None, help="folder holding the test set (default: the run's)")
    parser.add_argument("--command", default=None,
                        help="the exact training command to record (default: rebuilt from the checkpoint)")
    parser.add_argument("--max-drop", type=float, default=0.2,
                        help="largest accuracy loss, in points, accepted for float16 parameters (default 0.2)")
    parser.add_argument("--skip-test-set", action="store_true", help="evaluate on the embedded sample only")
    parser.add_argument("--sample-images", type=int, default=None,
                        help="use only N of the 1,000 embedded test images (quick trial exports only: "
                             "the shipped file's threshold must come from all 1,000)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="where to evaluate")
    parser.add_argument("--reevaluate", action="store_true",
                        help="evaluate the float32 network on the test set again instead of taking "
                             "the last row of metrics.jsonl")
    args = parser.parse_args(argv)
    try:
        export(args.run_dir, args.out_dir, args.data_dir, args.command, args.max_drop,
               args.skip_test_set, args.device, args.reevaluate, args.sample_images)
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as exc:
        print(f"export_pretrained: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
