"""Learning curves from a run's ``metrics.jsonl``."""

from __future__ import annotations

import os

from miniran.train import metrics


def read_metrics(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no metrics.jsonl in {run_dir}: is it the --out folder of a training run?")
    rows = metrics.read_metrics(path)  # a torn last line is skipped with a warning
    if not rows:
        raise ValueError(f"{path} is empty: no epoch has finished yet")
    return rows


def plot_curves(run_dir, out_path=None):
    """Draw loss and accuracy (train and test) per epoch to a PNG; returns its path."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], "o-", label="train")
    ax_loss.plot(epochs, [r["test_loss"] for r in rows], "s-", label="test")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [100 * r["train_acc"] for r in rows], "o-", label="train")
    ax_acc.plot(epochs, [100 * r["test_acc"] for r in rows], "s-", label="test")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.legend()
    fig.suptitle(os.path.basename(os.path.abspath(run_dir)))
    fig.tight_layout()
    out_path = out_path or os.path.join(run_dir, "curves.png")
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
