#!/usr/bin/env python3
"""Measure the answers to notebook 13's exercises 2 and 3 (``tutorials/solutions/answers.md``, section 13).

    python tools/measure_notebook13.py [--epochs 2] [--fast] [--json FILE]

Runs, with the notebook's own code (its ``Top``, ``features``, ``accuracy``
and ``train_top``, read from the notebook file) on the embedded sample and the
shipped Attention-56:

* **the notebook's run**: stem and stages 1-2 frozen, a fresh stage 3 and
  everything after it trained on stored features;
* **keep less** (exercise 2): only the stem and stage 1 frozen, a fresh
  stage 2 and 3 on features of shape ``(N, 64, 32, 32)``;
* **keep more** (exercise 2): stages 1-3 frozen, only the final units, the
  last batch norm and the classifier trained;
* **augmentation** (exercise 3): the notebook's split, with each epoch's
  training batches drawn by an augmenting ``DataLoader`` and run through the
  frozen bottom again.

Each prints its time per epoch and its held-out accuracy after every epoch.
The numbers depend on the shipped weights and on the machine: run this after
the weights change, on a quiet machine, and update ``answers.md``. About 10
minutes on 2 CPU cores; ``--fast`` (400 training and 200 test images, 1 epoch)
is a smoke test of the code path.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
NOTEBOOK = REPO / "tutorials" / "13_fine_tuning_the_shipped_network.ipynb"

import numpy as np  # noqa: E402

import miniran  # noqa: E402
import miniran.functional as F  # noqa: E402
from miniran import Tensor, data, models, nn, optim  # noqa: E402


def notebook_namespace(mean, std) -> dict:
    """The names the notebook's definitions use (its imports, and the normalisation ``mean``, ``std``)."""
    return {"np": np, "time": time, "miniran": miniran, "F": F, "Tensor": Tensor, "data": data, "models": models,
            "nn": nn, "optim": optim, "mean": mean, "std": std}


def notebook_definitions(namespace: dict) -> dict:
    """Execute the notebook's top-level ``def`` and ``class`` statements (nothing else) in ``namespace``."""
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        if source.lstrip().startswith(("%", "!")) or "%pip" in source:
            continue
        tree = ast.parse(source)
        keep = [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
        if keep:
            exec(compile(ast.Module(body=keep, type_ignores=[]), str(NOTEBOOK), "exec"), namespace)
    for name in ("Top", "features", "accuracy", "train_top"):
        if name not in namespace:
            raise RuntimeError(f"{NOTEBOOK.name} no longer defines {name}: update this tool")
    return namespace


class TopFrom(nn.Module):
    """A fresh network's stages ``first`` onwards, final units, batch norm and classifier."""

    def __init__(self, net, first):
        super().__init__()
        self.stages = nn.Sequential(*list(net.stages)[first:])
        self.final, self.bn, self.fc = net.final, net.bn, net.fc

    def forward(self, h):
        return self.fc(F.global_avg_pool2d(self.bn(self.final(self.stages(h)), relu=True)))


def frozen_bottom(shipped, stages):
    bottom = nn.Sequential(shipped.stem, *list(shipped.stages)[:stages])
    bottom.eval().requires_grad_(False)
    return bottom


def train_top_augmented(ns, head, bottom, x_tr, y_tr, h_te, y_te, epochs, seed=0):
    """The notebook's ``train_top`` recipe, each batch drawn with random crops and flips and run through
    ``bottom`` (frozen, no graph) before the top."""
    mean, std = ns["mean"], ns["std"]
    loader = data.DataLoader(x_tr, y_tr, batch_size=64, shuffle=True, augment=True, seed=seed, mean=mean, std=std)
    opt = optim.SGD(head.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    schedule = optim.OneCycleLR(opt, epochs * len(loader))
    history, start = [], time.perf_counter()
    for epoch in range(1, epochs + 1):
        head.train()
        for images, labels in loader:
            with miniran.no_grad():
                h = bottom(Tensor(images)).data
            loss = F.cross_entropy(head(Tensor(h)), labels, label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
        history.append({"epoch": epoch, "test_acc": ns["accuracy"](head, h_te, y_te),
                        "seconds": time.perf_counter() - start})
        print(f"  epoch {epoch}: held-out acc {100 * history[-1]['test_acc']:.1f}%  ({history[-1]['seconds']:.0f} s)",
              flush=True)
    return history


def measure(epochs=2, fast=False) -> dict:
    if not models.pretrained_available():
        raise SystemExit("measure_notebook13: no pretrained weights in this copy of miniran")
    x_train, y_train = data.load_cifar10_sample(train=True)
    x_test, y_test = data.load_cifar10_sample(train=False)
    if fast:
        tr, te = data.balanced_subset(y_train, 400), data.balanced_subset(y_test, 200)
        x_train, y_train, x_test, y_test = x_train[tr], y_train[tr], x_test[te], y_test[te]
        epochs = 1
    shipped = models.attention56(pretrained=True)
    ns = notebook_definitions(notebook_namespace(shipped.pretrained_info["mean"], shipped.pretrained_info["std"]))
    results = {"epochs": epochs, "train_images": int(len(y_train)), "test_images": int(len(y_test))}

    for name, stages in (("notebook", 2), ("keep_less", 1), ("keep_more", 3)):
        bottom = frozen_bottom(shipped, stages)
        start = time.perf_counter()
        h_train, h_test = ns["features"](bottom, x_train), ns["features"](bottom, x_test)
        feature_seconds = time.perf_counter() - start
        head = TopFrom(models.attention56(seed=1), stages)
        parameters = int(sum(p.data.size for p in head.parameters()))
        print(f"{name}: {stages} stage(s) frozen, features {h_train.shape[1:]} in {feature_seconds:.0f} s, "
              f"fresh top of {parameters:,} parameters", flush=True)
        if name == "notebook":
            results["shipped_own_top"] = ns["accuracy"](ns["Top"](shipped), h_test, y_test)
        history = ns["train_top"](head, h_train, y_train, h_test, y_test, epochs)
        results[name] = {"frozen_stages": stages, "feature_seconds": round(feature_seconds, 1),
                         "parameters": parameters,
                         "seconds_per_epoch": round(history[-1]["seconds"] / epochs, 1),
                         "test_acc": [round(r["test_acc"], 4) for r in history]}
        if name == "notebook":
            print("augmentation: the notebook's split, each epoch through the frozen bottom again", flush=True)
            history = train_top_augmented(ns, TopFrom(models.attention56(seed=1), 2), bottom, x_train, y_train,
                                          h_test, y_test, epochs)
            results["augmented"] = {"seconds_per_epoch": round(history[-1]["seconds"] / epochs, 1),
                                    "test_acc": [round(r["test_acc"], 4) for r in history]}
        del h_train, h_test
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2, help="epochs of each run (the notebook's 2)")
    parser.add_argument("--fast", action="store_true", help="400 training and 200 test images, 1 epoch")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")
    results = measure(args.epochs, args.fast)
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
