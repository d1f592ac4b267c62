"""Checkpoints: one ``.npz`` file (no pickle), written atomically.

Layout of the arrays in the file:

* ``model/<name>``: every parameter and buffer of the model;
* ``optim/<name>``: the SGD state (learning rate, momentum buffers, ...);
* ``schedule/<name>``, ``loader/<name>``: the schedule and the training
  loader's position and random state, so a resumed run draws the same batches;
* ``data/mean``, ``data/std``: the normalisation statistics of the training set;
* ``meta/step``, ``meta/epoch``, ``meta/config``: progress and the run's
  configuration as JSON text.

:func:`miniran.nn.save_arrays` writes to a temporary file, fsyncs it and renames
it over the old checkpoint (:func:`miniran._io.atomic_write`), so an
interrupted write never leaves a broken file. A damaged or foreign file given
to :class:`Checkpoint` raises a ValueError that names it.
"""

from __future__ import annotations

import json
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


def save_checkpoint(path, *, model, optimizer, schedule, loader, step, epoch, config, mean, std):
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
    save_arrays(path, arrays)


#: entries every checkpoint must have (the state sections may be empty)
REQUIRED = ("meta/config", "meta/step", "meta/epoch", "data/mean", "data/std")


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
        missing = [k for k in REQUIRED if k not in arrays]
        if "meta/config" in missing:
            raise ValueError(f"{path} has no 'meta/config' entry: not a miniran training checkpoint")
        if missing:
            raise ValueError(f"checkpoint {path} lacks {', '.join(missing)}: damaged, or not written by miniran train")
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
