"""Throughput of Attention-56 (CIFAR, 32x32) in miniran and in the same network written in PyTorch.

Two figures, in images per second at batch 64 (``--batch``):

* **train**: one training step, forward + cross-entropy + backward + Nesterov
  SGD update (lr 0.1, momentum 0.9, weight decay 1e-4, the paper's recipe);
* **eval**: the forward pass alone in evaluation mode, without a graph
  (``miniran.no_grad`` / ``torch.no_grad``).

The PyTorch network below is a line-by-line re-implementation of
``miniran/models/residual.py``, ``attention.py`` and ``networks.py`` (same
layers, same order, same module names). Before timing, the script checks that
the two are the same network: the parameter counts must be equal (1,148,826),
every parameter and buffer name and shape must match, and after copying
miniran's weights into the torch model both must give the same logits and the
same loss on a small batch. The ratio ``miniran time / torch time`` is the figure.

Timing follows ``bench_functions.py``: threads fixed before NumPy is imported
and with ``torch.set_num_threads``, miniran and torch steps interleaved, the
minimum over ``--repeats`` rounds. Each thread count runs in a fresh process
(OpenBLAS reads its thread count once, when NumPy loads), by default 1 and the
number of cores, so one run gives both ratios. Then, unless switched off:

* **contention**: the training step again, while a second process runs a
  matrix-product loop on as many threads; the figure is loaded time / quiet
  time (a fair share of the cores gives 2);
* **profile**: miniran's training step at the largest thread count, by
  function (forward and backward wall time of every ``Function`` class, and
  what is left outside them).

Usage (from the repository root)::

    python benchmarks/bench_model.py                         # 1 and 2 threads, contention, profile
    python benchmarks/bench_model.py --threads 2 --no-contention --no-profile
    python benchmarks/bench_model.py --threads 1 --clock cpu --repeats 5
    python benchmarks/bench_model.py --reference             # miniran's reference code paths
    python benchmarks/bench_model.py --device gpu            # CuPy vs torch CUDA
    python benchmarks/bench_model.py --json model.json

Without torch the script times miniran alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_functions, next to this file
from bench_functions import (  # noqa: E402
    default_threads, gpu_setup, interleaved_min, load_average, machine_info, set_thread_env,
)

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

EXPECTED_PARAMS = 1_148_826  # attention56(num_classes=10), see the README


# --------------------------------------------------------------------------- the torch twin


def build_torch_attention56(torch, num_classes=10):
    """Attention-56 for CIFAR in PyTorch, mirroring miniran.models exactly (module names included)."""
    nn, tf = torch.nn, torch.nn.functional

    class PreActBottleneck(nn.Module):  # miniran/models/residual.py
        def __init__(self, in_channels, out_channels, stride=1):
            super().__init__()
            width = out_channels // 4
            self.bn1 = nn.BatchNorm2d(in_channels)
            self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
            self.bn3 = nn.BatchNorm2d(width)
            self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
            if in_channels != out_channels or stride != 1:
                self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
            else:
                self.shortcut = None

        def forward(self, x):
            a = tf.relu(self.bn1(x))
            out = self.conv1(a)
            out = self.conv2(tf.relu(self.bn2(out)))
            out = self.conv3(tf.relu(self.bn3(out)))
            return out + (x if self.shortcut is None else self.shortcut(a))

    def residual_stack(channels, count):
        return nn.Sequential(*[PreActBottleneck(channels, channels) for _ in range(count)])

    class MaskHead(nn.Module):  # mixed attention (Eq. 4), no mask batch norm
        def __init__(self, channels):
            super().__init__()
            self.bn1 = nn.BatchNorm2d(channels)
            self.conv1 = nn.Conv2d(channels, channels, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(channels)
            self.conv2 = nn.Conv2d(channels, channels, 1, bias=False)

        def forward(self, x):
            x = self.conv1(tf.relu(self.bn1(x)))
            x = self.conv2(tf.relu(self.bn2(x)))
            return torch.sigmoid(x)

    class EncoderDecoderMask(nn.Module):  # miniran/models/attention.py
        def __init__(self, channels, pools, r=1):
            super().__init__()
            self.pools = pools
            self.down = nn.Sequential(*[residual_stack(channels, 2 * r if k == pools - 1 else r)
                                        for k in range(pools)])
            self.skip = nn.Sequential(*[PreActBottleneck(channels, channels) for _ in range(pools - 1)])
            self.up = nn.Sequential(*[residual_stack(channels, r) for _ in range(pools - 1)])
            self.head = MaskHead(channels)

        def forward(self, x, size):
            encoded = []
            for down in self.down:
                x = down(tf.max_pool2d(x, 3, stride=2, padding=1))
                encoded.append(x)
            for k in reversed(range(self.pools - 1)):
                ref = encoded[k]
                x = tf.interpolate(x, size=ref.shape[2:], mode="bilinear", align_corners=True) + self.skip[k](ref)
                x = self.up[k](x)
            x = tf.interpolate(x, size=size, mode="bilinear", align_corners=True)
            return self.head(x)

    class AttentionModule(nn.Module):  # p = 1, t = 2, r = 1, attention residual learning
        def __init__(self, channels, pools, p=1, t=2, r=1):
            super().__init__()
            self.pre = residual_stack(channels, p)
            self.trunk = residual_stack(channels, t)
            self.soft_mask = EncoderDecoderMask(channels, pools, r)
            self.post = residual_stack(channels, p)

        def forward(self, x):
            s = self.pre(x)
            trunk = self.trunk(s)
            mask = self.soft_mask(s, trunk.shape[2:])
            return self.post((1 + mask) * trunk)

    class Attention56(nn.Module):  # miniran/models/networks.py, stem "cifar", m = 1
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
            stages, in_channels = [], 16
            for i, (width, pools) in enumerate(zip((64, 128, 256), (3, 2, 1))):
                stages.append(nn.Sequential(PreActBottleneck(in_channels, width, stride=1 if i == 0 else 2),
                                            AttentionModule(width, pools)))
                in_channels = width
            self.stages = nn.Sequential(*stages)
            self.final = nn.Sequential(*[PreActBottleneck(256, 256) for _ in range(3)])
            self.bn = nn.BatchNorm2d(256)
            self.fc = nn.Linear(256, num_classes)

        def forward(self, x):
            x = tf.relu(self.bn(self.final(self.stages(self.stem(x)))))
            return self.fc(x.mean(dim=(2, 3)))

    return Attention56()


def check_same_network(torch, mr_model, t_model, batch=4):
    """Parameter count, names and shapes, then the same logits and loss from the same weights."""
    import numpy as np

    import miniran
    import miniran.functional as F

    n_mr = mr_model.num_parameters()
    n_t = sum(p.numel() for p in t_model.parameters())
    assert n_mr == n_t == EXPECTED_PARAMS, f"parameter counts differ: miniran {n_mr}, torch {n_t}"
    mr_state = {k: np.asarray(miniran.backend.to_numpy(v)) for k, v in mr_model.state_dict().items()}
    t_state = {k: v for k, v in t_model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert set(mr_state) == set(t_state), (
        f"names differ: only in miniran {sorted(set(mr_state) - set(t_state))[:5]}, "
        f"only in torch {sorted(set(t_state) - set(mr_state))[:5]}")
    for k, v in mr_state.items():
        assert tuple(v.shape) == tuple(t_state[k].shape), f"{k}: {v.shape} vs {tuple(t_state[k].shape)}"
    # same weights -> same outputs. Training mode (batch statistics), so the running averages
    # that this pass updates do not enter the comparison; the timed runs start from these weights.
    device = next(t_model.parameters()).device
    with torch.no_grad():
        for k, v in mr_state.items():
            t_state[k].copy_(torch.from_numpy(v))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    xm = miniran.Tensor(x)
    if mr_model.device == "gpu":
        xm = xm.to("gpu")
    mr_logits = mr_model(xm)
    mr_loss = float(miniran.backend.to_numpy(F.cross_entropy(mr_logits, y).data))
    with torch.no_grad():
        t_logits = t_model(torch.from_numpy(x).to(device))
    t_loss = torch.nn.functional.cross_entropy(t_logits, torch.from_numpy(y).to(device)).item()
    diff = float(np.abs(miniran.backend.to_numpy(mr_logits.data) - t_logits.detach().cpu().numpy()).max())
    assert diff < 1e-3 and abs(mr_loss - t_loss) < 1e-4, (
        f"outputs differ: logits by {diff:.2e}, loss {mr_loss} vs {t_loss}")
    return {"params": n_mr, "max_logit_diff": diff, "loss_miniran": mr_loss, "loss_torch": t_loss}


def im2col_bytes_per_step(mr_model, batch):
    """Bytes of the im2col matrices one training step keeps alive until its backward pass.

    Every conv whose weight needs a gradient keeps its ``col`` (C*KH*KW, N*OH*OW)
    from its forward to its backward, so at the end of the forward pass all of
    them are alive at once: the sum is the peak that im2col adds to a step.
    """
    import numpy as np

    import miniran
    from miniran import nn

    total, biggest = 0, 0
    handles = []

    def hook(module, inputs, output):
        nonlocal total, biggest
        c = module.in_channels
        kh, kw = module.kernel_size
        n, _, oh, ow = output.shape
        b = c * kh * kw * n * oh * ow * output.data.dtype.itemsize
        total += b
        biggest = max(biggest, b)

    for m in mr_model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(hook))
    try:
        with miniran.no_grad():
            x = miniran.Tensor(np.zeros((batch, 3, 32, 32), np.float32))
            if mr_model.device == "gpu":
                x = x.to("gpu")
            mr_model(x)
    finally:
        for h in handles:
            h.remove()
    return total, biggest


# --------------------------------------------------------------------------- per-function profile


class FunctionProfile:
    """Wall time spent in each miniran Function's forward and backward (the outermost call only).

    Wraps ``forward`` and ``backward`` of every subclass of
    ``miniran.autograd.Function`` for as long as the ``with`` block lasts;
    what is left of a step's time is Python, the graph walk and the optimiser.
    """

    def __init__(self):
        import collections

        self.seconds = collections.defaultdict(float)
        self.calls = collections.Counter()
        self._saved = []
        self._depth = 0

    def __enter__(self):
        from miniran.autograd import Function

        def subclasses(cls):
            for sub in cls.__subclasses__():
                yield sub
                yield from subclasses(sub)

        for cls in set(subclasses(Function)):
            for name in ("forward", "backward"):
                if name in cls.__dict__:
                    self._saved.append((cls, name, cls.__dict__[name]))
                    setattr(cls, name, self._timed(cls.__name__, name, cls.__dict__[name]))
        return self

    def __exit__(self, *exc):
        for cls, name, fn in self._saved:
            setattr(cls, name, fn)
        self._saved.clear()
        return False

    def _timed(self, cls_name, method, fn):
        def timed(this, *args, **kwargs):
            if self._depth:
                return fn(this, *args, **kwargs)
            self._depth += 1
            t0 = time.perf_counter()
            try:
                return fn(this, *args, **kwargs)
            finally:
                self._depth -= 1
                key = (cls_name, method)
                self.seconds[key] += time.perf_counter() - t0
                self.calls[key] += 1
        return timed


def profile_rows(step, steps=3):
    """Run ``step`` ``steps`` times under :class:`FunctionProfile`; rows of ms per step, biggest first."""
    step()  # warm
    with FunctionProfile() as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        total = (time.perf_counter() - t0) / steps
    names = sorted({k[0] for k in prof.seconds})
    rows = []
    for name in names:
        fwd = prof.seconds.get((name, "forward"), 0.0) / steps
        bwd = prof.seconds.get((name, "backward"), 0.0) / steps
        rows.append({"function": name, "calls": prof.calls.get((name, "forward"), 0) // steps,
                     "forward_ms": fwd * 1e3, "backward_ms": bwd * 1e3, "share": (fwd + bwd) / total})
    rows.sort(key=lambda r: -(r["forward_ms"] + r["backward_ms"]))
    inside = sum(r["forward_ms"] + r["backward_ms"] for r in rows)
    rows.append({"function": "(outside functions: Python, graph walk, SGD)", "calls": 0,
                 "forward_ms": total * 1e3 - inside, "backward_ms": 0.0,
                 "share": 1 - inside / (total * 1e3)})
    return total, rows


# --------------------------------------------------------------------------- one measurement


def measure(args):
    """Time one configuration in this process (threads fixed before NumPy is imported); a dict."""
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    set_thread_env(args.threads)  # before NumPy is imported
    import numpy as np

    import miniran
    import miniran.functional as F
    from miniran import backend, models, optim

    try:
        import torch
    except ImportError:
        torch = None
    if args.no_torch:
        torch = None
    if torch is not None:
        torch.set_num_threads(args.threads)
        torch.manual_seed(0)
    if args.device == "gpu":
        gpu_setup(torch)  # exits with the reason when no GPU is usable; torch in full FP32
        if torch is not None and not torch.cuda.is_available():
            print("torch has no CUDA device: timing miniran (CuPy) only", file=sys.stderr)
            torch = None
    info = machine_info(args.threads, args.device, torch)
    # (getattr: the script also times checkouts from before miniran had its own CPU
    # threads, and from before they moved from miniran.backend to miniran.threads)
    threads_module = getattr(miniran, "threads", backend)
    info["miniran_cpu_threads"] = getattr(threads_module, "cpu_threads", lambda: 1)()
    info["fast_cpu_paths"] = not args.reference

    sync_mr = sync_t = None
    tdev = "cpu"
    if args.device == "gpu":
        cp = backend.cupy_module()
        sync_mr = cp.cuda.Device().synchronize
        if torch is not None:
            tdev, sync_t = "cuda", torch.cuda.synchronize

    mr_model = models.attention56(num_classes=10, seed=0)
    if args.device == "gpu":
        mr_model.to("gpu")
    col_total, col_max = im2col_bytes_per_step(mr_model, args.batch)

    t_model = None
    if torch is not None:
        t_model = build_torch_attention56(torch).to(tdev)
        info["check"] = check_same_network(torch, mr_model, t_model)
        print(f"same network: {info['check']['params']:,} parameters each, names and shapes match, "
              f"max |logit difference| {info['check']['max_logit_diff']:.1e}", file=sys.stderr)

    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((args.batch, 3, 32, 32)).astype(np.float32)
    y_np = rng.integers(0, 10, args.batch)

    # -- miniran
    x_mr = miniran.Tensor(x_np)
    y_mr = y_np
    if args.device == "gpu":
        x_mr, y_mr = x_mr.to("gpu"), backend.to_device(y_np, "gpu")
    opt_mr = optim.SGD(mr_model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)

    def mr_train():
        mr_model.train()
        loss = F.cross_entropy(mr_model(x_mr), y_mr)
        opt_mr.zero_grad()
        loss.backward()
        opt_mr.step()

    def mr_eval():
        mr_model.eval()
        with miniran.no_grad():
            mr_model(x_mr)

    if args.reference:  # the readable reference code of every function instead of the fast paths
        ref = miniran.reference_only() if hasattr(miniran, "reference_only") else backend.reference_cpu_paths()

        def wrap(fn):
            def run():
                with ref:
                    fn()
            return run
        mr_train, mr_eval = wrap(mr_train), wrap(mr_eval)

    sides_train, sides_eval = [(mr_train, sync_mr)], [(mr_eval, sync_mr)]

    # -- torch
    if torch is not None:
        x_t = torch.from_numpy(x_np).to(tdev)
        y_t = torch.from_numpy(y_np).to(tdev)
        opt_t = torch.optim.SGD(t_model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)

        def t_train():
            t_model.train()
            loss = torch.nn.functional.cross_entropy(t_model(x_t), y_t)
            opt_t.zero_grad(set_to_none=True)
            loss.backward()
            opt_t.step()

        def t_eval():
            t_model.eval()
            with torch.no_grad():
                t_model(x_t)

        sides_train.append((t_train, sync_t))
        sides_eval.append((t_eval, sync_t))

    print(f"{args.threads} thread(s): timing {args.repeats} interleaved rounds of training steps ...",
          file=sys.stderr, flush=True)
    train = interleaved_min(sides_train, args.repeats, min_sample_s=0.0, warmup=1, clock=clock)
    evals = None
    if not args.train_only:
        print(f"{args.threads} thread(s): timing {args.repeats} interleaved rounds of evaluation passes ...",
              file=sys.stderr, flush=True)
        evals = interleaved_min(sides_eval, args.repeats, min_sample_s=0.0, warmup=1, clock=clock)

    rows = []
    for what, times in (("train step (fwd + bwd + SGD)", train), ("eval forward (no graph)", evals)):
        if times is None:
            continue
        row = {"what": what, "miniran_s": times[0], "miniran_img_s": args.batch / times[0]}
        if torch is not None:
            row.update(torch_s=times[1], torch_img_s=args.batch / times[1], ratio=times[0] / times[1])
        rows.append(row)
    result = {"info": info, "threads": args.threads, "rows": rows,
              "im2col_bytes_total": col_total, "im2col_bytes_max": col_max}
    if args.profile and args.device == "cpu":
        print(f"{args.threads} thread(s): profiling miniran's training step by function ...",
              file=sys.stderr, flush=True)
        total, prof = profile_rows(mr_train)
        result["profile"] = {"step_s": total, "rows": prof}
    info["load_average_end"] = load_average()
    return result


# --------------------------------------------------------------------------- the report


def print_result(res, batch, device, clock, repeats):
    info = res["info"]
    print(f"\n## Attention-56 (CIFAR 32x32), batch {batch}, {device}, {res['threads']} thread(s)"
          + ("" if info.get("fast_cpu_paths", True) else ", reference code paths"))
    print(f"date {info['date']}; CPU {info['cpu']} ({info['cores']} cores); numpy {info['numpy']}; "
          f"torch {info['torch']}; miniran's CPU threads {info.get('miniran_cpu_threads')}; "
          f"load average {info['load_average_start']} (start), {info['load_average_end']} (end); "
          f"{clock} clock, min of {repeats} interleaved rounds\n")
    with_torch = "ratio" in res["rows"][0]
    if with_torch:
        print("| pass | miniran ms | miniran img/s | torch ms | torch img/s | ratio (time) |")
        print("| --- | --- | --- | --- | --- | --- |")
        for r in res["rows"]:
            print(f"| {r['what']} | {r['miniran_s'] * 1e3:.0f} | {r['miniran_img_s']:.1f} | "
                  f"{r['torch_s'] * 1e3:.0f} | {r['torch_img_s']:.1f} | {r['ratio']:.2f} |")
    else:
        print("| pass | miniran ms | miniran img/s |")
        print("| --- | --- | --- |")
        for r in res["rows"]:
            print(f"| {r['what']} | {r['miniran_s'] * 1e3:.0f} | {r['miniran_img_s']:.1f} |")
    if "profile" in res:
        prof = res["profile"]
        print(f"\nminiran's training step by function ({res['threads']} thread(s), "
              f"{prof['step_s'] * 1e3:.0f} ms per step under the profiler):\n")
        print("| function | calls | forward ms | backward ms | share of the step |")
        print("| --- | --- | --- | --- | --- |")
        for r in prof["rows"]:
            if r["forward_ms"] + r["backward_ms"] < 0.05:
                continue
            print(f"| {r['function']} | {r['calls'] or ''} | {r['forward_ms']:.1f} | {r['backward_ms']:.1f} | "
                  f"{100 * r['share']:.1f}% |")


def load_process(threads):
    """Start the competing job of the contention figure: one matrix-product loop on ``threads`` threads."""
    import subprocess

    code = ("import numpy as np\n"
            "a = np.random.default_rng(0).standard_normal((1536, 1536)).astype(np.float32)\n"
            "while True:\n    a @ a\n")
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    return subprocess.Popen([sys.executable, "-c", code], env=env)


def run_child(args, threads, extra=()):
    """Run :func:`measure` in a fresh process (the thread count must be set before NumPy loads)."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--single", "--threads", str(threads),
               "--repeats", str(args.repeats), "--batch", str(args.batch), "--clock", args.clock,
               "--device", args.device, "--json", str(out), *extra]
        if args.no_torch:
            cmd.append("--no-torch")
        if args.reference:
            cmd.append("--reference")
        subprocess.run(cmd, check=True)
        return json.loads(out.read_text())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=str, default=None,
                        help="comma-separated thread counts, one run each (default: 1 and the number of "
                             f"cores, {default_threads()}); threads for BLAS, OpenMP, torch and miniran")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds; the minimum is kept")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall (default) or CPU time of the process (only with --threads 1 on the CPU)")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--no-contention", action="store_true",
                        help="skip the contention figure (a training step while a two-thread "
                             "matrix-product loop runs beside it)")
    parser.add_argument("--no-profile", action="store_true", help="skip the per-function profile")
    parser.add_argument("--reference", action="store_true",
                        help="time miniran's readable reference code paths instead of its fast CPU paths")
    parser.add_argument("--json", metavar="PATH")
    # internal: one measurement in this process
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--train-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.single:
        args.threads = int(args.threads)
        res = measure(args)
        Path(args.json).write_text(json.dumps(res, indent=1))
        return

    threads = [int(t) for t in (args.threads or f"1,{default_threads()}").split(",") if t.strip()]
    threads = sorted(set(threads))
    if any(t < 1 for t in threads):
        parser.error(f"--threads: thread counts must be >= 1, got {args.threads}")
    if args.clock == "cpu" and (threads != [1] or args.device != "cpu"):
        parser.error("--clock cpu needs --threads 1 and --device cpu")
    results = {"runs": []}
    for t in threads:
        # the profile is taken at the largest thread count
        extra = ["--profile"] if (t == threads[-1] and not args.no_profile and args.device == "cpu") else []
        res = run_child(args, t, extra)
        results["runs"].append(res)
        print_result(res, args.batch, args.device, args.clock, args.repeats)

    if not args.no_contention and args.device == "cpu":
        t = threads[-1]
        quiet = results["runs"][-1]["rows"][0]
        print(f"\ncontention: {t}-thread training steps while a {t}-thread matrix-product loop runs ...",
              file=sys.stderr, flush=True)
        load = load_process(t)
        try:
            time.sleep(1.0)
            loaded = run_child(args, t, ["--train-only"])
        finally:
            load.kill()
            load.wait()
        row = loaded["rows"][0]
        cont = {"threads": t, "miniran_quiet_s": quiet["miniran_s"], "miniran_loaded_s": row["miniran_s"],
                "miniran_factor": row["miniran_s"] / quiet["miniran_s"]}
        if "torch_s" in row:
            cont.update(torch_quiet_s=quiet["torch_s"], torch_loaded_s=row["torch_s"],
                        torch_factor=row["torch_s"] / quiet["torch_s"])
        results["contention"] = cont
        print(f"\n## Contention: a {t}-thread training step beside a {t}-thread matrix-product loop\n")
        print("(a fair share of the cores would make a step 2x slower)\n")
        print("| | quiet ms | with the loop ms | factor |")
        print("| --- | --- | --- | --- |")
        print(f"| miniran | {cont['miniran_quiet_s'] * 1e3:.0f} | {cont['miniran_loaded_s'] * 1e3:.0f} | "
              f"{cont['miniran_factor']:.2f} |")
        if "torch_factor" in cont:
            print(f"| torch | {cont['torch_quiet_s'] * 1e3:.0f} | {cont['torch_loaded_s'] * 1e3:.0f} | "
                  f"{cont['torch_factor']:.2f} |")

    run0 = results["runs"][0]
    print(f"\nim2col matrices the reference path keeps alive at the end of a training forward pass "
          f"(the fast paths keep less: nothing for 1x1 convolutions, about 4x the input for Winograd): "
          f"{run0['im2col_bytes_total'] / 2**20:.0f} MiB (largest {run0['im2col_bytes_max'] / 2**20:.0f} MiB)")
    if args.json:
        results["args"] = vars(args)
        Path(args.json).write_text(json.dumps(results, indent=1))
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
