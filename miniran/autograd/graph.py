"""The backward pass: one walk of the recorded graph from any number of roots.

:func:`backward` is the whole reverse-mode algorithm, kept apart from the
:class:`~miniran.autograd.tensor.Tensor` class so it can be read on its own
(``Tensor.backward`` is a short wrapper around it, and
:func:`~miniran.autograd.gradcheck.gradcheck` calls it with several outputs).

* Every :class:`~miniran.autograd.tensor.Function` call recorded a
  *generation*, one above its newest input. The walk pops functions from a
  heap keyed on generation, newest first, so a function runs once, after all
  the gradients flowing into it have been summed, and a chain of any length
  works (no recursion).
* Gradients of non-leaf tensors live in a dict during the walk; leaves
  accumulate theirs into ``.grad``; non-leaves keep theirs only if
  ``retain_grad()`` was called.
* Unless ``retain_graph=True``, each function drops its inputs and saved
  arrays as soon as its backward has run, which frees the graph's memory.

Like Chainer's ``_backprop`` it takes several roots at once: the gradient of
``sum_i <grads[i], roots[i]>`` in one walk, without building that sum. This
module imports only :mod:`miniran.backend`: tensors and functions are used
through their attributes. It knows nothing of threads: an engine may install
a :data:`compute_region` that every forward and backward runs inside.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools

from miniran import backend

__all__ = ["backward", "set_compute_region"]

#: What every Function's forward and backward runs inside: nothing, unless an
#: engine installs its own (``miniran.fast`` holds BLAS at one thread there
#: while its CPU threads work). A factory of context managers.
compute_region = contextlib.nullcontext


def set_compute_region(factory) -> None:
    """Install the context-manager factory that every forward and backward runs inside (None: nothing)."""
    global compute_region
    compute_region = contextlib.nullcontext if factory is None else factory


def backward(roots, grads, retain_graph: bool = False) -> None:
    """Propagate ``grads[i]`` (raw arrays, shaped like ``roots[i]``) back from every root.

    The roots must require grad; the caller checks shapes and dtypes (see
    ``Tensor.backward``). Gradients *accumulate* into the leaves' ``.grad``.
    """
    # gradients of non-leaf tensors, keyed by id; the tensor is kept with its
    # gradient so freeing a consumer cannot drop it
    pending = {}
    heap = []
    seen = set()
    counter = itertools.count()  # tie-breaker: heapq never compares functions

    def push(func):
        if id(func) not in seen:
            seen.add(id(func))
            heapq.heappush(heap, (-func.generation, next(counter), func))

    for root, grad in zip(roots, grads):
        if root.creator is None:
            root._accumulate(grad)
            continue
        prev = pending.get(id(root))
        pending[id(root)] = (root, grad if prev is None else prev[1] + grad)
        push(root.creator)

    with compute_region():
        _walk(heap, pending, push, retain_graph)


def _walk(heap, pending, push, retain_graph):
    """Pop functions newest first and run their backward (the loop of :func:`backward`)."""
    while heap:
        _, _, func = heapq.heappop(heap)
        outputs = [ref() for ref in func.outputs]
        gys = []
        for out in outputs:
            g = None if out is None else pending.pop(id(out), (None, None))[1]
            if g is not None and out._retain_grad:
                out.grad = g if out.grad is None else out.grad + g
            gys.append(g)
        if all(g is None for g in gys):
            continue
        if func.inputs is None:
            raise RuntimeError(
                "backward through a graph that was already freed; "
                "pass retain_graph=True to the first backward call"
            )
        xp = backend.get_array_module(*[g for g in gys if g is not None])
        gys = [
            g if g is not None else xp.zeros(meta.shape, dtype=meta.dtype)
            for g, meta in zip(gys, func._output_meta)
        ]
        func.waiting, func.folded = _waiting_gradients(func, pending), ()
        gxs = func.backward(*gys)
        if not isinstance(gxs, tuple):
            gxs = (gxs,)
        if len(gxs) != len(func.inputs):
            raise RuntimeError(
                f"{type(func).__name__}.backward returned {len(gxs)} gradients "
                f"for {len(func.inputs)} inputs"
            )
        handed_out = []  # the gradients this function has given to earlier inputs
        for i, (x, gx) in enumerate(zip(func.inputs, gxs)):
            if gx is None or not x.requires_grad:
                continue
            if gx.shape != x.shape:
                raise RuntimeError(
                    f"{type(func).__name__}.backward returned a gradient of shape "
                    f"{gx.shape} for an input of shape {x.shape}"
                )
            if x.creator is None:
                # a leaf keeps the array itself unless it shares memory with an
                # upstream gradient or with what another input received
                x._accumulate(gx, owned=not _shares_memory(gx, gys + handed_out))
                handed_out.append(gx)
            else:
                # the function may have added the waiting gradient into gx itself
                prev = None if i in func.folded else pending.get(id(x))
                # never add in place: gx may alias an array the function still uses
                pending[id(x)] = (x, gx if prev is None else prev[1] + gx)
                push(x.creator)
        func.waiting = ()  # no reference kept to the gradients
        if not retain_graph:
            func.release()


def _waiting_gradients(func, pending) -> tuple:
    """For each input of ``func``: the gradient summed so far for it, or None.

    A Function may add this gradient into the one it computes (in the same
    pass over memory, instead of a separate addition afterwards) and then
    list the input's index in ``func.folded``. Offered only for inputs that
    a Function made (a leaf keeps its own gradient) and that appear once
    among the inputs (folding twice would count the waiting gradient twice).
    """
    ids = [id(x) for x in func.inputs]
    return tuple(
        pending.get(id(x), (None, None))[1] if x.creator is not None and ids.count(id(x)) == 1 else None
        for x in func.inputs
    )


def _shares_memory(a, arrays) -> bool:
    """Whether ``a`` is, or is a view of (or shares a base with), one of ``arrays``.

    Cheap identity checks on ``.base`` (NumPy and CuPy point a view's ``base``
    at the array that owns the memory), never a look at the data.
    """
    base = a.base if a.base is not None else a
    for b in arrays:
        if b is None:
            continue
        if a is b or base is b or base is (b.base if b.base is not None else b):
            return True
    return False
