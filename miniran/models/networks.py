"""The model zoo: Residual Attention Networks for CIFAR (32x32) and ImageNet (224x224), and ResNet-164.

CIFAR layout (the paper gives only "3 stages, m modules per stage, 36m+20
weighted layers"; the rest follows the ResNet-164 CIFAR recipe and the
official model's structure, see docs/models.md)::

    3x3 conv, 16                                     32x32
    stage 1: unit 16->64,    m modules (3 pools)     32x32
    stage 2: unit 64->128/2, m modules (2 pools)     16x16
    stage 3: unit 128->256/2, m modules (1 pool)      8x8
    3 units 256->256                                  8x8
    BN-ReLU, global average pooling, linear

Depth of the trunk: 1 + 3*3 (stage units) + 3*3 (final units) + 1 (linear)
+ 3 stages * m modules * (p + t + p) units * 3 layers = 20 + 36m with
p=1, t=2: 56, 92, 128, 164 for m = 1, 2, 3, 4 (paper section 4.1).

ImageNet layout: exactly Table 2 of the paper (7x7/2 stem, 3x3/2 max pool,
widths 256, 512, 1024, 2048, mask poolings 3/2/1, 7x7 average pooling).
"""

from __future__ import annotations

import numpy as np

import miniran.functional as F
from miniran import nn
from miniran.models.attention import AttentionModule
from miniran.models.pretrained import check_pretrained_arguments, load_pretrained, register_builders
from miniran.models.residual import PreActBottleneck


def _rng(seed):
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


class ResidualAttentionNetwork(nn.Module):
    """A stack of stages, each opened by one residual unit and followed by attention modules.

    Args:
        stem: "cifar" (3x3 conv, 16 channels) or "imagenet" (7x7/2 conv, 64, then 3x3/2 max pool).
        widths: output channels of the stages.
        modules_per_stage: attention modules in each stage (0 gives a plain ResNet stage).
        pools_per_stage: mask poolings in each stage.
        units_per_stage: residual units opening each stage (1 in the attention networks).
        final_units: residual units after the last stage, and their width/stride.
        num_classes: size of the classifier output.
        module_options: passed to every :class:`AttentionModule` (p, t, r, attention,
            residual, mask, mask_bn).
        seed: int or ``numpy.random.Generator`` for the He initialisation.

    Input (N, 3, H, W) -> logits (N, num_classes). ``stages`` holds the three
    stages as :class:`~miniran.nn.Sequential` modules, handy for hooks.
    """

    def __init__(self, stem="cifar", widths=(64, 128, 256), modules_per_stage=(1, 1, 1),
                 pools_per_stage=(3, 2, 1), units_per_stage=(1, 1, 1), final_units=3,
                 final_width=None, final_stride=1, num_classes=10, seed=0, **module_options):
        super().__init__()
        if not (len(widths) == len(modules_per_stage) == len(pools_per_stage) == len(units_per_stage)):
            raise ValueError("widths, modules_per_stage, pools_per_stage and units_per_stage must have the same length")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        rng = _rng(seed)
        self.stem_type = stem
        if stem == "cifar":
            stem_channels = 16
            self.stem = nn.Conv2d(3, stem_channels, 3, padding=1, bias=False, rng=rng)
        elif stem == "imagenet":
            stem_channels = 64
            self.stem = nn.Sequential(
                nn.Conv2d(3, stem_channels, 7, stride=2, padding=3, bias=False, rng=rng),
                nn.BatchNorm2d(stem_channels),
                nn.ReLU(),
                nn.MaxPool2d(3, stride=2, ceil_mode=True),
            )
        else:
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")

        stages = []
        in_channels = stem_channels
        for i, (width, m, pools, units) in enumerate(zip(widths, modules_per_stage, pools_per_stage, units_per_stage)):
            stride = 1 if i == 0 else 2
            layers = [PreActBottleneck(in_channels, width, stride=stride, rng=rng)]
            layers += [PreActBottleneck(width, width, rng=rng) for _ in range(units - 1)]
            layers += [AttentionModule(width, pools, rng=rng, **module_options) for _ in range(m)]
            stages.append(nn.Sequential(*layers))
            in_channels = width
        self.stages = nn.Sequential(*stages)

        final_width = final_width or in_channels
        final = []
        for k in range(final_units):
            final.append(PreActBottleneck(in_channels, final_width, stride=final_stride if k == 0 else 1, rng=rng))
            in_channels = final_width
        self.final = nn.Sequential(*final)
        self.bn = nn.BatchNorm2d(in_channels)
        self.fc = nn.Linear(in_channels, num_classes, rng=rng)

    def features(self, x):
        """Everything before the classifier: (N, 3, H, W) -> (N, C, h, w)."""
        x = self.stem(x)
        x = self.stages(x)
        x = self.final(x)
        return self.bn(x, relu=True)  # ReLU(BN(x)), fused

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images of shape (N, 3, H, W), got {x.shape}")
        return self.fc(F.global_avg_pool2d(self.features(x)))

    def attention_modules(self):
        """The attention modules in forward order."""
        return [m for m in self.modules() if isinstance(m, AttentionModule)]


def _no_pretrained(pretrained, name):
    """Every builder takes ``pretrained``; only attention56 has weights to give."""
    if pretrained:
        raise ValueError(f"no pretrained weights for {name}; only attention56(pretrained=True) ships with miniran")


def _cifar_attention(m, num_classes, seed, pools, pretrained=False, p=1, t=2, r=1, **options):
    _no_pretrained(pretrained, f"Attention-{20 + 9 * m * (2 * p + t)}")  # 36m+20 for p=1, t=2
    return ResidualAttentionNetwork(
        "cifar", (64, 128, 256), (m, m, m), tuple(pools), num_classes=num_classes, seed=seed,
        p=p, t=t, r=r, **options,
    )


def attention56(num_classes=10, seed=0, pools=(3, 2, 1), pretrained=False, **options):
    """Attention-56 for 32x32 input: one module per stage (m = 1).

    ``pretrained=True`` returns the network trained on CIFAR-10 that ships
    with the package, in evaluation mode (:func:`~miniran.models.load_pretrained`;
    ``model.pretrained_info`` holds its normalisation). It cannot be combined
    with other ``num_classes``, ``pools`` or module options; ``seed`` is ignored.
    """
    if pretrained:
        name = check_pretrained_arguments("attention56", num_classes, {"pools": pools, **options})
        return load_pretrained(name)
    return _cifar_attention(1, num_classes, seed, pools, **options)


def attention92(num_classes=10, seed=0, pools=(3, 2, 1), pretrained=False, **options):
    """Attention-92 for 32x32 input: m = 2 modules per stage (Table 6: 1.9M params).

    ``pretrained=True`` is refused in one line, as for every network but attention56.
    """
    return _cifar_attention(2, num_classes, seed, pools, pretrained, **options)


def attention128(num_classes=10, seed=0, pools=(3, 2, 1), pretrained=False, **options):
    """Attention-128 for 32x32 input: m = 3."""
    return _cifar_attention(3, num_classes, seed, pools, pretrained, **options)


def attention164(num_classes=10, seed=0, pools=(3, 2, 1), pretrained=False, **options):
    """Attention-164 for 32x32 input: m = 4 (used for Figure 4)."""
    return _cifar_attention(4, num_classes, seed, pools, pretrained, **options)


def attention236(num_classes=10, seed=0, pools=(3, 2, 1), pretrained=False, **options):
    """Attention-236 for 32x32 input: m = 6 (Table 6: 5.1M params)."""
    return _cifar_attention(6, num_classes, seed, pools, pretrained, **options)


def attention452(num_classes=10, seed=0, pools=(3, 2, 1), pretrained=False, **options):
    """Attention-452 for 32x32 input: m = 6 with p = 2, t = 4, r = 3 (Table 6 footnote)."""
    options = {"p": 2, "t": 4, "r": 3, **options}
    return _cifar_attention(6, num_classes, seed, pools, pretrained, **options)


def resnet164(num_classes=10, seed=0, pretrained=False):
    """Pre-activation ResNet-164 for 32x32 input: 18 bottleneck units per stage (the Table 5 baseline).

    ``pretrained=True`` is refused in one line: no weights ship for it.
    """
    _no_pretrained(pretrained, "ResNet-164")
    return ResidualAttentionNetwork(
        "cifar", (64, 128, 256), (0, 0, 0), (0, 0, 0), units_per_stage=(18, 18, 18),
        final_units=0, num_classes=num_classes, seed=seed,
    )


def _imagenet_attention(modules, num_classes, seed, pretrained=False, **options):
    _no_pretrained(pretrained, "the ImageNet networks")
    return ResidualAttentionNetwork(
        "imagenet", (256, 512, 1024), modules, (3, 2, 1), final_units=3, final_width=2048,
        final_stride=2, num_classes=num_classes, seed=seed, **options,
    )


def attention56_imagenet(num_classes=1000, seed=0, pretrained=False, **options):
    """Attention-56 for 224x224 input, Table 2: modules 1/1/1 (31.8M params with BN)."""
    return _imagenet_attention((1, 1, 1), num_classes, seed, pretrained, **options)


def attention92_imagenet(num_classes=1000, seed=0, pretrained=False, **options):
    """Attention-92 for 224x224 input, Table 2: modules 1/2/3 (52.5M params with BN)."""
    return _imagenet_attention((1, 2, 3), num_classes, seed, pretrained, **options)


#: every network by name, for the command line
MODELS = {
    "attention56": attention56,
    "attention92": attention92,
    "attention128": attention128,
    "attention164": attention164,
    "attention236": attention236,
    "attention452": attention452,
    "resnet164": resnet164,
    "attention56_imagenet": attention56_imagenet,
    "attention92_imagenet": attention92_imagenet,
}

# load_pretrained builds the network from this table (pretrained.py cannot import this module)
register_builders(MODELS)


def get_model(name, **kwargs):
    """Build a network of the zoo by name (see ``MODELS``)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name](**kwargs)
