"""The ``miniran`` command line (subcommands grow as the project does)."""

from __future__ import annotations

import argparse


def _demo(args) -> int:
    """Until the training command exists: fit a small MLP end to end."""
    import numpy as np

    import miniran
    import miniran.functional as F
    from miniran import nn, optim

    rng = np.random.default_rng(0)
    n = 1000
    t = rng.uniform(0.25, 1.0, size=n) * 3 * np.pi
    y = rng.integers(0, 2, size=n)
    sign = np.where(y == 1, 1.0, -1.0)
    x = (np.stack([sign * t * np.cos(t), sign * t * np.sin(t)], 1) / 10).astype(np.float32)
    model = nn.Sequential(nn.Linear(2, 64, rng=rng), nn.ReLU(), nn.Linear(64, 64, rng=rng), nn.ReLU(), nn.Linear(64, 2, rng=rng))
    opt = optim.SGD(model.parameters(), lr=0.1)
    sched = optim.CosineLR(opt, 2000)
    for step in range(2000):
        idx = rng.integers(0, n, size=64)
        loss = F.cross_entropy(model(miniran.Tensor(x[idx])), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 400 == 0:
            print(f"step {step:5d}  loss {float(loss.data):.4f}  lr {opt.lr:.4f}")
    with miniran.no_grad():
        acc = float((model(miniran.Tensor(x)).data.argmax(1) == y).mean())
    print(f"two-spirals accuracy: {acc:.3f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="miniran", description="Residual Attention Networks on NumPy/CuPy")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="a small end-to-end example")
    demo.set_defaults(func=_demo)
    return parser


def main(argv) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
