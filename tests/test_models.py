"""Residual units, the attention module (every variant) and the model zoo."""

import itertools

import numpy as np
import pytest

import miniran
import miniran.functional as F
from miniran import Tensor, gradcheck, models, no_grad

# --------------------------------------------------------------------------- residual unit


def test_identity_unit_creates_no_projection():
    unit = models.PreActBottleneck(16, 16)
    assert unit.shortcut is None
    names = [n for n, _ in unit.named_parameters()]
    assert not any("shortcut" in n for n in names)
    # 3 convs without bias + 3 BNs: 16*4 + 4*4*9 + 4*16 + 2*(16 + 4 + 4)
    assert unit.num_parameters() == 64 + 144 + 64 + 48


@pytest.mark.parametrize("cin,cout,stride", [(16, 32, 1), (16, 16, 2), (8, 32, 2)])
def test_projection_unit_shapes(cin, cout, stride, rng):
    unit = models.PreActBottleneck(cin, cout, stride)
    assert unit.shortcut is not None and unit.shortcut.weight.shape == (cout, cin, 1, 1)
    y = unit(Tensor(rng.standard_normal((2, cin, 9, 8)).astype(np.float32)))
    assert y.shape == (2, cout, (9 - 1) // stride + 1, (8 - 1) // stride + 1)


def test_unit_matches_caffe_order(rng):
    """y = conv3(relu(bn3(conv2(relu(bn2(conv1(a))))))) + shortcut, a = relu(bn1(x))."""
    for cin, cout, stride in [(8, 8, 1), (8, 16, 2)]:
        unit = models.PreActBottleneck(cin, cout, stride, rng=rng)
        x = Tensor(rng.standard_normal((2, cin, 6, 6)).astype(np.float32))

        def bn(layer, v):
            return F.batch_norm(v, None, None, layer.weight, layer.bias, training=True)

        def conv(layer, v, s=1, p=0):
            return F.conv2d(v, layer.weight, None, stride=s, padding=p)

        a = F.relu(bn(unit.bn1, x))
        out = conv(unit.conv1, a)
        out = conv(unit.conv2, F.relu(bn(unit.bn2, out)), stride, 1)
        out = conv(unit.conv3, F.relu(bn(unit.bn3, out)))
        expected = out + (x if unit.shortcut is None else conv(unit.shortcut, a, stride))
        np.testing.assert_allclose(unit(x).data, expected.data, rtol=1e-5, atol=1e-5)


def test_unit_rejects_width_not_divisible_by_four():
    with pytest.raises(ValueError, match="divisible by 4"):
        models.PreActBottleneck(16, 10)


# --------------------------------------------------------------------------- attention module


def small_module(**kw):
    rng = np.random.default_rng(3)
    return models.AttentionModule(4, kw.pop("pools", 2), rng=rng, **kw).astype(np.float64)


VARIANTS = list(itertools.product(
    ["mixed", "channel", "spatial"], [True, False], ["encoder_decoder", "local_conv"], [False, True]
))


@pytest.mark.parametrize("attention,residual,mask,mask_bn", VARIANTS)
def test_attention_module_gradcheck(attention, residual, mask, mask_bn, rng):
    """Every kind of module passes a float64 gradient check, wrt input and every parameter."""
    module = small_module(attention=attention, residual=residual, mask=mask, mask_bn=mask_bn,
                          local_units=1)
    x = rng.standard_normal((2, 4, 7, 6))
    params = module.parameters()
    gradcheck(lambda inp, *ps: module(inp), [x, *params], mode="directional", atol=1e-6, rtol=1e-4)


def test_attention_module_fusion_equations(rng):
    x = Tensor(rng.standard_normal((2, 4, 8, 8)))
    arl = small_module(residual=True)
    y = arl(x)
    m, t = arl.last_mask, arl.last_trunk
    np.testing.assert_allclose(y.data, arl.post((1 + m) * t).data, rtol=1e-12)
    nal = small_module(residual=False)
    y = nal(x)
    np.testing.assert_allclose(y.data, nal.post(nal.last_mask * nal.last_trunk).data, rtol=1e-12)


@pytest.mark.parametrize("attention", ["mixed", "spatial"])
@pytest.mark.parametrize("mask", ["encoder_decoder", "local_conv"])
def test_sigmoid_masks_lie_in_unit_interval(attention, mask, rng):
    module = small_module(attention=attention, mask=mask)
    module(Tensor(rng.standard_normal((2, 4, 8, 8)) * 5))
    m = module.last_mask.data
    assert m.shape == (2, 4, 8, 8)
    assert m.min() >= 0 and m.max() <= 1


def test_channel_mask_has_unit_norm_across_channels(rng):
    module = small_module(attention="channel")
    module(Tensor(rng.standard_normal((2, 4, 8, 8))))
    norms = np.sqrt((module.last_mask.data ** 2).sum(axis=1))
    # Eq. 5 is undefined for a zero vector: where the ReLU before the last
    # (bias-free) 1x1 conv zeroes every channel, the mask is 0 there, not NaN.
    unit = np.isclose(norms, 1.0, rtol=1e-6)
    assert np.all(unit | (norms == 0))
    assert unit.mean() > 0.9


@pytest.mark.parametrize("size", [(8, 8), (7, 5), (13, 16), (3, 3)])
def test_any_input_size_works(size, rng):
    module = small_module(pools=3)
    y = module(Tensor(rng.standard_normal((2, 4) + size)))
    assert y.shape == (2, 4) + size
    assert module.last_mask.shape == (2, 4) + size


def test_encoder_decoder_structure_follows_caffe():
    """Stage 1 (3 pools): r units after each pooling, 2r at the lowest, a skip unit per level but the lowest."""
    m = models.AttentionModule(16, pools=3, p=1, t=2, r=1)
    mask = m.soft_mask
    assert [len(d) for d in mask.down] == [1, 1, 2]
    assert len(mask.skip) == 2 and [len(u) for u in mask.up] == [1, 1]
    assert len(m.pre) == 1 and len(m.trunk) == 2 and len(m.post) == 1
    m1 = models.AttentionModule(16, pools=1)
    assert [len(d) for d in m1.soft_mask.down] == [2] and len(m1.soft_mask.skip) == 0
    m452 = models.AttentionModule(16, pools=2, p=2, t=4, r=3)
    assert [len(d) for d in m452.soft_mask.down] == [3, 6] and len(m452.trunk) == 4


def test_local_conv_mask_has_no_pooling(rng):
    m = models.AttentionModule(8, pools=3, mask="local_conv")
    assert len(m.soft_mask.units) == 3
    assert not hasattr(m.soft_mask, "down")


def test_mask_bn_adds_one_batch_norm():
    plain = models.AttentionModule(8, pools=1)
    with_bn = models.AttentionModule(8, pools=1, mask_bn=True)
    assert with_bn.num_parameters() - plain.num_parameters() == 2 * 8


def test_bad_module_options_are_rejected():
    with pytest.raises(ValueError, match="attention must be one of"):
        models.AttentionModule(8, 1, attention="soft")
    with pytest.raises(ValueError, match="mask must be one of"):
        models.AttentionModule(8, 1, mask="unet")
    with pytest.raises(ValueError, match=r"expects input \(N, 8, H, W\)"):
        models.AttentionModule(8, 1)(Tensor(np.zeros((1, 4, 8, 8), np.float32)))


def test_capture_outputs_with_hooks(rng):
    net = models.attention56(seed=0)
    x = Tensor(rng.standard_normal((2, 3, 32, 32)).astype(np.float32))
    names = ["stages.0.1.soft_mask", "stages.1", "stages.2.1.trunk"]
    with models.capture_outputs(net, names) as out:
        net(x)
    assert out["stages.0.1.soft_mask"][0].shape == (2, 64, 32, 32)
    assert out["stages.1"][0].shape == (2, 128, 16, 16)
    assert out["stages.2.1.trunk"][0].shape == (2, 256, 8, 8)
    np.testing.assert_array_equal(out["stages.0.1.soft_mask"][0].data, net.stages[0][1].last_mask.data)
    with pytest.raises(KeyError, match="no module named"):
        with models.capture_outputs(net, ["stages.9"]):
            pass


# --------------------------------------------------------------------------- networks

# parameter counts (weights + BN scale/shift), pinned; docs/models.md compares them with the paper
CIFAR_COUNTS = {
    "attention56": 1_148_826,
    "attention92": 1_959_706,
    "attention128": 2_770_586,
    "attention164": 3_581_466,
    "attention236": 5_203_226,
    "attention452": 10_299_674,
    "resnet164": 1_703_258,
}


@pytest.mark.parametrize("name", list(CIFAR_COUNTS))
def test_cifar_network_forward_backward(name, rng):
    net = models.get_model(name, num_classes=10, seed=0)
    assert net.num_parameters() == CIFAR_COUNTS[name]
    if name in ("attention236", "attention452"):
        pytest.skip("forward/backward of the deepest networks runs in the slow suite")
    _forward_backward(net, rng, 32)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["attention236", "attention452"])
def test_deep_cifar_network_forward_backward(name, rng):
    _forward_backward(models.get_model(name, seed=0), rng, 32)


def _forward_backward(net, rng, size):
    x = Tensor(rng.standard_normal((2, 3, size, size)).astype(np.float32))
    labels = np.array([1, 3])
    loss = F.cross_entropy(net(x), labels)
    assert np.isfinite(loss.data)
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not np.any(p.grad)]
    assert not missing, f"parameters without gradient: {missing[:5]}"


def test_depth_formula_36m_plus_20():
    """Weighted layers on the trunk path: 36m + 20 (paper section 4.1)."""
    for name, m in [("attention56", 1), ("attention92", 2), ("attention128", 3), ("attention164", 4)]:
        net = models.get_model(name)
        trunk_units = sum(1 for s in net.stages for u in s if isinstance(u, models.PreActBottleneck))
        modules = net.attention_modules()
        trunk_units += sum(len(a.pre) + len(a.trunk) + len(a.post) for a in modules) + len(net.final)
        assert 3 * trunk_units + 2 == 36 * m + 20


def test_module_options_pass_through():
    net = models.attention56(num_classes=100, attention="spatial", residual=False, mask="local_conv", mask_bn=True)
    assert net.fc.out_features == 100
    for a in net.attention_modules():
        assert a.config["attention"] == "spatial" and a.config["residual"] is False
        assert a.config["mask"] == "local_conv" and a.config["mask_bn"] is True
    pools = [a.pools for a in models.attention92(pools=(2, 2, 1)).attention_modules()]
    assert pools == [2, 2, 2, 2, 1, 1]


def test_same_seed_same_weights():
    a, b = models.attention56(seed=5), models.attention56(seed=5)
    for pa, pb in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(pa.data, pb.data)


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model 'attention57'"):
        models.get_model("attention57")


IMAGENET_COUNTS = {"attention56_imagenet": 31_810_728, "attention92_imagenet": 52_466_344}


@pytest.mark.parametrize("name", list(IMAGENET_COUNTS))
def test_imagenet_parameter_counts_match_the_official_model(name):
    """Counted from the official Caffe prototxts (notes section 6.3), BN scale/shift included."""
    assert models.get_model(name).num_parameters() == IMAGENET_COUNTS[name]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(IMAGENET_COUNTS))
def test_imagenet_network_forward_backward_at_224(name, rng):
    _forward_backward(models.get_model(name, seed=0), rng, 224)


def test_imagenet_summary_shapes_follow_table_2():
    s = models.summary(models.attention56_imagenet(), (1, 3, 224, 224), max_depth=2)
    shapes = {r.name: r.output_shape for r in s.rows}
    assert shapes["stem"] == (1, 64, 56, 56)
    assert shapes["stages.0"] == (1, 256, 56, 56)
    assert shapes["stages.1"] == (1, 512, 28, 28)
    assert shapes["stages.2"] == (1, 1024, 14, 14)
    assert shapes["final"] == (1, 2048, 7, 7)
    assert s.total_params == IMAGENET_COUNTS["attention56_imagenet"]
    # conv + FC multiply-adds counted from the official prototxt: 6.27 G (notes section 6.3)
    assert s.total_mult_adds / 1e9 == pytest.approx(6.27, abs=0.01)


def test_summary_table(rng):
    net = models.attention56()
    s = models.summary(net, (1, 3, 32, 32))
    assert s.total_params == net.num_parameters()
    assert s.total_mult_adds == sum(r.mult_adds for r in s.rows if r.kind in ("Conv2d", "Linear"))
    text = str(s)
    assert "total parameters" in text and "AttentionModule" in text
    assert net.training  # summary restores the mode
