"""No twin changes a result more than rounding should, at the level of the whole Attention-56.

Each Function alone is tested against its reference (tests/function_cases.py);
this test guards what 56 layers of them do together. The float32 parameter
gradients of one training step are compared with a float64 reference (the
same weights, ``reference_only()``) on several seeded CIFAR-shaped batches,
for the float32 reference itself and for the engine (the default dispatch)
on 1 and 2 CPU threads. The measure is robust: per parameter the relative L2
error ``||g32 - g64|| / ||g64||``, pooled over the batches, then its median
and 90th percentile over the parameters. One batch is not enough: on a single
batch the statistics can differ by orders of magnitude by accident.

Every engine configuration must stay within 2x of the float32 reference's
median and 90th percentile, and below an absolute bound.
"""

from __future__ import annotations

import numpy as np

import miniran
import miniran.functional as F
from miniran import Tensor, models, threads

#: an absolute sanity bound on the median and p90 over parameters (measured over seeds 0-3:
#: medians 2e-3 to 4e-3, p90s 4e-3 to 1.1e-2; ``pytest -s`` prints this run's)
ABSOLUTE_BOUND = {"median": 1e-2, "p90": 3e-2}


def _gradients(model, x, labels, reference):
    """The parameter gradients (host copies) of one training step's loss."""
    model.zero_grad()
    if reference:
        with miniran.reference_only():
            F.cross_entropy(model(Tensor(x)), labels).backward()
    else:
        F.cross_entropy(model(Tensor(x)), labels).backward()
    return [p.grad.copy() for p in model.parameters()]


def gradient_errors(seed, batches, batch_size, thread_counts=(1, 2)):
    """Relative L2 errors of the float32 gradients against float64, per configuration.

    Returns ``{configuration: array of ||g32 - g64|| / ||g64||}``, one entry per
    (batch, parameter) whose float64 gradient is not zero. Every model starts
    from the same float32 state before every step (batch norm trains, and
    updates its running statistics).
    """
    model32 = models.attention56(num_classes=10, seed=seed).train()
    state = {k: np.array(v, copy=True) for k, v in model32.state_dict().items()}
    model64 = models.attention56(num_classes=10, seed=seed).astype(np.float64).train()
    configs = [("reference float32", None)] + [(f"engine, {n} thread{'s' * (n > 1)}", n) for n in thread_counts]
    errors = {name: [] for name, _ in configs}
    rng = np.random.default_rng(seed)
    for _ in range(batches):
        x32 = rng.standard_normal((batch_size, 3, 32, 32)).astype(np.float32)
        labels = rng.integers(0, 10, size=batch_size)
        model64.load_state_dict(state)
        g64 = _gradients(model64, x32.astype(np.float64), labels, reference=True)
        for name, n in configs:
            model32.load_state_dict(state)
            threads.set_cpu_threads(n)
            try:
                g32 = _gradients(model32, x32, labels, reference=n is None)
            finally:
                threads.set_cpu_threads(None)
            assert all(g.dtype == np.float32 for g in g32), f"{name}: a float32 model got non-float32 gradients"
            for a, b in zip(g32, g64):
                norm = np.linalg.norm(b)
                if norm > 0:
                    errors[name].append(np.linalg.norm(a.astype(np.float64) - b) / norm)
    return {name: np.array(e) for name, e in errors.items()}


def _assert_twins_like_reference(errors):
    summary = {name: {"median": float(np.median(e)), "p90": float(np.percentile(e, 90))} for name, e in errors.items()}
    for name, s in summary.items():
        print(f"{name:>20}: median {s['median']:.3g}, p90 {s['p90']:.3g} ({len(errors[name])} gradients)")
    ref = summary["reference float32"]
    for name, s in summary.items():
        for stat in ("median", "p90"):
            assert s[stat] <= ABSOLUTE_BOUND[stat], f"{name}: {stat} {s[stat]:.3g} > {ABSOLUTE_BOUND[stat]:g}"
            assert s[stat] <= 2 * ref[stat], (
                f"{name}: {stat} relative gradient error {s[stat]:.3g} is more than twice the float32 "
                f"reference's {ref[stat]:.3g}")


def test_attention56_float32_gradients_of_the_engine_like_the_reference():
    """4 batches of 4 CIFAR images: the engine on 1 and 2 threads within 2x of the float32 reference."""
    _assert_twins_like_reference(gradient_errors(seed=0, batches=4, batch_size=4))
