"""Numerical gradient checking that a broken backward pass cannot fool.

Two ideas make the check trustworthy (docs/autograd.md explains them):

1. **A random upstream gradient.** We compare gradients of the scalar
   ``L = sum(gy * f(x))`` with ``gy ~ U(-1, 1)``, not of ``sum(f(x))``. For
   softmax or batch norm the gradient of a plain sum is zero whatever the
   backward does, so a check with all-ones ``gy`` passes a wrong backward.
2. **float64 central differences.** ``(L(x + eps) - L(x - eps)) / (2 eps)``
   has an error of order ``eps**2``; in float64 ``eps = 1e-6`` leaves it far
   below the tolerances.

Two modes:

* ``"elementwise"`` perturbs every element of every input (2 forward passes
  per element): exact per element, for small inputs.
* ``"directional"`` perturbs each input along one random unit direction ``d``
  and compares ``(L(x + eps d) - L(x - eps d)) / (2 eps)`` with ``<grad, d>``:
  two forward passes per input whatever its size, for large inputs.
"""

from __future__ import annotations

import numpy as np

from miniran import backend
from miniran.autograd import graph
from miniran.autograd.tensor import Tensor, as_array, enable_grad, no_grad


class GradcheckError(AssertionError):
    """Raised when an analytic gradient disagrees with the numerical one."""


def _forward_scalar(fn, tensors, gys):
    """L = sum_k sum(gy_k * out_k), computed on raw arrays without recording a graph."""
    with no_grad():
        outs = fn(*tensors)
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    total = 0.0
    for out, gy in zip(outs, gys):
        if gy is None:
            continue
        total += float((out.data.astype(np.float64) * gy).sum())
    return total


def gradcheck(
    fn,
    inputs,
    *,
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    mode: str = "auto",
    max_elementwise: int = 2000,
    seed: int = 0,
    raise_exception: bool = True,
) -> bool:
    """Check the backward pass of ``fn`` against central differences.

    Args:
        fn: callable taking tensors (in the order of ``inputs``) and returning a
            tensor or a tuple of tensors. It must be deterministic.
        inputs: list of tensors or arrays. Floating-point entries are checked
            (converted to float64 copies); integer entries (e.g. labels) and
            tensors with ``requires_grad=False`` are passed through unchecked.
        eps: finite-difference step.
        atol, rtol: tolerance, ``|analytic - numeric| <= atol + rtol * |numeric|``.
        mode: ``"elementwise"``, ``"directional"`` or ``"auto"`` (elementwise
            while the checked inputs have at most ``max_elementwise`` elements in total).
        seed: seeds the upstream gradient and the directions.
        raise_exception: raise :class:`GradcheckError` on failure (else return False).

    Returns:
        True when every checked input passes.

    The failure message names the input, the worst element (elementwise mode)
    or the direction (directional mode), and both values.
    """
    if mode not in ("auto", "elementwise", "directional"):
        raise ValueError(f"mode must be 'auto', 'elementwise' or 'directional', got {mode!r}")
    rng = np.random.default_rng(seed)
    tensors, checked, saved_grads = _checked_inputs(inputs)
    try:
        return _check(fn, tensors, checked, eps, atol, rtol, mode, max_elementwise, seed, rng, raise_exception)
    finally:
        for i, g in saved_grads.items():
            tensors[i].grad = g


def _checked_inputs(inputs):
    """The tensors to call ``fn`` with, the indices of those checked, and the saved ``.grad`` of any
    checked in place.

    Floating-point inputs become float64 leaf copies; others pass through unchanged.
    A float64 leaf that requires grad (e.g. a module's Parameter) is checked in
    place, so ``gradcheck(lambda x, *ps: model(x), [x, *model.parameters()])``
    checks the parameter gradients of a float64 model.
    """
    tensors, checked, saved_grads = [], [], {}
    for i, x in enumerate(inputs):
        requires = x.requires_grad if isinstance(x, Tensor) else True
        data = x.data if isinstance(x, Tensor) else as_array(x)
        if isinstance(x, Tensor) and requires and x.is_leaf and data.dtype == np.float64:
            t = x
            saved_grads[i] = x.grad
            x.grad = None
            checked.append(i)
        elif data.dtype.kind == "f" and requires:
            t = Tensor(data.astype(np.float64), requires_grad=True)
            checked.append(i)
        else:
            t = x if isinstance(x, Tensor) else Tensor(data)
        tensors.append(t)
    return tensors, checked, saved_grads


def _check(fn, tensors, checked, eps, atol, rtol, mode, max_elementwise, seed, rng, raise_exception):
    if not checked:
        raise ValueError("gradcheck: no floating-point input requires a gradient")
    xp = backend.get_array_module(*[t.data for t in tensors])
    gys = _analytic_gradients(fn, tensors, rng, xp)

    total_elems = sum(tensors[i].size for i in checked)
    if mode == "auto":
        mode = "elementwise" if total_elems <= max_elementwise else "directional"

    ok = True
    for i in checked:
        t = tensors[i]
        analytic = t.grad if t.grad is not None else xp.zeros_like(t.data)
        analytic = backend.to_numpy(analytic).astype(np.float64)
        if mode == "elementwise":
            msg = _check_elementwise(fn, tensors, gys, i, analytic, eps, atol, rtol)
        else:
            msg = _check_directional(fn, tensors, gys, i, analytic, eps, atol, rtol, rng, seed, xp)
        if msg is not None:
            ok = False
            if raise_exception:
                raise GradcheckError(msg)
    return ok


def _analytic_gradients(fn, tensors, rng, xp):
    """Run ``fn`` and backward with a random upstream gradient ``gy ~ U(-1, 1)`` per output.

    Leaves the analytic gradients in the tensors' ``.grad`` and returns the ``gy``
    of each output (None for an output that does not depend on the checked inputs).
    """
    with enable_grad():
        outs = fn(*tensors)
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    gys = []
    for out in outs:
        if out.dtype.kind != "f" or not out.requires_grad:
            gys.append(None)
            continue
        gys.append(xp.asarray(rng.uniform(-1.0, 1.0, size=out.shape)))
    if all(g is None for g in gys):
        raise ValueError("gradcheck: fn returned no output that depends on the checked inputs")
    roots = [(o, g) for o, g in zip(outs, gys) if g is not None]
    # the gradient of sum_i <gy_i, out_i>: one graph walk from every output at once
    graph.backward([o for o, _ in roots], [g.astype(o.dtype) for o, g in roots])
    return gys


def _check_elementwise(fn, tensors, gys, i, analytic, eps, atol, rtol):
    """Central differences on every element of input ``i``; the failure message, or None when it passes."""
    t = tensors[i]
    numeric = np.zeros(t.shape, dtype=np.float64)
    flat = t.data.reshape(-1)  # view: writes go to t.data
    for k in range(t.size):
        v = float(flat[k])
        flat[k] = v + eps
        lp = _forward_scalar(fn, tensors, gys)
        flat[k] = v - eps
        lm = _forward_scalar(fn, tensors, gys)
        flat[k] = v
        numeric.reshape(-1)[k] = (lp - lm) / (2 * eps)
    err = np.abs(analytic - numeric)
    bound = atol + rtol * np.abs(numeric)
    if not np.any(err > bound) and np.all(np.isfinite(analytic)):
        return None
    worst = tuple(int(w) for w in np.unravel_index(int(np.argmax(err - bound)), t.shape))
    return (
        f"gradcheck failed for input {i} (shape {t.shape}): worst element {worst}: "
        f"analytic {analytic[worst]:.8g} vs numerical {numeric[worst]:.8g} "
        f"(|diff| {err[worst]:.3g} > atol {atol:g} + rtol {rtol:g} * |numerical|); "
        f"{int((err > bound).sum())} of {t.size} elements out of tolerance"
    )


def _check_directional(fn, tensors, gys, i, analytic, eps, atol, rtol, rng, seed, xp):
    """Central differences of input ``i`` along one random direction ``d`` against ``<grad, d>``;
    the failure message, or None when it passes."""
    t = tensors[i]
    original = t.data.copy()
    # a random unit direction with a floor on |components|, so no
    # element is left out of the check by a near-zero weight
    d = rng.uniform(0.5, 1.0, size=t.shape) * rng.choice([-1.0, 1.0], size=t.shape)
    d /= np.linalg.norm(d)
    d_dev = xp.asarray(d)
    t.data[...] = original + eps * d_dev
    lp = _forward_scalar(fn, tensors, gys)
    t.data[...] = original - eps * d_dev
    lm = _forward_scalar(fn, tensors, gys)
    t.data[...] = original
    numeric = (lp - lm) / (2 * eps)
    predicted = float((analytic * d).sum())
    if abs(predicted - numeric) <= atol + rtol * abs(numeric) and np.isfinite(predicted):
        return None
    return (
        f"gradcheck failed for input {i} (shape {t.shape}) in directional mode: "
        f"analytic <grad, d> {predicted:.8g} vs numerical {numeric:.8g} "
        f"(|diff| {abs(predicted - numeric):.3g}, atol {atol:g}, rtol {rtol:g}); "
        f"direction d drawn with seed {seed}"
    )
