"""Every case of tests/function_cases.py through the one helper: gradient, oracle, twins, GPU, PyTorch.

The table and the helper are in ``function_cases.py`` (its docstring says
what each part checks). A twin registered later with ``@twin_of`` is picked
up here without a change: the helper asks ``_dispatch.twins(RefClass)``.
"""

from __future__ import annotations

import numpy as np
import pytest

from function_cases import CASES, check, is_gpu_twin, suiting_twins
from miniran.functional import _dispatch

IDS = [c.name for c in CASES]
REFS = list(dict.fromkeys(c.ref for c in CASES))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradient(case):
    check(case, "gradient")


@pytest.mark.parametrize("case", [c for c in CASES if c.oracle is not None],
                         ids=[c.name for c in CASES if c.oracle is not None])
def test_reference_matches_naive_oracle(case):
    check(case, "oracle")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_twins_match_reference(case):
    check(case, "twins")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_goes_through_the_dispatch(case):
    check(case, "dispatch")


@pytest.mark.parametrize("case", [c for c in CASES if c.torch is not None],
                         ids=[c.name for c in CASES if c.torch is not None])
def test_matches_pytorch(case):
    torch = pytest.importorskip("torch")
    check(case, "torch", torch=torch)


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gpu_matches_reference(case, cp):
    check(case, "gpu", cp=cp)


def test_every_cpu_twin_is_exercised():
    """Each CPU twin of a Function in the table suits at least one case (else the table misses it)."""
    cpu_twins = {t for ref in REFS for t in _dispatch.twins(ref) if not is_gpu_twin(t)}
    missing = cpu_twins - suiting_twins(CASES)
    assert not missing, f"no case exercises {sorted(t.__name__ for t in missing)}: add a case that suits it"


@pytest.mark.gpu
def test_every_gpu_twin_is_exercised(cp):
    gpu_twins = {t for ref in REFS for t in _dispatch.twins(ref) if is_gpu_twin(t)}
    missing = gpu_twins - suiting_twins(CASES, xp=cp)
    assert not missing, f"no case exercises {sorted(t.__name__ for t in missing)} on the device"


def test_helper_catches_a_wrong_twin():
    """The helper is not blind: a twin whose backward is off by a little fails the twins check."""
    from function_cases import CONV_CASES, only_twin
    from miniran.functional.conv import Conv2dFunction

    class Conv2dWrongCPU(Conv2dFunction):
        @classmethod
        def suits(cls, arrays, params, grad):
            return type(arrays[0]) is np.ndarray

        def backward(self, gy):
            gx, *rest = super().backward(gy)
            return (gx * (1 + 1e-4), *rest)

    with only_twin(Conv2dFunction, Conv2dWrongCPU), pytest.raises(AssertionError, match="Conv2dWrongCPU"):
        check(CONV_CASES[0], "twins")
