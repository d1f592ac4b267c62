"""The one dispatch point (functional/_dispatch.py) and the reference switch."""

import os
import subprocess
import sys

import numpy as np
import pytest

import miniran
import miniran.functional as F
from miniran import Function, Tensor, threads
from miniran.functional import _dispatch
from miniran.functional.conv import Conv2dFunction


class _BlasProbe(Function):
    """Records the OpenBLAS thread count its forward runs under."""

    seen = []

    def forward(self, x):
        _BlasProbe.seen.append(threads.blas_threads())
        return x * 2

    def backward(self, gy):
        return gy * 2


@pytest.fixture
def two_threads():
    if threads.blas_threads() is None:
        pytest.skip("NumPy's BLAS is not an OpenBLAS miniran can drive")
    previous = threads.blas_threads(2)
    threads.set_cpu_threads(2)
    yield
    threads.set_cpu_threads(None)
    threads.blas_threads(previous)


def test_the_engine_holds_blas_at_one_thread_and_reference_mode_releases_it(two_threads):
    _BlasProbe.seen.clear()
    _BlasProbe()(Tensor(np.ones(3)))
    with miniran.reference_only():
        _BlasProbe()(Tensor(np.ones(3)))
    assert _BlasProbe.seen == [1, 2]
    assert threads.blas_threads() == 2  # and it is given back afterwards


def test_the_class_is_the_path(rng):
    x = Tensor(rng.standard_normal((2, 3, 6, 6)))
    w = Tensor(rng.standard_normal((4, 3, 3, 3)), requires_grad=True)
    y = F.conv2d(x, w, stride=2, padding=1)
    assert type(y.creator).__name__ == "Conv2dBatchedCPU"
    assert isinstance(y.creator, Conv2dFunction)  # a twin is a subclass of its reference
    with miniran.reference_only():
        assert type(F.conv2d(x, w, stride=2, padding=1).creator) is Conv2dFunction
    assert type(F.conv2d(x, w, stride=2, padding=1).creator).__name__ == "Conv2dBatchedCPU"  # switch undone


def test_reference_only_is_undone_after_an_exception():
    with pytest.raises(RuntimeError):
        with miniran.reference_only():
            raise RuntimeError("boom")
    assert not _dispatch.reference_active()


def test_every_twin_subclasses_its_reference_and_says_what_it_suits():
    registered = dict(_dispatch._TWINS)
    assert {ref.__name__ for ref in registered} >= {
        "Conv2dFunction", "BatchNorm", "MaxPool2dFunction", "AvgPool2dFunction",
        "GlobalAvgPool2dFunction", "SigmoidFunction", "ReLUFunction", "Add", "Mul"}
    for ref, twins in registered.items():
        assert ref.__module__.startswith("miniran.functional."), ref
        for twin in twins:
            assert issubclass(twin, ref) and twin.__module__.startswith("miniran.fast."), twin
            assert callable(twin.suits)


def test_twin_of_refuses_what_is_not_a_twin():
    with pytest.raises(TypeError, match="is not a subclass"):
        _dispatch.twin_of(Conv2dFunction)(int)

    class NoSuits(Conv2dFunction):
        pass
    with pytest.raises(TypeError, match="has no suits"):
        _dispatch.twin_of(Conv2dFunction)(NoSuits)
    assert NoSuits not in _dispatch.twins(Conv2dFunction)


CODE = ("import numpy as np, miniran, miniran.functional as F; "
        "x = miniran.Tensor(np.ones((1, 3, 4, 4))); w = miniran.Tensor(np.ones((2, 3, 3, 3)), requires_grad=True); "
        "print(type(F.conv2d(x, w).creator).__name__)")


@pytest.mark.parametrize("value,expected", [("1", "Conv2dFunction"), ("yes", "Conv2dFunction"),
                                            ("0", "Conv2dBatchedCPU"), ("", "Conv2dBatchedCPU")])
def test_the_environment_variable_switches_a_whole_process(value, expected):
    env = dict(os.environ, MINIRAN_REFERENCE=value)
    out = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected


def test_a_bad_environment_value_is_refused_in_one_line():
    env = dict(os.environ, MINIRAN_REFERENCE="maybe")
    out = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True)
    assert out.returncode != 0
    assert "MINIRAN_REFERENCE must be 1 or 0" in out.stderr


def test_the_command_line_refuses_a_bad_environment_value_in_one_line():
    env = dict(os.environ, MINIRAN_REFERENCE="maybe")
    out = subprocess.run([sys.executable, "-m", "miniran", "train", "--help"], env=env, capture_output=True,
                         text=True)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: MINIRAN_REFERENCE must be 1 or 0 (true/false, yes/no, on/off), got 'maybe'"]
