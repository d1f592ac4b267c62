"""Diagrams for the tutorials, drawn with matplotlib from miniran's own objects.

This is a top layer of the package (beside ``train`` and ``viz``): it may
import everything below it, and nothing imports it. Every function draws into
``ax`` when one is given, else into a new figure, and returns the Figure.

* :func:`attention_module`: the Attention Module of the paper's Fig. 2, with
  its three hyper-parameters ``p``, ``t`` and ``r`` written into the boxes
  (read from an :class:`~miniran.models.AttentionModule` when one is given).
* :func:`bottleneck_unit`: the pre-activation bottleneck unit, with an
  identity or a projection shortcut (:class:`~miniran.models.PreActBottleneck`).
* :func:`graph_nodes` and :func:`computation_graph`: the graph that autograd
  recorded behind a tensor, found by walking ``Tensor.creator`` and
  ``Function.inputs``, drawn as tensors (boxes) and functions (ovals).
* :func:`batch_norm_staged` and :func:`batch_norm_graph`: batch norm written
  as the elementary operations one differentiates by hand (mean, centred x,
  variance, inverse standard deviation, x-hat, gamma * x-hat + beta), and the
  graph miniran records for them.
* :func:`im2col_window`: a padded input with one kernel window highlighted,
  and the column of ``F.im2col``'s matrix where that window's values land.

Every box is a ``FancyBboxPatch`` with the gid ``"diagram-box"`` and its text
the gid ``"diagram-label"``, so tests (and curious readers) can find them.
Bad arguments (a negative count, ``kernel_size=0``, a NumPy array where a
Tensor is needed, a 3-D image) are refused before anything is drawn, with one
line naming the function, the argument and what was expected (``ValueError``,
or ``TypeError`` for a value of the wrong type).
Draw a computation graph *before* calling ``backward`` (or pass
``retain_graph=True`` to it): backward frees the functions' inputs.
"""

from __future__ import annotations

import numbers

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

import miniran.functional as F
from miniran import backend
from miniran.autograd import Tensor
from miniran.models import AttentionModule, PreActBottleneck

__all__ = [
    "attention_module", "batch_norm_graph", "batch_norm_staged", "bottleneck_unit", "computation_graph",
    "graph_nodes", "im2col_window",
]

BOX_GID = "diagram-box"
LABEL_GID = "diagram-label"

COLOURS = {
    "io": "#eeeeee", "unit": "#cfe2f3", "trunk": "#d9ead3", "mask": "#fce5cd", "fuse": "#f4cccc",
    "bn": "#fff2cc", "conv": "#cfe2f3", "tensor": "#cfe2f3", "leaf": "#d9ead3", "const": "#eeeeee",
    "function": "#fce5cd",
}


# --------------------------------------------------------------------------- argument checks


def _count(fname, name, value, low, what=""):
    """``value`` as an int, refused in one line unless it is an int (not a bool) ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{fname}: {name} must be an int >= {low}{what}, got {value!r}")
    if value < low:
        raise ValueError(f"{fname}: {name} must be an int >= {low}{what}, got {value!r}")
    return int(value)


def _check_roots(fname, roots, names=None):
    """The tensors whose graph is drawn: at least one, each a miniran Tensor; so is each of ``names``.

    Returns ``{id(tensor): label}`` of ``names``.
    """
    for label, t in (names or {}).items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{fname}: names[{label!r}] must be a Tensor of the graph, got {type(t).__name__}")
    if not roots:
        raise ValueError(f"{fname}: give at least one Tensor, the result whose graph to draw "
                         f"(e.g. {fname}(loss))")
    for i, root in enumerate(roots):
        if not isinstance(root, Tensor):
            raise TypeError(f"{fname}: root {i} must be a miniran Tensor (the result of operations on "
                            f"Tensors), got {type(root).__name__}; wrap an array as Tensor(array)")
    return {id(t): label for label, t in (names or {}).items()}


# --------------------------------------------------------------------------- drawing helpers


def _axes(ax, figsize):
    """``(fig, ax)``: the given axes, or a new figure with one axes; axes off, equal aspect."""
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
    ax.set_axis_off()
    ax.set_aspect("equal")
    return ax.figure, ax


def _box(ax, xy, text, width=1.0, height=0.5, colour="#cfe2f3", fontsize=8, style="round,pad=0.02",
         ls="-"):
    """A labelled box centred at ``xy``; returns the patch."""
    x, y = xy
    patch = FancyBboxPatch((x - width / 2, y - height / 2), width, height, boxstyle=style,
                           fc=colour, ec="black", lw=0.8, ls=ls, gid=BOX_GID)
    ax.add_patch(patch)
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, gid=LABEL_GID)
    return patch


def _arrow(ax, a, b, rad=0.0, colour="black", label=None, ls="-"):
    """An arrow from patch (or point) ``a`` to patch (or point) ``b``."""
    kw = dict(arrowstyle="-|>", mutation_scale=9, color=colour, lw=0.9, ls=ls,
              connectionstyle=f"arc3,rad={rad}")
    if isinstance(a, FancyBboxPatch):
        kw["patchA"] = a
        a = _centre(a)
    if isinstance(b, FancyBboxPatch):
        kw["patchB"] = b
        b = _centre(b)
    ax.add_patch(FancyArrowPatch(a, b, **kw))
    if label:
        ax.text((a[0] + b[0]) / 2, (a[1] + b[1]) / 2 + 0.12, label, fontsize=7, ha="center", va="bottom",
                color=colour)


def _centre(patch):
    return patch.get_x() + patch.get_width() / 2, patch.get_y() + patch.get_height() / 2


def _fit(ax, margin=0.4):
    """Axis limits around everything drawn."""
    xs, ys = [], []
    for p in ax.patches:
        if p.get_gid() == BOX_GID:
            xs += [p.get_x(), p.get_x() + p.get_width()]
            ys += [p.get_y(), p.get_y() + p.get_height()]
    for t in ax.texts:
        xs.append(t.get_position()[0])
        ys.append(t.get_position()[1])
    ax.set_xlim(min(xs) - margin, max(xs) + margin)
    ax.set_ylim(min(ys) - margin, max(ys) + margin)


# --------------------------------------------------------------------------- (a) the Attention Module


def attention_module(module=None, *, p=1, t=2, r=1, pools=3, residual=True, size=32, ax=None):
    """The Attention Module of Fig. 2, with ``p``, ``t`` and ``r`` in the boxes.

    Args:
        module: an :class:`~miniran.models.AttentionModule` with the
            encoder-decoder mask; when given, ``p``, ``t``, ``r``, ``pools`` and
            ``residual`` are read from its ``config``.
        p: residual units before the split (pre) and after the fusion (post).
        t: residual units in the trunk branch.
        r: residual units between adjacent max poolings in the soft mask
            branch (2r at the lowest resolution; one skip unit per level).
        pools: max poolings in the mask branch (3 in stage 1 of the networks).
        size: side of the module's input, to print the resolution of each level.

    The soft mask branch is drawn as an hourglass: each level down is one
    pooling (half the resolution), and each skip unit joins the top-down path
    at the level of the encoder map it reads.
    """
    if module is not None:
        if not isinstance(module, AttentionModule):
            raise TypeError(f"attention_module: module must be an AttentionModule (or None), "
                            f"got {type(module).__name__}")
        c = module.config
        if c["mask"] != "encoder_decoder":
            raise ValueError("attention_module draws the encoder-decoder mask; this module has "
                             f"mask={c['mask']!r}")
        p, t, r, pools, residual = c["p"], c["t"], c["r"], c["pools"], c["residual"]
    pools = _count("attention_module", "pools", pools, 1, " (max poolings in the soft mask branch)")
    p, t, r = (_count("attention_module", name, value, 0, " (residual units)")
               for name, value in (("p", p), ("t", t), ("r", r)))
    size = _count("attention_module", "size", size, 1, " (the side of the module's input)")
    step, dy = 1.45, 0.75                     # distance between boxes along the path, between levels
    w, h = 1.32, 0.55
    inch = 0.8                                # figure inches per data unit: fonts fit the boxes
    fig, ax = _axes(ax, (inch * step * (2 * pools + 5), inch * (3.6 + dy * pools)))
    y_trunk, y_main, y_mask = 1.4, 0.6, -0.3  # rows: trunk, the main path, level 0 of the mask
    n_mask = 2 * pools + 1                    # down boxes, up boxes, the last upsample + head

    x_in = _box(ax, (0, y_main), "input x", w * 0.8, h, COLOURS["io"])
    pre = _box(ax, (step, y_main), f"pre:\np = {p} units", w, h, COLOURS["unit"])
    x_end = step * (2 + n_mask)
    trunk = _box(ax, ((2 * step + x_end - step) / 2, y_trunk), f"trunk branch: t = {t} residual units  ->  T",
                 x_end - 2.5 * step, h, COLOURS["trunk"])
    _arrow(ax, x_in, pre)
    _arrow(ax, pre, trunk, rad=-0.2)

    head, level_y = _soft_mask_branch(ax, pre, pools, r, step, dy, w, h, y_mask)
    fuse = _box(ax, (x_end - step, y_main), "(1 + M) * T" if residual else "M * T", w * 0.9, h, COLOURS["fuse"])
    _arrow(ax, trunk, fuse, rad=-0.2)
    _arrow(ax, head, fuse, rad=0.2)
    post = _box(ax, (x_end, y_main), f"post:\np = {p} units", w, h, COLOURS["unit"])
    out = _box(ax, (x_end + step, y_main), "output H", w * 0.8, h, COLOURS["io"])
    _arrow(ax, fuse, post)
    _arrow(ax, post, out)
    _mask_levels_and_legend(ax, level_y, step, size)
    _fit(ax)
    ax.set_title(f"Attention Module (Fig. 2): p = {p}, t = {t}, r = {r}, {pools} poolings, "
                 + ("attention residual learning" if residual else "naive attention learning"), fontsize=9)
    return fig


def _soft_mask_branch(ax, pre, pools, r, step, dy, w, h, y_mask):
    """The hourglass of the soft mask branch, from the ``pre`` box to the head that gives M.

    Returns the head's box and the y of each level (level 0 is the head's row).
    """
    # soft mask branch: down (pool, then units), up (upsample, + skip, units), head
    level_y = [y_mask - dy * level for level in range(pools + 1)]
    previous, encoder = pre, []
    for k in range(pools):
        units = f"2r = {2 * r}" if k == pools - 1 else f"r = {r}"
        box = _box(ax, (step * (2 + k), level_y[k + 1]), f"pool 3x3/2\n{units} units", w, h,
                   COLOURS["mask"], fontsize=7)
        _arrow(ax, previous, box, rad=0.2 if k == 0 else 0.0)
        previous = box
        encoder.append(box)
    for j, k in enumerate(reversed(range(pools - 1))):       # up to level k + 1
        x = step * (2 + pools + j)
        box = _box(ax, (x, level_y[k + 1]), f"up x2, + skip\nr = {r} units", w, h, COLOURS["mask"],
                   fontsize=7)
        _arrow(ax, previous, box)
        skip = _box(ax, ((_centre(encoder[k])[0] + x) / 2, level_y[k + 1]), "skip:\n1 unit", w * 0.7, h,
                    COLOURS["unit"], fontsize=7)
        _arrow(ax, encoder[k], skip)
        _arrow(ax, skip, box)
        previous = box
    head = _box(ax, (step * (2 + 2 * pools - 1), level_y[0]),
                "upsample to T's size\nBN-ReLU-1x1 (x2)\nsigmoid  ->  M", w * 1.05, h * 1.4, COLOURS["mask"],
                fontsize=7)
    _arrow(ax, previous, head)
    return head, level_y


def _mask_levels_and_legend(ax, level_y, step, size):
    """The resolution of each level of the mask, and the meaning of p, t and r below the drawing."""
    for level, y in enumerate(level_y[1:], start=1):
        side = max(1, size // 2 ** level)
        ax.text(step * 0.9, y, f"level {level}: {side}x{side}", fontsize=7, ha="right", va="center",
                color="0.35")
    ax.text(0, level_y[-1] - 0.75,
            "p: residual units before the split and after the fusion;  t: residual units in the trunk branch;\n"
            "r: residual units between adjacent max poolings in the soft mask branch (2r at the lowest level).",
            fontsize=8, ha="left", va="center")


# --------------------------------------------------------------------------- (b) the bottleneck unit


def bottleneck_unit(unit=None, *, in_channels=64, out_channels=64, stride=1, ax=None):
    """The pre-activation bottleneck unit (He et al. 2016), as ``PreActBottleneck`` computes it.

    ``BN-ReLU`` (the pre-activation ``a``, shared), ``conv 1x1`` to
    ``out/4`` channels, ``BN-ReLU-conv 3x3`` with the stride, ``BN-ReLU-conv
    1x1`` to ``out`` channels, plus the shortcut: the raw input ``x`` when the
    shape is kept, a strided ``conv 1x1`` of ``a`` (projection) when it changes.
    Pass a :class:`~miniran.models.PreActBottleneck` as ``unit`` to read the
    channels and the stride from it.
    """
    if unit is not None:
        if not isinstance(unit, PreActBottleneck):
            raise TypeError(f"bottleneck_unit: unit must be a PreActBottleneck (or None), got {type(unit).__name__}")
        in_channels, out_channels, stride = unit.in_channels, unit.out_channels, unit.stride
    in_channels = _count("bottleneck_unit", "in_channels", in_channels, 1)
    out_channels = _count("bottleneck_unit", "out_channels", out_channels, 4, ", a multiple of 4 "
                          "(the bottleneck width is out_channels // 4)")
    if out_channels % 4:
        raise ValueError(f"bottleneck_unit: out_channels must be a multiple of 4 (the bottleneck width is "
                         f"out_channels // 4), got {out_channels}")
    stride = _count("bottleneck_unit", "stride", stride, 1)
    width = out_channels // 4
    project = in_channels != out_channels or stride != 1
    fig, ax = _axes(ax, (3.6, 6.2))
    w, h, step = 2.0, 0.42, 0.68
    names = [
        (f"input x: {in_channels} ch", "io"),
        ("BN-ReLU  ->  a", "bn"),
        (f"conv 1x1: {in_channels} -> {width}", "conv"),
        ("BN-ReLU", "bn"),
        (f"conv 3x3, stride {stride}: {width} -> {width}", "conv"),
        ("BN-ReLU", "bn"),
        (f"conv 1x1: {width} -> {out_channels}", "conv"),
    ]
    boxes = [_box(ax, (0, -step * i), text, w, h, COLOURS[kind], fontsize=7.5) for i, (text, kind) in enumerate(names)]
    for a, b in zip(boxes, boxes[1:]):
        _arrow(ax, a, b)
    add = _box(ax, (0, -step * len(names)), "+", 0.4, 0.4, COLOURS["fuse"], fontsize=10, style="circle,pad=0.02")
    _arrow(ax, boxes[-1], add)
    out = _box(ax, (0, -step * (len(names) + 1)), f"output: {out_channels} ch", w, h, COLOURS["io"], fontsize=7.5)
    _arrow(ax, add, out)
    side = 1.75
    if project:
        short = _box(ax, (side, -step * 4), f"projection\nconv 1x1,\nstride {stride}:\n{in_channels} -> {out_channels}",
                     1.1, 1.1, COLOURS["conv"], fontsize=7)
        _arrow(ax, boxes[1], short, rad=-0.3)
        title = "projection shortcut (shape changes)"
    else:
        short = _box(ax, (side, -step * 4), "identity\n(raw x)", 1.1, 0.6, COLOURS["io"], fontsize=7)
        _arrow(ax, boxes[0], short, rad=-0.3)
        title = "identity shortcut (shape kept)"
    _arrow(ax, short, add, rad=-0.3)
    _fit(ax, margin=0.3)
    ax.set_title(f"Pre-activation bottleneck, {in_channels} -> {out_channels}, stride {stride}:\n{title}",
                 fontsize=9)
    return fig


# --------------------------------------------------------------------------- (c) computation graphs


def graph_nodes(*roots):
    """The graph behind ``roots``: ``(tensors, functions, edges)``.

    Walks ``Tensor.creator`` and ``Function.inputs`` from each root. ``tensors``
    and ``functions`` are lists in the order found (roots first); ``edges`` is
    a list of ``(source, target)`` pairs: ``(input tensor, function)`` once per
    input slot (``x * x`` gives two) and ``(function, output tensor)``.
    Raises ``RuntimeError`` if backward has already freed the graph, ``ValueError``
    without a root and ``TypeError`` for a root that is not a Tensor.
    """
    _check_roots("graph_nodes", roots)
    tensors, functions, edges = [], [], []
    seen = set()
    stack = list(roots)
    while stack:
        tensor = stack.pop()
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        tensors.append(tensor)
        func = tensor.creator
        if func is None:
            continue
        if func.inputs is None:
            raise RuntimeError("this graph was freed by backward(); draw it before, or use retain_graph=True")
        edges.append((func, tensor))
        if id(func) in seen:
            continue
        seen.add(id(func))
        functions.append(func)
        for x in func.inputs:
            edges.append((x, func))
        stack.extend(reversed(func.inputs))
    return tensors, functions, edges


def _function_label(func):
    name = type(func).__name__
    if name == "ScalarOp":
        symbol = {"add": "+", "sub": "-", "mul": "*", "div": "/"}[func.op]
        return f"{func.c:g} {symbol} ." if func.reverse else f". {symbol} {func.c:g}"
    if name == "Pow":
        return f". ** {func.c:g}"
    if name in ("Sum", "Mean", "Max") and getattr(func, "axis", None) is not None:
        return f"{name}\naxis={func.axis}"
    return name[: -len("Function")] if name.endswith("Function") and len(name) > 8 else name


def _tensor_label(tensor, names):
    name = names.get(id(tensor), tensor.name)
    if name is None and tensor.size == 1 and tensor.creator is None:
        return f"{tensor.data.item():g}"
    shape = "x".join(str(s) for s in tensor.shape) or "scalar"
    return shape if name is None else f"{name}\n{shape}"


def computation_graph(*roots, names=None, ax=None, title=None):
    """Draw the graph autograd recorded behind ``roots``, left (leaves) to right (roots).

    Tensors are boxes (green: leaves that require a gradient, grey dashed:
    constants, blue: intermediate results), labelled with their name and
    shape; functions are ovals labelled with their class (``ReLUFunction`` is
    written ``ReLU``). ``names`` maps labels to tensors, e.g.
    ``{"x": x, "w": w, "loss": loss}``. A function sits one column right of
    its newest input (``generation``), its output one further; a leaf sits
    just left of its first consumer. An input used twice (``x * x``) is
    drawn as one arrow labelled ``x2``.
    """
    names = _check_roots("computation_graph", roots, names)    # {id(tensor): label}
    tensors, functions, edges = graph_nodes(*roots)
    column = {}
    for func in functions:
        column[id(func)] = 2 * func.generation + 1
    for tensor in tensors:
        if tensor.creator is not None:
            column[id(tensor)] = 2 * tensor.generation
    for tensor in tensors:                                    # leaves: just before their first consumer
        if tensor.creator is None:
            consumers = [column[id(f)] for src, f in edges if src is tensor]
            column[id(tensor)] = min(consumers) - 1 if consumers else 0
    nodes = tensors + functions
    by_column = {}
    for node in nodes:
        by_column.setdefault(column[id(node)], []).append(node)
    n_cols = max(by_column) - min(by_column) + 1
    n_rows = max(len(v) for v in by_column.values())
    dx, dy = 1.35, 0.95
    fig, ax = _axes(ax, (min(1.0 + 0.85 * dx * n_cols, 19), 1.2 + 0.85 * dy * n_rows))
    patch = {}
    for col, members in by_column.items():
        for k, node in enumerate(members):
            xy = (dx * col, dy * ((len(members) - 1) / 2 - k))
            if isinstance(node, Tensor):
                if node.creator is not None:
                    colour, ls = COLOURS["tensor"], "-"
                elif node.requires_grad:
                    colour, ls = COLOURS["leaf"], "-"
                else:
                    colour, ls = COLOURS["const"], "--"
                patch[id(node)] = _box(ax, xy, _tensor_label(node, names), 0.9, 0.5, colour, fontsize=7, ls=ls)
            else:
                patch[id(node)] = _box(ax, xy, _function_label(node), 1.0, 0.4, COLOURS["function"],
                                       fontsize=7, style="round4,pad=0.05")
    counts, reach = {}, 0.0
    for src, dst in edges:
        counts[(id(src), id(dst))] = counts.get((id(src), id(dst)), 0) + 1
    for (a, b), n in counts.items():
        span = abs(column[b] - column[a])
        _arrow(ax, patch[a], patch[b], rad=0.25 if span > 1 else 0.0, label="x2" if n == 2 else None)
        reach = max(reach, 0.125 * dx * span if span > 1 else 0.0)    # how far an arc bulges
    _fit(ax, margin=0.3)
    low, high = ax.get_ylim()
    ax.set_ylim(low - reach, high)
    ax.set_title(title or f"the graph miniran recorded: {len(tensors)} tensors, {len(functions)} functions",
                 fontsize=9)
    return fig


# --------------------------------------------------------------------------- (d) batch norm's graph


def batch_norm_staged(x, gamma, beta, eps=1e-5, axis=0):
    """Batch norm from elementary operations: ``(y, named)``.

    ``named`` maps the names of the intermediate results (``mu``, ``xc``,
    ``var``, ``inv_std``, ``xhat``, ``y`` and the inputs) to the tensors,
    for :func:`computation_graph`. Normalises over ``axis`` (0 for (N, D)
    inputs; ``(0, 2, 3)`` for images, with ``gamma``/``beta`` shaped (1, C, 1, 1)).
    The result equals ``F.batch_norm`` (training mode, biased variance).
    """
    mu = x.mean(axis=axis, keepdims=True)
    xc = x - mu
    var = (xc * xc).mean(axis=axis, keepdims=True)
    inv_std = (var + eps) ** -0.5
    xhat = xc * inv_std
    y = gamma * xhat + beta
    named = {"x": x, "gamma": gamma, "beta": beta, "mu": mu, "xc": xc, "var": var,
             "inv_std": inv_std, "xhat": xhat, "y": y}
    return y, named


def batch_norm_graph(n=4, d=3, eps=1e-5, ax=None, seed=0):
    """The graph of :func:`batch_norm_staged` on an (n, d) input, drawn with :func:`computation_graph`.

    This is the graph a learner differentiates by hand: ``xc`` feeds both the
    variance and ``xhat`` (its gradient is a sum of two paths), and ``mu``
    and ``var`` fan every input out to every output of the same feature.
    """
    rng = np.random.default_rng(seed)
    x = Tensor(rng.standard_normal((n, d)), requires_grad=True)
    gamma = Tensor(np.ones((1, d)), requires_grad=True)
    beta = Tensor(np.zeros((1, d)), requires_grad=True)
    y, named = batch_norm_staged(x, gamma, beta, eps)
    return computation_graph(y, names=named, ax=ax,
                             title="batch norm as elementary operations (the graph behind its backward)")


# --------------------------------------------------------------------------- (e) the im2col window


def im2col_window(x=None, kernel_size=3, stride=1, padding=1, position=(0, 0), ax=None):
    """A padded input with one kernel window, and the column of the im2col matrix it becomes.

    Args:
        x: an (H, W) array or Tensor (one image, one channel); default the
            numbers 0..15 as a 4x4 image, so each value can be followed.
        kernel_size, stride, padding: of the convolution (square): ints,
            ``kernel_size`` and ``stride`` >= 1, ``padding`` >= 0, the kernel
            no larger than the padded input.
        position: output position (i, j) whose window is highlighted.

    Left: the input with its zero padding (hatched), the window of output
    ``position`` outlined. Right: ``F.im2col(x, ...)`` reshaped to (KH*KW,
    OH*OW): one row per kernel tap, one column per output position; the
    window's values are the highlighted column, read row by row. ``ax`` may be
    a pair of axes.
    """
    if isinstance(x, Tensor):
        x = backend.to_numpy(x.data)
    x = np.arange(16.0).reshape(4, 4) if x is None else np.asarray(x, dtype=float)
    if x.ndim != 2 or 0 in x.shape:
        raise ValueError(f"im2col_window: x must be one 2-D (H, W) image (one channel, at least one pixel), "
                         f"got shape {x.shape}")
    k = _count("im2col_window", "kernel_size", kernel_size, 1)
    stride = _count("im2col_window", "stride", stride, 1)
    padding = _count("im2col_window", "padding", padding, 0)
    hp, wp = x.shape[0] + 2 * padding, x.shape[1] + 2 * padding
    if k > min(hp, wp):
        raise ValueError(f"im2col_window: kernel_size {k} is larger than the padded input: {x.shape[0]}x{x.shape[1]} "
                         f"with padding {padding} is {hp}x{wp}")
    if not (isinstance(position, (tuple, list)) and len(position) == 2
            and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in position)):
        raise ValueError(f"im2col_window: position must be an output position (i, j) of two ints, got {position!r}")
    col = F.im2col(x[None, None], k, stride=stride, padding=padding)   # (1, k, k, 1, OH, OW)
    oh, ow = col.shape[-2:]
    matrix = col.reshape(k * k, oh * ow)
    i, j = position
    if not (0 <= i < oh and 0 <= j < ow):
        raise ValueError(f"im2col_window: position {tuple(position)} is outside the {oh}x{ow} output")
    column = i * ow + j
    if ax is None:
        fig, axes = plt.subplots(1, 2, figsize=(3 + 0.45 * oh * ow, 4.2),
                                 gridspec_kw={"width_ratios": [x.shape[1] + 2 * padding, oh * ow]})
    else:
        axes = ax
        fig = axes[0].figure
    left, right = axes
    for a in axes:
        a.set_axis_off()
        a.set_aspect("equal")
    cmap = plt.get_cmap("tab10")
    _draw_padded_window(left, x, padding, k, stride, (i, j), cmap)
    _draw_im2col_matrix(right, matrix, k, (oh, ow), column, cmap)
    return fig


def _draw_padded_window(left, x, padding, k, stride, position, cmap):
    """The padded input, each cell coloured by the kernel tap that reads it, the window outlined."""
    i, j = position
    xpad = np.pad(x, padding)
    hp, wp = xpad.shape
    for u in range(hp):
        for v in range(wp):
            pad = not (padding <= u < hp - padding and padding <= v < wp - padding)
            tap = (u - i * stride, v - j * stride)
            inside = 0 <= tap[0] < k and 0 <= tap[1] < k
            colour = cmap((tap[0] * k + tap[1]) % 10) if inside else "white"
            left.add_patch(plt.Rectangle((v, -u), 1, 1, fc=colour, alpha=0.45 if inside else 1, ec="0.6",
                                         hatch="///" if pad else None, lw=0.5))
            left.text(v + 0.5, -u + 0.5, f"{xpad[u, v]:g}", ha="center", va="center", fontsize=8,
                      color="0.45" if pad else "black", gid=LABEL_GID)
    left.add_patch(plt.Rectangle((j * stride, -(i * stride) - k + 1), k, k, fill=False, ec="red", lw=2))
    left.set_xlim(-0.2, wp + 0.2)
    left.set_ylim(-hp + 0.8, 1.2)
    left.set_title(f"input {x.shape[0]}x{x.shape[1]}, padding {padding} (hatched: zeros)\n"
                   f"window of output ({i}, {j}), {k}x{k}, stride {stride}", fontsize=9)


def _draw_im2col_matrix(right, matrix, k, out_hw, column, cmap):
    """The (k*k, OH*OW) matrix of im2col, the window's column highlighted in the tap colours."""
    oh, ow = out_hw
    for row in range(k * k):
        for c in range(oh * ow):
            hit = c == column
            colour = cmap(row % 10) if hit else "white"
            right.add_patch(plt.Rectangle((c, -row), 1, 1, fc=colour, alpha=0.45 if hit else 1, ec="0.6",
                                          lw=0.5))
            right.text(c + 0.5, -row + 0.5, f"{matrix[row, c]:g}", ha="center", va="center", fontsize=7,
                       gid=LABEL_GID)
        right.text(-0.2, -row + 0.5, f"tap ({row // k},{row % k})", ha="right", va="center", fontsize=7)
    right.add_patch(plt.Rectangle((column, -k * k + 1), 1, k * k, fill=False, ec="red", lw=2))
    for c in range(oh * ow):
        right.text(c + 0.5, 1.2, f"{c // ow},{c % ow}", ha="center", va="bottom", fontsize=6, rotation=90)
    right.set_xlim(-2.2, oh * ow + 0.2)
    right.set_ylim(-k * k + 0.8, 2.4)
    right.set_title(f"col = F.im2col(...) as a ({k * k}, {oh * ow}) matrix: rows = kernel taps, "
                    f"columns = output positions (i, j);\nthe window is column {column}", fontsize=9)
