"""A training step captured as a CUDA graph (issue 18, part 3), proven under the CuPy stand-in.

The stand-in (tests/standin/cupy/cuda/graph.py) records a capture instead of
running it and replays it on the same buffers; it refuses, naming the rule,
what CUDA refuses during a capture. These tests check the stand-in's capture
itself, then :class:`miniran.train.cuda_graph.CapturedStep` against the
eager step: the same parameters bit for bit, the schedule's changing rate
honoured, one graph launch and two copies per replayed step.
"""

import numpy as np
import pytest

import miniran.functional as F
from miniran import backend, nn, optim
from miniran.autograd import Tensor
from miniran.train.cuda_graph import CapturedStep


@pytest.fixture
def standin(cp):
    return pytest.importorskip("cupy_standin", reason="checks the stand-in's capture and counters")


def _async_pool(cp):
    return cp.cuda.using_allocator(cp.cuda.MemoryAsyncPool().malloc)


# --------------------------------------------------------------------------- the stand-in's capture


@pytest.mark.gpu
def test_a_capture_runs_nothing_and_a_replay_runs_it_on_the_same_buffers(cp, standin):
    x = cp.arange(6, dtype=np.float32)
    y = cp.zeros(6, dtype=np.float32)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream, _async_pool(cp):
        stream.begin_capture()
        assert stream.is_capturing()
        z = x * 2 + 1  # allocated in the capture: memory of the graph
        y[...] = z
        y += 1
        del z
        graph = stream.end_capture()
    assert not stream.is_capturing()
    np.testing.assert_array_equal(y.get(), np.zeros(6))  # nothing ran
    for value in (10.0, -3.0):
        x.fill(value)
        with standin.counting() as c:
            graph.launch()
        np.testing.assert_array_equal(y.get(), np.full(6, 2 * value + 2))  # the inputs as they are now
        assert (c.launches, c.syncs, c.host_to_device) == (1, 0, 0)
        assert dict(c.launches_by_name) == {"graph_launch": 1}


def _sync(cp, x):
    float(x[0])


def _device_to_host(cp, x):
    x.get()


def _pageable_copy(cp, x):
    cp.asarray(np.ones(3, dtype=np.float32))


def _pool_allocation(cp, x):
    with cp.cuda.using_allocator(None):
        x + 1


def _legacy_stream(cp, x):
    with cp.cuda.Stream.null:
        x *= 2


@pytest.mark.gpu
@pytest.mark.parametrize("breach, rule", [
    (_sync, "no synchronisation"),
    (_device_to_host, "device-to-host copy"),
    (_pageable_copy, "pageable host-to-device copy"),
    (_pool_allocation, "allocation outside a graph-aware pool"),
    (_legacy_stream, "cudaErrorStreamCaptureImplicit.*legacy"),
])
def test_a_capture_that_breaks_a_rule_fails_naming_it(cp, standin, breach, rule):
    x = cp.arange(4, dtype=np.float32)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream, _async_pool(cp):
        stream.begin_capture()
        with pytest.raises((cp.cuda.runtime.CUDARuntimeError, RuntimeError), match=rule):
            breach(cp, x)
        with pytest.raises(cp.cuda.runtime.CUDARuntimeError, match="cudaErrorStreamCaptureInvalidated"):
            stream.end_capture()
    np.testing.assert_array_equal(x.get(), np.arange(4))  # and nothing ran


@pytest.mark.gpu
def test_the_legacy_stream_cannot_capture(cp, standin):
    with pytest.raises(RuntimeError, match="cannot capture on the default"):
        cp.cuda.Stream.null.begin_capture()


@pytest.mark.gpu
def test_memory_of_the_capture_still_held_stops_the_second_launch(cp, standin):
    x = cp.ones(3, dtype=np.float32)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream, _async_pool(cp):
        stream.begin_capture()
        held = x * 3  # never freed in the graph
        graph = stream.end_capture()
    graph.launch()
    np.testing.assert_array_equal(held.get(), np.full(3, 3.0))
    with pytest.raises(cp.cuda.runtime.CUDARuntimeError, match="not freed"):
        graph.launch()
    del held
    graph.launch()  # freed: launchable again


@pytest.mark.gpu
def test_stand_in_fixes_the_capture_needed(cp, standin):
    """x[i] of a 1-d array is a 0-d view, as in CuPy (it was a copy: an allocation in a capture), and
    uninitialised 0-d integer memory can be made (ending a capture makes its memory garbage)."""
    x = cp.arange(3, dtype=np.float32)
    with standin.counting() as c:
        v = x[1]
    x[1] = 5
    assert float(v) == 5.0 and c.launches == 0
    assert cp.empty((), dtype=np.int64).shape == ()


# --------------------------------------------------------------------------- CapturedStep against the eager step


def _small_net():
    rng = np.random.default_rng(3)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, rng=rng), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 1, rng=rng), nn.BatchNorm2d(8), nn.ReLU(),
        nn.GlobalAvgPool2d(), nn.Flatten(), nn.Linear(8, 10, rng=rng)).to("gpu")


def _batches(cp, sizes, hw=8):
    rng = np.random.default_rng(7)
    return [(cp.asarray(rng.standard_normal((b, 3, hw, hw)).astype(np.float32)),
             cp.asarray(rng.integers(0, 10, b))) for b in sizes]


def _eager(net, opt, schedule, batches):
    """The trainer's eager step, for comparison: the rates used, the sums of loss and right answers."""
    import cupy

    rates, loss_sum, correct = [], cupy.zeros((), dtype=np.float64), cupy.zeros((), dtype=np.int64)
    for x, y in batches:
        logits = net(Tensor(x))
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        rates.append(opt.lr)
        opt.step()
        if schedule is not None:
            schedule.step()
        loss_sum += loss.data * len(y)
        correct += (logits.data.argmax(axis=1) == y).sum()
    return rates, loss_sum, correct


def _pair(make_net, schedule_of):
    nets, opts, schedules = [], [], []
    for _ in range(2):
        net = make_net()
        opt = optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4, flat=True)
        nets.append(net), opts.append(opt), schedules.append(schedule_of(opt))
    return nets, opts, schedules


def _assert_same_model(net_a, net_b):
    for (name, a), (_, b) in zip(net_a.state_dict().items(), net_b.state_dict().items()):
        np.testing.assert_array_equal(backend.to_numpy(a), backend.to_numpy(b), err_msg=name)


@pytest.mark.gpu
def test_replayed_steps_equal_eager_steps_bit_for_bit_under_a_changing_rate(cp, standin):
    batches = _batches(cp, [4] * 6)
    (eager_net, net), (eager_opt, opt), (eager_sched, sched) = _pair(_small_net, lambda o: optim.OneCycleLR(o, 6))
    rates, loss_sum, correct = _eager(eager_net, eager_opt, eager_sched, batches)
    assert len(set(rates)) == 6  # the rate changes at every step
    step = CapturedStep(net, opt, F.cross_entropy, schedule=sched)
    for x, y in batches:
        step(x, y)
    assert step.replays == 5  # the first call is the warm-up, then the capture
    np.testing.assert_array_equal(cp.asnumpy(opt.flat.data), cp.asnumpy(eager_opt.flat.data))
    _assert_same_model(net, eager_net)  # the batch norms' running statistics too
    assert (opt.lr, opt.steps, sched.last_step) == (eager_opt.lr, eager_opt.steps, eager_sched.last_step)
    # the training statistics, summed on the device as the trainer sums them
    assert float(step.loss_sum) == float(loss_sum) and int(step.correct) == int(correct)


@pytest.mark.gpu
def test_without_a_schedule_a_changed_rate_is_one_small_copy(cp, standin):
    batches = _batches(cp, [4] * 4)
    (eager_net, net), (eager_opt, opt), _ = _pair(_small_net, lambda o: None)
    step = CapturedStep(net, opt, F.cross_entropy)
    copies = []
    for k, (x, y) in enumerate(batches):
        eager_opt.lr = opt.lr = 0.1 / (1 + (k >= 2))  # halved before the third step
        _eager(eager_net, eager_opt, None, [(x, y)])
        with standin.counting() as c:
            step(x, y)
        copies.append(c.host_to_device)
    assert copies[1:] == [0, 1, 0]
    np.testing.assert_array_equal(cp.asnumpy(opt.flat.data), cp.asnumpy(eager_opt.flat.data))


@pytest.mark.gpu
def test_a_replayed_step_is_one_graph_launch_and_two_copies(cp, standin):
    batches = _batches(cp, [4] * 3)
    net = _small_net()
    opt = optim.SGD(net.parameters(), lr=0.1, flat=True)
    step = CapturedStep(net, opt, F.cross_entropy, schedule=optim.CosineLR(opt, 3))
    step(*batches[0])
    assert step.graph.nodes > 20  # the whole step, recorded
    for x, y in batches[1:]:
        with standin.counting() as c:
            step(x, y)
        assert dict(c.launches_by_name) == {"graph_launch": 1, "setitem": 2}  # images, labels
        assert (c.syncs, c.host_to_device) == (0, 0)


@pytest.mark.gpu
def test_a_batch_of_another_size_runs_eagerly_with_the_same_rate_table(cp, standin):
    batches = _batches(cp, [4, 4, 3, 4, 4, 3])  # two epochs of 11 images, batch 4
    (eager_net, net), (eager_opt, opt), (eager_sched, sched) = _pair(_small_net, lambda o: optim.CosineLR(o, 6))
    _eager(eager_net, eager_opt, eager_sched, batches)
    step = CapturedStep(net, opt, F.cross_entropy, schedule=sched)
    for x, y in batches:
        step(x, y)
    assert step.replays == 3
    np.testing.assert_array_equal(cp.asnumpy(opt.flat.data), cp.asnumpy(eager_opt.flat.data))


@pytest.mark.gpu
def test_a_smaller_first_batch_runs_eagerly_and_the_next_full_one_is_captured(cp, standin):
    batches = _batches(cp, [3, 4, 4, 4])  # a run resumed at an epoch's last batch
    (eager_net, net), (eager_opt, opt), (eager_sched, sched) = _pair(_small_net, lambda o: optim.CosineLR(o, 4))
    _eager(eager_net, eager_opt, eager_sched, batches)
    step = CapturedStep(net, opt, F.cross_entropy, schedule=sched, batch_size=4)
    for x, y in batches:
        step(x, y)
    assert step.static_x.shape[0] == 4 and step.replays == 2
    np.testing.assert_array_equal(cp.asnumpy(opt.flat.data), cp.asnumpy(eager_opt.flat.data))


# --------------------------------------------------------------------------- refusals that need no GPU


def test_a_device_learning_rate_needs_the_gpu():
    net = nn.Linear(2, 2, rng=np.random.default_rng(0))
    opt = optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="read_lr_from: a device learning rate needs"):
        opt.read_lr_from(np.ones(1))
    with pytest.raises(ValueError, match="CapturedStep: a CUDA graph needs the model on the GPU"):
        CapturedStep(net, opt, F.cross_entropy)


# --------------------------------------------------------------------------- miniran train --cuda-graph


@pytest.mark.gpu
def test_training_with_a_cuda_graph_equals_the_eager_run(tmp_path, cp, standin):
    """Two epochs of 2 + 2 + 1 images: warm-up, replay, an eager partial batch, then two replays and one."""
    from miniran.train.checkpoint import Checkpoint
    from miniran.train.trainer import TrainConfig, train

    tiny = dict(model="attention56", dataset="cifar10-sample", subset=5, test_subset=4, batch_size=2, seed=3,
                epochs=2, schedule="onecycle", device="gpu")
    logs, history = [], {}
    for graph in (False, True):
        config = TrainConfig(**tiny, out=str(tmp_path / str(graph)), cuda_graph=graph)
        with standin.counting() as c:
            history[graph] = train(config, progress=False, log=logs.append)
    assert c.launches_by_name["graph_launch"] == 3  # epoch 1: warm-up, replay, eager; epoch 2: 2 replays, eager
    assert any("--cuda-graph" in line for line in logs)
    timings = ("seconds", "train_seconds", "images_per_second")
    for eager, captured in zip(history[False], history[True]):
        assert {k: v for k, v in eager.items() if k not in timings} == \
               {k: v for k, v in captured.items() if k not in timings}
    a, b = (Checkpoint(tmp_path / str(graph) / "checkpoint.npz") for graph in (False, True))
    for key in a.model:
        np.testing.assert_array_equal(a.model[key], b.model[key], err_msg=key)
    assert b.config["cuda_graph"] is True


@pytest.mark.gpu
def test_a_graph_run_resumed_within_an_epoch_equals_the_uninterrupted_one(tmp_path, cp, standin):
    """--cuda-graph with --checkpoint-every 3, stopped after step 7 and resumed from step 6: the epoch's
    device sums go on from the checkpoint's, and the weights and lines are the uninterrupted run's."""
    from miniran.train.checkpoint import Checkpoint
    from miniran.train.trainer import TrainConfig, train

    tiny = dict(model="attention56", dataset="cifar10-sample", subset=8, test_subset=4, batch_size=2, seed=3,
                epochs=2, schedule="onecycle", device="gpu", cuda_graph=True, checkpoint_every=3)
    full = train(TrainConfig(**tiny, out=str(tmp_path / "full")), progress=False, log=lambda *a: None)

    def interrupt(step):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**tiny, out=str(tmp_path / "cut")), progress=False, log=lambda *a: None,
              on_step=interrupt)
    assert Checkpoint(tmp_path / "cut" / "checkpoint.npz").epoch_sums["seen"] == 4
    cut = train(TrainConfig(**tiny, out=str(tmp_path / "cut")), resume=True, progress=False, log=lambda *a: None)
    timings = ("seconds", "train_seconds", "images_per_second")
    assert [{k: v for k, v in r.items() if k not in timings} for r in full] == \
           [{k: v for k, v in r.items() if k not in timings} for r in cut]
    a, b = (Checkpoint(tmp_path / name / "checkpoint.npz") for name in ("full", "cut"))
    for key in a.model:
        np.testing.assert_array_equal(a.model[key], b.model[key], err_msg=key)


def test_cuda_graph_without_the_gpu_is_one_line(tmp_path):
    from cli_helpers import TINY_ARGS, assert_one_line_error, run_cli

    status, _, err = run_cli("train", *TINY_ARGS, "--max-steps", "1", "--cuda-graph", "--out", tmp_path / "run")
    assert_one_line_error(status, err, "--cuda-graph needs --device gpu")
    assert not (tmp_path / "run").exists()
