"""miniran.viz: the masks and trunk features of every attention module, their statistics and plots.

Checks shapes and value ranges of the captured maps, that they are the
module's own M and T (``last_mask``/``last_trunk``), that the hooks are gone
afterwards and the model's outputs and mode are unchanged, that the three
image layouts give the same maps, the [0, 1] colour scale and colour bars of
the figures, and (with a GPU) that a CuPy model gives the NumPy model's maps.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from miniran import Tensor, data, models, no_grad, viz  # noqa: E402

N = 3


@pytest.fixture(scope="module")
def images():
    x, y = data.load_cifar10_sample(train=False)
    return x[:N], y[:N]  # uint8 (N, 3, 32, 32)


@pytest.fixture(scope="module")
def net():
    return models.attention56(seed=0).eval()


@pytest.fixture(scope="module")
def maps(net, images):
    return viz.attention_maps(net, images[0].transpose(0, 2, 3, 1))  # (N, 32, 32, 3) uint8


def _hook_count(model):
    return sum(len(m._forward_hooks) for m in model.modules())


def test_shapes_and_ranges(maps):
    assert len(maps) == 3
    expected = [("stages.0.1", 1, 64, 32), ("stages.1.1", 2, 128, 16), ("stages.2.1", 3, 256, 8)]
    for m, (name, stage, c, hw) in zip(maps, expected):
        assert (m.name, m.stage) == (name, stage)
        assert m.mask.shape == m.trunk.shape == m.fused.shape == m.masked.shape == (N, c, hw, hw)
        assert isinstance(m.mask, np.ndarray) and m.mask.dtype == np.float32
        assert 0.0 <= m.mask.min() and m.mask.max() <= 1.0
        assert m.residual
        np.testing.assert_allclose(m.fused, (1 + m.mask) * m.trunk)
        np.testing.assert_allclose(m.masked, m.mask * m.trunk)
        assert m.mean_mask.shape == (N, hw, hw)
    assert maps.images.shape == (N, 32, 32, 3) and 0 <= maps.images.min() and maps.images.max() <= 1
    assert maps.logits.shape == (N, 10) and maps.bn_mode == "eval"


def test_maps_are_the_modules_own(net, maps):
    for m, module in zip(maps, net.attention_modules()):
        np.testing.assert_array_equal(m.mask, module.last_mask.data)
        np.testing.assert_array_equal(m.trunk, module.last_trunk.data)


def test_hooks_removed_outputs_and_mode_unchanged(images):
    net = models.attention56(seed=0).eval()
    x = Tensor(data.normalize(images[0], *viz.default_normalization()))
    with no_grad():
        before = net(x).data.copy()
    state = {k: v.copy() for k, v in net.state_dict().items()}
    net.train()  # attention_maps runs in eval mode and puts the training flag back
    maps = viz.attention_maps(net, images[0])
    assert _hook_count(net) == 0 and net.training
    net.eval()
    with no_grad():
        after = net(x).data
    np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(maps.logits, before)
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, state[k])


def test_hooks_removed_after_an_error(net):
    with pytest.raises(ValueError):
        viz.attention_maps(net, np.zeros((2, 3, 32, 32), np.float32)[:, :2])
    assert _hook_count(net) == 0


def test_batch_mode_restores_running_statistics(images):
    net = models.attention56(seed=0)
    state = {k: v.copy() for k, v in net.state_dict().items()}
    maps = viz.attention_maps(net, images[0], bn_mode="batch", batch_size=2)
    assert maps.bn_mode == "batch" and maps[0].mask.shape[0] == N
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, state[k])
    with pytest.raises(ValueError, match="bn_mode"):
        viz.attention_maps(net, images[0], bn_mode="train")


def test_image_layouts_agree(net, images, maps):
    mean, std = viz.default_normalization()
    nchw = viz.attention_maps(net, images[0])
    tensor = viz.attention_maps(net, Tensor(data.normalize(images[0], mean, std)), mean=mean, std=std)
    for a, b, c in zip(maps, nchw, tensor):
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_allclose(a.mask, c.mask, atol=1e-6)
    np.testing.assert_allclose(tensor.images, maps.images, atol=1e-5)  # un-normalised for display
    with pytest.raises(ValueError, match="uint8 images"):
        viz.to_input(np.zeros((2, 32, 32, 4), np.uint8))


def test_no_attention_module_is_an_error():
    with pytest.raises(ValueError, match="no AttentionModule"):
        viz.attention_maps(models.resnet164(), np.zeros((1, 3, 32, 32), np.uint8))


def test_mask_statistics(maps):
    stats = viz.mask_statistics(maps)
    assert [s["stage"] for s in stats] == [1, 2, 3]
    for s, m in zip(stats, maps):
        assert s["shape"] == m.mask.shape
        assert 0 <= s["min"] <= s["mean"] <= s["max"] <= 1
        assert s["mean"] == pytest.approx(float(m.mask.mean()), rel=1e-5)
        assert s["frac_above_half"] == pytest.approx(float((m.mask > 0.5).mean()))
        assert 0 <= s["contrast"] <= 1 and s["spatial_std"] >= 0
    # a constant mask has no spatial contrast; a half-black half-white one has contrast 1
    m = maps[0]
    flat = viz.ModuleMaps("x", 1, np.full((2, 4, 8, 8), 0.3, np.float32), m.trunk[:2, :4, :8, :8], True)
    split = np.zeros((2, 4, 8, 8), np.float32)
    split[..., 4:] = 1
    half = viz.ModuleMaps("y", 1, split, m.trunk[:2, :4, :8, :8], True)
    s_flat, s_half = viz.mask_statistics([flat, half])
    assert s_flat["contrast"] == pytest.approx(0) and s_flat["spatial_std"] == pytest.approx(0)
    assert s_half["contrast"] == pytest.approx(1) and s_half["frac_above_half"] == pytest.approx(0.5)
    table = viz.format_statistics(maps, label="untrained")
    assert len(table.splitlines()) == 4 and "stages.1.1" in table


def _mask_images(fig):
    return [im for ax in fig.axes for im in ax.get_images()
            if im.get_cmap().name == "jet" and im.get_array().ndim == 2]


def test_plot_masks_fixed_scale_and_colour_bars(images, maps):
    labels = [data.CIFAR10_CLASSES[k] for k in images[1]]
    for overlay in (True, False):
        fig = viz.plot_masks(images[0], maps, n=2, labels=labels, overlay=overlay, title="t")
        masks = _mask_images(fig)
        assert len(masks) == 2 * 3
        assert all(im.get_clim() == (0.0, 1.0) for im in masks)
        colorbars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
        assert len(colorbars) == len(masks)
        assert all(cb.get_ylim() == (0.0, 1.0) for cb in colorbars)
        plt.close(fig)
    fig = viz.plot_masks(None, maps)  # the images kept in maps
    assert len(_mask_images(fig)) == N * 3
    plt.close(fig)


def _panel_pixels(fig, ax, shape):
    """The rendered RGB (0-1) at the centre of each cell of an ``shape`` (H, W) map drawn in ``ax``."""
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    height, width = shape
    box = ax.get_window_extent()
    out = np.zeros((height, width, 3))
    for i in range(height):
        for j in range(width):
            x = box.x0 + (j + 0.5) * box.width / width
            y = box.y1 - (i + 0.5) * box.height / height  # display y grows upwards
            out[i, j] = rgba[rgba.shape[0] - 1 - int(y), int(x), :3] / 255.0
    return out


def _colours(values, cmap="jet"):
    return plt.get_cmap(cmap)(np.clip(values, 0.0, 1.0))[..., :3]


def test_plot_masks_without_overlay_shows_the_mask_alone(maps):
    """overlay=False: each pixel of a mask panel is the colour of its mask value, no photo in it;
    overlay=True (the default) blends the photo in, so the colours differ from the mask's."""
    stage3 = maps[2].mean_mask[0]  # 8x8: large cells to sample
    for overlay in (False, True):
        fig = viz.plot_masks(None, maps, n=1, overlay=overlay)
        ax = fig.axes[3]  # the image, stage 1, stage 2, stage 3 panels come first (then the colour bars)
        assert len(ax.get_images()) == (1 if overlay is False else 2)
        error = np.abs(_panel_pixels(fig, ax, stage3.shape) - _colours(stage3)).max()
        if overlay is False:
            assert error < 3 / 255
        else:
            assert error > 0.05
        plt.close(fig)


def test_plot_masks_contour_on_grey(maps):
    fig = viz.plot_masks(None, maps, n=2, overlay="contour")
    panels = [fig.axes[k] for k in range(len(fig.axes)) if fig.axes[k].get_label() != "<colorbar>"]
    assert len(panels) == 2 * 4
    for r in range(2):
        for ax in panels[4 * r + 1: 4 * r + 4]:
            (grey,) = ax.get_images()
            assert grey.get_cmap().name == "gray" and grey.get_array().ndim == 2  # the photo, grey, no mask colour
            np.testing.assert_allclose(grey.get_array(), maps.images[r].mean(axis=2))
    colorbars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(colorbars) == 2 * 3 and all(cb.get_ylim() == (0.0, 1.0) for cb in colorbars)
    plt.close(fig)
    with pytest.raises(ValueError) as info:
        viz.plot_masks(None, maps, overlay="yes")
    _one_line(info, "plot_masks:", "overlay", "'contour'", "got 'yes'")


def test_most_varying_channels():
    mask = np.full((2, 4, 3, 3), 0.5, np.float32)
    mask[:, 2, 0, 0] = 1.0                  # channel 2 varies most, then 0, then 3; 1 is flat
    mask[:, 0, 0, 0] = 0.8
    mask[0, 3, 0, 0] = 0.7
    m = viz.ModuleMaps("x", 1, mask, np.zeros_like(mask), True)
    assert viz.most_varying_channels(m, 3) == [2, 0, 3]
    assert viz.most_varying_channels(m, 10) == [2, 0, 3, 1]
    assert viz.most_varying_channels(m, 1, rows=[1]) == [2]


def test_plot_channel_masks(maps):
    """One column per picked channel (the most varying of each stage), each panel the mask alone."""
    labels = ["a", "b", "c"]
    fig = viz.plot_channel_masks(None, maps, channels=2, n=2, labels=labels)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 2 * (1 + 3 * 2)
    picked = [(m, c) for m in maps for c in viz.most_varying_channels(m, 2, [0, 1])]
    for r in range(2):
        for k, (m, c) in enumerate(picked):
            (im,) = panels[r * 7 + 1 + k].get_images()  # the mask alone: one image in the panel
            assert im.get_clim() == (0.0, 1.0)
            np.testing.assert_array_equal(im.get_array(), m.mask[r, c])
    m, c = picked[-1]  # stage 3, 8x8: its rendered colours are the colormap of the mask values
    error = np.abs(_panel_pixels(fig, panels[len(picked)], (8, 8)) - _colours(m.mask[0, c])).max()
    assert error < 3 / 255
    colorbars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(colorbars) == 1 and colorbars[0].get_ylim() == (0.0, 1.0)
    plt.close(fig)
    with pytest.raises(ValueError) as info:
        viz.plot_channel_masks(None, maps, channels=0)
    _one_line(info, "plot_channel_masks:", "channels", ">= 1", "got 0")
    assert not plt.get_fignums()


def test_plot_trunk_vs_masked(maps):
    fig = viz.plot_trunk_vs_masked(None, maps, module=1, n=2)
    assert len(fig.axes) == 2 * 5 + 2 * 4  # image + T, M, M·T, (1+M)·T per row, a colour bar each
    masks = _mask_images(fig)
    assert len(masks) == 2 and all(im.get_clim() == (0.0, 1.0) for im in masks)
    feature = [im for ax in fig.axes for im in ax.get_images()
               if im.get_cmap().name == "viridis" and im.get_array().ndim == 2]
    assert len({im.get_clim() for im in feature[:3]}) == 1  # T, M·T, (1+M)·T of one image share a scale
    plt.close(fig)
    fig = viz.plot_trunk_vs_masked(None, maps, module=2, channel="mean", n=1)
    plt.close(fig)


def test_calibrate_batch_norm(images):
    net = models.attention56(seed=0)
    mom = [m.momentum for m in net.modules() if hasattr(m, "running_var")]
    viz.calibrate_batch_norm(net, images[0], batch_size=2)
    assert not net.training
    assert [m.momentum for m in net.modules() if hasattr(m, "running_var")] == mom
    # the stem's BN statistics are now those of the data, not 0 and 1
    bn = net.stages[0][0].bn1
    assert not np.allclose(bn.running_mean, 0) and not np.allclose(bn.running_var, 1)


@pytest.mark.gpu
def test_cupy_model_gives_the_same_maps(cp, images, maps):
    gpu_net = models.attention56(seed=0).eval().to("gpu")
    gpu_maps = viz.attention_maps(gpu_net, images[0].transpose(0, 2, 3, 1))
    for a, b in zip(maps, gpu_maps):
        assert isinstance(b.mask, np.ndarray)
        np.testing.assert_allclose(a.mask, b.mask, atol=1e-4)
    fig = viz.plot_masks(None, gpu_maps, n=1)
    plt.close(fig)


# --------------------------------------------------------------------------- issue 17: one clear line per bad argument


def _one_line(info, *words):
    message = str(info.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, (word, message)


@pytest.mark.parametrize("form", ["nhwc", "nchw", "float"])
def test_zero_images_are_refused(net, images, form):
    x = {"nhwc": images[0][:0].transpose(0, 2, 3, 1), "nchw": images[0][:0],
         "float": np.zeros((0, 3, 32, 32), np.float32)}[form]
    for call, name in ((lambda: viz.attention_maps(net, x), "attention_maps"),
                       (lambda: viz.calibrate_batch_norm(models.attention56(seed=0), x), "calibrate_batch_norm"),
                       (lambda: viz.to_input(x), "to_input"),
                       (lambda: viz.display_images(x), "display_images")):
        with pytest.raises(ValueError) as info:
            call()
        _one_line(info, f"{name}:", "images", "at least one image", str(x.shape))
    assert _hook_count(net) == 0


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True, "8"])
def test_batch_size_must_be_a_positive_int(net, images, batch_size):
    error = ValueError if isinstance(batch_size, int) and not isinstance(batch_size, bool) else TypeError
    for fn in (viz.attention_maps, viz.calibrate_batch_norm):
        model = net if fn is viz.attention_maps else models.attention56(seed=0)
        with pytest.raises(error) as info:
            fn(model, images[0], batch_size=batch_size)
        _one_line(info, f"{fn.__name__}:", "batch_size must be an int >= 1", f"got {batch_size!r}")
    assert _hook_count(net) == 0 and not net.training


@pytest.mark.parametrize(
    "mean,std,words",
    [
        (np.zeros(5, np.float32), None, ["mean has shape (5,)", "(3, 32, 32)", "(3, 1, 1)"]),
        (np.zeros(3, np.float32), None, ["mean has shape (3,)", "(3, 32, 32)", "(3, 1, 1)"]),
        (np.zeros((3, 16, 16), np.float32), None, ["mean has shape (3, 16, 16)", "(3, 32, 32)"]),
        (None, np.ones((2, 1, 1), np.float32), ["std has shape (2, 1, 1)", "(3, 32, 32)"]),
        (None, np.zeros((3, 1, 1), np.float32), ["std must be positive and finite"]),
        (np.full((3, 1, 1), np.nan, np.float32), None, ["mean must be finite"]),
    ],
)
def test_normalization_of_the_wrong_shape_is_refused(net, images, mean, std, words):
    d_mean, d_std = viz.default_normalization()
    mean = d_mean if mean is None else mean
    std = d_std if std is None else std
    with pytest.raises(ValueError) as info:
        viz.attention_maps(net, images[0], mean=mean, std=std)
    _one_line(info, "attention_maps:", *words)
    with pytest.raises(ValueError) as info:
        viz.to_input(images[0], mean=mean, std=std)
    _one_line(info, "to_input:", *words)
    if "has shape" in words[0]:  # un-normalising a float input for display: the same rule
        x = viz.to_input(images[0]).data
        with pytest.raises(ValueError) as info:
            viz.display_images(x, mean, std)
        _one_line(info, "display_images:", *words)
    assert _hook_count(net) == 0


def test_48x48_pixels_need_their_own_normalization(net):
    """The default mean image is 32x32: uint8 48x48 images gave a broadcasting error."""
    pixels = np.random.default_rng(0).integers(0, 256, (2, 48, 48, 3), dtype=np.uint8)
    with pytest.raises(ValueError) as info:
        viz.attention_maps(net, pixels)
    _one_line(info, "attention_maps:", "48x48", "mean image", "32x32", "mean=", "(3, 1, 1)")
    # what the message suggests works: a per-channel normalisation, or the normalised float input
    mean, std = np.full((3, 1, 1), 0.5, np.float32), np.full((3, 1, 1), 0.25, np.float32)
    maps = viz.attention_maps(net, pixels, mean=mean, std=std)
    assert maps[0].mask.shape == (2, 64, 48, 48) and maps.images.shape == (2, 48, 48, 3)
    floats = viz.attention_maps(net, viz.to_input(pixels, mean=mean, std=std))
    np.testing.assert_array_equal(floats[0].mask, maps[0].mask)


def test_plots_refuse_labels_and_counts_that_do_not_fit(images, maps):
    for plot in (viz.plot_masks, viz.plot_trunk_vs_masked, viz.plot_channel_masks):
        name = plot.__name__
        with pytest.raises(ValueError) as info:
            plot(None, maps, labels=["cat"])
        _one_line(info, f"{name}:", "labels", "one per image", "3 images", "got 1")
        with pytest.raises(ValueError) as info:
            plot(images[0][:1], maps)
        _one_line(info, f"{name}:", "images", "1 image", "maps", "3")
        for n, error in ((0, ValueError), (-1, ValueError), (1.5, TypeError)):
            with pytest.raises(error) as info:
                plot(None, maps, n=n)
            _one_line(info, f"{name}:", "n must be an int >= 1", f"got {n!r}")
    with pytest.raises(ValueError) as info:
        viz.plot_trunk_vs_masked(None, maps, module=3)
    _one_line(info, "plot_trunk_vs_masked:", "module", "0..2", "3 attention modules", "got 3")
    with pytest.raises(ValueError) as info:
        viz.plot_trunk_vs_masked(None, maps, channel=64)
    _one_line(info, "plot_trunk_vs_masked:", "channel", "0..63", "'mean'", "got 64")
    assert not plt.get_fignums()  # nothing half-drawn left open
