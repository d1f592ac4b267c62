"""One way to test a Function: a table of cases, and one helper that checks each case.

In the spirit of Chainer's ``FunctionTestCase``. A :class:`Case` names a
public function (``F.conv2d``), the reference Function class it dispatches to
(``Conv2dFunction``), how to make its inputs, its keyword options and
tolerances, and, where there is one, a naive loop oracle and a PyTorch
equivalent. :func:`check` runs one part of the check on a case:

``"gradient"``
    the float64 gradient of the public function through
    :func:`miniran.gradcheck` (random upstream gradient) on the reference
    code (``reference_only()``); the reference class really ran.
``"oracle"``
    the reference's float64 forward against the case's naive loop oracle.
``"twins"``
    every registered twin of the reference class
    (``_dispatch.twins(RefClass)``) that suits the case, on the CPU, against
    the reference: the output, every input gradient and the updated buffers
    (batch norm's running statistics), float32 and float64, with 1, 2 and 3 of
    miniran's CPU threads splitting even small arrays; also a forward pass
    without a graph. Then, if the case names one, the twin that the default
    dispatch picks.
``"gpu"``
    the same on a CuPy device (the stand-in on the CPU): the reference runs on
    the device (``reference_only()``) and each GPU twin is compared with it,
    and with the CPU reference.
``"torch"``
    PyTorch's function, float64, forward, gradients and buffers.
``"dispatch"``
    a Function with twins is reached through the one dispatch point (else
    its twins would never run).

How a twin is forced: the dispatch registry is patched for the duration of
one call so that it holds *only* the twin under test (:func:`only_twin`);
the public function then goes through its usual argument checks and the
real dispatch, which asks that twin's own ``suits``. If the twin does not
suit the inputs the reference runs instead, and the twin is skipped for that
configuration (its ``suits`` is tested too: a twin that no case exercises
fails ``test_every_twin_is_exercised``). That the twin ran is asserted from
``type(y.creator)``, and for a call without a graph (no creator is recorded)
from the class the dispatch returned.

Comparisons are relative to the largest magnitude of the expected array,
``max|actual - expected| / max|expected|``, so a gradient entry near zero
that two summation orders round differently does not fail a sound twin. A
case's ``tol`` binds the CPU twins; ``gpu_tol``, where a case names one, the
device (whose twins may sum in another order, or in one pass). Where a CPU
twin must give the reference's numbers bit for bit (max pooling, same-shape
add and multiply) its ``tol`` is 0. The reference itself must keep the dtype
under test (float32 in, float32 out: output, gradients and buffers), so each
twin must too.

The naive oracles (:func:`naive_conv2d`, :func:`naive_pool2d`,
:func:`naive_bilinear`, :func:`naive_batch_norm`) are the definitions written
as loops, independent of the library; other tests may import them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import zlib
from typing import Callable

import numpy as np

import miniran
import miniran.functional as F
from miniran import Tensor, backend, threads
from miniran.autograd import is_grad_enabled
from miniran.functional import _dispatch
from miniran.functional.attention import ChannelL2Normalize, SpatialSigmoid
from miniran.functional.basic import Add, Mul, ReLUFunction, SigmoidFunction
from miniran.functional.conv import Conv2dFunction
from miniran.functional.interpolation import InterpolateBilinear
from miniran.functional.loss import CrossEntropy
from miniran.functional.normalization import BatchNorm
from miniran.functional.pooling import AvgPool2dFunction, GlobalAvgPool2dFunction, MaxPool2dFunction

THREAD_COUNTS = (1, 2, 3)
DTYPES = (np.float32, np.float64)
#: default tolerances of a twin against the reference (relative to the largest |expected|)
TOL = {np.float32: 1e-5, np.float64: 1e-12}
#: a CPU twin that gives the reference's numbers bit for bit
EXACT = {np.float32: 0.0, np.float64: 0.0}
#: bit for bit in float64; float32 sums of overlapping windows' gradients in another order
EXACT_F64 = {np.float32: TOL[np.float32], np.float64: 0.0}
#: a CPU twin that sums in another order only: last-bit differences in float64
TIGHT_F64 = {np.float32: TOL[np.float32], np.float64: 1e-15}


# --------------------------------------------------------------------------- naive oracles


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def naive_conv2d(x, w, b=None, stride=1, padding=0):
    """The definition, one output pixel at a time: ``y[n, o, i, j] = b[o] + sum(xpad window * w[o])``.

    ``x`` (N, C, H, W), ``w`` (O, C, KH, KW), ``b`` (O,) or None; stride and
    padding an int or a pair. The output size comes from counting the windows
    that fit in the padded input, not from the library's formula.
    """
    (sy, sx), (ph, pw) = _pair(stride), _pair(padding)
    xpad = np.pad(np.asarray(x, np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    n, _, hp, wp = xpad.shape
    o, _, kh, kw = w.shape
    oh, ow = len(range(0, hp - kh + 1, sy)), len(range(0, wp - kw + 1, sx))
    y = np.zeros((n, o, oh, ow))
    for s in range(n):
        for k in range(o):
            for i in range(oh):
                for j in range(ow):
                    window = xpad[s, :, i * sy:i * sy + kh, j * sx:j * sx + kw]
                    y[s, k, i, j] = np.sum(window * w[k]) + (0.0 if b is None else b[k])
    return y


def _pool_out(size, k, s, p, ceil_mode):
    """PyTorch's output length, with math.floor/math.ceil of a real division."""
    out = (math.ceil if ceil_mode else math.floor)((size + 2 * p - k) / s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1  # the last window would start in the right padding
    return out


def naive_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, kind="max", count_include_pad=True):
    """Max or average pooling from the definition, one output pixel at a time.

    Max: the largest real pixel of the window (padding never wins). Average:
    the window's sum over its divisor, the window clipped to the padded edge
    (``count_include_pad``) or only its real pixels.
    """
    (kh, kw) = _pair(kernel_size)
    (sh, sw) = (kh, kw) if stride is None else _pair(stride)
    (ph, pw) = _pair(padding)
    n, c, h, w = x.shape
    oh, ow = _pool_out(h, kh, sh, ph, ceil_mode), _pool_out(w, kw, sw, pw, ceil_mode)
    y = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            h0, w0 = i * sh - ph, j * sw - pw  # window start, in input coordinates
            h1, w1 = min(h0 + kh, h + ph), min(w0 + kw, w + pw)  # clipped to the padded edge
            real = np.asarray(x[:, :, max(h0, 0):min(h1, h), max(w0, 0):min(w1, w)], np.float64)
            if kind == "max":
                y[:, :, i, j] = real.max(axis=(2, 3))
            else:
                divisor = (h1 - h0) * (w1 - w0) if count_include_pad else real.shape[2] * real.shape[3]
                y[:, :, i, j] = real.sum(axis=(2, 3)) / divisor
    return y


def naive_bilinear(x, size, align_corners=True):
    """Bilinear resize from the definition: each output pixel mixes its four source neighbours."""
    n, c, h, w = x.shape
    oh, ow = _pair(size)
    y = np.zeros((n, c, oh, ow))

    def source(i, n_in, n_out):
        if align_corners:
            return i * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        return max((i + 0.5) * n_in / n_out - 0.5, 0.0)

    for r in range(oh):
        for s in range(ow):
            fy, fx = source(r, h, oh), source(s, w, ow)
            y0, x0 = min(int(math.floor(fy)), h - 1), min(int(math.floor(fx)), w - 1)
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            ly, lx = fy - y0, fx - x0
            y[:, :, r, s] = ((1 - ly) * (1 - lx) * x[:, :, y0, x0] + (1 - ly) * lx * x[:, :, y0, x1]
                             + ly * (1 - lx) * x[:, :, y1, x0] + ly * lx * x[:, :, y1, x1])
    return y


def naive_batch_norm(x, gamma, beta, running_mean=None, running_var=None, training=False, eps=1e-5,
                     relu=False, **_):
    """Batch norm channel by channel: the batch's statistics (or the running ones), then the affine map."""
    y = np.zeros(x.shape)
    for c in range(x.shape[1]):
        v = np.asarray(x[:, c], np.float64)
        use_batch = training or running_mean is None
        mean, var = (v.mean(), v.var()) if use_batch else (running_mean[c], running_var[c])
        y[:, c] = gamma[c] * (v - mean) / np.sqrt(var + eps) + beta[c]
    return np.maximum(y, 0) if relu else y


# --------------------------------------------------------------------------- the case


@dataclasses.dataclass(frozen=True)
class Case:
    """One call of a public function, and what to check it against.

    ``fn(*tensors, **kwargs, **buffers)`` is the call. ``inputs(rng)`` makes
    its positional inputs as float64 NumPy arrays (cast to each dtype under
    test; floating ones require a gradient) or integer arrays (labels, passed
    as raw arrays on the device, no gradient). ``buffers(rng)`` makes keyword
    arrays that the call may update in place (running statistics): fresh
    copies for every call, compared after it like outputs.
    """

    name: str
    fn: Callable
    ref: type
    inputs: Callable[[np.random.Generator], tuple]
    kwargs: dict = dataclasses.field(default_factory=dict)
    buffers: Callable[[np.random.Generator], dict] | None = None
    tol: dict = dataclasses.field(default_factory=lambda: dict(TOL))  # the CPU twins (and the device's, by default)
    gpu_tol: dict | None = None  # on the device, where it must be looser than tol
    gradcheck: dict | None = dataclasses.field(default_factory=dict)  # options; None: no gradient check
    oracle: Callable | None = None  # oracle(*float64 arrays, **kwargs, **buffers) -> float64 array
    torch: Callable | None = None  # torch(torch, *tensors, **kwargs, **buffers) -> tensor
    expect: str | None = None  # the class the default dispatch runs on the CPU with a graph, 1-3 threads

    def __str__(self):
        return self.name

    def make(self):
        """(inputs, buffers, upstream-gradient rng): the same every time for a case (seeded by its name)."""
        rng = np.random.default_rng(zlib.crc32(self.name.encode()))
        arrays = tuple(np.asarray(a) for a in self.inputs(rng))
        buffers = self.buffers(rng) if self.buffers else {}
        return arrays, buffers, rng


def normal(*shapes, scale=1.0, offset=0.0):
    """An input factory: standard normal arrays of these shapes (times scale, plus offset)."""
    return lambda rng: tuple(rng.standard_normal(s) * scale + offset for s in shapes)


def distinct(*shapes):
    """An input factory: values spread evenly over [-1, 1] in random order (no ties, for max pooling)."""
    return lambda rng: tuple(rng.permutation(np.linspace(-1.0, 1.0, math.prod(s))).reshape(s) for s in shapes)


# --------------------------------------------------------------------------- running a case


@dataclasses.dataclass
class Run:
    """What one call gave: the class that ran, then the arrays to compare, by name (on the host)."""

    impl: type
    arrays: dict


class _Spy:
    """Records, for every call of the dispatch, (function, class chosen, raw arrays, params, grad)."""

    def __init__(self):
        self.calls = []

    def __enter__(self):
        self._original = original = _dispatch.implementation

        def implementation(function, inputs, params):
            chosen = original(function, inputs, params)
            arrays = tuple(x.data if isinstance(x, Tensor) else x for x in inputs)
            grad = is_grad_enabled() and any(isinstance(x, Tensor) and x.requires_grad for x in inputs)
            self.calls.append((function, chosen, arrays, dict(params), grad))
            return chosen
        _dispatch.implementation = implementation
        return self

    def __exit__(self, *exc):
        _dispatch.implementation = self._original
        return False

    def chosen(self, function):
        return [c[1] for c in self.calls if c[0] is function]


def forward_backward(fn, *arrays, upstream, reference, expect=None):
    """Output and input gradients of ``fn`` on Tensors made from copies of ``arrays``.

    ``reference``: inside ``miniran.reference_only()``. ``expect``: the class
    name the output's creator must have (which code ran).
    """
    ts = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    with miniran.reference_only() if reference else contextlib.nullcontext():
        y = fn(*ts)
        y.backward(upstream)
    if expect is not None:
        assert type(y.creator).__name__ == expect
    return [y.data] + [t.grad for t in ts]


@contextlib.contextmanager
def only_twin(ref, twin):
    """Only ``twin`` is asked by the dispatch for ``ref`` (``None``: no twin at all) for the block."""
    registry = _dispatch._TWINS
    had, saved = ref in registry, registry.get(ref)
    registry[ref] = [] if twin is None else [twin]
    try:
        yield
    finally:
        if had:
            registry[ref] = saved
        else:
            del registry[ref]


@contextlib.contextmanager
def cpu_threads(n):
    """n of miniran's CPU threads, splitting arrays of any size; back to the defaults after."""
    min_elements = threads.PARALLEL_MIN_ELEMENTS
    threads.PARALLEL_MIN_ELEMENTS = 1
    threads.set_cpu_threads(n)
    try:
        yield
    finally:
        threads.set_cpu_threads(None)
        threads.PARALLEL_MIN_ELEMENTS = min_elements


def run(case, arrays, buffers, dtype, xp=np, gy=None):
    """Call ``case`` on ``arrays`` cast to ``dtype`` on xp's device; backward with ``gy`` (None: no graph).

    Returns a :class:`Run` with the output, the input gradients and the
    buffers after the call, as host arrays.
    """
    grad = gy is not None
    tensors = [Tensor(xp.asarray(a.astype(dtype)), requires_grad=grad) if a.dtype.kind == "f" else xp.asarray(a)
               for a in arrays]
    bufs = {k: xp.asarray(v.astype(dtype)) for k, v in buffers.items()}
    with _Spy() as spy:
        if grad:
            y = case.fn(*tensors, **case.kwargs, **bufs)
        else:
            with miniran.no_grad():
                y = case.fn(*tensors, **case.kwargs, **bufs)
    chosen = spy.chosen(case.ref)
    assert len(chosen) <= 1, f"{case}: {case.ref.__name__} dispatched {len(chosen)} times in one call"
    impl = chosen[0] if chosen else case.ref  # not through the dispatch: the reference class itself
    if grad:
        assert y.creator is not None, f"{case}: the output has no creator"
        impl = type(y.creator)
        assert not chosen or chosen[0] is impl, f"{case}: dispatch chose {chosen[0].__name__}, {impl.__name__} ran"
        y.backward(xp.asarray(gy.astype(dtype)))
    out = {"output": backend.to_numpy(y.data)}
    if grad:
        for i, t in enumerate(tensors):
            if isinstance(t, Tensor):
                out[f"grad of input {i}"] = None if t.grad is None else backend.to_numpy(t.grad)
    out.update({f"buffer {k}": backend.to_numpy(v) for k, v in bufs.items()})
    return Run(impl, out)


def upstream(case, arrays, buffers, rng):
    """A random upstream gradient U(-1, 1) of the output's shape (float64, host)."""
    with miniran.reference_only(), miniran.no_grad():
        shape = run(case, arrays, buffers, np.float64).arrays["output"].shape
    return rng.uniform(-1.0, 1.0, size=shape)


def assert_close(actual: Run, expected: Run, tol, what):
    """Every array of ``actual`` within ``tol`` of ``expected``: max|a - e| <= tol * max|e|, same shape and dtype."""
    assert actual.arrays.keys() == expected.arrays.keys(), f"{what}: {list(actual.arrays)} vs {list(expected.arrays)}"
    for name, e in expected.arrays.items():
        a = actual.arrays[name]
        if e is None or a is None:
            assert a is e, f"{what}, {name}: one side has no gradient"
            continue
        assert a.shape == e.shape, f"{what}, {name}: shape {a.shape}, expected {e.shape}"
        assert a.dtype == e.dtype, f"{what}, {name}: dtype {a.dtype}, expected {e.dtype}"
        a64, e64 = a.astype(np.float64), e.astype(np.float64)
        scale = max(float(np.abs(e64).max(initial=0.0)), 1e-30)
        err = float(np.abs(a64 - e64).max(initial=0.0)) / scale
        assert err <= tol, (f"{what}, {name}: max |diff| / max |expected| = {err:.3g} > {tol:g} "
                            f"({actual.impl.__name__} against {expected.impl.__name__})")


# --------------------------------------------------------------------------- the parts of the check


def check_gradient(case):
    """float64 gradient check of the public function on the reference code; the reference class ran."""
    arrays, buffers, rng = case.make()
    with miniran.reference_only():
        ran = run(case, arrays, buffers, np.float64, np, upstream(case, arrays, buffers, rng))
        assert ran.impl is case.ref, f"{case}: reference_only() ran {ran.impl.__name__}"
        if case.gradcheck is None:
            return
        bufs = {k: v.copy() for k, v in buffers.items()}
        options = {"seed": zlib.crc32(case.name.encode()) % 1000, **case.gradcheck}
        assert miniran.gradcheck(lambda *ts: case.fn(*ts, **case.kwargs, **bufs), list(arrays), **options)


def check_oracle(case):
    """The reference's float64 forward against the case's naive loop oracle."""
    if case.oracle is None:
        return
    arrays, buffers, _ = case.make()
    with miniran.reference_only():
        got = run(case, arrays, buffers, np.float64)
    expected = case.oracle(*arrays, **case.kwargs, **{k: v.copy() for k, v in buffers.items()})
    assert_close(Run(case.ref, {"output": got.arrays["output"]}), Run(case.ref, {"output": expected}),
                 1e-10, f"{case}: reference against the naive oracle")


def twins_run(case, dtype, xp, gy, arrays, buffers, n_threads):
    """Each twin of ``case.ref`` forced in turn: yields (twin, with-graph Run, no-graph Run) where it ran."""
    for twin in _dispatch.twins(case.ref):
        with only_twin(case.ref, twin), (cpu_threads(n_threads) if n_threads else contextlib.nullcontext()):
            with_graph = run(case, arrays, buffers, dtype, xp, gy)
            no_graph = run(case, arrays, buffers, dtype, xp)
        if with_graph.impl is case.ref and no_graph.impl is case.ref:
            continue  # this twin does not suit the case (in this configuration)
        for r in (with_graph, no_graph):
            assert r.impl in (twin, case.ref), f"{case}: forced {twin.__name__}, {r.impl.__name__} ran"
        yield twin, with_graph, no_graph


def _compare_twin(case, twin, runs, ref_graph, ref_forward, tol, where):
    with_graph, no_graph = runs
    if with_graph.impl is twin:
        assert_close(with_graph, ref_graph, tol, f"{case}: {twin.__name__} {where}")
    if no_graph.impl is twin:
        assert_close(no_graph, ref_forward, tol, f"{case}: {twin.__name__} {where}, without a graph")


def check_twins(case):
    """Every CPU twin that suits the case against the reference, float32 and float64, 1-3 threads."""
    arrays, buffers, rng = case.make()
    gy = upstream(case, arrays, buffers, rng)
    ran = set()
    for dtype in DTYPES:
        with miniran.reference_only():
            ref_graph = run(case, arrays, buffers, dtype, np, gy)
            ref_forward = run(case, arrays, buffers, dtype, np)
        assert ref_graph.impl is case.ref
        for r in (ref_graph, ref_forward):
            kept = {k: a.dtype for k, a in r.arrays.items() if a is not None and a.dtype != dtype}
            assert not kept, f"{case}: the reference, given {dtype.__name__}, returned {kept}"
        for n in THREAD_COUNTS:
            for twin, with_graph, no_graph in twins_run(case, dtype, np, gy, arrays, buffers, n):
                ran.add(twin)
                _compare_twin(case, twin, (with_graph, no_graph), ref_graph, ref_forward, case.tol[dtype],
                              f"{dtype.__name__}, {n} thread(s)")
    if case.expect is not None:
        for n in THREAD_COUNTS:
            with cpu_threads(n):
                got = run(case, arrays, buffers, np.float32, np, gy)
            assert got.impl.__name__ == case.expect, (
                f"{case}: with {n} thread(s) the dispatch ran {got.impl.__name__}, expected {case.expect}")
    return ran


def check_gpu(case, cp):
    """On a CuPy device: the reference there against the CPU's, and each GPU twin against both."""
    arrays, buffers, rng = case.make()
    gy = upstream(case, arrays, buffers, rng)
    ran = set()
    for dtype in DTYPES:
        tol = (case.gpu_tol or case.tol)[dtype]
        with miniran.reference_only():
            cpu_graph = run(case, arrays, buffers, dtype, np, gy)
            dev_graph = run(case, arrays, buffers, dtype, cp, gy)
            dev_forward = run(case, arrays, buffers, dtype, cp)
        assert dev_graph.impl is case.ref, f"{case}: reference_only() ran {dev_graph.impl.__name__} on the device"
        assert_close(dev_graph, cpu_graph, tol, f"{case}: the reference on the device against the CPU reference, "
                                                f"{dtype.__name__}")
        for twin, with_graph, no_graph in twins_run(case, dtype, cp, gy, arrays, buffers, None):
            ran.add(twin)
            _compare_twin(case, twin, (with_graph, no_graph), dev_graph, dev_forward, tol,
                          f"{dtype.__name__} on the device")
            if with_graph.impl is twin:
                assert_close(with_graph, cpu_graph, tol, f"{case}: {twin.__name__} against the CPU reference")
    return ran


def check_torch(case, torch):
    """PyTorch's equivalent, float64: output, input gradients, buffers."""
    if case.torch is None:
        return
    arrays, buffers, rng = case.make()
    gy = upstream(case, arrays, buffers, rng)
    with miniran.reference_only():
        ours = run(case, arrays, buffers, np.float64, np, gy)
    ts = [torch.tensor(a, requires_grad=True) if a.dtype.kind == "f" else torch.tensor(a) for a in arrays]
    bufs = {k: torch.tensor(v.copy()) for k, v in buffers.items()}
    y = case.torch(torch, *ts, **case.kwargs, **bufs)
    y.backward(torch.tensor(gy, dtype=y.dtype))
    theirs = {"output": y.detach().numpy()}
    for i, t in enumerate(ts):
        if t.dtype.is_floating_point:
            theirs[f"grad of input {i}"] = t.grad.numpy()
    theirs.update({f"buffer {k}": v.numpy() for k, v in bufs.items()})
    assert_close(ours, Run(type(y), theirs), 1e-10, f"{case}: against PyTorch")


def check_dispatch(case):
    """A Function with twins is reached through the dispatch (the only way its twins run)."""
    if not _dispatch.twins(case.ref):
        return
    arrays, buffers, _ = case.make()
    with _Spy() as spy:
        run(case, arrays, buffers, np.float64)
    assert spy.chosen(case.ref), (f"{case}: {case.ref.__name__} has twins "
                                  f"({[t.__name__ for t in _dispatch.twins(case.ref)]}) but the call does not "
                                  "go through _dispatch.apply, so they never run")


PARTS = {"gradient": check_gradient, "oracle": check_oracle, "twins": check_twins, "dispatch": check_dispatch}


def check(case, part, *, cp=None, torch=None):
    """The one helper: run ``part`` of the check on ``case`` (module docstring); returns the twins that ran, if any."""
    if part == "gpu":
        return check_gpu(case, cp)
    if part == "torch":
        return check_torch(case, torch)
    return PARTS[part](case)


def suiting_twins(cases, xp=np, dtype=np.float32):
    """The twins whose ``suits`` accepts some case of ``cases``.

    On xp's device, with and without a graph, with 1-3 CPU threads: ``suits``
    is asked directly, with the arrays and params the public function gave
    the dispatch.
    """
    found = set()
    for case in cases:
        arrays, buffers, rng = case.make()
        gy = upstream(case, arrays, buffers, rng)
        calls = []
        for g in (gy, None):
            with _Spy() as spy:
                run(case, arrays, buffers, dtype, xp, g)
            calls += [c for c in spy.calls if c[0] is case.ref]
        for _, _, raw, params, grad in calls:
            for n in THREAD_COUNTS:
                with cpu_threads(n):
                    found.update(t for t in _dispatch.twins(case.ref) if t.suits(raw, params, grad))
    return found


def is_gpu_twin(twin) -> bool:
    """GPU twins live in the engine's ``*_gpu`` modules."""
    return twin.__module__.rsplit(".", 1)[-1].endswith("_gpu")


# --------------------------------------------------------------------------- the cases


def _torch_conv(torch, x, w, b=None, stride=1, padding=0):
    return torch.nn.functional.conv2d(x, w, b, stride, padding)


def _conv(name, xs, ws, stride=1, padding=0, bias=True, **extra):
    shapes = (xs, ws) + ((ws[0],) if bias else ())
    return Case(name, F.conv2d, Conv2dFunction, normal(*shapes), {"stride": stride, "padding": padding},
                oracle=naive_conv2d, torch=_torch_conv, **extra)


CONV_CASES = [
    _conv("conv2d 1x1", (5, 6, 8, 7), (4, 6, 1, 1), expect="Conv2dPointwiseCPU"),
    _conv("conv2d 1x1 stride 2 no bias", (3, 6, 9, 8), (7, 6, 1, 1), stride=2, bias=False,
          expect="Conv2dPointwiseCPU"),
    _conv("conv2d 1x1 padding 1", (3, 2, 6, 6), (3, 2, 1, 1), padding=1, expect="Conv2dBatchedCPU"),
    _conv("conv2d 3x3 pad 1 16x16 (Winograd)", (3, 8, 16, 16), (6, 8, 3, 3), padding=1,
          expect="Conv2dWinogradCPU"),
    _conv("conv2d 3x3 pad 1 odd 17x19 no bias (Winograd)", (5, 9, 17, 19), (4, 9, 3, 3), padding=1, bias=False,
          expect="Conv2dWinogradCPU"),
    _conv("conv2d 3x3 pad 0 odd 18x20 (Winograd)", (2, 8, 18, 20), (3, 8, 3, 3), expect="Conv2dWinogradCPU"),
    _conv("conv2d 3x3 pad 2 odd 15x16 (Winograd)", (3, 8, 15, 16), (4, 8, 3, 3), padding=2,
          expect="Conv2dWinogradCPU"),
    _conv("conv2d 3x3 pad 1 8x8", (5, 8, 8, 8), (6, 8, 3, 3), padding=1),
    _conv("conv2d 3x3 stride 2", (5, 3, 9, 8), (4, 3, 3, 3), stride=2, padding=1, expect="Conv2dBatchedCPU"),
    _conv("conv2d 3x3 RGB stem", (2, 3, 16, 16), (8, 3, 3, 3), padding=1, expect="Conv2dBatchedCPU"),
    _conv("conv2d 5x5", (4, 3, 9, 9), (2, 3, 5, 5), padding=2, expect="Conv2dBatchedCPU"),
    _conv("conv2d 5x5 no bias odd", (3, 2, 7, 11), (3, 2, 5, 5), padding=1, bias=False, expect="Conv2dBatchedCPU"),
    _conv("conv2d 3x2 stride (2, 1) pad (1, 0)", (2, 3, 7, 6), (4, 3, 3, 2), stride=(2, 1), padding=(1, 0),
          expect="Conv2dBatchedCPU"),
]


def _batch_norm(name, shape, training, relu=False, offset=0.5, running=True, **extra):
    c = shape[1]
    public = F.batch_norm_relu if relu else F.batch_norm

    def fn(x, g, b, **kw):
        return public(x, weight=g, bias=b, **kw)

    def torch_fn(torch, x, g, b, running_mean=None, running_var=None, **kw):
        y = torch.nn.functional.batch_norm(x, running_mean, running_var, weight=g, bias=b, **kw)
        return torch.relu(y) if relu else y

    def inputs(rng):
        return rng.standard_normal(shape) * 2 + offset, rng.standard_normal(c) + 1, rng.standard_normal(c)

    def buffers(rng):
        return {"running_mean": offset + rng.standard_normal(c) * 0.3, "running_var": rng.uniform(2.0, 6.0, c)}

    return Case(name, fn, BatchNorm, inputs, {"training": training, "momentum": 0.1, "eps": 1e-5},
                buffers=buffers if running else None, oracle=functools.partial(naive_batch_norm, relu=relu),
                torch=torch_fn, **extra)


# |mean| >> std (mean^2 / var ~ 2e4): float32 keeps ~1e-5 of the centred values here; the GPU
# twin's one-pass E[x^2] - E[x]^2 (accumulated in double) loses ~1e-11 of them in float64
BIG_MEAN_TOL = {"tol": {np.float32: 1e-4, np.float64: 1e-10}, "gpu_tol": {np.float32: 1e-4, np.float64: 1e-9}}

BATCH_NORM_CASES = [
    _batch_norm("batch_norm training 4-D", (5, 3, 7, 6), True, expect="BatchNormCPU"),
    _batch_norm("batch_norm eval 4-D", (5, 3, 7, 6), False, expect="BatchNormCPU"),
    _batch_norm("batch_norm training 4-D big mean", (7, 4, 4, 4), True, offset=300.0, **BIG_MEAN_TOL),
    _batch_norm("batch_norm eval 4-D big mean", (5, 3, 4, 5), False, offset=300.0, **BIG_MEAN_TOL),
    _batch_norm("batch_norm_relu training 4-D big mean", (5, 3, 4, 5), True, relu=True, offset=300.0,
                **BIG_MEAN_TOL),
    _batch_norm("batch_norm_relu eval 4-D big mean", (5, 3, 7, 6), False, relu=True, offset=300.0,
                **BIG_MEAN_TOL),
    # 1x1 maps: the statistics over the batch alone (training with N = 2 would normalise every
    # channel to about -1, +1 whatever x is: its x gradient is rounding noise)
    _batch_norm("batch_norm training 4-D 1x1 maps big mean", (3, 6, 1, 1), True, offset=300.0, **BIG_MEAN_TOL),
    _batch_norm("batch_norm training 4-D 1x1 maps", (3, 6, 1, 1), True),
    _batch_norm("batch_norm eval 4-D 1x1 maps", (2, 6, 1, 1), False),
    _batch_norm("batch_norm_relu training 4-D 1x1 maps", (3, 6, 1, 1), True, relu=True),
    _batch_norm("batch_norm training 4-D no running stats", (3, 5, 4, 3), True, running=False),
    _batch_norm("batch_norm training 2-D", (6, 5), True),
    _batch_norm("batch_norm eval 2-D", (6, 5), False),
    _batch_norm("batch_norm_relu training 4-D", (5, 3, 7, 6), True, relu=True, expect="BatchNormCPU"),
    _batch_norm("batch_norm_relu eval 4-D", (4, 3, 5, 5), False, relu=True),
    _batch_norm("batch_norm_relu training 2-D", (6, 5), True, relu=True),
    _batch_norm("batch_norm_relu eval 2-D", (6, 5), False, relu=True),
    # channels of more than 16384 values (36*23*21 = 17388): BatchNormGPU's two-stage kernels,
    # 5 blocks per channel, the last one short (no gradient check: too many elements)
    _batch_norm("batch_norm training 4-D two-stage channels", (36, 2, 23, 21), True, gradcheck=None),
    _batch_norm("batch_norm_relu training 4-D two-stage channels big mean", (36, 2, 23, 21), True, relu=True,
                offset=300.0, gradcheck=None, **BIG_MEAN_TOL),
    _batch_norm("batch_norm_relu eval 4-D two-stage channels", (36, 2, 23, 21), False, relu=True, gradcheck=None),
]


def _max_pool(name, shape, inputs=None, gradcheck=True, **kwargs):
    def torch_fn(torch, x, kernel_size, stride=None, padding=0, ceil_mode=False):
        return torch.nn.functional.max_pool2d(x, kernel_size, stride, padding, ceil_mode=ceil_mode)
    # a CPU twin selects the same entries as the reference, and routes the gradient to the same ones
    return Case(name, F.max_pool2d, MaxPool2dFunction, inputs or distinct(shape), kwargs,
                tol=EXACT_F64, gpu_tol=dict(TOL), gradcheck={} if gradcheck else None,
                oracle=functools.partial(naive_pool2d, kind="max"), torch=torch_fn)


def _avg_pool(name, shape, **kwargs):
    def torch_fn(torch, x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
        return torch.nn.functional.avg_pool2d(x, kernel_size, stride, padding, ceil_mode, count_include_pad)
    return Case(name, F.avg_pool2d, AvgPool2dFunction, normal(shape), kwargs, tol=TIGHT_F64, gpu_tol=dict(TOL),
                oracle=functools.partial(naive_pool2d, kind="avg"), torch=torch_fn)


def _ties(shape):
    return lambda rng: (rng.integers(0, 3, size=shape).astype(np.float64),)


POOL_CASES = [
    _max_pool("max_pool2d 2x2", (5, 3, 8, 8), kernel_size=2),
    _max_pool("max_pool2d 3x3 stride 2 pad 1", (3, 4, 9, 8), kernel_size=3, stride=2, padding=1),
    _max_pool("max_pool2d 3x3 stride 2 ceil_mode", (3, 2, 8, 7), kernel_size=3, stride=2, ceil_mode=True),
    _max_pool("max_pool2d 3x3 stride 2 pad 1 ceil_mode odd", (2, 3, 6, 5), kernel_size=3, stride=2, padding=1,
              ceil_mode=True),
    _max_pool("max_pool2d ties", (5, 3, 9, 8), inputs=_ties((5, 3, 9, 8)), gradcheck=False, kernel_size=3,
              stride=2, padding=1),
    _max_pool("max_pool2d ties 4x4", (7, 2, 4, 4), inputs=_ties((7, 2, 4, 4)), gradcheck=False, kernel_size=3,
              stride=2, padding=1),
    _avg_pool("avg_pool2d 2x2", (5, 3, 8, 8), kernel_size=2),
    _avg_pool("avg_pool2d 3x3 stride 2 pad 1 count_include_pad", (3, 4, 9, 8), kernel_size=3, stride=2,
              padding=1, count_include_pad=True),
    _avg_pool("avg_pool2d 3x3 stride 2 pad 1 exclude pad", (5, 3, 9, 8), kernel_size=3, stride=2, padding=1,
              count_include_pad=False),
    _avg_pool("avg_pool2d 3x3 stride 2 pad 1 ceil_mode exclude pad", (3, 4, 9, 8), kernel_size=3, stride=2,
              padding=1, ceil_mode=True, count_include_pad=False),
    _avg_pool("avg_pool2d 3x3 stride 2 ceil_mode count_include_pad", (2, 3, 8, 7), kernel_size=3, stride=2,
              padding=1, ceil_mode=True, count_include_pad=True),
    Case("global_avg_pool2d", F.global_avg_pool2d, GlobalAvgPool2dFunction, normal((5, 6, 7, 5)),
         tol={np.float32: TOL[np.float32], np.float64: 1e-14}, gpu_tol=dict(TOL),
         torch=lambda torch, x: x.mean(dim=(2, 3))),
]


def _zeros_and_normal(shape):
    return lambda rng: (np.where(rng.random(shape) < 0.3, 0.0, rng.standard_normal(shape)),)


ELEMENTWISE_CASES = [
    Case("sigmoid", F.sigmoid, SigmoidFunction, normal((5, 3, 4, 6), scale=4.0), tol=TIGHT_F64,
         gpu_tol=dict(TOL), torch=lambda torch, x: torch.sigmoid(x)),
    Case("sigmoid saturated", F.sigmoid, SigmoidFunction,
         lambda rng: (rng.permutation(np.linspace(-40.0, 40.0, 3 * 50)).reshape(3, 50),), tol=TIGHT_F64,
         gpu_tol=dict(TOL), torch=lambda torch, x: torch.sigmoid(x)),
    # large |x| (to ~100): the tanh form never overflows
    Case("sigmoid large |x|", F.sigmoid, SigmoidFunction, normal((7, 3, 5, 4), scale=30.0), tol=TIGHT_F64,
         gpu_tol=dict(TOL), torch=lambda torch, x: torch.sigmoid(x)),
    Case("relu", F.relu, ReLUFunction, normal((5, 3, 4, 6)), torch=lambda torch, x: torch.relu(x)),
    Case("relu at exact zeros", F.relu, ReLUFunction, _zeros_and_normal((3, 4, 5, 6)), gradcheck=None,
         torch=lambda torch, x: torch.relu(x)),
    Case("add", F.add, Add, normal((7, 3, 5, 4), (7, 3, 5, 4)), tol=EXACT, gpu_tol=dict(TOL),
         torch=lambda torch, a, b: a + b),
    Case("add broadcast (1, C, 1, 1)", F.add, Add, normal((5, 3, 6, 4), (1, 3, 1, 1)),
         torch=lambda torch, a, b: a + b),
    Case("add broadcast (H, W) + (N, C, H, W)", F.add, Add, normal((6, 4), (3, 2, 6, 4)),
         torch=lambda torch, a, b: a + b),
    Case("mul", F.mul, Mul, normal((7, 3, 5, 4), (7, 3, 5, 4)), tol=EXACT, gpu_tol=dict(TOL),
         torch=lambda torch, a, b: a * b),
    Case("mul broadcast (N, 1, H, W)", F.mul, Mul, normal((5, 3, 6, 4), (5, 1, 6, 4)),
         torch=lambda torch, a, b: a * b),
    Case("mul broadcast (N, C, 1, 1)", F.mul, Mul, normal((5, 3, 6, 4), (5, 3, 1, 1)),
         torch=lambda torch, a, b: a * b),
]


def _torch_bilinear(torch, x, size, align_corners):
    return torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


def _labels(n, k):
    return lambda rng: (rng.standard_normal((n, k)) * 3, rng.integers(0, k, size=n))


def naive_cross_entropy(logits, labels, label_smoothing=0.0):
    """Cross-entropy against the smoothed target, one example and one class at a time."""
    n, k = logits.shape
    total = 0.0
    for i in range(n):
        log_z = np.log(sum(np.exp(v) for v in logits[i]))
        for j in range(k):
            target = (1 - label_smoothing) * (j == labels[i]) + label_smoothing / k
            total -= target * (logits[i, j] - log_z)
    return np.array(total / n)


OTHER_CASES = [
    Case("interpolate_bilinear up, align_corners", F.interpolate_bilinear, InterpolateBilinear,
         normal((2, 3, 4, 5)), {"size": (8, 9), "align_corners": True}, oracle=naive_bilinear,
         torch=_torch_bilinear),
    Case("interpolate_bilinear down, half-pixel", F.interpolate_bilinear, InterpolateBilinear,
         normal((2, 3, 9, 7)), {"size": (4, 5), "align_corners": False}, oracle=naive_bilinear,
         torch=_torch_bilinear),
    Case("cross_entropy", F.cross_entropy, CrossEntropy, _labels(7, 5), oracle=naive_cross_entropy,
         torch=lambda torch, logits, labels: torch.nn.functional.cross_entropy(logits, labels)),
    Case("cross_entropy, label smoothing", F.cross_entropy, CrossEntropy, _labels(7, 5),
         {"label_smoothing": 0.1}, oracle=naive_cross_entropy,
         torch=lambda torch, logits, labels, label_smoothing: torch.nn.functional.cross_entropy(
             logits, labels, label_smoothing=label_smoothing)),
    Case("spatial_sigmoid", F.spatial_sigmoid, SpatialSigmoid, normal((3, 4, 5, 6), scale=2.0, offset=1.0),
         {"eps": 1e-5},
         torch=lambda torch, x, eps: torch.sigmoid(torch.nn.functional.instance_norm(x, eps=eps))),
    Case("channel_l2_normalize", F.channel_l2_normalize, ChannelL2Normalize, normal((3, 4, 5, 6)),
         {"eps": 1e-12}, torch=lambda torch, x, eps: x / torch.sqrt((x * x).sum(dim=1, keepdim=True) + eps)),
]

CASES = CONV_CASES + BATCH_NORM_CASES + POOL_CASES + ELEMENTWISE_CASES + OTHER_CASES
