"""Shared fixtures: seeded RNG, the array-module fixture, GPU skipping, data paths."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
STANDIN_DIR = ROOT / "tests" / "standin"

# MINIRAN_CUPY_STANDIN=1 puts the CPU stand-in for CuPy (tests/standin) in front
# of any real CuPy, before miniran can import it, so every GPU code path runs
# here; subprocesses started by the tests (the `miniran` command) inherit it.
USING_STANDIN = os.environ.get("MINIRAN_CUPY_STANDIN") == "1"
if USING_STANDIN:
    import sys

    sys.path.insert(0, str(STANDIN_DIR))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(STANDIN_DIR)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])

import miniran  # noqa: E402  (after the stand-in is on the path)
CIFAR10_DIR = Path(os.environ.get("MINIRAN_CIFAR10_DIR", ROOT.parent / "shared" / "data" / "cifar-10-batches-bin"))


def load_tool(name):
    """The script ``tools/<name>.py`` as a module (the tools are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


requires_gpu = pytest.mark.skipif(not miniran.cuda_available(), reason="no usable CUDA GPU (CuPy missing or no device)")


@pytest.fixture
def rng():
    """A fresh, seeded generator for each test (seed printed on failure by pytest's params)."""
    return np.random.default_rng(int(os.environ.get("MINIRAN_TEST_SEED", "100")))


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=[pytest.mark.gpu, requires_gpu])])
def xp(request):
    """The array module under test: NumPy always, CuPy where a GPU is usable."""
    if request.param == "numpy":
        return np
    import cupy

    return cupy


@pytest.fixture
def cifar10_dir():
    if not (CIFAR10_DIR / "data_batch_1.bin").exists():
        pytest.skip(f"real CIFAR-10 not found at {CIFAR10_DIR}")
    return CIFAR10_DIR


@pytest.fixture(params=[pytest.param("cupy", marks=[pytest.mark.gpu, requires_gpu])])
def cp(request):
    """CuPy, for NumPy-vs-CuPy agreement tests; marked `gpu`, skips visibly without a usable GPU."""
    import cupy

    return cupy


def pytest_collection_modifyitems(config, items):
    """Every test that takes CuPy must carry the `gpu` marker, or `make test-gpu`
    (pytest -m gpu) and the stand-in run would silently leave it out."""
    for item in items:
        if "cp" in getattr(item, "fixturenames", ()) and item.get_closest_marker("gpu") is None:
            raise pytest.UsageError(f"{item.nodeid} uses the `cp` fixture but is not marked gpu")


@pytest.fixture(params=[1, 2, 3], ids=["1-thread", "2-threads", "3-threads"])
def cpu_threads(request, monkeypatch):
    """1 to 3 of miniran's CPU threads, splitting arrays of any size (reset to the default after)."""
    import miniran.threads

    monkeypatch.setattr(miniran.threads, "PARALLEL_MIN_ELEMENTS", 1)
    miniran.threads.set_cpu_threads(request.param)
    yield request.param
    miniran.threads.set_cpu_threads(None)
