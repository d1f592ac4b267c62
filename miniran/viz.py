"""What the attention modules compute, as arrays and as pictures (paper Fig. 1).

This is the top layer of the package: it may import everything below it.

* :func:`attention_maps`: one forward pass with hooks on every
  :class:`~miniran.models.AttentionModule`; for each module the soft mask
  ``M`` (N, C, H, W), the trunk output ``T`` and the fused feature
  ``(1 + M) * T`` (attention residual learning) or ``M * T`` (naive).
* :func:`mask_statistics`: per-module mean, std, min, max, fraction above 0.5,
  spatial standard deviation and spatial contrast of the masks;
  :func:`format_statistics` prints them as a table.
* :func:`plot_masks`: the channel-mean mask of every module over the images,
  on a fixed ``[0, 1]`` colour scale with colour bars.
* :func:`plot_trunk_vs_masked`: ``T`` beside ``M`` and ``M * T`` (and
  ``(1 + M) * T``) for one module.
* :func:`calibrate_batch_norm`: running batch-norm statistics of an untrained
  network measured on images, so that it can be shown in evaluation mode
  beside a trained one.

Images are given either as uint8 pixels, ``(N, 32, 32, 3)`` (as matplotlib
shows them) or ``(N, 3, 32, 32)`` (as ``miniran.data`` stores them), or as the
normalised float tensor ``(N, 3, 32, 32)`` that the network takes. uint8
images are normalised with ``mean``/``std`` when given, else with the
network's own (``model.pretrained_info`` of a pretrained network), else with
the mean image of the embedded CIFAR-10 training sample. Models on the GPU
work: everything is copied to the host (``backend.to_numpy``) for plotting.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from miniran import backend, data
from miniran.autograd import Tensor, no_grad
from miniran.models import AttentionModule

__all__ = [
    "AttentionMaps", "ModuleMaps", "attention_maps", "calibrate_batch_norm", "default_normalization",
    "display_images",
    "format_statistics",
    "mask_statistics", "plot_masks", "plot_trunk_vs_masked", "to_input",
]

_SAMPLE_NORMALIZATION = None


def default_normalization(model=None):
    """``(mean, std)``: the pretrained network's, else the embedded sample's mean image (std 1)."""
    global _SAMPLE_NORMALIZATION
    info = getattr(model, "pretrained_info", None)
    if info is not None:
        return info["mean"], info["std"]
    if _SAMPLE_NORMALIZATION is None:
        x_train, _ = data.load_cifar10_sample(train=True)
        _SAMPLE_NORMALIZATION = data.compute_normalization(x_train, "pixel")
    return _SAMPLE_NORMALIZATION


def _as_array(images):
    if isinstance(images, Tensor):
        images = images.data
    return images


def _is_pixels(x):
    return x.dtype == np.uint8


def _pixels_nchw(x):
    """uint8 (N, 3, H, W) from uint8 (N, H, W, 3) or (N, 3, H, W)."""
    if x.ndim != 4:
        raise ValueError(f"images must be 4-D, (N, H, W, 3) or (N, 3, H, W); got shape {x.shape}")
    if x.shape[1] == 3:
        return x
    if x.shape[3] == 3:
        return x.transpose(0, 3, 1, 2)
    raise ValueError(f"uint8 images must be (N, H, W, 3) or (N, 3, H, W), got shape {x.shape}")


def to_input(images, model=None, mean=None, std=None):
    """The network's input: a float32 ``(N, 3, H, W)`` Tensor on the model's device."""
    x = _as_array(images)
    if _is_pixels(x):
        if mean is None or std is None:
            d_mean, d_std = default_normalization(model)
            mean = d_mean if mean is None else mean
            std = d_std if std is None else std
        x = data.normalize(np.ascontiguousarray(backend.to_numpy(_pixels_nchw(x))), backend.to_numpy(mean),
                           backend.to_numpy(std))
    else:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"normalised images must be a float (N, 3, H, W) array, got shape {x.shape}")
        x = backend.to_numpy(x).astype(np.float32)
    device = model.device if model is not None else "cpu"
    return Tensor(backend.to_device(x, device))


def display_images(images, mean=None, std=None):
    """Images for ``imshow``: float ``(N, H, W, 3)`` in ``[0, 1]``.

    uint8 pixels are scaled by 1/255. A normalised tensor is un-normalised
    with ``mean``/``std`` when given, else stretched to ``[0, 1]`` image by image.
    """
    x = backend.to_numpy(_as_array(images))
    if _is_pixels(x):
        return _pixels_nchw(x).transpose(0, 2, 3, 1).astype(np.float32) / 255.0
    x = x.astype(np.float32)
    if mean is not None and std is not None:
        x = x * backend.to_numpy(std) + backend.to_numpy(mean)
    else:
        lo = x.min(axis=(1, 2, 3), keepdims=True)
        hi = x.max(axis=(1, 2, 3), keepdims=True)
        x = (x - lo) / np.maximum(hi - lo, 1e-12)
    return np.clip(x.transpose(0, 2, 3, 1), 0.0, 1.0)


@dataclass
class ModuleMaps:
    """What one attention module computed for a batch (host NumPy arrays).

    ``mask`` M and ``trunk`` T are ``(N, C, H, W)``; ``residual`` says whether
    the module fuses them as ``(1 + M) * T`` (True, Eq. 3) or ``M * T`` (Eq. 1).
    """

    name: str
    stage: int
    mask: np.ndarray
    trunk: np.ndarray
    residual: bool

    @property
    def masked(self) -> np.ndarray:
        """``M * T``: the trunk feature multiplied by the mask."""
        return self.mask * self.trunk

    @property
    def fused(self) -> np.ndarray:
        """What the module passes on: ``(1 + M) * T`` with attention residual learning, else ``M * T``."""
        return (1.0 + self.mask) * self.trunk if self.residual else self.mask * self.trunk

    @property
    def mean_mask(self) -> np.ndarray:
        """The mask averaged over the channels: ``(N, H, W)``."""
        return self.mask.mean(axis=1)


@dataclass
class AttentionMaps:
    """The result of :func:`attention_maps`: one :class:`ModuleMaps` per attention module."""

    modules: list
    images: np.ndarray            # (N, H, W, 3) in [0, 1], for display
    logits: np.ndarray            # (N, num_classes)
    bn_mode: str = "eval"
    extra: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.modules)

    def __getitem__(self, i):
        return self.modules[i]

    def __iter__(self):
        return iter(self.modules)


def attention_maps(model, images, mean=None, std=None, batch_size=100, bn_mode="eval") -> AttentionMaps:
    """Masks and trunk features of every attention module of ``model`` for ``images``.

    Args:
        model: a network with :class:`~miniran.models.AttentionModule` s (NumPy or CuPy).
        images: uint8 ``(N, 32, 32, 3)`` / ``(N, 3, 32, 32)``, or the normalised
            float ``(N, 3, 32, 32)`` array or Tensor.
        mean, std: normalisation of uint8 images (see the module docstring for the default).
        batch_size: images per forward pass (the maps are concatenated).
        bn_mode: ``"eval"`` (running statistics, the default; the mode in which a
            network is used) or ``"batch"`` (statistics of each batch; the running
            statistics are restored afterwards). Compare networks in the same mode.

    The forward hooks are removed and the model's training flag restored on
    return, even after an error; the hooks do not change any output.
    """
    if bn_mode not in ("eval", "batch"):
        raise ValueError(f"bn_mode must be 'eval' or 'batch', got {bn_mode!r}")
    named = [(name, m) for name, m in model.named_modules() if isinstance(m, AttentionModule)]
    if not named:
        raise ValueError(f"{type(model).__name__} has no AttentionModule: no masks to show")
    stage_of = _stages(named)
    x_all = to_input(images, model, mean, std)
    if _is_pixels(_as_array(images)):
        display = display_images(images)
    else:  # a normalised tensor: undo the normalisation when it is known
        display = display_images(x_all, mean, std)

    captured, logits = _record_maps(model, named, x_all, batch_size, bn_mode)
    modules = [
        ModuleMaps(name, stage_of[name], np.concatenate(captured[name]["mask"]),
                   np.concatenate(captured[name]["trunk"]), bool(m.residual))
        for name, m in named
    ]
    return AttentionMaps(modules, display, np.concatenate(logits), bn_mode)


def _stages(named):
    """``{name: stage}``: the stage (1, 2, 3) of each ``stages.<k>...`` module, 0 for any other."""
    stage_of = {}
    for name, _ in named:
        parts = name.split(".")
        stage_of[name] = int(parts[1]) + 1 if len(parts) > 1 and parts[0] == "stages" and parts[1].isdigit() else 0
    return stage_of


def _record_maps(model, named, x_all, batch_size, bn_mode):
    """Run ``model`` on ``x_all`` with forward hooks on each module's mask and trunk branches.

    Returns ``({name: {"mask": [arrays], "trunk": [arrays]}}, [logits of each batch])``;
    the hooks are removed, the running statistics (``bn_mode="batch"``) and the
    training flag restored, even after an error.
    """
    captured = {name: {"mask": [], "trunk": []} for name, _ in named}
    handles = []

    def recorder(name, key):
        def hook(module, inputs, output):
            captured[name][key].append(backend.to_numpy(output.data))
            return None  # never replace the output
        return hook

    was_training = model.training
    saved = None
    logits = []
    try:
        for name, m in named:
            handles.append(m.soft_mask.register_forward_hook(recorder(name, "mask")))
            handles.append(m.trunk.register_forward_hook(recorder(name, "trunk")))
        if bn_mode == "batch":
            saved = {k: v.copy() for k, v in model.state_dict().items()}
            model.train()
        else:
            model.eval()
        with no_grad():
            for s in range(0, x_all.shape[0], batch_size):
                logits.append(backend.to_numpy(model(Tensor(x_all.data[s:s + batch_size])).data))
    finally:
        for h in handles:
            h.remove()
        if saved is not None:
            model.load_state_dict(saved)
        model.train(was_training)
    return captured, logits


def calibrate_batch_norm(model, images, mean=None, std=None, batch_size=100):
    """Set every batch-norm layer's running statistics to their average over ``images``.

    No weight changes: only the running mean and variance, which an untrained
    network has at their initial values (0 and 1, i.e. no normalisation at
    all in evaluation mode). Use it to compare an untrained network with a
    trained one, both in evaluation mode, on an equal footing. Each batch gets
    the same weight (the momentum is set to 1/k for the k-th batch and
    restored afterwards). Returns the model, in evaluation mode.
    """
    from miniran.nn import BatchNorm2d

    layers = [m for m in model.modules() if isinstance(m, BatchNorm2d)]
    momenta = [bn.momentum for bn in layers]
    x_all = to_input(images, model, mean, std)
    try:
        model.train()
        with no_grad():
            for k, s in enumerate(range(0, x_all.shape[0], batch_size)):
                for bn in layers:
                    bn.momentum = 1.0 / (k + 1)
                model(Tensor(x_all.data[s:s + batch_size]))
    finally:
        for bn, momentum in zip(layers, momenta):
            bn.momentum = momentum
        model.eval()
    return model


def _modules_of(maps):
    if isinstance(maps, AttentionMaps):
        return maps.modules
    if isinstance(maps, ModuleMaps):
        return [maps]
    return list(maps)


def mask_statistics(maps) -> list:
    """Statistics of the masks of each module (a list of dicts, in forward order).

    Keys: ``name``, ``stage``, ``shape``; over all mask values ``mean``, ``std``,
    ``min``, ``max`` and ``frac_above_half`` (the fraction above 0.5); the
    ``spatial_std`` (standard deviation over the positions of one channel of one
    image, averaged over channels and images: how much a mask varies *within*
    an image); and the ``contrast``, max minus min over the positions of the
    channel-mean mask (what :func:`plot_masks` draws), averaged over the images.
    """
    rows = []
    for m in _modules_of(maps):
        M = m.mask.astype(np.float64)
        mean_map = M.mean(axis=1)
        rows.append({
            "name": m.name,
            "stage": m.stage,
            "shape": tuple(M.shape),
            "mean": float(M.mean()),
            "std": float(M.std()),
            "min": float(M.min()),
            "max": float(M.max()),
            "frac_above_half": float((M > 0.5).mean()),
            "spatial_std": float(M.std(axis=(2, 3)).mean()),
            "contrast": float((mean_map.max(axis=(1, 2)) - mean_map.min(axis=(1, 2))).mean()),
        })
    return rows


def format_statistics(stats, label=None) -> str:
    """The rows of :func:`mask_statistics` as a text table (``label`` names a column in front)."""
    if isinstance(stats, (AttentionMaps, ModuleMaps)):
        stats = mask_statistics(stats)
    head = (f"{'':<10}" if label is not None else "") + (
        f"{'module':<22} {'mean':>6} {'std':>6} {'min':>6} {'max':>6} {'>0.5':>6} {'sp.std':>7} {'contrast':>8}")
    lines = [head]
    for r in stats:
        module = f"{r['name']} (st. {r['stage']})"
        lines.append((f"{label:<10}" if label is not None else "") + (
            f"{module:<22} {r['mean']:6.3f} {r['std']:6.3f} {r['min']:6.3f} "
            f"{r['max']:6.3f} {r['frac_above_half']:6.1%} {r['spatial_std']:7.3f} {r['contrast']:8.3f}"))
    return "\n".join(lines)


def _pyplot():
    import matplotlib.pyplot as plt

    return plt


def _indices(n_images, n):
    return list(range(n_images if n is None else min(n, n_images)))


def plot_masks(images, maps, n=None, labels=None, alpha=0.55, cmap="jet", overlay=True, title=None):
    """The channel-mean mask of every attention module over each image, colour scale fixed to [0, 1].

    Args:
        images: the images of :func:`attention_maps` (any accepted form), or None
            to use ``maps.images``.
        maps: an :class:`AttentionMaps`.
        n: how many images (rows); default all.
        labels: a title per image (e.g. class names), optional.
        alpha: opacity of the mask over the image (``overlay=True``).
        overlay: draw the mask over the image, else alone.
        title: the figure's title.

    Returns:
        The matplotlib Figure: a row per image, the image then one panel per
        module, each with a colour bar from 0 to 1.
    """
    plt = _pyplot()
    modules = _modules_of(maps)
    shown = maps.images if images is None else display_images(images)
    rows = _indices(shown.shape[0], n)
    ncols = 1 + len(modules)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(2.3 * ncols + 0.6, 2.15 * len(rows)), squeeze=False)
    height, width = shown.shape[1:3]
    for r, i in enumerate(rows):
        axes[r, 0].imshow(shown[i])
        axes[r, 0].set_title(labels[i] if labels is not None else f"image {i}", fontsize=9)
        for k, m in enumerate(modules):
            ax = axes[r, 1 + k]
            mask = m.mean_mask[i]
            if overlay:
                ax.imshow(shown[i])
                im = ax.imshow(mask, cmap=cmap, vmin=0.0, vmax=1.0, alpha=alpha, interpolation="bilinear",
                               extent=(-0.5, width - 0.5, height - 0.5, -0.5))
            else:
                im = ax.imshow(mask, cmap=cmap, vmin=0.0, vmax=1.0)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, ticks=[0, 0.5, 1])
            if r == 0:
                ax.set_title(f"stage {m.stage}: mean mask\n{mask.shape[0]}x{mask.shape[1]}, "
                             f"{m.mask.shape[1]} channels", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _strongest_channel(m: ModuleMaps, rows):
    """The channel whose mask varies most within the images shown."""
    return int(m.mask[rows].std(axis=(2, 3)).mean(axis=0).argmax())


def plot_trunk_vs_masked(images, maps, module=0, channel=None, n=4, labels=None, title=None):
    """For one module: the image, the trunk feature T, the mask M, M·T and (with
    attention residual learning) (1 + M)·T, for one channel.

    Args:
        images: as in :func:`plot_masks` (None: ``maps.images``).
        maps: an :class:`AttentionMaps`.
        module: index of the attention module (0 = the first, stage 1).
        channel: the channel shown; None picks the one whose mask varies most
            within the images shown; ``"mean"`` averages over the channels.
        n: how many images (rows).

    The mask has the fixed [0, 1] scale; T, M·T and (1 + M)·T of an image share
    one colour scale, so a value means the same colour in the three panels.
    Returns the Figure.
    """
    plt = _pyplot()
    m = _modules_of(maps)[module]
    shown = maps.images if images is None else display_images(images)
    rows = _indices(shown.shape[0], n)
    if channel is None:
        channel = _strongest_channel(m, rows)

    def pick(a):
        return a.mean(axis=1) if channel == "mean" else a[:, channel]

    T, M, MT, H = pick(m.trunk), pick(m.mask), pick(m.masked), pick(m.fused)
    panels = [("T (trunk)", T), ("M (mask)", M), ("M·T", MT)]
    if m.residual:
        panels.append(("(1+M)·T (module output)", H))
    ch = "mean of channels" if channel == "mean" else f"channel {channel}"
    ncols = 1 + len(panels)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(2.4 * ncols + 0.6, 2.15 * len(rows)), squeeze=False)
    for r, i in enumerate(rows):
        axes[r, 0].imshow(shown[i])
        axes[r, 0].set_title(labels[i] if labels is not None else f"image {i}", fontsize=9)
        feats = np.stack([p[1][i] for p in panels if p[0] != "M (mask)"])
        lo, hi = float(feats.min()), float(feats.max())
        for k, (name, a) in enumerate(panels):
            ax = axes[r, 1 + k]
            if name == "M (mask)":
                im = ax.imshow(a[i], cmap="jet", vmin=0.0, vmax=1.0)
            else:
                im = ax.imshow(a[i], cmap="viridis", vmin=lo, vmax=hi)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
            if r == 0:
                ax.set_title(name, fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title or f"{m.name} (stage {m.stage}), {ch}: {m.trunk.shape[2]}x{m.trunk.shape[3]} maps")
    fig.tight_layout()
    return fig
