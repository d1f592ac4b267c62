"""Time miniran's functions against PyTorch at the shapes of Attention-56 on CIFAR (batch 64).

For every function of ``miniran.functional`` that the network uses, at the
shapes where the network uses it, this script times

* the forward pass alone (under ``no_grad``), and
* the forward pass followed by the backward pass of a fixed random upstream
  gradient (every input that the network would differentiate requires grad),

through the public API, and the same two things in PyTorch with the same
number of threads. The figure of merit is the ratio ``miniran time / torch
time`` (1.0 = as fast as PyTorch, 2.0 = twice as slow).

Timing rules, chosen for a busy shared machine:

* the thread count is fixed *before* NumPy is imported (``OPENBLAS_NUM_THREADS``,
  ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``) and with ``torch.set_num_threads``;
* miniran and torch are interleaved (one call of each per round, the order
  alternating between rounds), so both see the same background load;
* each side's figure is the *minimum* over the rounds (noise only ever adds
  time), and each sample repeats a call until it lasts at least ~20 ms.

Usage (from the repository root)::

    python benchmarks/bench_functions.py                     # CPU, threads = cores
    python benchmarks/bench_functions.py --threads 1 --repeats 15 --json out.json
    python benchmarks/bench_functions.py --only conv2d       # a subset (substring of the name)
    python benchmarks/bench_functions.py --device gpu        # CuPy vs torch CUDA

Without torch installed the script prints miniran's times only. The helpers
``set_thread_env``, ``interleaved_min`` and ``machine_info`` are reused by
``bench_model.py``; they import NumPy only when called.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout without installing

BATCH = 64


def default_threads() -> int:
    """The cores this process may run on (the affinity mask, else the core count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1

# --------------------------------------------------------------------------- shared helpers


def set_thread_env(threads: int) -> None:
    """Pin the BLAS/OpenMP thread count and miniran's own. Must run before NumPy (or torch) is imported."""
    if "numpy" in sys.modules:
        print("warning: numpy was imported before the thread count was set; "
              "OPENBLAS_NUM_THREADS may be ignored", file=sys.stderr)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "MINIRAN_NUM_THREADS"):
        os.environ[var] = str(threads)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def machine_info(threads: int, device: str, torch_mod=None) -> dict:
    import numpy as np

    info = {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": threads,
        "device": device,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": None if torch_mod is None else torch_mod.__version__,
        "load_average_start": load_average(),
    }
    try:  # which BLAS NumPy uses (OpenBLAS in the wheels from PyPI)
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["numpy_blas"] = f"{blas.get('name')} {blas.get('version')}"
    except Exception:
        pass
    return info


def interleaved_min(sides, rounds: int, min_sample_s: float = 0.02, warmup: int = 2, clock=time.perf_counter):
    """Best time per call (seconds) of each callable, measured in interleaved rounds.

    Args:
        sides: list of ``(fn, sync)``; ``sync`` (or None) waits for the device,
            e.g. ``cupy.cuda.Device().synchronize``, and is called right before
            the clock starts and before it stops.
        rounds: how many samples of each side; the minimum is returned.
        min_sample_s: each sample repeats the call until it lasts about this long.
        warmup: untimed calls first (allocations, kernel compilation, caches).
        clock: ``time.perf_counter`` (wall time, the default) or
            ``time.process_time`` (CPU time of this process: with one thread it
            ignores the time spent waiting for a core on a busy machine).

    Returns:
        list of seconds per call, one per side.
    """
    def run(fn, sync, n):
        if sync:
            sync()
        t0 = clock()
        for _ in range(n):
            fn()
        if sync:
            sync()
        return (clock() - t0) / n

    inner = []
    for fn, sync in sides:
        for _ in range(warmup):
            run(fn, sync, 1)
        t = run(fn, sync, 1)
        inner.append(max(1, min(1000, math.ceil(min_sample_s / max(t, 1e-7)))))
    best = [math.inf] * len(sides)
    order = list(range(len(sides)))
    for r in range(rounds):
        for i in (order if r % 2 == 0 else order[::-1]):  # alternate who goes first
            fn, sync = sides[i]
            best[i] = min(best[i], run(fn, sync, inner[i]))
    return best


def fmt_ms(seconds) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.2f}"


def fmt_ratio(r) -> str:
    return "-" if r is None else f"{r:.2f}"


def gpu_setup(torch_mod=None) -> None:
    """Exit with miniran's explanation when no GPU is usable; make torch compute in full FP32.

    torch runs float32 convolutions on tensor cores in TF32 by default (about
    10 mantissa bits); CuPy's float32 products do not. Both are put on the same
    footing, plain FP32, so the ratio compares the same arithmetic.
    """
    from miniran import backend

    try:
        backend.check_cuda_available()
    except RuntimeError as exc:
        sys.exit(f"--device gpu: {exc}")
    if torch_mod is not None:
        torch_mod.backends.cudnn.allow_tf32 = False
        torch_mod.backends.cuda.matmul.allow_tf32 = False


# --------------------------------------------------------------------------- the cases


class Case:
    """One function at one shape.

    ``mr_build()`` returns miniran's ``(fwd, fwd_bwd)`` callables and
    ``torch_build(torch, device)`` torch's; ``target`` is the ratio to stay
    within (None: no target); ``col_bytes`` is the size of a conv's im2col
    matrix (None for other functions).
    """

    def __init__(self, group, name, shape, mr_build, torch_build, target=None, col_bytes=None):
        self.group, self.name, self.shape = group, name, shape
        self.mr_build, self.torch_build = mr_build, torch_build
        self.target, self.col_bytes = target, col_bytes


def _he(rng, shape):
    import numpy as np

    fan_in = int(np.prod(shape[1:]))
    return (rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)).astype(np.float32)


def _make_case_factories(device):
    """Build helpers that turn (numpy inputs, a function) into timed callables on each side."""
    import numpy as np

    import miniran
    from miniran import Tensor

    def to_mr(a, requires_grad):
        t = Tensor(a, requires_grad=requires_grad)
        return t.to("gpu") if device == "gpu" else t

    def mr_pair(arrays, grads, fn):
        """arrays: numpy inputs; grads: which of them require grad; fn(*tensors) -> tensor."""
        ts = [to_mr(a, g) for a, g in zip(arrays, grads)]
        with miniran.no_grad():
            out_shape = fn(*ts).shape
        gy = np.random.default_rng(1).standard_normal(out_shape).astype(np.float32)
        if device == "gpu":
            from miniran import backend

            gy = backend.to_device(gy, "gpu")
        leaves = [t for t in ts if t.requires_grad]

        def fwd():
            with miniran.no_grad():
                fn(*ts)

        def fwd_bwd():
            for t in leaves:
                t.grad = None
            fn(*ts).backward(gy)

        return fwd, fwd_bwd

    def torch_pair(torch, tdev, arrays, grads, fn):
        ts = [torch.tensor(a, device=tdev, requires_grad=g) for a, g in zip(arrays, grads)]
        with torch.no_grad():
            out_shape = fn(*ts).shape
        gy = torch.tensor(np.random.default_rng(1).standard_normal(tuple(out_shape)).astype(np.float32),
                          device=tdev)
        leaves = [t for t in ts if t.requires_grad]

        def fwd():
            with torch.no_grad():
                fn(*ts)

        def fwd_bwd():
            for t in leaves:
                t.grad = None
            fn(*ts).backward(gy)

        return fwd, fwd_bwd

    return mr_pair, torch_pair


def build_cases(device, batch=BATCH):
    """Every (function, shape) of Attention-56 on 32x32 CIFAR images worth timing."""
    import numpy as np

    import miniran.functional as F
    from miniran import backend
    from miniran.functional.conv import conv_output_size

    mr_pair, torch_pair = _make_case_factories(device)
    rng = np.random.default_rng(0)
    n = batch
    cases = []

    # -- convolutions: (C, O, k, stride, H, where in the network); no bias (BN follows every conv)
    convs = [
        (3, 16, 3, 1, 32, "stem"),
        (16, 16, 3, 1, 32, "stage 1 bottleneck"),
        (32, 32, 3, 2, 32, "stage 2 entry, stride 2"),
        (32, 32, 3, 1, 16, "stage 2 bottleneck"),
        (64, 64, 3, 2, 16, "stage 3 entry, stride 2"),
        (64, 64, 3, 1, 8, "stage 3 bottleneck"),
        (16, 16, 1, 1, 32, "stage 1 entry reduce"),
        (64, 16, 1, 1, 32, "stage 1 reduce"),
        (16, 64, 1, 1, 32, "stage 1 expand / entry shortcut"),
        (64, 64, 1, 1, 32, "stage 1 mask head"),
        (64, 32, 1, 1, 32, "stage 2 entry reduce"),
        (64, 128, 1, 2, 32, "stage 2 entry shortcut, stride 2"),
        (128, 32, 1, 1, 16, "stage 2 reduce"),
        (32, 128, 1, 1, 16, "stage 2 expand"),
        (128, 128, 1, 1, 16, "stage 2 mask head"),
        (128, 64, 1, 1, 16, "stage 3 entry reduce"),
        (128, 256, 1, 2, 16, "stage 3 entry shortcut, stride 2"),
        (256, 64, 1, 1, 8, "stage 3 reduce"),
        (64, 256, 1, 1, 8, "stage 3 expand"),
        (256, 256, 1, 1, 8, "stage 3 mask head"),
    ]
    for c, o, k, s, h, where in convs:
        p = k // 2
        oh = conv_output_size(h, k, s, p)
        x, w = rng.standard_normal((n, c, h, h)).astype(np.float32), _he(rng, (o, c, k, k))
        x_grad = c != 3  # the stem's input is the image: no gradient needed there
        col_bytes = c * k * k * n * oh * oh * 4
        shape = f"{c}->{o} {k}x{k}/{s} {h}x{h}"

        def mr_build(x=x, w=w, s=s, p=p, xg=x_grad):
            return mr_pair([x, w], [xg, True], lambda a, b: F.conv2d(a, b, stride=s, padding=p))

        def torch_build(torch, tdev, x=x, w=w, s=s, p=p, xg=x_grad):
            tf = torch.nn.functional
            return torch_pair(torch, tdev, [x, w], [xg, True], lambda a, b: tf.conv2d(a, b, stride=s, padding=p))

        cases.append(Case("conv2d", "conv2d", f"{shape} ({where})", mr_build, torch_build, 2.0, col_bytes))

    maps = [(64, 32), (128, 16), (256, 8)]  # (channels, size) of the three stages' units

    # -- batch norm, training mode (batch statistics, running estimates updated in place)
    for c, h in maps:
        x = rng.standard_normal((n, c, h, h)).astype(np.float32)
        g = (1 + 0.1 * rng.standard_normal(c)).astype(np.float32)
        b = (0.1 * rng.standard_normal(c)).astype(np.float32)

        def mr_build(x=x, g=g, b=b, c=c):
            rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
            if device == "gpu":
                rm, rv = backend.to_device(rm, "gpu"), backend.to_device(rv, "gpu")
            return mr_pair([x, g, b], [True, True, True],
                           lambda a, gg, bb: F.batch_norm(a, rm, rv, gg, bb, training=True))

        def torch_build(torch, tdev, x=x, g=g, b=b, c=c):
            rm, rv = torch.zeros(c, device=tdev), torch.ones(c, device=tdev)
            tf = torch.nn.functional
            return torch_pair(torch, tdev, [x, g, b], [True, True, True],
                              lambda a, gg, bb: tf.batch_norm(a, rm, rv, gg, bb, training=True))

        cases.append(Case("batch_norm", "batch_norm", f"({n},{c},{h},{h}) train", mr_build, torch_build, 3.0))

    # -- pooling: the mask branch's 3x3 / stride 2 / pad 1 max pooling, the same average
    # pooling (not in the CIFAR network, timed for completeness) and the final global pooling
    for c, h in maps:
        x = rng.standard_normal((n, c, h, h)).astype(np.float32)
        for name in ("max_pool2d", "avg_pool2d"):
            def mr_build(x=x, name=name):
                return mr_pair([x], [True], lambda a: getattr(F, name)(a, 3, stride=2, padding=1))

            def torch_build(torch, tdev, x=x, name=name):
                fn = getattr(torch.nn.functional, name)
                return torch_pair(torch, tdev, [x], [True], lambda a: fn(a, 3, stride=2, padding=1))

            cases.append(Case("pooling", name, f"({n},{c},{h},{h}) 3x3/2 pad 1", mr_build, torch_build, 3.0))
    x = rng.standard_normal((n, 256, 8, 8)).astype(np.float32)
    cases.append(Case(
        "pooling", "global_avg_pool2d", f"({n},256,8,8)",
        lambda x=x: mr_pair([x], [True], F.global_avg_pool2d),
        lambda torch, tdev, x=x: torch_pair(torch, tdev, [x], [True], lambda a: a.mean(dim=(2, 3))),
        3.0,
    ))

    # -- bilinear upsampling in the mask branches (align_corners=True, as the model uses)
    for c, h in [(64, 4), (64, 8), (64, 16), (128, 4), (128, 8), (256, 4)]:
        x = rng.standard_normal((n, c, h, h)).astype(np.float32)

        def mr_build(x=x, h=h):
            return mr_pair([x], [True], lambda a: F.interpolate_bilinear(a, (2 * h, 2 * h), align_corners=True))

        def torch_build(torch, tdev, x=x, h=h):
            tf = torch.nn.functional
            return torch_pair(torch, tdev, [x], [True], lambda a: tf.interpolate(
                a, size=(2 * h, 2 * h), mode="bilinear", align_corners=True))

        cases.append(Case("interpolation", "interpolate_bilinear", f"({n},{c},{h},{h}) -> {2 * h}x{2 * h}",
                          mr_build, torch_build, 3.0))

    # -- mask activations (Eq. 4-6) at the sizes of the three stages' masks. torch has no fused
    # op for Eq. 5 and 6: the reference is the same formula in eager torch ops.
    def t_l2(a, eps=1e-12):
        return a / (a * a).sum(dim=1, keepdim=True).add(eps).sqrt()

    def t_spatial(a, eps=1e-5):
        mean = a.mean(dim=(2, 3), keepdim=True)
        var = a.var(dim=(2, 3), keepdim=True, unbiased=False)
        return ((a - mean) / (var + eps).sqrt()).sigmoid()

    for c, h in maps:
        x = rng.standard_normal((n, c, h, h)).astype(np.float32)
        for name, mr_fn, torch_fn in (
            ("sigmoid", F.sigmoid, lambda a: a.sigmoid()),
            ("channel_l2_normalize", F.channel_l2_normalize, t_l2),
            ("spatial_sigmoid", F.spatial_sigmoid, t_spatial),
        ):
            cases.append(Case(
                "attention", name, f"({n},{c},{h},{h})",
                lambda x=x, f=mr_fn: mr_pair([x], [True], f),
                lambda torch, tdev, x=x, f=torch_fn: torch_pair(torch, tdev, [x], [True], f),
                None,
            ))
    return cases


# --------------------------------------------------------------------------- running and reporting


def run_cases(cases, device, torch_mod, repeats, min_sample_s=0.02, clock=time.perf_counter, progress=True):
    sync_mr = sync_torch = None
    tdev = "cpu"
    if device == "gpu":
        from miniran import backend

        cp = backend.cupy_module()  # raises a helpful error without a usable GPU
        sync_mr = cp.cuda.Device().synchronize
        if torch_mod is not None:
            tdev = "cuda"
            sync_torch = torch_mod.cuda.synchronize
    rows = []
    for i, case in enumerate(cases):
        mr_fwd, mr_fb = case.mr_build()
        sides = [(mr_fwd, sync_mr), (mr_fb, sync_mr)]
        if torch_mod is not None:
            t_fwd, t_fb = case.torch_build(torch_mod, tdev)
            sides += [(t_fwd, sync_torch), (t_fb, sync_torch)]
        best = interleaved_min(sides, repeats, min_sample_s, clock=clock)
        row = {
            "group": case.group, "function": case.name, "shape": case.shape, "target": case.target,
            "col_bytes": case.col_bytes,
            "miniran_fwd_s": best[0], "miniran_fwd_bwd_s": best[1],
            "torch_fwd_s": best[2] if torch_mod is not None else None,
            "torch_fwd_bwd_s": best[3] if torch_mod is not None else None,
        }
        row["ratio_fwd"] = None if row["torch_fwd_s"] is None else best[0] / best[2]
        row["ratio_fwd_bwd"] = None if row["torch_fwd_bwd_s"] is None else best[1] / best[3]
        rows.append(row)
        if progress:
            print(f"[{i + 1}/{len(cases)}] {case.name} {case.shape}: fwd {fmt_ratio(row['ratio_fwd'])}x, "
                  f"fwd+bwd {fmt_ratio(row['ratio_fwd_bwd'])}x  (load {load_average()})",
                  file=sys.stderr, flush=True)
    return rows


def _met(row):
    if row["target"] is None or row["ratio_fwd_bwd"] is None:
        return "-"
    ok = [r <= row["target"] for r in (row["ratio_fwd"], row["ratio_fwd_bwd"])]
    return "yes" if all(ok) else ("fwd+bwd only" if ok[1] else ("fwd only" if ok[0] else "no"))


def markdown_table(rows, with_torch: bool) -> str:
    if with_torch:
        head = ["function", "shape", "im2col MiB", "miniran fwd ms", "torch fwd ms", "ratio fwd",
                "miniran f+b ms", "torch f+b ms", "ratio f+b", "target", "met"]
    else:
        head = ["function", "shape", "im2col MiB", "miniran fwd ms", "miniran f+b ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    for r in rows:
        col = "-" if r["col_bytes"] is None else f"{r['col_bytes'] / 2**20:.1f}"
        if with_torch:
            cells = [r["function"], r["shape"], col, fmt_ms(r["miniran_fwd_s"]), fmt_ms(r["torch_fwd_s"]),
                     fmt_ratio(r["ratio_fwd"]), fmt_ms(r["miniran_fwd_bwd_s"]), fmt_ms(r["torch_fwd_bwd_s"]),
                     fmt_ratio(r["ratio_fwd_bwd"]), "-" if r["target"] is None else f"{r['target']:g}x",
                     _met(r)]
        else:
            cells = [r["function"], r["shape"], col, fmt_ms(r["miniran_fwd_s"]), fmt_ms(r["miniran_fwd_bwd_s"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def group_summary(rows) -> str:
    """Geometric mean of the ratios per group, and the summed times (all shapes weighted once)."""
    groups = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    lines = ["| group | cases | geo-mean ratio fwd | geo-mean ratio f+b | worst f+b "
             "| sum miniran f+b ms | sum torch f+b ms |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for g, rs in groups.items():
        def gm(key):
            return math.exp(sum(math.log(r[key]) for r in rs) / len(rs))
        lines.append(f"| {g} | {len(rs)} | {gm('ratio_fwd'):.2f} | {gm('ratio_fwd_bwd'):.2f} | "
                     f"{max(r['ratio_fwd_bwd'] for r in rs):.2f} | "
                     f"{sum(r['miniran_fwd_bwd_s'] for r in rs) * 1e3:.1f} | "
                     f"{sum(r['torch_fwd_bwd_s'] for r in rs) * 1e3:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help="BLAS / OpenMP / torch threads (default: the number of cores, %(default)s)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                        help="cpu: NumPy vs torch CPU; gpu: CuPy vs torch CUDA")
    parser.add_argument("--repeats", type=int, default=10, help="interleaved rounds; the minimum is kept")
    parser.add_argument("--min-sample-ms", type=float, default=20.0,
                        help="each timing sample repeats a call until it lasts about this long")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: elapsed time (default); cpu: CPU time of the process, robust to a "
                             "busy machine but only meaningful with --threads 1 on the CPU")
    parser.add_argument("--batch", type=int, default=BATCH, help="batch size N (default %(default)s)")
    parser.add_argument("--only", default=None,
                        help="keep the cases whose function, group or shape contains this text")
    parser.add_argument("--no-torch", action="store_true", help="time miniran only, even if torch is installed")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.clock == "cpu" and (args.threads != 1 or args.device != "cpu"):
        parser.error("--clock cpu needs --threads 1 and --device cpu (CPU time adds up over threads "
                     "and misses GPU work)")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    set_thread_env(args.threads)  # before NumPy is imported, below
    try:
        import torch
    except ImportError:
        torch = None
    if args.no_torch:
        torch = None
    if torch is not None:
        torch.set_num_threads(args.threads)
    if args.device == "gpu":
        gpu_setup(torch)
        if torch is not None and not torch.cuda.is_available():
            print("torch has no CUDA device: timing miniran (CuPy) only", file=sys.stderr)
            torch = None

    info = machine_info(args.threads, args.device, torch)
    cases = build_cases(args.device, args.batch)
    if args.only:
        cases = [c for c in cases if args.only in c.name or args.only in c.group or args.only in c.shape]
    rows = run_cases(cases, args.device, torch, args.repeats, args.min_sample_ms / 1e3, clock)
    info["load_average_end"] = load_average()

    print(f"# miniran vs {'torch ' + torch.__version__ if torch else 'nothing (torch not available)'}"
          f" - {args.device}, {args.threads} thread(s), batch {args.batch}")
    print(f"date {info['date']}; CPU {info['cpu']} ({info['cores']} cores); numpy {info['numpy']} "
          f"({info.get('numpy_blas', '?')}); load average {info['load_average_start']} (start), "
          f"{info['load_average_end']} (end); {args.clock} clock, min of {args.repeats} interleaved rounds\n")
    print(markdown_table(rows, torch is not None))
    if torch is not None:
        print()
        print(group_summary(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"info": info, "args": vars(args), "rows": rows}, indent=1))
        print(f"\nwrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
