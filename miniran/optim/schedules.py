"""Learning-rate schedules, stepped once per iteration.

* :class:`MultiStepLR`: multiply the rate by ``gamma`` at given iterations.
  The paper (section 4.1) divides by 10 at 64k and 96k of 160k iterations;
  :func:`paper_schedule` scales that to any run length (40% and 60%).
* :class:`CosineLR`: half a cosine from the base rate down to ``min_lr``.
* :class:`OneCycleLR`: a linear warm-up from ``base_lr / div`` to the base
  rate, then half a cosine down to 0 (Smith and Topin 2017, "one cycle"):
  a schedule made for short runs of a few epochs.

A schedule sets ``optimizer.lr`` when :meth:`step` is called (after each
optimiser step), and can report the rate at any iteration with ``lr_at``.
"""

from __future__ import annotations

import bisect
import math


class _Schedule:
    def __init__(self, optimizer, base_lr=None):
        self.optimizer = optimizer
        self.base_lr = float(optimizer.lr if base_lr is None else base_lr)
        self.last_step = 0
        optimizer.lr = self.lr_at(0)

    def lr_at(self, step: int) -> float:
        raise NotImplementedError

    def step(self):
        """Advance one iteration and set the optimiser's learning rate."""
        self.last_step += 1
        self.optimizer.lr = self.lr_at(self.last_step)
        return self.optimizer.lr

    def state_dict(self):
        return {"last_step": self.last_step, "base_lr": self.base_lr}

    def load_state_dict(self, state):
        self.last_step = int(state["last_step"])
        self.base_lr = float(state["base_lr"])
        self.optimizer.lr = self.lr_at(self.last_step)


class MultiStepLR(_Schedule):
    """lr = base_lr * gamma ** (number of milestones <= step)."""

    def __init__(self, optimizer, milestones, gamma=0.1, base_lr=None):
        self.milestones = sorted(int(m) for m in milestones)
        if any(m <= 0 for m in self.milestones):
            raise ValueError(f"milestones must be positive iterations, got {milestones}")
        self.gamma = float(gamma)
        super().__init__(optimizer, base_lr)

    def lr_at(self, step):
        return self.base_lr * self.gamma ** bisect.bisect_right(self.milestones, step)


class CosineLR(_Schedule):
    """lr = min_lr + (base_lr - min_lr) * (1 + cos(pi * step / total_steps)) / 2."""

    def __init__(self, optimizer, total_steps, min_lr=0.0, base_lr=None):
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        self.total_steps = int(total_steps)
        self.min_lr = float(min_lr)
        super().__init__(optimizer, base_lr)

    def lr_at(self, step):
        t = min(step, self.total_steps) / self.total_steps
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * t))


class OneCycleLR(_Schedule):
    """Warm up linearly, then anneal with half a cosine.

    For ``step < w = round(warmup * total_steps)``::

        lr = base_lr / div + (base_lr - base_lr / div) * step / w

    and afterwards ``lr = base_lr * (1 + cos(pi * (step - w) / (total_steps - w))) / 2``.
    The warm-up lets a large rate be reached without the first steps (large
    gradients, running statistics not yet settled) throwing the weights far.
    """

    def __init__(self, optimizer, total_steps, warmup=0.2, div=10.0, base_lr=None):
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        if not 0 <= warmup < 1:
            raise ValueError(f"warmup is a fraction of the run in [0, 1), got {warmup}")
        if not div >= 1:
            raise ValueError(f"div must be >= 1 (the warm-up starts at base_lr / div), got {div}")
        self.total_steps = int(total_steps)
        self.warmup_steps = round(warmup * self.total_steps)
        self.div = float(div)
        super().__init__(optimizer, base_lr)

    def lr_at(self, step):
        step = min(step, self.total_steps)
        w = self.warmup_steps
        if step < w:
            start = self.base_lr / self.div
            return start + (self.base_lr - start) * step / w
        t = (step - w) / max(self.total_steps - w, 1)
        return self.base_lr * 0.5 * (1 + math.cos(math.pi * t))


def paper_schedule(optimizer, total_steps, base_lr=None) -> MultiStepLR:
    """The paper's CIFAR schedule scaled to ``total_steps``: /10 at 40% and 60%.

    With ``total_steps=160_000`` the milestones are exactly 64k and 96k.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    milestones = [max(1, round(0.4 * total_steps)), max(1, round(0.6 * total_steps))]
    return MultiStepLR(optimizer, milestones, gamma=0.1, base_lr=base_lr)
