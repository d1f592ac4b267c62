"""Trained weights shipped inside the package: ``attention56(pretrained=True)``.

No network access: the weights are a file of the package,
``miniran/models/pretrained/<name>.npz``, with ``<name>.json`` beside it (the
training command, the per-epoch metrics, the test accuracy in float32 and
after the float16 round trip, the date, the machine, the miniran version).
``tools/export_pretrained.py RUN_DIR`` writes both from a ``miniran train``
run; docs/models.md tells how the shipped model was trained.

Arrays in the ``.npz`` (read with ``np.load(path, allow_pickle=False)``):

``model/<name>``
    every parameter and buffer of the network: parameters in float16 (or
    float32, see ``meta/weights_dtype``), batch-norm running statistics in
    float32. :func:`load_pretrained` casts everything back to float32.
``data/mean``, ``data/std``
    the normalisation of the training set (``miniran.data.normalize``).
``meta/name``, ``meta/model``, ``meta/num_classes``, ``meta/weights_dtype``
    what the file holds.
``meta/config``
    the run's ``TrainConfig`` as JSON text.
``meta/classes``
    the class names, in label order.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from miniran import backend

__all__ = ["PRETRAINED", "PRETRAINED_DIR", "load_pretrained", "pretrained_available",
           "pretrained_metadata", "pretrained_path"]

#: Folder of the shipped weights.
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"

#: Every pretrained network the package knows: the zoo name it is built with,
#: the number of classes, and the options of its attention modules.
PRETRAINED = {
    "attention56_cifar10": {
        "model": "attention56",
        "num_classes": 10,
        "options": {"pools": (3, 2, 1), "p": 1, "t": 2, "r": 1, "attention": "mixed",
                    "residual": True, "mask": "encoder_decoder", "mask_bn": False},
    },
}

FORMAT_VERSION = 1

#: The zoo's network builders by name, the ones :func:`load_pretrained` builds
#: before it loads the weights. ``miniran.models.networks`` registers its
#: ``MODELS`` here when it is imported: networks imports this module (for
#: ``attention56(pretrained=True)``), so this module does not import networks.
_BUILDERS: dict = {}


def register_builders(builders: dict) -> None:
    """Make ``builders`` (name -> function building an untrained network) known to :func:`load_pretrained`."""
    _BUILDERS.update(builders)


def _check_name(name):
    if name not in PRETRAINED:
        raise ValueError(f"no pretrained weights named {name!r}; available: {', '.join(PRETRAINED)}")


def pretrained_path(name: str = "attention56_cifar10") -> Path:
    """Where the ``.npz`` of ``name`` lives (whether or not it is there)."""
    _check_name(name)
    return PRETRAINED_DIR / f"{name}.npz"


def pretrained_available(name: str = "attention56_cifar10") -> bool:
    """True when the weights of ``name`` ship with this copy of miniran."""
    return pretrained_path(name).is_file()


def pretrained_metadata(name: str = "attention56_cifar10") -> dict:
    """The ``.json`` written beside the weights: command, metrics, accuracy, date, machine."""
    path = pretrained_path(name).with_suffix(".json")
    if not path.is_file():
        raise FileNotFoundError(f"pretrained metadata not found: {path} ({_HOW_TO_BUILD})")
    with open(path) as f:
        return json.load(f)


_HOW_TO_BUILD = ("this copy of miniran ships without them; write them from a training run with "
                 "`python tools/export_pretrained.py RUN_DIR`")


def check_pretrained_arguments(model: str, num_classes: int, options: dict) -> str:
    """The pretrained name for ``model(pretrained=True, num_classes=..., **options)``,
    or a one-line ValueError naming the argument that does not fit the shipped weights."""
    names = [n for n, spec in PRETRAINED.items() if spec["model"] == model]
    if not names:
        raise ValueError(f"no pretrained weights for {model}; available: "
                         f"{', '.join(spec['model'] for spec in PRETRAINED.values())}")
    name = names[0]
    spec = PRETRAINED[name]
    if num_classes != spec["num_classes"]:
        raise ValueError(f"pretrained=True gives the {name} network with {spec['num_classes']} classes; "
                         f"num_classes={num_classes} is not possible (train your own with `miniran train`)")
    for key, value in options.items():
        if key not in spec["options"]:
            raise ValueError(f"pretrained=True does not take the option {key}={value!r}")
        expected = spec["options"][key]
        if (tuple(value) if isinstance(value, (list, tuple)) else value) != expected:
            raise ValueError(f"pretrained=True gives the {name} network, trained with {key}={expected!r}; "
                             f"{key}={value!r} is another network (train it with `miniran train`)")
    return name


def load_pretrained(name: str = "attention56_cifar10", device: str = "cpu", path=None):
    """The shipped trained network, in evaluation mode, with float32 weights.

    Args:
        name: one of :data:`PRETRAINED` (``"attention56_cifar10"``).
        device: ``"cpu"`` or ``"gpu"``.
        path: another file in the same format (default: the one in the package,
            :func:`pretrained_path`).

    Returns:
        The network. ``model.pretrained_info`` holds what is needed to feed it:
        ``mean`` and ``std`` (float32 NumPy arrays for
        ``miniran.data.normalize(uint8_images, mean, std)``), ``classes``,
        ``name``, ``path`` and ``weights_dtype`` (how the file stores them).

    Raises:
        FileNotFoundError: the weights are not in this copy of the package.
        ValueError: an unknown name, or a file that is not a pretrained miniran network.
    """
    path = pretrained_path(name) if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights not found: {path} ({_HOW_TO_BUILD})")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path} is not a readable pretrained miniran file: {exc}") from exc
    if "meta/model" not in arrays or "data/mean" not in arrays:
        raise ValueError(f"{path} is not a pretrained miniran file (no meta/model or data/mean entry)")
    spec = PRETRAINED[name]
    model = _BUILDERS[str(arrays["meta/model"])](num_classes=int(arrays["meta/num_classes"]), seed=0,
                                                **spec["options"])
    state = {k[len("model/"):]: (v.astype(np.float32) if v.dtype.kind == "f" else v)
             for k, v in arrays.items() if k.startswith("model/")}
    model.load_state_dict(state)
    model.eval()
    model.to(backend.normalize_device(device))
    model.pretrained_info = {
        "name": name,
        "path": str(path),
        "mean": arrays["data/mean"].astype(np.float32),
        "std": arrays["data/std"].astype(np.float32),
        "classes": [str(c) for c in arrays["meta/classes"]] if "meta/classes" in arrays else None,
        "weights_dtype": str(arrays.get("meta/weights_dtype", "float32")),
    }
    return model
