"""Solution to exercise 2 of notebook 07: the forward pass of one attention module (Fig. 2, Eq. 3).

With the module's own submodules (so the weights are the same)::

    s = pre(x)                                    p units before the split
    T = trunk(s)                                  t units
    M = mask(s)                                   bottom-up top-down, below
    H = (1 + M) * T   (ARL)   or   M * T   (NAL)
    out = post(H)                                 p units after the fusion

The mask branch (``module.soft_mask``, section 3.2): ``pools`` times, a 3x3
max pooling with stride 2 and padding 1 followed by the units ``down[k]``,
keeping each level's output. Then back up: at each level k from the second
lowest to the top, upsample (bilinear, align corners) to that level's size,
add the skip unit ``skip[k]`` applied to that level's kept output, and run
``up[k]``. A last upsampling to the trunk's size, then ``head`` (BN, ReLU,
1x1 conv, twice, then the sigmoid for mixed attention).
"""

from __future__ import annotations

import miniran.functional as F


def mask_forward(mask, s, size):
    """The encoder-decoder soft mask branch ``mask`` (an EncoderDecoderMask) on s; output of spatial size ``size``."""
    levels = []
    x = s
    for down in mask.down:
        x = down(F.max_pool2d(x, 3, stride=2, padding=1))
        levels.append(x)
    for k in reversed(range(mask.pools - 1)):
        x = F.interpolate_bilinear(x, levels[k].shape[2:], align_corners=True) + mask.skip[k](levels[k])
        x = mask.up[k](x)
    x = F.interpolate_bilinear(x, size, align_corners=True)
    return mask.head(x)


def attention_forward(module, x):
    """The output of ``module`` (a models.AttentionModule with the encoder-decoder mask) for input x."""
    s = module.pre(x)
    trunk = module.trunk(s)
    m = mask_forward(module.soft_mask, s, trunk.shape[2:])
    fused = (1 + m) * trunk if module.residual else m * trunk
    return module.post(fused)
