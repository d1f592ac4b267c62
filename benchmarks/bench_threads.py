"""When is an array operation worth splitting over miniran's CPU threads? (``threads.PARALLEL_MIN_ELEMENTS``)

miniran's CPU twins hand slices of an operation to a small thread pool, but
only when the array has at least ``PARALLEL_MIN_ELEMENTS`` elements per
thread: below that, handing the work over costs more than it saves. This
script times one training step (forward, loss, backward, Nesterov SGD) of three
workloads with several values of that threshold, each value in a fresh
process, the values alternating round after round (so a change in the
machine's speed hits every value alike), and reports the median step of each
value and its ratio to the first one:

* ``a56-b64``: Attention-56 at batch 64 (``miniran train``, notebooks 09 and 10);
* ``a56-b16``: Attention-56 at batch 16;
* ``a164-narrow-b16``: the 164-layer attention network at widths (16, 32, 64),
  batch 16 (notebook 07): many small operations.

No PyTorch: it compares miniran with itself. Usage, from the repository root::

    python benchmarks/bench_threads.py                       # thresholds 2**17 and 2**19, 3 rounds
    python benchmarks/bench_threads.py --values 131072,262144,524288,1048576 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_functions import cpu_model, load_average  # noqa: E402

WORKLOADS = ("a56-b64", "a56-b16", "a164-narrow-b16")


def time_steps(workload: str, threshold: int, steps: int) -> list[float]:
    """Seconds of ``steps`` training steps after two warm-up steps (run inside the fresh process)."""
    import numpy as np

    import miniran.threads as threads

    threads.PARALLEL_MIN_ELEMENTS = threshold
    import miniran.functional as F
    from miniran import Tensor, models, optim
    from miniran.models.networks import ResidualAttentionNetwork

    if workload == "a164-narrow-b16":
        net = ResidualAttentionNetwork("cifar", (16, 32, 64), (4, 4, 4), (3, 2, 1), num_classes=10, seed=0,
                                       p=1, t=2, r=1)
        batch = 16
    else:
        net, batch = models.attention56(num_classes=10, seed=0), int(workload.rsplit("b", 1)[1])
    opt = optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        loss = F.cross_entropy(net(Tensor(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--values", default="131072,524288", help="comma-separated thresholds; the ratios divide by the first (default: the old 2**17 and the current 2**19)")
    p.add_argument("--rounds", type=int, default=3, help="fresh processes per value and workload")
    p.add_argument("--steps", type=int, default=0, help="timed steps per process (default: 5, 10 for the narrow net)")
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--json", default=None, metavar="PATH", help="also write the figures to PATH")
    p.add_argument("--child", nargs=3, metavar=("WORKLOAD", "THRESHOLD", "STEPS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        workload, threshold, steps = args.child
        print(json.dumps(time_steps(workload, int(threshold), int(steps))))
        return 0
    values = [int(v) for v in args.values.split(",")]
    workloads = [w for w in args.workloads.split(",") if w]
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown or not values or min(values) < 1 or args.rounds < 1:
        p.error(f"--workloads must be among {', '.join(WORKLOADS)}; --values and --rounds positive integers")
    from miniran import threads

    load_start = load_average()
    medians = {w: {v: [] for v in values} for w in workloads}
    for round_ in range(args.rounds):
        for workload in workloads:
            steps = args.steps or (10 if workload == "a164-narrow-b16" else 5)
            for value in values:
                out = subprocess.run([sys.executable, __file__, "--child", workload, str(value), str(steps)],
                                     capture_output=True, text=True, check=True).stdout
                medians[workload][value].append(statistics.median(json.loads(out.splitlines()[-1])))
        print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    print("## threads.PARALLEL_MIN_ELEMENTS, one training step\n")
    print(f"date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; CPU {cpu_model()}; miniran's CPU threads "
          f"{threads.cpu_threads()}; load average {load_start} (start), {load_average()} (end); "
          f"{args.rounds} fresh processes per value, alternating; each: the median of its steps; "
          f"below, the median of those\n")
    print("| workload | " + " | ".join(f"{v:,} (ms)" for v in values) + " | " +
          " | ".join(f"{v:,} / {values[0]:,}" for v in values[1:]) + " |")
    print("| --- " * (2 * len(values)) + "|")
    result = {}
    for workload in workloads:
        ms = [1000 * statistics.median(medians[workload][v]) for v in values]
        result[workload] = dict(zip(map(str, values), ms))
        print(f"| {workload} | " + " | ".join(f"{m:.0f}" for m in ms) + " | " +
              " | ".join(f"{m / ms[0]:.2f}" for m in ms[1:]) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"values": values, "median_ms": result, "rounds": args.rounds}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
