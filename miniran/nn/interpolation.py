"""A layer form of bilinear resizing, sized by a reference map like Caffe's ``Interp``."""

from __future__ import annotations

from miniran import functional as F
from miniran.nn.module import Module


class UpsampleBilinear(Module):
    """Bilinear resize of (N, C, H, W) to the spatial size of a reference.

    The mask branch of an attention module (paper section 3.2; Caffe's
    ``Interp`` layer with two bottoms, docs/models.md) resizes
    a small map back to the size of an earlier one. Passing that earlier map
    as ``ref`` keeps sizes out of the model definition, so the same module
    works for 32x32 CIFAR and 224x224 ImageNet inputs.

    Despite the name (the mask branch only ever enlarges), any size works,
    larger or smaller. It has no parameters.

    Args:
        align_corners: see :func:`miniran.functional.interpolate_bilinear`
            (default True, the ratio of the Caffe reference).

    Call as ``layer(x, ref)`` with ``ref`` a tensor or array whose last two
    dimensions are the target (H_out, W_out), or ``layer(x, size=(H_out, W_out))``.
    """

    def __init__(self, align_corners=True):
        super().__init__()
        self.align_corners = bool(align_corners)

    def forward(self, x, ref=None, size=None):
        if (ref is None) == (size is None):
            raise ValueError("UpsampleBilinear: pass exactly one of ref (a reference map) or size")
        if ref is not None:
            if len(ref.shape) < 2:
                raise ValueError(
                    f"UpsampleBilinear: ref must have at least 2 dimensions, got shape {tuple(ref.shape)}"
                )
            size = tuple(ref.shape[-2:])
        return F.interpolate_bilinear(x, size, align_corners=self.align_corners)

    def extra_repr(self):
        return f"align_corners={self.align_corners}"
