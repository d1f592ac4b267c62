"""What a short run (fine-tuning a few epochs) adds: the one-cycle schedule, label smoothing, --init."""

import math

import numpy as np
import pytest

import miniran.functional as F
from miniran import models, optim
from miniran.autograd import Tensor
from miniran.nn import Parameter, load_arrays, save_arrays
from miniran.train import cli
from miniran.train.checkpoint import Checkpoint
from miniran.train.trainer import TrainConfig, init_weights, train

from cli_helpers import quiet

TINY = dict(model="attention56", dataset="cifar10-sample", subset=32, test_subset=10, batch_size=8, seed=3)


def _sgd(lr=0.1):
    return optim.SGD([Parameter(np.zeros(3))], lr=lr)


def test_one_cycle_warms_up_linearly_then_follows_half_a_cosine():
    sched = optim.OneCycleLR(_sgd(0.2), total_steps=100, warmup=0.2, div=10)
    assert sched.optimizer.lr == pytest.approx(0.02)  # set at construction: base / div
    assert sched.lr_at(10) == pytest.approx(0.02 + 0.18 * 10 / 20)
    assert sched.lr_at(20) == pytest.approx(0.2)  # the peak ends the warm-up
    assert sched.lr_at(60) == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * 40 / 80)))
    assert sched.lr_at(100) == pytest.approx(0.0) and sched.lr_at(150) == pytest.approx(0.0)
    rates = [sched.step() for _ in range(100)]
    assert max(rates) == pytest.approx(0.2) and np.argmax(rates) == 19  # step() returns the rate of step+1


def test_one_cycle_without_warm_up_is_the_cosine_schedule():
    one, cos = optim.OneCycleLR(_sgd(), 50, warmup=0), optim.CosineLR(_sgd(), 50)
    assert [one.lr_at(s) for s in range(51)] == pytest.approx([cos.lr_at(s) for s in range(51)])


@pytest.mark.parametrize("kw,needle", [({"warmup": 1.0}, "warmup"), ({"div": 0.5}, "div"),
                                       ({"total_steps": 0}, "total_steps")])
def test_one_cycle_refuses_bad_arguments(kw, needle):
    with pytest.raises(ValueError, match=needle):
        optim.OneCycleLR(_sgd(), **{"total_steps": 10, **kw})


def test_one_cycle_resumes_where_it_stopped():
    first = optim.OneCycleLR(_sgd(), 40)
    for _ in range(13):
        first.step()
    again = optim.OneCycleLR(_sgd(), 40)
    again.load_state_dict(first.state_dict())
    assert again.optimizer.lr == first.optimizer.lr == first.lr_at(13)


def test_label_smoothing_by_hand():
    # two classes, logits 0 and log 3: p = (1/4, 3/4); label 1, eps 0.2 -> target (0.1, 0.9)
    logits = np.array([[0.0, math.log(3.0)]])
    loss = F.cross_entropy(Tensor(logits), np.array([1]), label_smoothing=0.2)
    assert float(loss.data) == pytest.approx(-(0.1 * math.log(0.25) + 0.9 * math.log(0.75)))
    t = Tensor(logits, requires_grad=True)
    F.cross_entropy(t, np.array([1]), label_smoothing=0.2).backward()
    np.testing.assert_allclose(t.grad, [[0.25 - 0.1, 0.75 - 0.9]], rtol=1e-12)


@pytest.mark.parametrize("eps", [-0.1, 1.0, True, "0.1", float("nan")])
def test_label_smoothing_out_of_range_is_one_clear_error(eps):
    with pytest.raises(ValueError, match="label_smoothing must be a number in \\[0, 1\\)"):
        F.cross_entropy(Tensor(np.zeros((2, 3))), np.array([0, 1]), label_smoothing=eps)


def test_init_loads_the_shipped_weights_exactly():
    if not models.pretrained_available():
        pytest.skip("the shipped weights are not in this copy")
    model = models.attention56(num_classes=10, seed=5)
    path = init_weights(model, "attention56_cifar10")
    shipped = {k[len("model/"):]: v for k, v in load_arrays(path).items() if k.startswith("model/")}
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, shipped[key].astype(value.dtype), err_msg=key)


def test_init_from_a_run_starts_fresh_from_its_weights(tmp_path):
    """--init takes the weights of a checkpoint, not its progress: step 0, a new schedule."""
    first = tmp_path / "first"
    train(TrainConfig(**TINY, epochs=1, out=str(first)), progress=False, log=quiet)
    second = tmp_path / "second"
    # one tiny step (learning rate 1e-5): the weights stay where the run started
    config = TrainConfig(**TINY, max_steps=1, schedule="onecycle", label_smoothing=0.1, lr=1e-5,
                         init=str(first / "checkpoint.npz"), out=str(second))
    with_init = train(config, progress=False, log=quiet)
    without = train(TrainConfig(**TINY, max_steps=1, schedule="onecycle", label_smoothing=0.1, lr=1e-5,
                                out=str(tmp_path / "third")), progress=False, log=quiet)
    assert with_init[0]["step"] == 1 and Checkpoint(second / "checkpoint.npz").config["init"] == str(first / "checkpoint.npz")
    # started from the trained weights, not from the seed's initial ones (which the first run moved away from)
    trained, fine = Checkpoint(first / "checkpoint.npz").model, Checkpoint(second / "checkpoint.npz").model
    fresh = Checkpoint(tmp_path / "third" / "checkpoint.npz").model
    key = "stem.0.weight" if "stem.0.weight" in trained else next(k for k in trained if k.endswith("weight"))
    assert np.abs(fine[key] - trained[key]).max() < 1e-3
    assert np.abs(fresh[key] - trained[key]).max() > 1e-2
    assert without[0]["lr"] == with_init[0]["lr"]


@pytest.mark.parametrize("argv,needle", [
    (["--init", "no-such-weights"], "--init must be a pretrained name"),
    (["--init", "attention56_cifar10", "--model", "attention92"], "--init attention56_cifar10: the weights do not fit"),
    (["--label-smoothing", "1"], "--label-smoothing must be in [0, 1)"),
    (["--schedule", "onecycle", "--label-smoothing", "nan"], "--label-smoothing must be a finite number"),
])
def test_bad_short_run_options_are_one_clear_line(argv, needle, tmp_path, capsys):
    if "attention92" in argv and not models.pretrained_available():
        pytest.skip("the shipped weights are not in this copy")
    out = tmp_path / "r"
    status = cli.main(["train", "--dataset", "cifar10-sample", "--max-steps", "1", "--out", str(out),
                       "--no-progress", *argv])
    err = capsys.readouterr().err
    assert status == 2 and needle in err and "Traceback" not in err, err
    assert not out.exists()  # nothing left behind


def test_init_file_without_weights_is_one_clear_line(tmp_path, capsys):
    empty = tmp_path / "empty.npz"
    save_arrays(empty, {"data/mean": np.zeros(3)})
    status = cli.main(["train", "--dataset", "cifar10-sample", "--max-steps", "1", "--init", str(empty),
                       "--out", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err
    assert status == 2 and "holds no 'model/' weights" in err and "Traceback" not in err, err


def test_frozen_layers_get_no_gradient_and_record_no_graph(rng):
    from miniran import nn
    body = nn.Sequential(nn.Linear(4, 5, rng=rng), nn.ReLU())
    head = nn.Linear(5, 3, rng=rng)
    assert body.requires_grad_(False) is body
    x = Tensor(rng.standard_normal((6, 4)))
    hidden = body(x)
    assert not hidden.requires_grad and hidden.creator is None  # nothing recorded below the head
    F.cross_entropy(head(hidden), np.array([0, 1, 2, 0, 1, 2])).backward()
    assert all(p.grad is None for p in body.parameters())
    assert all(p.grad is not None for p in head.parameters())
    body.requires_grad_()
    assert all(p.requires_grad for p in body.parameters())


def test_init_that_cannot_be_read_is_one_clear_line(tmp_path, monkeypatch):
    from miniran.train import trainer
    path = tmp_path / "weights.npz"
    save_arrays(path, {"model/x": np.zeros(3)})

    def refused(_):  # what a file without read permission gives a user who is not root
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(trainer, "load_arrays", refused)
    with pytest.raises(ValueError, match=r"^--init .*weights.npz cannot be read \(Permission denied\)$"):
        init_weights(models.attention56(num_classes=10, seed=0), str(path))
