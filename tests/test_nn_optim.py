"""Modules, state dicts and files, SGD and the learning-rate schedules."""

import re

import numpy as np
import pytest

import miniran
import miniran.functional as F
from miniran import nn, optim
from miniran.nn import Parameter


class MLP(nn.Module):
    def __init__(self, rng):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(2, 32, rng=rng), nn.ReLU(), nn.Linear(32, 32, rng=rng), nn.ReLU())
        self.head = nn.Linear(32, 2, rng=rng)

    def forward(self, x):
        return self.head(self.body(x))


def two_spirals(n, rng):
    t = rng.uniform(0.25, 1.0, size=n) * 3 * np.pi
    labels = rng.integers(0, 2, size=n)
    sign = np.where(labels == 1, 1.0, -1.0)
    x = np.stack([sign * t * np.cos(t), sign * t * np.sin(t)], 1) / 10
    return (x + rng.normal(0, 0.02, size=x.shape)).astype(np.float32), labels


def test_mlp_learns_two_spirals(rng):
    x, y = two_spirals(600, rng)
    model = MLP(rng)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    sched = optim.CosineLR(opt, total_steps=1500)
    for step in range(1500):
        idx = rng.integers(0, len(x), size=64)
        loss = F.cross_entropy(model(miniran.Tensor(x[idx])), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with miniran.no_grad():
        acc = (model(miniran.Tensor(x)).data.argmax(1) == y).mean()
    assert acc > 0.95


def test_parameters_are_ordered_and_named(rng):
    model = MLP(rng)
    names = [n for n, _ in model.named_parameters()]
    assert names == ["body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias", "head.weight", "head.bias"]
    assert model.num_parameters() == 2 * 32 + 32 + 32 * 32 + 32 + 32 * 2 + 2
    assert all(isinstance(p, Parameter) and p.requires_grad for p in model.parameters())


def test_shared_parameter_counted_once(rng):
    lin = nn.Linear(3, 3, rng=rng)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    assert len(model.parameters()) == 2


def test_train_eval_propagates(rng):
    model = MLP(rng)
    model.eval()
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())


def test_state_dict_round_trips_exactly(tmp_path, rng):
    a, b = MLP(rng), MLP(np.random.default_rng(999))
    a.save(tmp_path / "model.npz")
    b.load(tmp_path / "model.npz")
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb
        np.testing.assert_array_equal(pa, pb)
        assert pa.dtype == pb.dtype
    x = miniran.Tensor(rng.standard_normal((5, 2)).astype(np.float32))
    np.testing.assert_array_equal(a(x).data, b(x).data)


def test_buffers_are_in_state_dict():
    class WithBuffer(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = Parameter(np.ones(2, dtype=np.float32))
            self.register_buffer("running", np.zeros(2, dtype=np.float32))

    m = WithBuffer()
    assert list(m.state_dict()) == ["w", "running"]
    m.load_state_dict({"w": np.full(2, 3.0), "running": np.full(2, 5.0)})
    np.testing.assert_array_equal(m.running, [5, 5])
    assert m.running.dtype == np.float32


def test_load_rejects_wrong_shape_and_names_the_key(tmp_path, rng):
    model = MLP(rng)
    state = {k: np.array(v) for k, v in model.state_dict().items()}
    before = {k: v.copy() for k, v in state.items()}
    bad = dict(state, **{"head.weight": np.zeros((3, 32), np.float32)})
    nn.save_arrays(tmp_path / "bad.npz", bad)
    with pytest.raises(ValueError, match=r"'head\.weight'.*\(3, 32\).*\(2, 32\)"):
        model.load(tmp_path / "bad.npz")
    for k, v in model.state_dict().items():  # nothing was half-loaded
        np.testing.assert_array_equal(v, before[k])


def test_load_rejects_missing_and_unexpected_keys(rng):
    model = MLP(rng)
    state = dict(model.state_dict())
    del state["body.2.bias"]
    with pytest.raises(KeyError, match=r"missing keys: body\.2\.bias"):
        model.load_state_dict(state)
    state = dict(model.state_dict(), extra=np.zeros(1))
    with pytest.raises(KeyError, match="unexpected keys: extra"):
        model.load_state_dict(state)
    model.load_state_dict(state, strict=False)


def test_saved_file_is_plain_npz_without_pickle(tmp_path, rng):
    MLP(rng).save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as f:
        assert "head.weight" in f.files


def test_save_is_atomic_on_failure(tmp_path, monkeypatch, rng):
    path = tmp_path / "m.npz"
    MLP(rng).save(path)
    original = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        MLP(rng).save(path)
    assert path.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]  # no temporary left behind


def test_forward_hook_captures_and_removes(rng):
    model = MLP(rng)
    seen = []
    handle = model.body.register_forward_hook(lambda m, inp, out: seen.append(out.shape))
    model(miniran.Tensor(np.zeros((3, 2), np.float32)))
    handle.remove()
    model(miniran.Tensor(np.zeros((3, 2), np.float32)))
    assert seen == [(3, 32)]


def test_sgd_matches_hand_computed_nesterov_update():
    p = Parameter(np.array([1.0, -2.0]))
    opt = optim.SGD([p], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
    v = np.zeros(2)
    w = p.data.copy()
    for grad in ([0.5, 0.25], [-1.0, 2.0], [0.3, 0.3]):
        p.grad = np.array(grad)
        opt.step()
        g = np.array(grad) + 0.01 * w
        v = g if not v.any() else 0.9 * v + g
        w = w - 0.1 * (g + 0.9 * v)
        np.testing.assert_allclose(p.data, w, rtol=1e-12)


def test_sgd_plain_momentum_and_no_momentum():
    p = Parameter(np.array([1.0]))
    opt = optim.SGD([p], lr=0.5, momentum=0.0, nesterov=False, weight_decay=0.0)
    p.grad = np.array([2.0])
    opt.step()
    np.testing.assert_allclose(p.data, [0.0])
    q = Parameter(np.array([0.0]))
    opt = optim.SGD([q], lr=1.0, momentum=0.5, nesterov=False, weight_decay=0.0)
    for _ in range(2):
        q.grad = np.array([1.0])
        opt.step()
    np.testing.assert_allclose(q.data, [-(1 + 1.5)])


def test_sgd_state_dict_round_trip():
    p = Parameter(np.array([1.0, 2.0]))
    opt = optim.SGD([p], lr=0.1)
    p.grad = np.array([1.0, 1.0])
    opt.step()
    q = Parameter(p.data.copy())
    opt2 = optim.SGD([q], lr=0.5, momentum=0.5)
    opt2.load_state_dict(opt.state_dict())
    p.grad = q.grad = np.array([0.2, -0.1])
    opt.step()
    opt2.step()
    np.testing.assert_array_equal(p.data, q.data)


def test_sgd_rejects_bad_arguments():
    p = [Parameter(np.zeros(1))]
    with pytest.raises(ValueError, match="lr"):
        optim.SGD(p, lr=0)
    with pytest.raises(ValueError, match="momentum"):
        optim.SGD(p, momentum=1.5)
    with pytest.raises(ValueError, match="params is empty"):
        optim.SGD([], lr=0.1)


@pytest.mark.parametrize(
    "kwargs,words",
    [
        (dict(lr=float("nan")), "lr must be a finite number, got nan"),
        (dict(lr=float("inf")), "lr must be a finite number, got inf"),
        (dict(lr=np.float32("nan")), "lr must be a finite number, got nan"),
        (dict(weight_decay=float("nan")), "weight_decay must be a finite number, got nan"),
        (dict(weight_decay=float("inf")), "weight_decay must be a finite number, got inf"),
        (dict(momentum=float("nan")), "momentum must be a finite number, got nan"),
        (dict(momentum=float("inf")), "momentum must be a finite number, got inf"),
        (dict(momentum=float("-inf")), "momentum must be a finite number, got -inf"),
    ],
)
def test_sgd_refuses_non_finite_settings(kwargs, words):
    """Issue 17: nan and inf were accepted for lr and weight_decay (the command line refuses them)."""
    p = [Parameter(np.zeros(1))]
    with pytest.raises(ValueError) as info:
        optim.SGD(p, **kwargs)
    message = str(info.value)
    assert message == "SGD: " + words and "\n" not in message


@pytest.mark.parametrize("name", ["lr", "momentum", "weight_decay"])
def test_sgd_refuses_settings_that_are_not_numbers(name):
    p = [Parameter(np.zeros(1))]
    for value in ("0.1", None, True, [0.1]):
        with pytest.raises(TypeError, match=rf"^SGD: {name} must be a real number, got {re.escape(repr(value))}$"):
            optim.SGD(p, **{name: value})


def test_paper_schedule_divides_by_ten_at_64k_and_96k():
    opt = optim.SGD([Parameter(np.zeros(1))], lr=0.1)
    sched = optim.paper_schedule(opt, 160_000)
    assert sched.milestones == [64_000, 96_000]
    assert sched.lr_at(0) == pytest.approx(0.1)
    assert sched.lr_at(63_999) == pytest.approx(0.1)
    assert sched.lr_at(64_000) == pytest.approx(0.01)
    assert sched.lr_at(96_000) == pytest.approx(0.001)
    for _ in range(5):
        sched.step()
    assert opt.lr == pytest.approx(0.1)


def test_cosine_schedule():
    opt = optim.SGD([Parameter(np.zeros(1))], lr=0.2)
    sched = optim.CosineLR(opt, total_steps=100)
    assert sched.lr_at(0) == pytest.approx(0.2)
    assert sched.lr_at(50) == pytest.approx(0.1)
    assert sched.lr_at(100) == pytest.approx(0.0)
    sched.load_state_dict({"last_step": 50, "base_lr": 0.2})
    assert opt.lr == pytest.approx(0.1)


def test_saved_file_has_the_usual_permissions(tmp_path, rng):
    """The atomic write goes through mkstemp (0600); the final file follows the umask."""
    import os

    umask = os.umask(0o022)
    try:
        MLP(rng).save(tmp_path / "m.npz")
    finally:
        os.umask(umask)
    assert (tmp_path / "m.npz").stat().st_mode & 0o777 == 0o644


# ---------------------------------------------------------------- issue 10: constructors check their arguments


@pytest.mark.parametrize(
    "make,error,words",
    [
        (lambda: miniran.nn.Conv2d(3, 4, 3, stride=0), ValueError, "stride"),
        (lambda: miniran.nn.Conv2d(3, 4, 3, padding=-1), ValueError, "padding"),
        (lambda: miniran.nn.BatchNorm2d(0), ValueError, "num_features"),
        (lambda: miniran.nn.BatchNorm2d(4, momentum=1.5), ValueError, "momentum"),
        (lambda: miniran.nn.BatchNorm2d(4, eps=0), ValueError, "eps"),
        (lambda: miniran.nn.Linear(0, 3), ValueError, "in_features"),
        (lambda: miniran.nn.Linear(3, -1), ValueError, "out_features"),
        (lambda: miniran.nn.MaxPool2d(2.5), TypeError, "kernel_size"),
        (lambda: miniran.nn.AvgPool2d(2, stride=0), ValueError, "stride"),
        (lambda: __import__("miniran.data").data.DataLoader(np.zeros((4, 32, 32, 3), np.uint8), np.zeros(4, np.int64),
                                                        padding=-1), ValueError, "padding"),
    ],
)
def test_constructors_refuse_what_they_cannot_use(make, error, words):
    with pytest.raises(error, match=words):
        make()


def test_pooling_refuses_a_float_kernel_size():
    x = miniran.Tensor(np.zeros((1, 1, 4, 4), np.float32))
    for fn in (F.max_pool2d, F.avg_pool2d):
        with pytest.raises(TypeError, match="kernel_size"):
            fn(x, 2.5)


def test_batch_norm_momentum_none_is_a_cumulative_average():
    """PyTorch's meaning of momentum=None: the running statistics are the plain average of every batch seen."""
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(4, 3, 2, 2)).astype(np.float32) * (i + 1) for i in range(3)]
    bn = miniran.nn.BatchNorm2d(3, momentum=None)
    for b in batches:
        bn(miniran.Tensor(b))
    means = np.mean([b.mean(axis=(0, 2, 3)) for b in batches], axis=0)
    variances = np.mean([b.var(axis=(0, 2, 3), ddof=1) for b in batches], axis=0)
    np.testing.assert_allclose(bn.running_mean, means, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.running_var, variances, rtol=1e-5)
    assert "momentum=None" in repr(bn)
    with pytest.raises(ValueError, match="momentum"):
        F.batch_norm(miniran.Tensor(batches[0]), np.zeros(3, np.float32), np.ones(3, np.float32), momentum=None)
