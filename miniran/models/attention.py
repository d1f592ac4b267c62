"""The Attention Module (paper section 3, Fig. 2): a trunk branch and a soft mask branch.

::

    x -> p units -> s ---------------> trunk: t units ---------> T
                    \\                                          |
                     +--> soft mask branch ----------------> M |
                                                               v
                         H = (1 + M) * T   (attention residual learning, Eq. 3)
                         H =      M  * T   (naive attention learning, Eq. 1)
                                   -> p units -> output

The soft mask branch is bottom-up top-down (section 3.2). With ``pools`` = 3
(stage 1 of the paper's networks) it is, following the official Caffe model::

    s -> pool -> r units = d0 ---------------------> skip unit --+
              -> pool -> r units = d1 --> skip unit --+          |
              -> pool -> 2r units                     |          |
              -> upsample to d1's size -------------> + -> r units
              -> upsample to d0's size --------------------------> + -> r units
              -> upsample to T's size -> BN-ReLU-1x1-BN-ReLU-1x1 -> activation = M

Each upsampled map is added to the skip unit's output only (as in Caffe; the
popular PyTorch port also adds the encoder tensor and the trunk, which the
paper does not show). Every resize takes its size from a reference tensor, so
any input size works.
"""

from __future__ import annotations

import miniran.functional as F
from miniran import nn
from miniran.models.residual import PreActBottleneck, residual_stack

ATTENTION_TYPES = ("mixed", "channel", "spatial")
MASK_TYPES = ("encoder_decoder", "local_conv")


class MaskHead(nn.Module):
    """BN-ReLU-1x1 conv-BN-ReLU-1x1 conv [-BN] then the attention activation.

    The activation picks the attention type (section 3.3):

    * ``"mixed"``: sigmoid at every channel and position (Eq. 4);
    * ``"channel"``: L2 normalisation across channels at each position (Eq. 5);
    * ``"spatial"``: each channel map standardised, then a sigmoid (Eq. 6).

    ``mask_bn=True`` adds batch norm right before the activation: not in the
    paper, a reader's hypothesis (point 3 of the critique in docs/sources.md).
    """

    def __init__(self, channels, attention="mixed", mask_bn=False, rng=None):
        super().__init__()
        if attention not in ATTENTION_TYPES:
            raise ValueError(f"attention must be one of {ATTENTION_TYPES}, got {attention!r}")
        self.attention = attention
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, channels, 1, bias=False, rng=rng)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 1, bias=False, rng=rng)
        self.bn_out = nn.BatchNorm2d(channels) if mask_bn else None

    def forward(self, x):
        x = self.conv1(self.bn1(x, relu=True))  # ReLU(BN(x)), fused
        x = self.conv2(self.bn2(x, relu=True))
        if self.bn_out is not None:
            x = self.bn_out(x)
        if self.attention == "mixed":
            return F.sigmoid(x)
        if self.attention == "channel":
            return F.channel_l2_normalize(x)
        return F.spatial_sigmoid(x)

    def extra_repr(self):
        return f"attention={self.attention!r}, mask_bn={self.bn_out is not None}"


class EncoderDecoderMask(nn.Module):
    """Bottom-up top-down soft mask branch (section 3.2): (N, C, H, W) -> (N, C, H, W).

    Args:
        channels: C, the same in every unit of the branch (as in the trunk).
        pools: number of 3x3 stride-2 max poolings. They pad by 1 (as the PyTorch
            port does) instead of Caffe's unpadded ceil mode: both give the same
            sizes on the even maps of every network here (56->28->14->7,
            32->16->8->4), and padding keeps the pooling defined down to 1x1
            maps, so any input size works.
        r: residual units between adjacent poolings (2r at the lowest resolution).
    """

    def __init__(self, channels, pools, r=1, attention="mixed", mask_bn=False, rng=None):
        super().__init__()
        if pools < 1:
            raise ValueError(f"pools must be >= 1 for the encoder-decoder mask, got {pools}")
        self.pools = pools
        # down[k]: the units after pooling k (r of them; 2r after the last pooling)
        self.down = nn.Sequential(*[
            residual_stack(channels, 2 * r if k == pools - 1 else r, rng) for k in range(pools)
        ])
        # skip[k] and up[k] for every level but the lowest
        self.skip = nn.Sequential(*[PreActBottleneck(channels, channels, rng=rng) for _ in range(pools - 1)])
        self.up = nn.Sequential(*[residual_stack(channels, r, rng) for _ in range(pools - 1)])
        self.head = MaskHead(channels, attention, mask_bn, rng)

    def forward(self, x, size):
        """``size``: (H, W) of the trunk output, the size of the mask."""
        encoded = []
        for down in self.down:
            x = down(F.max_pool2d(x, 3, stride=2, padding=1))
            encoded.append(x)
        # top-down: from the lowest level back up, adding the skip unit at each level
        for k in reversed(range(self.pools - 1)):
            ref = encoded[k]
            x = F.interpolate_bilinear(x, ref.shape[2:], align_corners=True) + self.skip[k](ref)
            x = self.up[k](x)
        x = F.interpolate_bilinear(x, size, align_corners=True)
        return self.head(x)


class LocalConvMask(nn.Module):
    """The Table 4 baseline: residual units at full resolution, no down- or up-sampling."""

    def __init__(self, channels, units=3, attention="mixed", mask_bn=False, rng=None):
        super().__init__()
        self.units = residual_stack(channels, units, rng)
        self.head = MaskHead(channels, attention, mask_bn, rng)

    def forward(self, x, size):
        return self.head(self.units(x))


class AttentionModule(nn.Module):
    """One Attention Module (Fig. 2): (N, C, H, W) -> (N, C, H, W).

    Args:
        channels: C, kept throughout the module.
        pools: max poolings in the soft mask branch (3, 2, 1 in stages 1, 2, 3).
        p: units before the split and after the fusion.
        t: units in the trunk branch.
        r: units between adjacent poolings in the mask branch.
        attention: ``"mixed"`` (Eq. 4), ``"channel"`` (Eq. 5) or ``"spatial"`` (Eq. 6).
        residual: True for attention residual learning, (1 + M) * T (Eq. 3);
            False for naive attention learning, M * T (Eq. 1).
        mask: ``"encoder_decoder"`` (section 3.2) or ``"local_conv"`` (Table 4 baseline).
        mask_bn: batch norm right before the mask activation; not in the paper, a
            reader's hypothesis (docs/sources.md, the critique, point 3).
        local_units: residual units of the ``"local_conv"`` mask (the paper uses 3).
        rng: ``numpy.random.Generator`` for the initialisation.

    After each forward, ``last_mask`` and ``last_trunk`` hold the mask M and the
    trunk output T of that call (detached tensors sharing the data), for
    visualisation without a second forward pass.
    """

    def __init__(self, channels, pools, p=1, t=2, r=1, attention="mixed", residual=True,
                 mask="encoder_decoder", mask_bn=False, local_units=3, rng=None):
        super().__init__()
        if mask not in MASK_TYPES:
            raise ValueError(f"mask must be one of {MASK_TYPES}, got {mask!r}")
        if attention not in ATTENTION_TYPES:
            raise ValueError(f"attention must be one of {ATTENTION_TYPES}, got {attention!r}")
        for name, value in (("p", p), ("t", t), ("r", r)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.channels, self.pools, self.residual = channels, pools, residual
        self.config = dict(pools=pools, p=p, t=t, r=r, attention=attention, residual=residual,
                           mask=mask, mask_bn=mask_bn)
        self.pre = residual_stack(channels, p, rng)
        self.trunk = residual_stack(channels, t, rng)
        if mask == "encoder_decoder":
            self.soft_mask = EncoderDecoderMask(channels, pools, r, attention, mask_bn, rng)
        else:
            self.soft_mask = LocalConvMask(channels, local_units, attention, mask_bn, rng)
        self.post = residual_stack(channels, p, rng)
        self.last_mask = None
        self.last_trunk = None

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(
                f"AttentionModule expects input (N, {self.channels}, H, W), got shape {x.shape}"
            )
        s = self.pre(x)
        trunk = self.trunk(s)
        mask = self.soft_mask(s, trunk.shape[2:])
        self.last_mask, self.last_trunk = mask.detach(), trunk.detach()
        fused = (1 + mask) * trunk if self.residual else mask * trunk
        return self.post(fused)

    def extra_repr(self):
        c = self.config
        return (f"{self.channels}, pools={c['pools']}, p={c['p']}, t={c['t']}, r={c['r']}, "
                f"attention={c['attention']!r}, residual={c['residual']}, mask={c['mask']!r}, "
                f"mask_bn={c['mask_bn']}")
