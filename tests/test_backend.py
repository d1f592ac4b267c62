"""The array backend: module selection, GPU availability and device moves."""

import numpy as np
import pytest

import miniran
from miniran import backend, nn


def test_get_array_module_defaults_to_numpy():
    assert miniran.get_array_module(np.zeros(2)) is np
    assert miniran.get_array_module(miniran.Tensor([1.0]), 3.0) is np
    assert miniran.get_array_module() is np


def test_cuda_available_is_a_bool():
    assert isinstance(miniran.cuda_available(), bool)


def test_normalize_device():
    assert backend.normalize_device("cuda:0") == "gpu"
    assert backend.normalize_device("CPU") == "cpu"
    with pytest.raises(ValueError, match="device must be"):
        backend.normalize_device("tpu")


def test_moving_to_cpu_is_a_no_op():
    t = miniran.Tensor(np.ones(3), requires_grad=True)
    assert t.to("cpu") is t
    m = nn.Linear(2, 2)
    assert m.to("cpu") is m and m.device == "cpu"


@pytest.mark.skipif(miniran.cuda_available(), reason="checks the error shown when no GPU is usable")
def test_asking_for_the_gpu_without_one_explains_how_to_install():
    with pytest.raises(RuntimeError, match=r"cuda12\]|cuda13\]"):
        miniran.Tensor(np.ones(2)).to("gpu")
    with pytest.raises(RuntimeError, match="not available"):
        nn.Linear(2, 2).to("gpu")


@pytest.mark.gpu
def test_tensor_and_module_round_trip_to_gpu(cp):
    t = miniran.Tensor(np.arange(4.0), requires_grad=True)
    g = t.to("gpu")
    assert g.device == "gpu" and isinstance(g.data, cp.ndarray) and g.requires_grad
    assert miniran.get_array_module(g) is cp
    np.testing.assert_array_equal(g.to("cpu").data, t.data)
    m = nn.Linear(3, 2).to("gpu")
    assert all(isinstance(p.data, cp.ndarray) for p in m.parameters())
    y = m(miniran.Tensor(cp.ones((1, 3), dtype=cp.float32)))
    assert isinstance(y.data, cp.ndarray)
    m.to("cpu")
    assert all(isinstance(p.data, np.ndarray) for p in m.parameters())
