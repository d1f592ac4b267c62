"""Run every tutorial notebook at teaching scale and time it (the table of ``tutorials/README.md``).

Each notebook runs in a fresh Jupyter kernel with nbclient, from
``tutorials/`` (as Jupyter would), with ``MINIRAN_FAST`` unset: the teaching
scale a learner gets. Nothing is written into the notebooks. The script prints
one Markdown row per notebook (its wall time, from the first cell to the last)
and the machine, the load and the thread settings, so the figures can be
pasted with their conditions.

Usage (from the repository root, with the ``notebooks`` extra installed)::

    python tools/time_notebooks.py                   # every notebook
    python tools/time_notebooks.py 07 09             # the notebooks whose name starts so
    python tools/time_notebooks.py --fast            # MINIRAN_FAST=1, the test suite's quick run

A notebook that fails is reported with the failing cell and the script goes
on; the exit status is 1 if any failed. Measure on a quiet machine: other
programs on the cores make every figure longer.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TUTORIALS = REPO / "tutorials"
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_functions import cpu_model, load_average  # noqa: E402  (the benchmarks' machine description)


def run_notebook(path: Path, fast: bool, timeout: int) -> tuple[float, str | None]:
    """Execute ``path`` in a fresh kernel; (seconds, None) or (seconds, 'cell N: error')."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    env_before = dict(os.environ)
    os.environ["MPLBACKEND"] = "Agg"
    if fast:
        os.environ["MINIRAN_FAST"] = "1"
    else:
        os.environ.pop("MINIRAN_FAST", None)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(TUTORIALS)}})
    t0 = time.perf_counter()
    try:
        client.execute()
        error = None
    except CellExecutionError as exc:
        error = str(exc).strip().splitlines()[-1][:200]
    except Exception as exc:  # a timeout or a dead kernel
        error = f"{type(exc).__name__}: {str(exc).strip()[:200]}"
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    return time.perf_counter() - t0, error


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prefixes", nargs="*", help="run only notebooks whose file name starts with one of these")
    parser.add_argument("--fast", action="store_true", help="MINIRAN_FAST=1 (the test suite's quick run)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell (default 1800)")
    args = parser.parse_args(argv)

    notebooks = sorted(TUTORIALS.glob("*.ipynb"))
    if args.prefixes:
        notebooks = [p for p in notebooks if any(p.name.startswith(x) for x in args.prefixes)]
    if not notebooks:
        print(f"no notebook in {TUTORIALS} matches {args.prefixes}", file=sys.stderr)
        return 2

    threads = {v: os.environ.get(v) for v in ("MINIRAN_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")
               if os.environ.get(v)}
    print(f"{datetime.datetime.now():%Y-%m-%d %H:%M}; CPU {cpu_model()} ({os.cpu_count()} cores); "
          f"{'MINIRAN_FAST=1' if args.fast else 'teaching scale (MINIRAN_FAST unset)'}; "
          f"threads {threads or 'default (all cores)'}; load average {load_average()} (start)\n")
    print("| notebook | time | note |")
    print("| --- | --- | --- |")
    failed = 0
    for path in notebooks:
        seconds, error = run_notebook(path, args.fast, args.timeout)
        minutes, secs = divmod(round(seconds), 60)
        shown = f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"
        print(f"| {path.stem} | {shown} | {'FAILED: ' + error if error else ''} |", flush=True)
        failed += error is not None
    print(f"\nload average {load_average()} (end)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
