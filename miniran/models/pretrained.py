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
from miniran.nn import load_arrays
from miniran.nn.checks import first_few, holds, integer_problem, statistic_problem, text_problem, weights_problem

__all__ = ["PRETRAINED", "PRETRAINED_DIR", "check_pretrained_file", "load_pretrained", "pretrained_available",
           "pretrained_metadata", "pretrained_path"]

#: Folder of the shipped weights.
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"

#: Every pretrained network the package knows: the zoo name it is built with,
#: the number of classes, the shape of its input images (C, H, W), and the
#: options of its attention modules.
PRETRAINED = {
    "attention56_cifar10": {
        "model": "attention56",
        "num_classes": 10,
        "image_shape": (3, 32, 32),
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
        ValueError: an unknown name, or a file that is not a pretrained miniran
            network: unreadable (truncated, damaged, a ``.npy``), an entry
            missing, or an entry that does not fit ``name``'s network (see
            :func:`check_pretrained_file`). The message is one line that names
            the file and the entry.
    """
    _check_name(name)
    path = pretrained_path(name) if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights not found: {path} ({_HOW_TO_BUILD})")
    arrays = _read(path)
    check_pretrained_file(path, arrays, name)
    spec = PRETRAINED[name]
    model = _BUILDERS[spec["model"]](num_classes=spec["num_classes"], seed=0, **spec["options"])
    state = {k[len("model/"):]: v.astype(np.float32) for k, v in arrays.items() if k.startswith("model/")}
    _check_fit(path, state, model.state_dict(), spec["model"])
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


# --------------------------------------------------------------------------- checking the file

#: entries every pretrained file must have (besides its ``model/`` weights)
REQUIRED = ("meta/model", "meta/num_classes", "data/mean", "data/std")

WEIGHTS_DTYPES = ("float16", "float32")


def _read(path: Path) -> dict:
    """Every array of the file, or a one-line ValueError naming it (truncated, damaged, a ``.npy``...)."""
    try:
        return load_arrays(path)
    except ValueError as exc:
        raise ValueError(f"pretrained weights {exc}") from exc
    except OSError as exc:
        raise ValueError(f"pretrained weights {path} cannot be read ({exc.strerror or exc}): "
                         "truncated or damaged?") from exc


def _entry_error(path, entry: str, problem: str) -> ValueError:
    return ValueError(f"pretrained weights {path}: entry '{entry}' {problem}")


def check_pretrained_file(path, arrays: dict, name: str = "attention56_cifar10") -> None:
    """Raise a one-line ValueError naming ``path`` and the entry unless ``arrays`` (read from ``path``)
    are the weights of ``name``: every entry present, of the type and shape its use needs.

    The checks, in order: the required entries are there (``meta/model``,
    ``meta/num_classes``, ``data/mean``, ``data/std``, weights under
    ``model/``); the ``meta`` entries name ``name``'s network (its model, its
    number of classes, a format this miniran reads, one class name per
    output); ``data/mean`` and ``data/std`` are finite real numbers that
    broadcast to the images, the standard deviations above zero; every weight
    is finite floating-point numbers (no text, complex numbers, NaN or
    infinity). The names, number and shapes of the weights are checked against
    the network when it is built (:func:`load_pretrained`).
    """
    missing = [k for k in REQUIRED if k not in arrays]
    if "meta/model" in missing and "data/mean" in missing:
        raise ValueError(f"{path} is not a pretrained miniran file (no meta/model or data/mean entry)")
    if missing:
        raise ValueError(f"pretrained weights {path} lacks {', '.join(missing)}: damaged, or not written by "
                         "tools/export_pretrained.py")
    spec = PRETRAINED[name]
    _check_meta(path, arrays, name, spec)
    for entry, positive in (("data/mean", False), ("data/std", True)):
        problem = statistic_problem(arrays[entry], spec["image_shape"], positive=positive)
        if problem:
            raise _entry_error(path, entry, problem)
    weights = [k for k in arrays if k.startswith("model/")]
    if not weights:
        raise ValueError(f"pretrained weights {path} has no model/ entries: the weights are missing")
    for entry in weights:
        problem = weights_problem(arrays[entry])
        if problem:
            raise _entry_error(path, entry, problem)


def _check_meta(path, arrays: dict, name: str, spec: dict) -> None:
    """The ``meta/`` entries: the network, its outputs and the format are those of ``name``."""
    for entry in ("meta/model", "meta/name", "meta/weights_dtype"):
        problem = text_problem(arrays[entry]) if entry in arrays else None
        if problem:
            raise _entry_error(path, entry, problem)
    for entry in ("meta/num_classes", "meta/format"):
        problem = integer_problem(arrays[entry], minimum=1) if entry in arrays else None
        if problem:
            raise _entry_error(path, entry, problem)
    model = str(arrays["meta/model"])
    if model != spec["model"]:
        raise _entry_error(path, "meta/model", f"is {model!r}; expected {spec['model']!r} (the network of {name})")
    if "meta/name" in arrays and str(arrays["meta/name"]) != name:
        raise _entry_error(path, "meta/name", f"is {str(arrays['meta/name'])!r}; expected {name!r}")
    num_classes = int(arrays["meta/num_classes"])
    if num_classes != spec["num_classes"]:
        raise _entry_error(path, "meta/num_classes", f"is {num_classes}; {name} has {spec['num_classes']} classes")
    if "meta/format" in arrays and int(arrays["meta/format"]) != FORMAT_VERSION:
        raise _entry_error(path, "meta/format", f"is {int(arrays['meta/format'])}; this miniran reads format "
                                                f"{FORMAT_VERSION} (written by another version?)")
    dtype = str(arrays.get("meta/weights_dtype", "float32"))
    if dtype not in WEIGHTS_DTYPES:
        raise _entry_error(path, "meta/weights_dtype", f"is {dtype!r}; expected one of {', '.join(WEIGHTS_DTYPES)}")
    if "meta/classes" in arrays:
        classes = arrays["meta/classes"]
        if classes.dtype.kind != "U" or classes.ndim != 1:
            raise _entry_error(path, "meta/classes", f"{holds(classes)}; expected a list of class names")
        if len(classes) != num_classes:
            raise _entry_error(path, "meta/classes", f"names {len(classes)} class{'es' if len(classes) != 1 else ''}; "
                                                     f"expected {num_classes}, one per output (meta/num_classes)")


def _check_fit(path, state: dict, own: dict, model: str) -> None:
    """The weights are exactly those of the network ``own`` (names and shapes)."""
    missing = [f"model/{k}" for k in own if k not in state]
    if missing:
        raise ValueError(f"pretrained weights {path} lacks {first_few(missing)}: not the weights of {model}")
    unexpected = [f"model/{k}" for k in state if k not in own]
    if unexpected:
        raise ValueError(f"pretrained weights {path} has entries that {model} does not have: {first_few(unexpected)}")
    for key, target in own.items():
        if tuple(state[key].shape) != tuple(target.shape):
            raise _entry_error(path, f"model/{key}", f"has shape {tuple(state[key].shape)}; "
                                                     f"{model} expects {tuple(target.shape)}")
