"""Model summaries (output shapes, parameters, multiply-adds) and capturing intermediate outputs."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from miniran import nn
from miniran.autograd import Tensor, no_grad
from miniran.backend import DEFAULT_DTYPE


@dataclass
class SummaryRow:
    name: str
    kind: str
    output_shape: tuple
    params: int
    mult_adds: int
    depth: int


class Summary:
    """The result of :func:`summary`: ``rows``, ``total_params``, ``total_mult_adds``; ``str()`` is a table."""

    def __init__(self, rows, total_params, total_mult_adds, input_shape):
        self.rows = rows
        self.total_params = total_params
        self.total_mult_adds = total_mult_adds
        self.input_shape = input_shape

    def __str__(self):
        header = f"{'layer':<48} {'type':<20} {'output shape':<22} {'params':>12} {'mult-adds':>16}"
        lines = [header, "-" * len(header)]
        for r in self.rows:
            name = "  " * max(r.depth - 1, 0) + r.name.rsplit(".", 1)[-1] if r.depth else r.name
            lines.append(
                f"{name[:48]:<48} {r.kind[:20]:<20} {str(r.output_shape):<22} {r.params:>12,} {r.mult_adds:>16,}"
            )
        lines.append("-" * len(header))
        lines.append(f"input shape: {self.input_shape}")
        lines.append(f"total parameters: {self.total_params:,}")
        lines.append(f"total multiply-adds (conv + linear, per forward pass): {self.total_mult_adds:,}")
        return "\n".join(lines)

    __repr__ = __str__


def _own_mult_adds(module, output):
    """Multiply-adds of one conv or linear call (0 for other layers)."""
    w = getattr(module, "weight", None)
    if w is None or not hasattr(output, "shape"):
        return 0
    if w.ndim == 4:  # conv: every output element is a dot product of length C*KH*KW
        return int(np.prod(output.shape)) * int(np.prod(w.shape[1:]))
    if w.ndim == 2:  # linear
        return int(np.prod(output.shape)) * int(w.shape[1])
    return 0


def summary(model: nn.Module, input_shape, max_depth: int | None = None) -> Summary:
    """Run one forward pass on zeros of ``input_shape`` and tabulate every module.

    Args:
        model: any module taking one (N, C, H, W) tensor.
        input_shape: e.g. ``(1, 3, 32, 32)``; multiply-adds are for this batch size.
        max_depth: only list modules nested at most this deep (totals always cover everything).

    The model runs in evaluation mode under ``no_grad`` (batch-norm running
    statistics are untouched) and is put back in its previous mode.
    """
    names = {id(m): n for n, m in model.named_modules()}
    calls = {}
    handles = []

    def hook(module, inputs, output):
        key = names[id(module)]
        if key not in calls:
            calls[key] = (tuple(output.shape) if hasattr(output, "shape") else (), _own_mult_adds(module, output))

    for name, module in model.named_modules():
        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        x = Tensor(np.zeros(input_shape, dtype=DEFAULT_DTYPE))
        if model.device == "gpu":
            x = x.to("gpu")
        with no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    rows = []
    for name, module in model.named_modules():
        depth = 0 if not name else name.count(".") + 1
        if max_depth is not None and depth > max_depth:
            continue
        prefix = name + "." if name else ""
        macs = sum(m for k, (_, m) in calls.items() if k == name or k.startswith(prefix))
        params = sum(p.size for p in module.parameters())
        shape = calls.get(name, ((), 0))[0]
        rows.append(SummaryRow(name or type(model).__name__, type(module).__name__, shape, params, macs, depth))
    total_macs = sum(m for _, m in calls.values())
    return Summary(rows, model.num_parameters(), total_macs, tuple(input_shape))


@contextlib.contextmanager
def capture_outputs(model: nn.Module, names):
    """Record the outputs of the named sub-modules during the forward passes inside the block.

    Example::

        with capture_outputs(net, ["stages.0.1.soft_mask", "stages.0"]) as out:
            net(images)
        mask = out["stages.0.1.soft_mask"][0]    # a detached Tensor

    Yields a dict name -> list of detached tensors (one per call).
    """
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise KeyError(f"capture_outputs: no module named {', '.join(missing)}; "
                       f"names look like {', '.join(list(modules)[1:4])}")
    captured = {n: [] for n in names}
    handles = [
        modules[n].register_forward_hook(lambda m, i, out, n=n: captured[n].append(out.detach()))
        for n in names
    ]
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()
