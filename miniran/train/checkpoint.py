"""Checkpoints: one ``.npz`` file (no pickle), written atomically.

Layout of the arrays in the file:

* ``model/<name>``: every parameter and buffer of the model;
* ``optim/<name>``: the SGD state (learning rate, momentum buffers, ...);
* ``schedule/<name>``, ``loader/<name>``: the schedule and the training
  loader's position and random state, so a resumed run draws the same batches;
* ``data/mean``, ``data/std``: the normalisation statistics of the training set;
* ``meta/step``, ``meta/epoch``, ``meta/config``: progress and the run's
  configuration as JSON text;
* ``epoch/loss_sum``, ``epoch/correct``, ``epoch/seen``, ``epoch/train_seconds``
  (only in a checkpoint written in the middle of an epoch): the epoch's
  training sums so far, so a resumed epoch reports the same averages as an
  uninterrupted one.

:func:`miniran.nn.save_arrays` writes to a temporary file, fsyncs it and renames
it over the old checkpoint (:func:`miniran._io.atomic_write`), so an
interrupted write never leaves a broken file. A damaged or foreign file given
to :class:`Checkpoint` raises a ValueError that names it, and so does one that
contradicts itself (a negative step, a missing optimiser entry, a loader
position outside its epoch, a step the loader disagrees with, NaN or infinite
weights): the message names the file and the entry.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from miniran import backend
from miniran.nn import load_arrays, save_arrays


def _flatten(prefix, mapping):
    out = {}
    for key, value in mapping.items():
        if isinstance(value, str):
            value = np.array(value)  # unicode array, readable without pickle
        out[f"{prefix}/{key}"] = backend.to_numpy(np.asarray(value) if np.isscalar(value) else value)
    return out


def _section(arrays, prefix):
    start = prefix + "/"
    return {k[len(start):]: v for k, v in arrays.items() if k.startswith(start)}


def save_checkpoint(path, *, model, optimizer, schedule, loader, step, epoch, config, mean, std, epoch_sums=None):
    """Write the run's state to ``path`` atomically.

    ``epoch_sums`` (a checkpoint in the middle of an epoch): the epoch's
    ``loss_sum``, ``correct``, ``seen`` and ``train_seconds`` so far.
    """
    arrays = {}
    arrays.update(_flatten("model", model.state_dict()))
    arrays.update(_flatten("optim", optimizer.state_dict()))
    arrays.update(_flatten("schedule", schedule.state_dict()))
    arrays.update(_flatten("loader", loader.state_dict()))
    arrays["data/mean"] = backend.to_numpy(mean)
    arrays["data/std"] = backend.to_numpy(std)
    arrays["meta/step"] = np.int64(step)
    arrays["meta/epoch"] = np.int64(epoch)
    arrays["meta/config"] = np.array(json.dumps(config, sort_keys=True))
    if epoch_sums is not None:
        arrays["epoch/loss_sum"] = np.float64(epoch_sums["loss_sum"])
        arrays["epoch/correct"] = np.int64(epoch_sums["correct"])
        arrays["epoch/seen"] = np.int64(epoch_sums["seen"])
        arrays["epoch/train_seconds"] = np.float64(epoch_sums["train_seconds"])
    save_arrays(path, arrays)


#: entries every checkpoint must have
REQUIRED = ("meta/config", "meta/step", "meta/epoch", "data/mean", "data/std")

#: the single values of a checkpoint, and what each must be
SCALARS = {
    "meta/step": "count", "meta/epoch": "count",
    "optim/lr": "number", "optim/momentum": "number", "optim/nesterov": "bool",
    "optim/weight_decay": "number", "optim/steps": "count",
    "schedule/last_step": "count", "schedule/base_lr": "number",
    "loader/epoch": "count", "loader/position": "count", "loader/rng_state": "text",
    "loader/num_samples": "size", "loader/batch_size": "size",
}
#: the training sums of a checkpoint written in the middle of an epoch: all of them, or none
EPOCH_SUMS = {"epoch/loss_sum": "number", "epoch/correct": "count", "epoch/seen": "count",
              "epoch/train_seconds": "number"}
_KINDS = {"count": ("iu", "a whole number"), "size": ("iu", "a whole number"), "number": ("iuf", "a number"),
          "bool": ("biu", "true or false"), "text": ("U", "a text")}


def _check_scalars(path, arrays):
    """Every single value present, of its kind, and in its range (ValueError naming the entry)."""
    missing = [k for k in dict.fromkeys(REQUIRED + tuple(SCALARS)) if k not in arrays]
    if "meta/config" in missing:
        raise ValueError(f"{path} has no 'meta/config' entry: not a miniran training checkpoint")
    if missing:
        raise ValueError(f"checkpoint {path} lacks {', '.join(missing)}: damaged, or not written by miniran train")
    present = [k for k in EPOCH_SUMS if k in arrays]
    if present and len(present) < len(EPOCH_SUMS):
        absent = [k for k in EPOCH_SUMS if k not in arrays]
        raise ValueError(f"checkpoint {path} has {', '.join(present)} but lacks {', '.join(absent)}: the "
                         f"epoch's training sums come together; damaged, or not written by miniran train")
    for key, what in {**SCALARS, **(EPOCH_SUMS if present else {})}.items():
        value = arrays[key]
        kinds, expected = _KINDS[what]
        if value.shape != () or value.dtype.kind not in kinds:
            raise ValueError(f"checkpoint {path}: entry '{key}' should be {expected}, got an array of shape "
                             f"{value.shape} ({value.dtype}): damaged, or not written by miniran train")
        if what == "number" and not math.isfinite(float(value)):
            raise ValueError(f"checkpoint {path}: entry '{key}' is {float(value)}, expected a finite number")
        if what in ("count", "size") and int(value) < (1 if what == "size" else 0):
            raise ValueError(f"checkpoint {path}: entry '{key}' is {int(value)}, expected a whole number "
                             f">= {1 if what == 'size' else 0}: the checkpoint contradicts itself")
        if key.startswith("epoch/") and float(value) < 0:  # sums of losses, counts and seconds
            raise ValueError(f"checkpoint {path}: entry '{key}' is {float(value)}, expected a number >= 0: "
                             f"the checkpoint contradicts itself")


def _check_progress(path, arrays):
    """The step, the loader's epoch and position, and the epoch length must tell the same story."""
    per_epoch = -(-int(arrays["loader/num_samples"]) // int(arrays["loader/batch_size"]))
    epoch, position, step = (int(arrays[k]) for k in ("loader/epoch", "loader/position", "meta/step"))
    if position > per_epoch:
        raise ValueError(f"checkpoint {path}: entry 'loader/position' is {position}, outside its epoch of "
                         f"{per_epoch} batches (0..{per_epoch}): the checkpoint contradicts itself")
    if step != epoch * per_epoch + position:
        raise ValueError(f"checkpoint {path}: entry 'meta/step' is {step}, but its loader entries say "
                         f"{epoch * per_epoch + position} steps were taken (loader/epoch {epoch}, loader/position "
                         f"{position}, {per_epoch} batches per epoch): the checkpoint contradicts itself")
    if "epoch/seen" in arrays:
        seen, correct = int(arrays["epoch/seen"]), int(arrays["epoch/correct"])
        most = position * int(arrays["loader/batch_size"])
        if not 0 < position < per_epoch or seen > most or correct > seen:
            raise ValueError(f"checkpoint {path}: its epoch sums (epoch/seen {seen}, epoch/correct {correct}) do "
                             f"not fit {position} of {per_epoch} batches of at most {arrays['loader/batch_size']} "
                             f"images: the checkpoint contradicts itself")


def _check_values(path, arrays):
    """No NaN or infinity in the weights, the optimiser state or the statistics; a positive std."""
    for key, value in arrays.items():
        if key.split("/")[0] in ("model", "optim", "data") and value.dtype.kind == "c":
            raise ValueError(f"checkpoint {path}: entry '{key}' holds complex numbers; expected real numbers "
                             f"(loading it would drop the imaginary parts silently)")
        if key.split("/")[0] in ("model", "optim", "data") and value.dtype.kind == "f" \
                and not np.isfinite(value).all():
            raise ValueError(f"checkpoint {path}: entry '{key}' holds NaN or infinite values: the run had "
                             f"diverged or the file is damaged, so it is not resumed or evaluated")
    if arrays["data/std"].dtype.kind in "iuf" and (arrays["data/std"] <= 0).any():
        raise ValueError(f"checkpoint {path}: entry 'data/std' has values <= 0: images cannot be divided by it")


class Checkpoint:
    """A loaded checkpoint: ``config``, ``step``, ``epoch`` and the state sections."""

    def __init__(self, path):
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"checkpoint not found: {path}")
        try:
            arrays = load_arrays(path)
        except ValueError as exc:
            raise ValueError(f"checkpoint {exc}") from exc
        except OSError as exc:
            raise ValueError(f"checkpoint {path} cannot be read: {exc.strerror or exc}") from exc
        _check_scalars(path, arrays)
        _check_progress(path, arrays)
        _check_values(path, arrays)
        self.path = path
        try:
            self.config = json.loads(str(arrays["meta/config"]))
            self.step = int(arrays["meta/step"])
            self.epoch = int(arrays["meta/epoch"])
        except (ValueError, TypeError) as exc:
            raise ValueError(f"checkpoint {path}: unreadable 'meta' entries ({exc})") from exc
        if not isinstance(self.config, dict):
            raise ValueError(f"checkpoint {path}: 'meta/config' is not a JSON object of settings")
        self.model = _section(arrays, "model")
        self.optim = _section(arrays, "optim")
        self.schedule = {k: v.item() for k, v in _section(arrays, "schedule").items()}
        self.loader = {k: (str(v) if v.dtype.kind == "U" else v) for k, v in _section(arrays, "loader").items()}
        self.mean = arrays["data/mean"]
        self.std = arrays["data/std"]
        #: the training sums of the epoch in progress (a checkpoint written in its middle), else None
        self.epoch_sums = None
        if "epoch/seen" in arrays:
            self.epoch_sums = {"loss_sum": float(arrays["epoch/loss_sum"]), "correct": int(arrays["epoch/correct"]),
                               "seen": int(arrays["epoch/seen"]),
                               "train_seconds": float(arrays["epoch/train_seconds"])}
