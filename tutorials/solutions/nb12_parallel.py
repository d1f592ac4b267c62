"""Solution to exercise 1 of notebook 12: the ring all-reduce.

The ring all-reduce of N processes, each holding an array x of the same
length, cut into N chunks (``np.array_split``: chunks differ by at most one
value when N does not divide the length). Process r sends to its right
neighbour r + 1 and receives from its left neighbour r - 1 (mod N).

* **Reduce-scatter**, N - 1 steps. At step s, process r sends chunk
  (r - s) mod N and receives chunk (r - s - 1) mod N, which it adds to its
  own copy. A chunk travels once around the ring, picking up one more
  process's values at every hop: after N - 1 steps process r holds the full
  sum of chunk (r + 1) mod N.
* **All-gather**, N - 1 steps. At step s, process r sends chunk
  (r + 1 - s) mod N (complete) and receives chunk (r - s) mod N, which
  replaces its own. Every finished chunk travels around the ring once more.

Each process sends 2(N - 1) messages of one chunk, 2(N - 1)/N times the array
in all, whatever N is: the traffic per process stays below twice the array.
``Sendrecv`` sends and receives in one call, so no process waits for a
neighbour that is itself waiting: with a blocking ``Send`` first, large
messages deadlock (MPI may hold a ``Send`` until its ``Recv`` is posted).

The short answers to the other exercises are in ``answers.md`` (``show_answers("12")``).
"""

from __future__ import annotations


def ring_allreduce(comm, x):
    """The sum of ``x`` over every process, by a ring: reduce-scatter, then all-gather (x unchanged)."""
    import numpy as np

    n, rank = comm.Get_size(), comm.Get_rank()
    right, left = (rank + 1) % n, (rank - 1) % n
    result = np.array(x, dtype=np.float64)  # a copy: x stays as it was
    chunks = np.array_split(result, n)  # views into result
    incoming = np.empty(len(chunks[0]))  # the first chunk is the largest
    # reduce-scatter: after step s, chunk (rank - s - 1) % n holds the values of s + 2 processes
    for s in range(n - 1):
        send, recv = (rank - s) % n, (rank - s - 1) % n
        buffer = incoming[:len(chunks[recv])]
        comm.Sendrecv(chunks[send], dest=right, recvbuf=buffer, source=left)
        chunks[recv] += buffer
    # now chunk (rank + 1) % n is complete here; all-gather: pass the complete chunks around
    for s in range(n - 1):
        send, recv = (rank + 1 - s) % n, (rank - s) % n
        comm.Sendrecv(chunks[send], dest=right, recvbuf=chunks[recv], source=left)
    return result
