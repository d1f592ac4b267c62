"""Solution to exercise 5 of notebook 05: the depth 36m + 20 of the CIFAR attention networks.

Count the weighted layers (convolutions and the linear layer) on the trunk
path, leaving out the 1x1 projection shortcuts, which run beside it:

* the stem: one 3x3 convolution                                   1
* each stage opens with one bottleneck unit (3 convolutions),
  three stages                                                    9
* after the last stage, three more units                          9
* the linear classifier                                           1
* each attention module has p units before the split, t in the
  trunk and p after the fusion, 3 convolutions each: 3(2p + t);
  m modules per stage, 3 stages                                   9m(2p + t)

Total ``20 + 9m(2p + t)``. With the paper's p = 1, t = 2 that is 36m + 20:
56, 92, 128, 164 for m = 1, 2, 3, 4; Attention-452 uses m = 6 and
p, t = 2, 4 (Table 6's footnote): 20 + 54 * 8 = 452. The mask branch is not
counted: it runs beside the trunk, like the shortcuts.
"""

from __future__ import annotations


def depth(m, p=1, t=2):
    """Weighted layers on the trunk path of a CIFAR attention network with m modules per stage."""
    stem, openers, final, fc = 1, 3 * 3, 3 * 3, 1
    per_module = 3 * (2 * p + t)
    return stem + openers + final + fc + 3 * m * per_module
