"""Module, Parameter and Sequential: the containers every layer and model builds on.

A :class:`Module` registers, in the order they are assigned, the
:class:`Parameter` objects, *buffers* (non-trainable arrays such as batch-norm
running statistics) and sub-modules set as its attributes. Everything else
follows from that ordered registry: ``parameters()``, ``named_parameters()``,
``state_dict()``, moving to the GPU, saving to ``.npz``.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections import OrderedDict

import numpy as np

from miniran import backend
from miniran._io import atomic_write
from miniran.autograd import Tensor


class Parameter(Tensor):
    """A trainable tensor: ``requires_grad`` is True and modules register it."""

    def __init__(self, data, requires_grad=True, name=None):
        super().__init__(data, requires_grad=requires_grad, name=name)

    def __repr__(self):
        return "Parameter" + super().__repr__()[len("Tensor"):]


class Module:
    """Base class of layers and models.

    Subclasses assign parameters, buffers (via :meth:`register_buffer`) and
    sub-modules as attributes in ``__init__`` and implement ``forward``.
    Calling the module runs ``forward`` and then any forward hooks.
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_forward_hooks", OrderedDict())
        object.__setattr__(self, "training", True)

    # -- registration
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__() first")
        for registry in (self._parameters, self._buffers, self._modules):
            registry.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        elif name in self.__dict__.get("_buffer_names", ()):
            self._buffers[name] = value
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        for registry in (self._parameters, self._buffers, self._modules):
            registry.pop(name, None)
        object.__delattr__(self, name)

    def register_buffer(self, name, array):
        """Register a raw array saved in the state dict but not trained (e.g. running mean)."""
        names = self.__dict__.setdefault("_buffer_names", set())
        names.add(name)
        setattr(self, name, array)

    # -- calling
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def __call__(self, *args, **kwargs):
        out = self.forward(*args, **kwargs)
        for hook in list(self._forward_hooks.values()):
            result = hook(self, args, out)
            if result is not None:
                out = result
        return out

    def register_forward_hook(self, hook):
        """Call ``hook(module, inputs, output)`` after every forward.

        Returns a handle whose ``remove()`` unregisters the hook. A hook that
        returns a value replaces the output.
        """
        key = object()
        self._forward_hooks[key] = hook
        return _HookHandle(self._forward_hooks, key)

    # -- traversal
    def named_modules(self, prefix=""):
        """Yield (qualified name, module) for this module and every descendant, in order."""
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def children(self):
        return iter(self._modules.values())

    def named_parameters(self, prefix=""):
        """Yield (qualified name, parameter) in registration order, each parameter once."""
        seen = set()
        for mod_name, module in self.named_modules(prefix):
            for name, p in module._parameters.items():
                if id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self):
        for mod_name, module in self.named_modules():
            for name, b in module._buffers.items():
                yield (f"{mod_name}.{name}" if mod_name else name), b

    def num_parameters(self) -> int:
        return int(sum(p.size for p in self.parameters()))

    # -- modes
    def train(self, mode: bool = True):
        """Training mode (batch statistics in BN); returns self."""
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        """Evaluation mode (running statistics in BN); returns self."""
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def requires_grad_(self, requires_grad: bool = True):
        """Freeze (``False``) or unfreeze every parameter of this module; returns self.

        A frozen parameter gets no gradient, so an optimiser leaves it alone,
        and a graph that starts at frozen layers is not recorded at all: the
        backward pass stops where the first trainable layer begins (how a
        trained network's early layers are kept while its top is trained).
        """
        for p in self.parameters():
            p.requires_grad = bool(requires_grad)
        return self

    # -- devices
    def to(self, device):
        """Move every parameter and buffer to 'cpu' or 'gpu' in place; returns self."""
        device = backend.normalize_device(device)
        for m in self.modules():
            for p in m._parameters.values():
                p.data = backend.to_device(p.data, device)
                if p.grad is not None:
                    p.grad = backend.to_device(p.grad, device)
            for name, b in list(m._buffers.items()):
                if b is not None:
                    setattr(m, name, backend.to_device(b, device))
        return self

    def astype(self, dtype):
        """Cast every floating-point parameter and buffer to ``dtype`` in place (e.g.
        float64 for gradient checks); returns self."""
        for m in self.modules():
            for p in m._parameters.values():
                p.data = p.data.astype(dtype)
                p.grad = None
            for name, b in list(m._buffers.items()):
                if b is not None and b.dtype.kind == "f":
                    setattr(m, name, b.astype(dtype))
        return self

    @property
    def device(self) -> str:
        for p in self.parameters():
            return p.device
        return "cpu"

    # -- state
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Parameters and buffers by qualified name, as raw arrays (not copies)."""
        state = OrderedDict()
        for name, p in self.named_parameters():
            state[name] = p.data
        for name, b in self.named_buffers():
            state[name] = b
        return state

    def load_state_dict(self, state, strict: bool = True):
        """Copy arrays from ``state`` into this module's parameters and buffers.

        Every shape is checked before anything is written, so a failed load
        leaves the module unchanged. With ``strict`` a missing or unexpected key
        is an error; the message names the first few keys and counts them all.
        """
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing keys: {_first_few(missing)}")
            if unexpected:
                parts.append(f"unexpected keys: {_first_few(unexpected)}")
            raise KeyError(f"load_state_dict for {type(self).__name__}: " + "; ".join(parts))
        for key, target in own.items():
            if key in state and tuple(np.shape(state[key])) != tuple(target.shape):
                raise ValueError(
                    f"load_state_dict: shape mismatch for key '{key}': the file has "
                    f"{tuple(np.shape(state[key]))}, the model expects {tuple(target.shape)}"
                )
        params = dict(self.named_parameters())
        for key, target in own.items():
            if key not in state:
                continue
            host = np.asarray(backend.to_numpy(state[key]))
            value = backend.to_device(host, backend.device_of(target)).astype(target.dtype, copy=True)
            if key in params:
                params[key].data = value
            else:
                mod_name, _, buf = key.rpartition(".")
                module = dict(self.named_modules())[mod_name]
                setattr(module, buf, value)
        return self

    def save(self, path):
        """Write the state dict to an ``.npz`` file (no pickle), atomically."""
        save_arrays(path, {k: backend.to_numpy(v) for k, v in self.state_dict().items()})

    def load(self, path, strict: bool = True):
        """Load a file written by :meth:`save` (shapes and keys are checked)."""
        return self.load_state_dict(load_arrays(path), strict=strict)

    # -- printing
    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        extra = self.extra_repr()
        if not self._modules:
            return f"{type(self).__name__}({extra})"
        lines = [f"{type(self).__name__}("] + ([f"  {extra}"] if extra else [])
        for name, child in self._modules.items():
            child_repr = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {child_repr}")
        return "\n".join(lines) + "\n)"


class _HookHandle:
    def __init__(self, registry, key):
        self._registry, self._key = registry, key

    def remove(self):
        self._registry.pop(self._key, None)


class Sequential(Module):
    """Apply modules one after another: ``Sequential(a, b)(x) == b(a(x))``."""

    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"Sequential: argument {i} is a {type(m).__name__}, not a Module")
            setattr(self, str(i), m)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __iter__(self):
        return iter(self._modules.values())


# --------------------------------------------------------------------------- files


def _first_few(keys, n=4):
    """'a, b, c, d and 408 more (412 in all)': a key list summarised for a one-line message."""
    if len(keys) <= n:
        return ", ".join(keys)
    return f"{', '.join(keys[:n])} and {len(keys) - n} more ({len(keys)} in all)"


def save_arrays(path, arrays: dict):
    """Write named NumPy arrays to ``path`` (.npz, no pickle) atomically.

    The data goes to a temporary file in the same folder, is flushed to disk,
    and then renamed over ``path`` (:func:`miniran._io.atomic_write`): a crash
    never leaves a half-written file.
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def write(f):
        np.savez(f, **arrays)

    atomic_write(path, write)


def load_arrays(path) -> dict:
    """Read an .npz written by :func:`save_arrays` (object arrays are refused).

    A damaged file (truncated, corrupted, a single-array ``.npy``, not NumPy at
    all) raises a ValueError that names it; a missing one, FileNotFoundError.
    """
    path = os.fspath(path)
    # opened here, so that the file is closed even when zipfile gives up half way through
    with open(path, "rb") as handle:
        try:
            loaded = np.load(handle, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise ValueError("it holds a single array (.npy), not named arrays (.npz)")
            with loaded as f:
                return {k: f[k] for k in f.files}
        # NotImplementedError: a damaged table of contents names an unknown compression or zip version
        except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, KeyError, NotImplementedError) as exc:
            reason = str(exc)
            if "pickled" in reason:
                reason = "it is not a NumPy .npz file"
            raise ValueError(f"{path} is not a readable .npz file ({reason}): truncated or damaged?") from exc
