"""Tensors, functions and the backward pass.

Design (see docs/autograd.md):

* A :class:`Tensor` wraps a raw NumPy or CuPy array (``.data``). Its gradient
  ``.grad`` is a raw array of the same shape, or ``None``.
* A :class:`Function` computes ``forward`` and ``backward`` on raw arrays only.
  Backward passes are written with array code, not with differentiable ops:
  simpler to read and faster, at the price of no double backprop.
* Calling a function records it as the ``creator`` of its outputs, with a
  *generation* one above its newest input. ``Tensor.backward`` checks its
  argument and hands over to :func:`miniran.autograd.graph.backward`, the
  graph walk (a heap keyed on generation, newest first, so every function runs
  once, after all the gradients flowing into it have been summed).
* The graph is freed as it is walked (unless ``retain_graph=True``): each
  function drops its inputs and saved arrays after its backward has run.
* The operators (``a + b``, ``x.sum()``, ...) are differentiable operations of
  :mod:`miniran.functional`, which installs them on ``Tensor`` when imported;
  this module imports nothing above :mod:`miniran.backend`.
"""

from __future__ import annotations

import contextlib
import weakref

import numpy as np

from miniran import backend
from miniran.autograd import graph

# --------------------------------------------------------------------------- config


class _Config:
    enable_grad = True


@contextlib.contextmanager
def no_grad():
    """Context manager: operations inside record no graph (evaluation, updates)."""
    old = _Config.enable_grad
    _Config.enable_grad = False
    try:
        yield
    finally:
        _Config.enable_grad = old


@contextlib.contextmanager
def enable_grad():
    """Re-enable graph recording inside a ``no_grad`` block."""
    old = _Config.enable_grad
    _Config.enable_grad = True
    try:
        yield
    finally:
        _Config.enable_grad = old


def is_grad_enabled() -> bool:
    return _Config.enable_grad


# --------------------------------------------------------------------------- helpers


def as_array(value, like=None, dtype=None):
    """Turn a Python scalar, list or array into a raw array.

    ``like`` (a raw array) fixes the array module and, for Python scalars, the
    dtype, so ``x * 2`` keeps ``x``'s dtype and device.
    """
    xp = backend.get_array_module(like) if like is not None else np
    if isinstance(value, np.generic) and dtype is None and like is None:
        return np.asarray(value)  # NumPy scalars (e.g. from a full reduction) keep their dtype
    if isinstance(value, (np.ndarray,)) or backend.is_cupy_array(value):
        arr = value
        if xp is not np and not backend.is_cupy_array(arr):
            arr = xp.asarray(arr)
        return arr if dtype is None else arr.astype(dtype, copy=False)
    if dtype is None:
        if like is not None and np.isscalar(value):
            dtype = like.dtype if like.dtype.kind == "f" else backend.DEFAULT_DTYPE
        else:
            probe = np.asarray(value)
            dtype = backend.DEFAULT_DTYPE if probe.dtype.kind in "fc" or probe.dtype == object else probe.dtype
            if probe.dtype.kind == "b":
                dtype = probe.dtype
    return xp.asarray(value, dtype=dtype)


def sum_to(x, shape):
    """Sum a broadcast gradient ``x`` back down to ``shape`` (inverse of broadcasting)."""
    if x.shape == tuple(shape):
        return x
    lead = x.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        i + lead for i, s in enumerate(shape) if s == 1 and x.shape[i + lead] != 1
    )
    y = x.sum(axis=axes, keepdims=True)
    if lead:
        y = y.reshape(y.shape[lead:])
    return y


# --------------------------------------------------------------------------- Tensor


class Tensor:
    """An n-dimensional array that records the operations applied to it.

    Args:
        data: a NumPy/CuPy array, a Python scalar or a nested list. Python
            floats become ``float32`` (the default dtype) and Python integers an
            integer dtype; arrays keep their dtype, so float64 arrays stay
            float64 (as gradient checks need).
        requires_grad: whether gradients should be computed for this tensor.
        name: optional label used in error messages and summaries.

    Attributes:
        data: the raw array.
        grad: the accumulated gradient (raw array of the same shape) or None.
        creator: the :class:`Function` that produced this tensor, or None for a leaf.
    """

    __array_priority__ = 200  # so ndarray * Tensor calls Tensor.__rmul__

    def __init__(self, data, requires_grad=False, name=None):
        if isinstance(data, Tensor):
            data = data.data
        self.data = as_array(data)
        self.grad = None
        self.requires_grad = bool(requires_grad)
        if self.requires_grad and self.data.dtype.kind != "f":
            raise TypeError(
                f"requires_grad=True needs a floating-point tensor, got dtype {self.data.dtype}"
            )
        self.creator = None
        self.generation = 0
        self.name = name
        self._retain_grad = False

    # -- array-like properties
    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def size(self):
        return int(self.data.size)

    @property
    def device(self) -> str:
        return backend.device_of(self.data)

    @property
    def is_leaf(self) -> bool:
        return self.creator is None

    def __len__(self):
        return len(self.data)

    def __bool__(self):
        # as NumPy: one element has a truth value, more is ambiguous (ValueError), so
        # `if a == b`, `x in list` and `if loss < 0.5` behave as with arrays
        return bool(self.data)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        body = np.array2string(backend.to_numpy(self.data), prefix="Tensor(")
        return f"Tensor({body}, dtype={self.dtype}, device={self.device}{grad})"

    # -- conversion
    def numpy(self) -> np.ndarray:
        """A host NumPy copy of the data (works for GPU tensors too)."""
        return backend.to_numpy(self.data)

    def item(self):
        return self.data.item()

    def to(self, device) -> "Tensor":
        """A copy on ``'cpu'`` or ``'gpu'`` (the same tensor if already there).

        The copy is a new leaf that keeps ``requires_grad``.
        """
        moved = backend.to_device(self.data, device)
        if moved is self.data:
            return self
        return Tensor(moved, requires_grad=self.requires_grad, name=self.name)

    def detach(self) -> "Tensor":
        """A new leaf sharing the data, cut from the graph."""
        return Tensor(self.data, requires_grad=False, name=self.name)

    def retain_grad(self):
        """Keep ``.grad`` on this non-leaf tensor after backward."""
        self._retain_grad = True
        return self

    def zero_grad(self):
        self.grad = None

    def set_creator(self, func):
        self.creator = func
        self.generation = func.generation + 1

    # -- backward
    def backward(self, grad=None, retain_graph=False):
        """Compute gradients of this tensor with respect to every leaf that requires them.

        Args:
            grad: upstream gradient, same shape as this tensor. May be omitted
                only for a tensor with a single element (then it is 1).
            retain_graph: keep the graph so ``backward`` can be called again.

        Gradients *accumulate* into ``leaf.grad``; call ``zero_grad`` between steps.
        """
        if not self.requires_grad:
            raise RuntimeError(
                "backward() called on a tensor that does not require grad "
                "(no input required grad, or it was computed under no_grad())"
            )
        xp = backend.get_array_module(self.data)
        if grad is None:
            if self.size != 1:
                raise ValueError(
                    f"grad must be given for a non-scalar tensor of shape {self.shape}"
                )
            grad = xp.ones_like(self.data)
        else:
            grad = as_array(grad.data if isinstance(grad, Tensor) else grad, like=self.data)
            if grad.shape != self.shape:
                raise ValueError(
                    f"grad has shape {grad.shape} but the tensor has shape {self.shape}"
                )
            grad = grad.astype(self.dtype, copy=False)

        graph.backward([self], [grad], retain_graph=retain_graph)

    #: this tensor's view of a flat gradient buffer (``miniran.nn.flat``), or None
    grad_slot = None

    def _accumulate(self, g, owned=False):
        """Add ``g`` to ``.grad``. ``owned``: ``g`` is a fresh array that nothing
        else holds, so the first gradient can keep it instead of a copy (one
        device operation less per parameter and step on the GPU).

        A tensor with a ``grad_slot`` (its view of a flat gradient buffer,
        ``miniran.nn.flat``) keeps its gradient there: the first one is copied
        in (nothing to copy when the Function wrote it there itself), later
        ones are added in place.
        """
        if g.dtype != self.dtype:
            g, owned = g.astype(self.dtype), True
        slot = self.grad_slot
        if slot is not None and backend.is_cupy_array(slot) != backend.is_cupy_array(g):
            slot = self.grad_slot = None  # moved to another device: the optimiser's next sync makes a new slot
        if slot is not None:
            if self.grad is None:
                if not backend.same_memory(g, slot):
                    slot[...] = g
                self.grad = slot
            else:
                self.grad += g
            return
        if self.grad is None:
            self.grad = g if owned else g.copy()
        else:
            self.grad = self.grad + g  # never in place: the old array may be shared

    # -- operators: ``+ - * / ** @ []``, ``.sum()``, ``.reshape()``, ... are differentiable
    # operations of the layer above; miniran.functional installs them on this class
    # when it is imported (see miniran/functional/tensor_methods.py), so autograd
    # imports nothing above itself.

    # comparisons give plain (non-differentiable) boolean arrays wrapped in tensors
    def __eq__(self, other):  # noqa: D105
        return Tensor(self.data == _raw(other))

    def __ne__(self, other):  # noqa: D105
        return Tensor(self.data != _raw(other))

    def __lt__(self, other):
        return Tensor(self.data < _raw(other))

    def __le__(self, other):
        return Tensor(self.data <= _raw(other))

    def __gt__(self, other):
        return Tensor(self.data > _raw(other))

    def __ge__(self, other):
        return Tensor(self.data >= _raw(other))

    __hash__ = object.__hash__


def _raw(x):
    return x.data if isinstance(x, Tensor) else x


def as_tensor(value, like: Tensor | None = None) -> Tensor:
    """Wrap ``value`` in a Tensor (no copy if it already is one)."""
    if isinstance(value, Tensor):
        return value
    return Tensor(as_array(value, like=None if like is None else like.data))


# --------------------------------------------------------------------------- Function


class Function:
    """Base class of every differentiable operation.

    Subclasses implement::

        def forward(self, *xs):      # raw arrays in, raw array (or tuple) out
        def backward(self, *gys):    # raw upstream grads in, one grad (or None) per input

    and save what backward needs as attributes of ``self`` during forward.
    ``self.needs_input_grad`` (a tuple of bools, set before forward) lets a
    function skip gradients nobody asked for. Call an instance: ``Exp()(x)``.

    During ``backward``, ``self.waiting`` holds for each input the gradient
    already summed for it from other uses (or None). A function that adds it
    into its own result, in one pass instead of a separate addition, lists
    that input's index in ``self.folded``; most functions ignore both.
    """

    generation = 0
    inputs = None
    outputs = ()
    needs_input_grad = ()
    waiting = ()  # set by the graph walk for the time of one backward call
    folded = ()

    def __call__(self, *inputs):
        like = next((x.data for x in inputs if isinstance(x, Tensor)), None)
        tensors = [x if isinstance(x, Tensor) else Tensor(as_array(x, like=like)) for x in inputs]
        record = _Config.enable_grad and any(t.requires_grad for t in tensors)
        self.needs_input_grad = tuple(record and t.requires_grad for t in tensors)
        with graph.compute_region():  # what the engine installs, if anything
            ys = self.forward(*[t.data for t in tensors])
        single = not isinstance(ys, tuple)
        if single:
            ys = (ys,)
        outputs = [Tensor(y, requires_grad=record) for y in ys]
        if record:
            self.generation = max(t.generation for t in tensors)
            for out in outputs:
                out.set_creator(self)
            self.inputs = tensors
            self.outputs = [weakref.ref(o) for o in outputs]
            # shapes/dtypes to build zero grads for outputs that got none
            self._output_meta = [_Meta(o.shape, o.dtype) for o in outputs]
        return outputs[0] if single else tuple(outputs)

    def forward(self, *xs):
        raise NotImplementedError

    def backward(self, *gys):
        raise NotImplementedError

    def release(self):
        """Drop references to inputs and saved arrays (frees the graph's memory)."""
        keep = {"generation", "outputs", "_output_meta", "needs_input_grad"}
        for key in list(vars(self)):
            if key not in keep:
                delattr(self, key)
        self.inputs = None


class _Meta:
    __slots__ = ("shape", "dtype")

    def __init__(self, shape, dtype):
        self.shape = shape
        self.dtype = dtype
