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
  on a fixed ``[0, 1]`` colour scale with colour bars; ``overlay=False`` draws
  the mask alone (no photo showing through), ``overlay="contour"`` its contour
  lines over a grey copy of the image.
* :func:`plot_channel_masks`: single channels of the masks (the ones that vary
  most within the images, :func:`most_varying_channels`), alone beside the
  image: what the channel mean hides, since channels that attend to the
  object and channels that attend to the background cancel in it.
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

The network itself takes any image size (it ends in global average pooling),
but the default normalisations are 32x32 mean images: other sizes need their
own ``mean``/``std`` (per channel, ``(3, 1, 1)``, fits every size).

Bad arguments are refused before anything runs, with one line naming the
function, the argument and what was expected: no image, a ``batch_size``
below 1, a ``mean``/``std`` that does not fit the images, a ``labels`` list
of the wrong length, an ``n``, ``module`` or ``channel`` out of range.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np

from miniran import backend, data
from miniran.autograd import Tensor, no_grad
from miniran.models import AttentionModule

__all__ = [
    "AttentionMaps", "ModuleMaps", "attention_maps", "calibrate_batch_norm", "default_normalization",
    "display_images",
    "format_statistics",
    "mask_statistics", "most_varying_channels", "plot_channel_masks", "plot_masks", "plot_trunk_vs_masked",
    "to_input",
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


def _count(fname, name, value, low=1):
    """``value`` as an int, refused in one line unless it is an int (not a bool) ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{fname}: {name} must be an int >= {low}, got {value!r}")
    if value < low:
        raise ValueError(f"{fname}: {name} must be an int >= {low}, got {value!r}")
    return int(value)


def _check_not_empty(fname, x, shape):
    if x.shape[0] == 0:
        raise ValueError(f"{fname}: images must hold at least one image, got shape {tuple(shape)}")


def _check_normalization(fname, mean, std, image_shape, default=None):
    """``mean``/``std`` must broadcast to one image, ``(3, H, W)``, without changing its shape,
    be finite, and ``std`` positive. ``default`` names where a default mean/std came from
    (``{"mean": source, "std": source}``), for the message."""
    default = default or {}
    for name, value in (("mean", mean), ("std", std)):
        a = np.asarray(backend.to_numpy(value))
        try:
            fits = a.ndim <= len(image_shape) and np.broadcast_shapes(a.shape, image_shape) == tuple(image_shape)
        except ValueError:
            fits = False
        if not fits:
            h, w = image_shape[1:]
            if name in default and a.ndim == 3:
                raise ValueError(
                    f"{fname}: the images are {h}x{w}, but the default normalisation ({default[name]}) is "
                    f"for {a.shape[1]}x{a.shape[2]} images ({name} shape {a.shape}, a mean image): pass mean= "
                    f"and std= that fit {h}x{w} images (per channel: shape (3, 1, 1)), or the normalised "
                    f"float input")
            raise ValueError(
                f"{fname}: {name} has shape {a.shape}, which does not fit images of shape {tuple(image_shape)}: "
                f"expected a shape that broadcasts to it, e.g. (3, 1, 1) (per channel) or {tuple(image_shape)}")
        if not np.isfinite(a).all():
            raise ValueError(f"{fname}: {name} must be finite, got {'NaN' if np.isnan(a).any() else 'inf'} values")
        if name == "std" and not (a > 0).all():
            raise ValueError(f"{fname}: std must be positive and finite, got a minimum of {a.min():g}")


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
    return _to_input("to_input", images, model, mean, std)


def _to_input(fname, images, model, mean, std):
    """:func:`to_input`, its messages naming ``fname``, the function the user called."""
    x = _as_array(images)
    shape = x.shape
    if _is_pixels(x):
        x = _pixels_nchw(x)
        _check_not_empty(fname, x, shape)
        default = {}
        if mean is None or std is None:
            d_mean, d_std = default_normalization(model)
            source = ("the pretrained network's" if getattr(model, "pretrained_info", None) is not None
                      else "the embedded CIFAR-10 sample's")
            if mean is None:
                mean, default["mean"] = d_mean, source
            if std is None:
                std, default["std"] = d_std, source
        _check_normalization(fname, mean, std, x.shape[1:], default)
        x = data.normalize(np.ascontiguousarray(backend.to_numpy(x)), backend.to_numpy(mean),
                           backend.to_numpy(std))
    else:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"normalised images must be a float (N, 3, H, W) array, got shape {x.shape}")
        _check_not_empty(fname, x, shape)
        x = backend.to_numpy(x).astype(np.float32)
    device = model.device if model is not None else "cpu"
    return Tensor(backend.to_device(x, device))


def display_images(images, mean=None, std=None):
    """Images for ``imshow``: float ``(N, H, W, 3)`` in ``[0, 1]``.

    uint8 pixels are scaled by 1/255. A normalised tensor is un-normalised
    with ``mean``/``std`` when given, else stretched to ``[0, 1]`` image by image.
    """
    return _display_images("display_images", images, mean, std)


def _display_images(fname, images, mean=None, std=None):
    x = backend.to_numpy(_as_array(images))
    if _is_pixels(x):
        pixels = _pixels_nchw(x)
        _check_not_empty(fname, pixels, x.shape)
        return pixels.transpose(0, 2, 3, 1).astype(np.float32) / 255.0
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{fname}: normalised images must be a float (N, 3, H, W) array, got shape {x.shape}")
    _check_not_empty(fname, x, x.shape)
    x = x.astype(np.float32)
    if mean is not None and std is not None:
        _check_normalization(fname, mean, std, x.shape[1:])
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
    batch_size = _count("attention_maps", "batch_size", batch_size)
    named = [(name, m) for name, m in model.named_modules() if isinstance(m, AttentionModule)]
    if not named:
        raise ValueError(f"{type(model).__name__} has no AttentionModule: no masks to show")
    stage_of = _stages(named)
    x_all = _to_input("attention_maps", images, model, mean, std)
    if _is_pixels(_as_array(images)):
        display = _display_images("attention_maps", images)
    else:  # a normalised tensor: undo the normalisation when it is known
        display = _display_images("attention_maps", x_all, mean, std)

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

    batch_size = _count("calibrate_batch_norm", "batch_size", batch_size)
    layers = [m for m in model.modules() if isinstance(m, BatchNorm2d)]
    momenta = [bn.momentum for bn in layers]
    x_all = _to_input("calibrate_batch_norm", images, model, mean, std)
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


def _plot_inputs(fname, images, maps, n, labels):
    """``(modules, shown images (N, H, W, 3), rows)`` of a plot, every argument checked against the maps."""
    modules = _modules_of(maps)
    if n is not None:
        _count(fname, "n", n)
    if images is None:
        if not isinstance(maps, AttentionMaps):
            raise ValueError(f"{fname}: images=None uses maps.images, which only an AttentionMaps has "
                             f"(got {type(maps).__name__}): pass the images")
        shown = maps.images
    else:
        shown = _display_images(fname, images)
    count = modules[0].mask.shape[0] if modules else shown.shape[0]
    if shown.shape[0] != count:
        raise ValueError(f"{fname}: images holds {shown.shape[0]} image(s), but the maps are of {count}: "
                         "pass the images given to attention_maps, or None to use maps.images")
    if labels is not None and len(labels) != count:
        raise ValueError(f"{fname}: labels must have one per image ({count} images), got {len(labels)}")
    return modules, shown, _indices(count, n)


def _draw_mask_panel(ax, image, mask, overlay, alpha, cmap):
    """One mask panel of :func:`plot_masks` (see its ``overlay``); returns what its colour bar shows."""
    height, width = image.shape[:2]
    if overlay == "contour":
        import matplotlib as mpl

        ax.imshow(image.mean(axis=2), cmap="gray", vmin=0.0, vmax=1.0)
        # mask pixel centres, in the image's pixel coordinates
        ys = (np.arange(mask.shape[0]) + 0.5) * height / mask.shape[0] - 0.5
        xs = (np.arange(mask.shape[1]) + 0.5) * width / mask.shape[1] - 0.5
        ax.contour(xs, ys, mask, levels=np.linspace(0.1, 0.9, 9), cmap=cmap, vmin=0.0, vmax=1.0, linewidths=1.0)
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_ylim(height - 0.5, -0.5)
        # a colour bar of the [0, 1] scale, not of the contour levels only
        return mpl.cm.ScalarMappable(norm=mpl.colors.Normalize(0.0, 1.0), cmap=cmap)
    if overlay:
        ax.imshow(image)
        return ax.imshow(mask, cmap=cmap, vmin=0.0, vmax=1.0, alpha=alpha, interpolation="bilinear",
                         extent=(-0.5, width - 0.5, height - 0.5, -0.5))
    return ax.imshow(mask, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")


def plot_masks(images, maps, n=None, labels=None, alpha=0.55, cmap="jet", overlay=True, title=None):
    """The channel-mean mask of every attention module over each image, colour scale fixed to [0, 1].

    Args:
        images: the images of :func:`attention_maps` (any accepted form), or None
            to use ``maps.images``.
        maps: an :class:`AttentionMaps`.
        n: how many images (rows); default all.
        labels: a title per image (e.g. class names), optional.
        alpha: opacity of the mask over the image (``overlay=True``).
        overlay: ``True`` draws the mask over the image, blended with it (so
            a panel's colour is not the mask's alone: the photo shows
            through); ``False`` draws the mask alone, each pixel the colour of
            its mask value; ``"contour"`` draws the mask's contour lines (0.1
            to 0.9, coloured with ``cmap``) over a grey copy of the image.
        title: the figure's title.

    Returns:
        The matplotlib Figure: a row per image, the image then one panel per
        module, each with a colour bar from 0 to 1.
    """
    if not (isinstance(overlay, bool) or (isinstance(overlay, str) and overlay == "contour")):
        raise ValueError(f"plot_masks: overlay must be True, False or 'contour', got {overlay!r}")
    modules, shown, rows = _plot_inputs("plot_masks", images, maps, n, labels)
    plt = _pyplot()
    ncols = 1 + len(modules)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(2.3 * ncols + 0.6, 2.15 * len(rows)), squeeze=False)
    for r, i in enumerate(rows):
        axes[r, 0].imshow(shown[i])
        axes[r, 0].set_title(labels[i] if labels is not None else f"image {i}", fontsize=9)
        for k, m in enumerate(modules):
            ax = axes[r, 1 + k]
            mask = m.mean_mask[i]
            im = _draw_mask_panel(ax, shown[i], mask, overlay, alpha, cmap)
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


def most_varying_channels(m: ModuleMaps, k=3, rows=None):
    """The ``k`` channels of one module's mask that vary most within the images, most varying first.

    A channel's score is its spatial variance (over the positions of one image),
    averaged over the images ``rows`` (default all). A channel with a high score
    separates some parts of the image from others; a nearly flat channel
    (score near 0) lets the whole feature map through alike.
    """
    k = _count("most_varying_channels", "k", k)
    mask = m.mask if rows is None else m.mask[rows]
    score = mask.astype(np.float64).var(axis=(2, 3)).mean(axis=0)
    return [int(c) for c in np.argsort(-score, kind="stable")[:min(k, score.shape[0])]]


def plot_channel_masks(images, maps, channels=3, n=None, labels=None, cmap="jet", title=None):
    """Single mask channels of every module, alone (no overlay) beside each image, scale fixed to [0, 1].

    Args:
        images: as in :func:`plot_masks` (None: ``maps.images``).
        maps: an :class:`AttentionMaps`.
        channels: how many channels per module: the ones that vary most within
            the images shown (:func:`most_varying_channels`); the same channels
            in every row, so that a column is one channel.
        n: how many images (rows); default all.
        labels: a title per image, optional.

    Each mask panel is the mask alone, pixel by pixel (nearest, no blending
    with the photo): one colour is one mask value. A channel may be high on
    the object or on the background; both are learned attention. Returns the
    Figure, with one colour bar from 0 to 1.
    """
    _count("plot_channel_masks", "channels", channels)
    modules, shown, rows = _plot_inputs("plot_channel_masks", images, maps, n, labels)
    plt = _pyplot()
    picked = [(m, c) for m in modules for c in most_varying_channels(m, channels, rows)]
    ncols = 1 + len(picked)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(1.55 * ncols + 0.9, 1.7 * len(rows) + 0.5),
                             squeeze=False)
    im = None
    for r, i in enumerate(rows):
        axes[r, 0].imshow(shown[i])
        axes[r, 0].set_title(labels[i] if labels is not None else f"image {i}", fontsize=9)
        for k, (m, c) in enumerate(picked):
            ax = axes[r, 1 + k]
            im = ax.imshow(m.mask[i, c], cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
            if r == 0:
                ax.set_title(f"stage {m.stage}\nchannel {c}", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title or "single mask channels (the most varying of each stage), alone: one colour = one value")
    fig.tight_layout(rect=(0.0, 0.0, 0.97, 1.0))  # room for the colour bar's labels
    fig.colorbar(im, ax=axes.ravel().tolist(), fraction=0.02, pad=0.01, ticks=[0, 0.5, 1])
    return fig


def _module_with_channel(modules, module, channel):
    """``modules[module]``, once ``module`` and ``channel`` are known to exist in it (else one line)."""
    if isinstance(module, bool) or not isinstance(module, numbers.Integral):
        raise TypeError(f"plot_trunk_vs_masked: module must be an int, got {module!r}")
    if not -len(modules) <= module < len(modules):
        raise ValueError(f"plot_trunk_vs_masked: module must be 0..{len(modules) - 1} "
                         f"({len(modules)} attention modules), got {module}")
    m = modules[module]
    channels = m.mask.shape[1]
    is_index = isinstance(channel, numbers.Integral) and not isinstance(channel, bool)
    if not (channel is None or (isinstance(channel, str) and channel == "mean")
            or (is_index and -channels <= channel < channels)):
        raise ValueError(f"plot_trunk_vs_masked: channel must be 0..{channels - 1}, None or 'mean', "
                         f"got {channel!r}")
    return m


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
    modules, shown, rows = _plot_inputs("plot_trunk_vs_masked", images, maps, n, labels)
    m = _module_with_channel(modules, module, channel)
    plt = _pyplot()
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
