"""Synthetic label noise for the noisy-label experiment [paper §4.1, Table 5, Eq. 7].

Following Sukhbaatar et al., the paper corrupts the CIFAR-10 training labels
with a confusion matrix ``Q`` (K x K, K = 10 classes)::

    Q[i, i] = r                  (the label is kept)
    Q[i, j] = (1 - r) / (K - 1)  (for j != i: it moves to one of the other classes)

where ``r`` is "the clean label ratio for the whole dataset". Each training
label ``y`` is replaced by a class drawn from row ``Q[y]``.

Table 5's column is called "Noise Level" (10%, 30%, 50%, 70%); reading it as
``1 - r`` (the fraction of labels changed) is our inference, not a statement of
the paper. Both parametrisations are accepted: ``clean_ratio=r`` or
``noise_level=1-r``.
"""

from __future__ import annotations

import operator

import numpy as np

from miniran import backend

__all__ = ["apply_label_noise", "noise_transition_matrix"]


def _clean_ratio(clean_ratio, noise_level) -> float:
    if (clean_ratio is None) == (noise_level is None):
        raise ValueError(
            "give exactly one of clean_ratio (r) or noise_level (1 - r), got "
            f"clean_ratio={clean_ratio!r}, noise_level={noise_level!r}"
        )
    name, value = ("clean_ratio", clean_ratio) if clean_ratio is not None else ("noise_level", noise_level)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return value if clean_ratio is not None else 1.0 - value


def _num_classes(num_classes) -> int:
    try:
        k = operator.index(num_classes)
    except TypeError:
        k = None
    if k is None or isinstance(num_classes, bool) or k < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    return k


def noise_transition_matrix(clean_ratio=None, noise_level=None, num_classes: int = 10) -> np.ndarray:
    """The matrix ``Q`` of Eq. 7: ``r`` on the diagonal, ``(1 - r)/(K - 1)`` elsewhere.

    Returns:
        float64 ``(K, K)``; each row sums to 1; ``Q[i, j]`` is the probability
        that true class ``i`` is given label ``j``.
    """
    r = _clean_ratio(clean_ratio, noise_level)
    k = _num_classes(num_classes)
    q = np.full((k, k), (1.0 - r) / (k - 1))
    np.fill_diagonal(q, r)
    return q


def apply_label_noise(labels, clean_ratio=None, noise_level=None, num_classes: int = 10,
                      seed=0):
    """Resample every label from its row of ``Q`` (Eq. 7) [paper §4.1, Table 5].

    Drawing from row ``Q[y]`` is done in two vectorised steps with the same
    distribution: keep ``y`` with probability ``r``; otherwise add a uniform
    shift in ``1..K-1`` modulo K, which lands on each other class with
    probability ``(1 - r)/(K - 1)``.

    Args:
        labels: ``(N,)`` integer labels in ``0..K-1`` (NumPy or CuPy; not modified).
        clean_ratio: r, the probability that a label is kept.
        noise_level: 1 - r (give this *or* ``clean_ratio``); Table 5's "noise level".
        num_classes: K (10 for CIFAR-10).
        seed: seed of the generator (or a ``numpy.random.Generator``): the same
            seed gives the same noisy labels.

    Returns:
        A new int64 ``(N,)`` array of the same kind as ``labels``.

    Raises:
        ValueError: both or neither of clean_ratio/noise_level, a value outside
            [0, 1], num_classes < 2, or labels that are not integers in 0..K-1.
    """
    r = _clean_ratio(clean_ratio, noise_level)
    k = _num_classes(num_classes)
    host = backend.to_numpy(labels)
    if host.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {host.shape}")
    if host.size and not np.issubdtype(host.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {host.dtype}")
    if host.size and (host.min() < 0 or host.max() >= k):
        raise ValueError(
            f"labels must be in 0..{k - 1} for num_classes={k}, got values "
            f"{int(host.min())}..{int(host.max())}"
        )
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    y = host.astype(np.int64)  # a copy: the input is left as it was
    n = y.shape[0]
    flip = rng.random(n) >= r
    shift = rng.integers(1, k, size=n)
    y[flip] = (y[flip] + shift[flip]) % k
    return backend.to_device(y, backend.device_of(labels))
