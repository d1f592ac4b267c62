"""One flat parameter buffer and one flat gradient buffer (nn/flat.py, SGD(flat=True))."""

import numpy as np
import pytest

import miniran.functional as F
from miniran import Tensor, backend, nn, optim
from miniran.nn.flat import FlatParameters


def _net(seed=0, dtype=np.float64):
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, rng=np.random.default_rng(seed)), nn.BatchNorm2d(4), nn.ReLU(),
        nn.GlobalAvgPool2d(), nn.Linear(4, 5, rng=np.random.default_rng(seed + 1)))
    net.astype(dtype)
    return net


def _train(net, opt, xp, steps=4, seed=3):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        x = xp.asarray(rng.standard_normal((6, 3, 8, 8)))
        y = xp.asarray(rng.integers(0, 5, 6))
        opt.zero_grad()
        F.cross_entropy(net(Tensor(x)), y).backward()
        opt.step()
    return [backend.to_numpy(p.data).copy() for p in net.parameters()]


@pytest.mark.parametrize("momentum,nesterov,wd", [(0.9, True, 1e-4), (0.9, False, 1e-3), (0.0, False, 1e-4)])
def test_flat_steps_are_the_per_parameter_steps(momentum, nesterov, wd):
    results = []
    for flat in (False, True):
        net = _net()
        opt = optim.SGD(net.parameters(), lr=0.1, momentum=momentum, nesterov=nesterov, weight_decay=wd, flat=flat)
        results.append(_train(net, opt, np))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_parameters_and_gradients_are_views_of_the_two_buffers():
    net = _net()
    opt = optim.SGD(net.parameters(), lr=0.1, flat=True)
    _train(net, opt, np, steps=1)
    flat = opt.flat
    for i, p in enumerate(net.parameters()):
        assert backend.same_memory(p.data, flat.view(flat.data, i))
        assert backend.same_memory(p.grad, flat.view(flat.grad, i))
        assert np.shares_memory(opt.velocity[i], opt._flat_velocity)


def test_a_rebound_parameter_is_taken_back_into_the_buffer():
    net, other = _net(seed=0), _net(seed=5)
    opt = optim.SGD(net.parameters(), lr=0.1, flat=True)
    net.load_state_dict(other.state_dict())  # rebinds every p.data
    _train(net, opt, np, steps=1)
    ref = _net(seed=5)
    ref_opt = optim.SGD(ref.parameters(), lr=0.1)
    expected = _train(ref, ref_opt, np, steps=1)
    for p, e in zip(net.parameters(), expected):
        np.testing.assert_array_equal(p.data, e)  # the step changed the model's own parameters
    assert opt.flat.sync()  # all back in place


def test_a_parameter_without_gradient_is_left_alone():
    net = _net()
    opt = optim.SGD(net.parameters(), lr=0.1, flat=True)
    params = list(net.parameters())
    params[0].requires_grad = False  # the conv weight gets no gradient
    before = params[0].data.copy()
    _train(net, opt, np, steps=2)
    np.testing.assert_array_equal(params[0].data, before)


def test_optimiser_state_round_trips_with_a_flat_buffer():
    net_a, net_b = _net(), _net()
    opt_a = optim.SGD(net_a.parameters(), lr=0.1, flat=True)
    opt_b = optim.SGD(net_b.parameters(), lr=0.1, flat=False)
    _train(net_a, opt_a, np, steps=2)
    _train(net_b, opt_b, np, steps=2)
    net_c = _net()
    net_c.load_state_dict(net_a.state_dict())
    opt_c = optim.SGD(net_c.parameters(), lr=0.1, flat=True).load_state_dict(opt_a.state_dict())
    after_c = _train(net_c, opt_c, np, steps=2, seed=9)
    after_b = _train(net_b, opt_b, np, steps=2, seed=9)
    for c, b in zip(after_c, after_b):
        np.testing.assert_array_equal(c, b)


def test_flat_parameters_refuse_mixed_dtypes():
    a = nn.Parameter(np.zeros(3, np.float32))
    b = nn.Parameter(np.zeros(3, np.float64))
    with pytest.raises(ValueError, match="one dtype and one device"):
        FlatParameters([a, b])


@pytest.mark.gpu
def test_flat_steps_on_the_gpu_match_the_cpu(cp):
    cpu_net, gpu_net = _net(dtype=np.float64), _net(dtype=np.float64).to("gpu")
    cpu = _train(cpu_net, optim.SGD(cpu_net.parameters(), lr=0.1, flat=True), np)
    gpu = _train(gpu_net, optim.SGD(gpu_net.parameters(), lr=0.1, flat=True), cp)
    for a, b in zip(cpu, gpu):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.gpu
def test_moving_the_model_after_building_the_optimiser_rebuilds_the_buffers(cp):
    net = _net()
    opt = optim.SGD(net.parameters(), lr=0.1, flat=True)
    _train(net, opt, np, steps=1)
    net.to("gpu")
    _train(net, opt, cp, steps=1)
    assert opt.flat.device == "gpu"
    assert all(backend.is_cupy_array(p.data) for p in net.parameters())
