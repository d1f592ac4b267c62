"""The engine: faster twins of the reference Functions of :mod:`miniran.functional`.

Each module here holds twins of one operation for one kind of device. A twin
subclasses the reference Function, overrides ``forward`` and ``backward``,
keeps its own saved state, and says in its classmethod ``suits`` which inputs
it takes. Importing this package registers every twin with the one dispatch
point, :mod:`miniran.functional._dispatch`, in the order of the imports below
(the GPU twin of an operation first, then the CPU twins by preference). No
twin changes a result more than float rounding does: each is tested against
its reference (``tests/function_cases.py``), and the whole network too.

``with miniran.reference_only():`` (or ``MINIRAN_REFERENCE=1``) turns every
twin off and releases the BLAS thread hold below.

This package imports the textbook (:mod:`miniran.functional`), the CPU
threads (:mod:`miniran.threads`) and the kernel declarations
(:mod:`miniran.kernels`); the textbook never imports it.
"""

from __future__ import annotations

import contextlib

from miniran import threads
from miniran.autograd import graph
from miniran.functional._dispatch import reference_active

from miniran.fast import (  # noqa: F401  (imported to register their twins)
    conv_gpu,
    conv_cpu,
    norm_gpu,
    norm_cpu,
    pool_gpu,
    pool_cpu,
    elementwise_gpu,
    elementwise_cpu,
    interp_gpu,
)


def _compute_region():
    """Around every forward and backward: OpenBLAS at one thread while miniran's threads work.

    Not in reference mode: the reference is plain NumPy, BLAS threads included.
    """
    return contextlib.nullcontext() if reference_active() else threads.cpu_region()


graph.set_compute_region(_compute_region)
