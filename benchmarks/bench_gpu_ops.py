"""Count the device operations of one Attention-56 training step and one evaluation batch.

On a GPU every CuPy call costs 5-15 us of Python and launch time, more than
the math of a small CIFAR tensor, so the number of device operations per step
decides whether a step is bound by dispatch. This script counts them on the
CPU with the CuPy stand-in of the test suite (``tests/standin``), which records
every kernel launch, every device-to-host sync and every host-to-device copy
a real CuPy run would make. The count depends on the batch only through the
batch norm, which takes one kernel each way for a channel of at most
``miniran.fast.norm_gpu.FUSED_MAX`` values (N*H*W) and two for a larger one.

Counted: one training step (forward, cross-entropy, ``zero_grad``, backward,
Nesterov SGD with weight decay, learning-rate schedule) after one warm-up step,
and one evaluation batch of ``miniran.train.trainer.evaluate`` (forward in
evaluation mode and the on-device metric counting).

Usage (from the repository root)::

    python benchmarks/bench_gpu_ops.py                 # Attention-56, batch 16 (about 20 s)
    python benchmarks/bench_gpu_ops.py --batch 64      # the 32x32 batch norms in two stages (about 90 s)
    python benchmarks/bench_gpu_ops.py --model attention92 --top 25
    python benchmarks/bench_gpu_ops.py --json ops.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "standin"))  # the stand-in shadows any real CuPy
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

import cupy  # noqa: E402
import cupy_standin  # noqa: E402

import miniran.functional as F  # noqa: E402
from miniran import models, optim  # noqa: E402
from miniran.autograd import Tensor  # noqa: E402
from miniran.train.trainer import evaluate  # noqa: E402

#: the target of the GPU issue, per Attention-56 training step
TARGET_LAUNCHES = 1000  # issue 18: at most 1,000 device operations per training step


def count_training_step(model_name="attention56", batch=16, seed=0):
    assert cupy_standin.is_standin(cupy), "the CuPy stand-in must be imported, not a real CuPy"
    rng = np.random.default_rng(seed)
    net = models.get_model(model_name, num_classes=10, seed=seed).to("gpu")
    opt = optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4, flat=True)
    schedule = optim.CosineLR(opt, 100)
    x = cupy.asarray(rng.standard_normal((batch, 3, 32, 32)).astype(np.float32))
    y = cupy.asarray(rng.integers(0, 10, batch))

    def step():
        loss = F.cross_entropy(net(Tensor(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()

    step()  # warm-up: momentum buffers, cached matrices
    with cupy_standin.counting() as train_counts:
        step()

    images = rng.integers(0, 256, (batch, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, batch)
    mean = np.zeros((3, 1, 1), np.float32)
    std = np.ones((3, 1, 1), np.float32)
    evaluate(net, images, labels, mean, std, batch_size=batch, device="gpu")  # warm-up
    with cupy_standin.counting() as eval_counts:
        evaluate(net, images, labels, mean, std, batch_size=batch, device="gpu")
    return train_counts, eval_counts, sum(1 for _ in net.parameters())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="attention56")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--top", type=int, default=15, help="show the N most frequent operations")
    parser.add_argument("--sites", action="store_true", help="list the call sites (file:line) instead")
    parser.add_argument("--json", help="write the counts to this file")
    args = parser.parse_args(argv)

    train, ev, n_params = count_training_step(args.model, args.batch)
    print(f"{args.model}: {n_params} parameter arrays, batch {args.batch}")
    print(f"training step: {train.launches} device operations (target <= {TARGET_LAUNCHES}), "
          f"{train.syncs} device-to-host syncs, {train.host_to_device} host-to-device copies")
    by = train.launches_by_site if args.sites else train.launches_by_name
    for name, k in by.most_common(args.top):
        print(f"    {k:6d}  {name}")
    if train.syncs:
        print("  syncs:", dict(train.syncs_by_name))
    print(f"evaluation batch (one of one, loader and counting included): {ev.launches} device operations, "
          f"{ev.syncs} syncs, {ev.host_to_device} host-to-device copies")
    if ev.syncs:
        print("  syncs:", dict(ev.syncs_by_name))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "model": args.model, "batch": args.batch, "parameter_arrays": n_params,
            "train": {"launches": train.launches, "syncs": train.syncs,
                      "host_to_device": train.host_to_device,
                      "by_name": dict(train.launches_by_name)},
            "eval": {"launches": ev.launches, "syncs": ev.syncs, "host_to_device": ev.host_to_device,
                     "by_name": dict(ev.launches_by_name)},
        }, indent=1))
    return 0 if train.launches <= TARGET_LAUNCHES and train.syncs == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
