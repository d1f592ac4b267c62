"""Notebook 12's exercise: the ring all-reduce, its solution and its checker (``check_ring_allreduce``).

The checker copies a function's source into a script and runs it under
``mpiexec -n 4`` and ``-n 3`` (one thread per process). The solution in
``tutorials/solutions/nb12_parallel.py`` must pass it; the mistakes a learner
makes must fail it, each with its own line: a sum that is right but sent the
expensive way (the whole array to every process), a ring that stops after the
reduce-scatter, an all-gather that passes the wrong chunk, a collective where
point-to-point messages are asked for, blocking sends that deadlock, a result
written into the input. Skipped without mpi4py or mpiexec (the ``test`` extra
installs both).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
sys.path.insert(0, str(TUTORIALS))

import checks  # noqa: E402
from solutions.nb12_parallel import ring_allreduce  # noqa: E402

pytest.importorskip("mpi4py")
pytestmark = pytest.mark.skipif(checks.mpiexec_path() is None, reason="no mpiexec (pip install -e '.[mpi]')")

# --------------------------------------------------------------------------- wrong answers a learner writes
# (each is copied into a script by the checker: everything it uses is inside it)


def everyone_to_everyone(comm, x):
    """Right sum, the expensive way: the whole array to every other process, (N-1) x the array each."""
    import numpy as np

    n, rank = comm.Get_size(), comm.Get_rank()
    total, incoming = x.copy(), np.empty_like(x)
    for k in range(1, n):
        comm.Sendrecv(x, dest=(rank + k) % n, recvbuf=incoming, source=(rank - k) % n)
        total += incoming
    return total


def reduce_scatter_only(comm, x):
    """The first half of the ring: each process ends with one complete chunk and partial sums elsewhere."""
    import numpy as np

    n, rank = comm.Get_size(), comm.Get_rank()
    result = x.copy()
    chunks = np.array_split(result, n)
    for s in range(n - 1):
        send, recv = (rank - s) % n, (rank - s - 1) % n
        buffer = np.empty(len(chunks[recv]))
        comm.Sendrecv(chunks[send], dest=(rank + 1) % n, recvbuf=buffer, source=(rank - 1) % n)
        chunks[recv] += buffer
    # the all-gather is missing
    comm.Sendrecv(chunks[0], dest=(rank + 1) % n, recvbuf=np.empty(len(chunks[0])), source=(rank - 1) % n)
    return result


def all_gather_off_by_one(comm, x):
    """The all-gather passes chunk (rank - s) instead of the complete chunk (rank + 1 - s)."""
    import numpy as np

    n, rank = comm.Get_size(), comm.Get_rank()
    right, left = (rank + 1) % n, (rank - 1) % n
    result = x.copy()
    chunks = np.array_split(result, n)
    for s in range(n - 1):
        send, recv = (rank - s) % n, (rank - s - 1) % n
        buffer = np.empty(len(chunks[recv]))
        comm.Sendrecv(chunks[send], dest=right, recvbuf=buffer, source=left)
        chunks[recv] += buffer
    for s in range(n - 1):
        send, recv = (rank - s) % n, (rank - s - 1) % n
        comm.Sendrecv(chunks[send], dest=right, recvbuf=chunks[recv], source=left)
    return result


def calls_the_collective(comm, x):
    """What the exercise is about, done by MPI itself."""
    import numpy as np

    out = np.empty_like(x)
    comm.Allreduce(x, out)
    return out


def send_then_recv(comm, x):
    """A right ring with blocking Send before Recv: every process waits in Send once messages are large."""
    import numpy as np

    n, rank = comm.Get_size(), comm.Get_rank()
    right, left = (rank + 1) % n, (rank - 1) % n
    result = x.copy()
    chunks = np.array_split(result, n)
    for s in range(n - 1):
        send, recv = (rank - s) % n, (rank - s - 1) % n
        buffer = np.empty(len(chunks[recv]))
        comm.Send(chunks[send], dest=right)
        comm.Recv(buffer, source=left)
        chunks[recv] += buffer
    for s in range(n - 1):
        send, recv = (rank + 1 - s) % n, (rank - s) % n
        comm.Send(chunks[send], dest=right)
        comm.Recv(chunks[recv], source=left)
    return result


def in_place(comm, x):
    """A right ring that writes into x (np.array_split of x gives views): the caller's array changes."""
    import numpy as np

    n, rank = comm.Get_size(), comm.Get_rank()
    right, left = (rank + 1) % n, (rank - 1) % n
    chunks = np.array_split(x, n)
    for s in range(n - 1):
        send, recv = (rank - s) % n, (rank - s - 1) % n
        buffer = np.empty(len(chunks[recv]))
        comm.Sendrecv(chunks[send], dest=right, recvbuf=buffer, source=left)
        chunks[recv] += buffer
    for s in range(n - 1):
        send, recv = (rank + 1 - s) % n, (rank - s) % n
        comm.Sendrecv(chunks[send], dest=right, recvbuf=chunks[recv], source=left)
    return x


# --------------------------------------------------------------------------- the solution passes


def test_solution_passes_the_checker(capsys):
    assert checks.check_ring_allreduce(ring_allreduce) is True
    out = capsys.readouterr().out
    assert "n=4, 65,536 values" in out and "n=3, 1,001 values" in out and "WRONG" not in out
    assert "6 messages, 786,432 bytes sent per process = 1.50 x the array" in out  # 2(N-1)/N of 524,288


def test_measure_allreduce_reports_the_ring_traffic(capsys):
    report = checks.measure_allreduce(ring_allreduce, n=2, sizes=(1000,))
    assert report is not None and report["size"] == 2
    ranks = report["rows"][0]["ranks"]
    assert [r["bytes"] for r in ranks] == [8000, 8000]  # 2(N-1)/N = 1 x the array for N = 2
    assert all(r["messages"] == 2 and r["rel"] < 1e-15 for r in ranks)
    assert "same bits everywhere" in capsys.readouterr().out


def test_skeleton_is_not_solved_yet_without_starting_mpiexec(capsys, monkeypatch):
    def skeleton(comm, x):
        n, rank = comm.Get_size(), comm.Get_rank()  # noqa: F841
        raise NotImplementedError

    monkeypatch.setattr(checks, "run_mpiexec", lambda *a, **k: pytest.fail("mpiexec started for a skeleton"))
    assert checks.check_ring_allreduce(skeleton) is False
    assert "not solved yet" in capsys.readouterr().out


# --------------------------------------------------------------------------- wrong answers fail, each with its reason


@pytest.mark.parametrize("fn,reason", [
    (everyone_to_everyone, "a ring sends 2(N-1) = 6 messages per process, 1.50 x the array in all"),
    (reduce_scatter_only, "the sum is wrong"),
    (all_gather_off_by_one, "the sum is wrong"),
    (calls_the_collective, "comm.Allreduce is not allowed here"),
    (in_place, "process 0 changed its input x"),
], ids=lambda v: v.__name__ if callable(v) else "")
def test_wrong_answers_fail_with_their_reason(fn, reason, capsys):
    assert checks.check_ring_allreduce(fn) is False
    out = capsys.readouterr().out
    assert reason in out, out
    assert "WRONG" in out and "Traceback" not in out
    assert "=> some checks FAILED" in out


def test_everyone_to_everyone_is_right_but_sends_n_minus_1_arrays(capsys):
    report = checks.measure_allreduce(everyone_to_everyone, n=4, sizes=(4096,))
    ranks = report["rows"][0]["ranks"]
    assert max(r["rel"] for r in ranks) < 1e-12
    assert all(r["bytes"] == 3 * 4096 * 8 for r in ranks)  # (N-1) x the array, twice the ring's 1.5


def _harness_processes():
    """Process ids of the checker's scripts (allreduce.py started in an allreduce-* temporary folder)."""
    found = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes()
            cwd = str((proc / "cwd").readlink())
        except OSError:
            continue
        if b"allreduce.py" in cmdline and "/allreduce-" in cwd:
            found.add(int(proc.name))
    return found


def test_deadlock_is_reported_in_one_line_and_leaves_no_process(capsys):
    before = _harness_processes()
    start = time.perf_counter()
    assert checks.check_ring_allreduce(send_then_recv, timeout=8) is False
    assert time.perf_counter() - start < 30
    out = capsys.readouterr().out
    assert "no answer after 8 s" in out and "use comm.Sendrecv" in out
    if Path("/proc/self/cwd").exists():  # Linux: the stuck processes were ended with their group
        time.sleep(0.5)
        assert not (_harness_processes() - before)


def test_a_wrong_type_is_one_line(capsys):
    def returns_float32(comm, x):
        import numpy as np

        out = np.empty_like(x)
        comm.Sendrecv(x, dest=comm.Get_rank(), recvbuf=out, source=comm.Get_rank())
        return out.astype(np.float32)

    assert checks.check_ring_allreduce(returns_float32) is False
    assert "expected float64, got float32" in capsys.readouterr().out


def test_a_small_error_in_the_sum_fails(capsys):
    # one part in 1e9 is far above float64 rounding (about 1e-16 here): the checker's tolerance is 1e-12
    rank = {"problem": None, "rel": 1e-9, "input_changed": False, "digest": "a", "bytes": 64, "messages": 2}
    report = {"rows": [{"values": 8, "itemsize": 8, "ranks": [rank, dict(rank)]}]}
    assert checks._judge_ring(report, 2) is False
    assert "the sum is wrong" in capsys.readouterr().out
    for r in report["rows"][0]["ranks"]:
        r["rel"] = 1e-16
    assert checks._judge_ring(report, 2) is True
