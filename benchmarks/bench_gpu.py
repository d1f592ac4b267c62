"""GPU throughput: miniran (CuPy) and PyTorch eager side by side on the same GPU.

For each network and batch size: training images per second (forward,
cross-entropy, backward, Nesterov SGD with weight decay, one step at a time),
the same training step replayed as a CUDA graph (``graph``: ``CapturedStep``,
what ``miniran train --cuda-graph`` runs), evaluation images per second (forward in evaluation mode without a graph),
and the peak device memory (CuPy's memory pool; torch's allocator). When
PyTorch with CUDA is importable, the same network written in PyTorch (the
twin of ``bench_model.py``, Attention-56 only, checked to be the same network
first) is timed on the same GPU, and the ratio miniran/torch of images per
second is printed (>= 0.7 is the goal for training).

Every timed region starts and ends with a device synchronisation. torch runs
in plain FP32 (TF32 off), like CuPy's float32 products.

Usage (from the repository root, on a machine with a GPU)::

    python benchmarks/bench_gpu.py                                  # Attention-56 and -92, batch 64/128/256
    python benchmarks/bench_gpu.py --models attention56 --batches 64 --steps 20
    python benchmarks/bench_gpu.py --json results.json

``--smoke`` runs one tiny step of everything (batch 2): the test suite uses it
under the CuPy stand-in to check that the script itself works.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_functions, bench_model
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench_functions import gpu_setup, machine_info  # noqa: E402


def gpu_name() -> dict:
    """The GPU's name and the CuPy version, for the record."""
    from miniran import backend

    cp = backend.cupy_module()
    try:
        name = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
    except Exception as exc:  # e.g. the CPU stand-in of the test suite
        name = f"unknown ({type(exc).__name__})"
    return {"gpu": name, "cupy": getattr(cp, "__version__", "?")}


def _time_steps(step, sync, steps, warmup):
    """Seconds per call of ``step`` (after ``warmup`` calls that compile kernels)."""
    for _ in range(warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - start) / steps


def bench_miniran(name, batch, steps, warmup):
    import numpy as np

    import miniran.functional as F
    from miniran import backend, models, no_grad, optim
    from miniran.autograd import Tensor

    cp = backend.cupy_module()
    pool = cp.get_default_memory_pool()
    pool.free_all_blocks()
    net = models.get_model(name, num_classes=10, seed=0).to("gpu")
    opt = optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    rng = np.random.default_rng(0)
    x = cp.asarray(rng.standard_normal((batch, 3, 32, 32)).astype(np.float32))
    y = cp.asarray(rng.integers(0, 10, batch))
    sync = cp.cuda.Device().synchronize

    def train_step():
        loss = F.cross_entropy(net(Tensor(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def eval_step():
        with no_grad():
            net(Tensor(x))

    net.train()
    train_s = _time_steps(train_step, sync, steps, warmup)
    net.eval()
    eval_s = _time_steps(eval_step, sync, steps, warmup)
    peak = pool.total_bytes()  # the pool keeps what it has grown to: the peak of the run
    del net, opt, x, y
    pool.free_all_blocks()
    graph_s = _time_captured_step(name, batch, steps, warmup)
    return {"train_img_s": batch / train_s, "eval_img_s": batch / eval_s, "peak_mib": peak / 2**20,
            "graph_train_img_s": batch / graph_s}


def _time_captured_step(name, batch, steps, warmup):
    """Seconds per training step replayed as a CUDA graph (``--cuda-graph``): the flat SGD, the
    cosine schedule's rates read on the device; the first call is the eager warm-up and the capture."""
    import numpy as np

    import miniran.functional as F
    from miniran import backend, models, optim
    from miniran.train.cuda_graph import CapturedStep

    cp = backend.cupy_module()
    net = models.get_model(name, num_classes=10, seed=0).to("gpu")
    opt = optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4, flat=True)
    total = warmup + steps + 1
    step = CapturedStep(net, opt, F.cross_entropy, schedule=optim.CosineLR(opt, total), batch_size=batch)
    rng = np.random.default_rng(0)
    x = cp.asarray(rng.standard_normal((batch, 3, 32, 32)).astype(np.float32))
    y = cp.asarray(rng.integers(0, 10, batch))
    seconds = _time_steps(lambda: step(x, y), cp.cuda.Device().synchronize, steps, warmup + 1)
    del net, opt, step, x, y
    cp.get_default_memory_pool().free_all_blocks()
    return seconds


def bench_torch(torch, name, batch, steps, warmup):
    """The PyTorch eager twin (Attention-56 only), or None."""
    if name != "attention56":
        return None
    from bench_model import build_torch_attention56

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    net = build_torch_attention56(torch).cuda()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=gen).cuda()
    y = torch.randint(0, 10, (batch,), generator=gen).cuda()
    loss_fn = torch.nn.functional.cross_entropy

    def train_step():
        loss = loss_fn(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def eval_step():
        with torch.no_grad():
            net(x)

    net.train()
    train_s = _time_steps(train_step, torch.cuda.synchronize, steps, warmup)
    net.eval()
    eval_s = _time_steps(eval_step, torch.cuda.synchronize, steps, warmup)
    peak = torch.cuda.max_memory_allocated()
    del net, opt, x, y
    torch.cuda.empty_cache()
    return {"train_img_s": batch / train_s, "eval_img_s": batch / eval_s, "peak_mib": peak / 2**20}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="attention56,attention92")
    parser.add_argument("--batches", default="64,128,256")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per figure")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (kernel compilation)")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="batch 2, one step: checks the script only")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    models_ = [m.strip() for m in args.models.split(",") if m.strip()]
    batches = [int(b) for b in args.batches.split(",")]
    if args.smoke:
        batches, args.steps, args.warmup = [2], 1, 1

    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            torch = None
    gpu_setup(torch)  # exits with miniran's explanation when no GPU is usable
    if torch is not None and not torch.cuda.is_available():
        print("torch has no CUDA device: timing miniran (CuPy) only", file=sys.stderr)
        torch = None
    info = machine_info(1, "gpu", torch)
    info.update(gpu_name())

    rows = []
    print(f"{'model':<12} {'batch':>5}  {'train img/s':>11} {'graph':>7} {'torch':>9} {'ratio':>6}  "
          f"{'eval img/s':>10} {'torch':>9} {'ratio':>6}  {'peak MiB':>8} {'torch':>7}")
    for name in models_:
        for batch in batches:
            mr = bench_miniran(name, batch, args.steps, args.warmup)
            tt = bench_torch(torch, name, batch, args.steps, args.warmup) if torch is not None else None
            row = {"model": name, "batch": batch, "miniran": mr, "torch": tt}
            if tt:
                row["train_ratio"] = mr["train_img_s"] / tt["train_img_s"]
                row["eval_ratio"] = mr["eval_img_s"] / tt["eval_img_s"]
            rows.append(row)

            def f(v, spec):
                return format(v, spec) if v is not None else "-"
            print(f"{name:<12} {batch:>5}  {mr['train_img_s']:>11.0f} {mr['graph_train_img_s']:>7.0f} "
                  f"{f(tt and tt['train_img_s'], '>9.0f'):>9} {f(row.get('train_ratio'), '>6.2f'):>6}  "
                  f"{mr['eval_img_s']:>10.0f} {f(tt and tt['eval_img_s'], '>9.0f'):>9} "
                  f"{f(row.get('eval_ratio'), '>6.2f'):>6}  {mr['peak_mib']:>8.0f} "
                  f"{f(tt and tt['peak_mib'], '>7.0f'):>7}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "steps": args.steps, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
