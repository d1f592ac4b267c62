"""Activations that turn the mask branch's output into an attention mask (paper section 3.3).

The paper compares three ways to normalise the soft mask (Eq. 4-6, Table 1):

* **mixed attention**, Eq. 4: ``f1(x_{i,c}) = sigmoid(x_{i,c})`` for every
  channel and position. It is :func:`miniran.functional.sigmoid`; nothing
  new is needed here.
* **channel attention**, Eq. 5: ``f2(x_{i,c}) = x_{i,c} / ||x_i||``, an L2
  normalisation across the channels at each spatial position ``i``
  (:func:`channel_l2_normalize`). There is no sigmoid in Eq. 5.
* **spatial attention**, Eq. 6: ``f3(x_{i,c}) = sigmoid((x_{i,c} - mean_c) / std_c)``,
  each channel's feature map standardised, then squashed
  (:func:`spatial_sigmoid`).

Notation:
    N: batch size, C: channels, (H, W): spatial size, M = H * W.
    ``i`` indexes a spatial position, ``c`` a channel.

Both are normalisations: every output depends on a whole vector of inputs
(all channels at ``i``, or the whole ``H x W`` map of channel ``c``). That is
exactly where a gradient check through ``sum(outputs)`` goes blind (for the
L2 normalisation, the direction of ``y`` itself is invisible to the gradient;
for the standardisation, ``sum(z)`` is constant), which is why the tests use
:func:`miniran.gradcheck` and its random upstream gradient.
"""

from __future__ import annotations

from miniran.autograd import Function, Tensor
from miniran.backend import get_array_module
from miniran.functional.basic import stable_sigmoid


def _check_4d(name, x):
    if len(x.shape) != 4:
        raise ValueError(f"{name}: x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")


def _check_eps(name, eps):
    eps = float(eps)
    if not eps >= 0:  # also rejects NaN
        raise ValueError(f"{name}: eps must be >= 0, got {eps}")
    return eps


# --------------------------------------------------------------------------- channel attention (Eq. 5)


class ChannelL2Normalize(Function):
    """y = x / n with n = sqrt(sum_c x^2 + eps) at every (sample, position)."""

    def __init__(self, eps):
        self.eps = eps

    def forward(self, x):
        xp = get_array_module(x)
        self.n = xp.sqrt((x * x).sum(axis=1, keepdims=True) + self.eps)  # (N, 1, H, W)
        self.y = x / self.n
        return self.y

    def backward(self, gy):
        # dy_c/dx_k = (delta_ck - y_c y_k) / n, so (J^T gy)_k = (gy_k - y_k <gy, y>) / n:
        # the part of gy along y is projected out (moving x along itself does not move y)
        dot = (gy * self.y).sum(axis=1, keepdims=True)
        return (gy - self.y * dot) / self.n


def channel_l2_normalize(x, eps=1e-12) -> Tensor:
    """Channel attention, paper Eq. 5: ``f2(x_{i,c}) = x_{i,c} / ||x_i||``.

    At each sample and spatial position, the C-vector of channels is divided by
    its L2 norm, so the output has unit L2 norm across axis 1 and keeps no
    information about how strong the position was (the paper: channel attention
    "removes spatial information").

    ``eps`` sits *inside* the square root: ``y = x / sqrt(sum_c x^2 + eps)``.
    That keeps a zero vector finite (it maps to 0) and, unlike
    ``max(norm, eps)``, leaves no kink in the gradient; for norms well above
    ``sqrt(eps)`` (1e-6 by default) the result is the exact Eq. 5.

    Args:
        x: tensor of shape (N, C, H, W).
        eps: small constant >= 0 added to the squared norm.

    Returns:
        Tensor of shape (N, C, H, W).
    """
    _check_4d("channel_l2_normalize", x)
    return ChannelL2Normalize(_check_eps("channel_l2_normalize", eps))(x)


# --------------------------------------------------------------------------- spatial attention (Eq. 6)


class SpatialSigmoid(Function):
    """y = sigmoid(z), z = (x - mean) / sqrt(var + eps), statistics over (H, W) per (n, c)."""

    def __init__(self, eps):
        self.eps = eps

    def forward(self, x):
        xp = get_array_module(x)
        mean = x.mean(axis=(2, 3), keepdims=True)  # (N, C, 1, 1)
        centred = x - mean
        var = (centred * centred).mean(axis=(2, 3), keepdims=True)  # two-pass: no cancellation
        self.std = xp.sqrt(var + self.eps)
        self.z = centred / self.std
        self.y = stable_sigmoid(self.z)
        return self.y

    def backward(self, gy):
        # through the sigmoid first, then through the standardisation, whose
        # mean and std depend on x too (forgetting that is the classic bug):
        # gx = (g - mean(g) - z * mean(g * z)) / std, means over (H, W)
        g = gy * self.y * (1 - self.y)
        z = self.z
        g_mean = g.mean(axis=(2, 3), keepdims=True)
        gz_mean = (g * z).mean(axis=(2, 3), keepdims=True)
        return (g - g_mean - z * gz_mean) / self.std


def spatial_sigmoid(x, eps=1e-5) -> Tensor:
    """Spatial attention, paper Eq. 6: ``f3(x_{i,c}) = sigmoid((x_{i,c} - mean_c) / std_c)``.

    ``mean_c`` and ``std_c`` are "the mean and standard deviation of the c-th
    channel's feature map": we read that as statistics over the ``H x W`` map
    of each channel of each sample separately (like instance normalisation,
    no running averages, no learned scale or shift). ``std_c`` is the
    population standard deviation (divide by ``H * W``) with ``eps`` inside the
    square root, ``sqrt(var + eps)``, so a constant map gives ``z = 0`` and a
    mask of 0.5 instead of a division by zero.

    Args:
        x: tensor of shape (N, C, H, W).
        eps: small constant >= 0 added to the variance.

    Returns:
        Tensor of shape (N, C, H, W) with values in [0, 1].
    """
    _check_4d("spatial_sigmoid", x)
    return SpatialSigmoid(_check_eps("spatial_sigmoid", eps))(x)
