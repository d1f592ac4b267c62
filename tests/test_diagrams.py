"""miniran.diagrams: each drawing runs, returns a Figure with the expected labelled boxes,
and the graph drawer finds the nodes autograd recorded.

Boxes are ``FancyBboxPatch`` with the gid ``diagrams.BOX_GID``; their labels
are texts with the gid ``diagrams.LABEL_GID``.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import miniran.functional as F  # noqa: E402
from miniran import Tensor, diagrams, models  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def boxes(fig):
    return [p for ax in fig.axes for p in ax.patches if p.get_gid() == diagrams.BOX_GID]


def labels(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts if t.get_gid() == diagrams.LABEL_GID]


@pytest.mark.parametrize("pools", [1, 2, 3])
def test_attention_module_boxes_and_p_t_r(pools):
    fig = diagrams.attention_module(p=1, t=2, r=1, pools=pools)
    assert isinstance(fig, matplotlib.figure.Figure)
    # input, pre, trunk, fusion, post, output; `pools` down boxes, pools - 1 up and skip boxes, the head
    assert len(boxes(fig)) == 6 + pools + 2 * (pools - 1) + 1
    text = "\n".join(labels(fig))
    assert "p = 1 units" in text and "t = 2 residual units" in text and "2r = 2 units" in text
    assert "(1 + M) * T" in text
    legend = "\n".join(t.get_text() for t in fig.axes[0].texts)
    assert "p: residual units before the split" in legend and "r: residual units between adjacent" in legend


def test_attention_module_reads_the_module_config():
    module = models.AttentionModule(16, pools=2, p=2, t=3, r=1, residual=False, rng=np.random.default_rng(0))
    text = "\n".join(labels(diagrams.attention_module(module)))
    assert "p = 2 units" in text and "t = 3 residual units" in text and "M * T" in text
    with pytest.raises(ValueError):
        diagrams.attention_module(models.AttentionModule(16, pools=2, mask="local_conv"))


def test_bottleneck_identity_and_projection():
    ident = diagrams.bottleneck_unit(in_channels=64, out_channels=64)
    proj = diagrams.bottleneck_unit(models.PreActBottleneck(64, 128, stride=2))
    # x, BN-ReLU, conv, BN-ReLU, conv, BN-ReLU, conv, +, output, shortcut
    assert len(boxes(ident)) == len(boxes(proj)) == 10
    assert any("identity" in s for s in labels(ident))
    assert any("projection" in s and "64 -> 128" in s for s in labels(proj))
    assert any("conv 3x3, stride 2: 32 -> 32" == s for s in labels(proj))


def test_graph_nodes_of_a_known_expression():
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((4, 3)))
    w = Tensor(rng.standard_normal((3, 2)), requires_grad=True)
    b = Tensor(np.zeros(2), requires_grad=True)
    h = (x @ w + b).relu()
    loss = (h * h).mean()
    tensors, functions, edges = diagrams.graph_nodes(loss)
    assert [type(f).__name__ for f in functions] == ["Mean", "Mul", "ReLUFunction", "Add", "MatMul"]
    assert len(tensors) == 8                     # loss, h*h, h, x@w+b, x@w, x, w, b
    assert {id(t) for t in (x, w, b, h, loss)} <= {id(t) for t in tensors}
    mul = functions[1]
    assert sum(1 for src, dst in edges if src is h and dst is mul) == 2     # h * h: two input slots
    fig = diagrams.computation_graph(loss, names={"x": x, "w": w, "b": b, "loss": loss})
    assert len(boxes(fig)) == 8 + 5
    text = labels(fig)
    assert "ReLU" in text and "MatMul" in text and "w\n3x2" in text and "loss\nscalar" in text
    loss.backward()
    with pytest.raises(RuntimeError):
        diagrams.graph_nodes(loss)               # backward freed the graph


def test_batch_norm_staged_equals_batch_norm_and_its_graph():
    rng = np.random.default_rng(1)
    x = Tensor(rng.standard_normal((5, 3)) * 2 + 1, requires_grad=True)
    gamma = Tensor(rng.uniform(0.5, 1.5, (1, 3)), requires_grad=True)
    beta = Tensor(rng.standard_normal((1, 3)), requires_grad=True)
    y, named = diagrams.batch_norm_staged(x, gamma, beta)
    ref = F.batch_norm(Tensor(x.data), weight=Tensor(gamma.data[0]), bias=Tensor(beta.data[0]), eps=1e-5)
    np.testing.assert_allclose(y.data, ref.data, rtol=1e-10, atol=1e-10)
    tensors, functions, _ = diagrams.graph_nodes(y)
    names = {type(f).__name__ for f in functions}
    assert {"Mean", "Sub", "Mul", "ScalarOp", "Pow", "Add"} <= names
    assert {id(t) for t in named.values()} <= {id(t) for t in tensors}
    fig = diagrams.batch_norm_graph()
    text = "\n".join(labels(fig))
    for name in ("mu", "xc", "var", "inv_std", "xhat", "gamma", "beta"):
        assert name in text


def test_im2col_window_column_is_the_window():
    fig = diagrams.im2col_window(position=(1, 2))
    assert len(fig.axes) == 2
    left, right = (ax for ax in fig.axes)
    assert len([t for t in left.texts if t.get_gid() == diagrams.LABEL_GID]) == 6 * 6   # 4x4 + padding 1
    assert len([t for t in right.texts if t.get_gid() == diagrams.LABEL_GID]) == 9 * 16
    # the highlighted column holds the window of output (1, 2): rows 0..2, columns 1..3 of the input
    col = F.im2col(np.arange(16.0).reshape(1, 1, 4, 4), 3, padding=1).reshape(9, 16)
    np.testing.assert_array_equal(col[:, 6], [1, 2, 3, 5, 6, 7, 9, 10, 11])
    with pytest.raises(ValueError):
        diagrams.im2col_window(position=(4, 0))


# --------------------------------------------------------------------------- issue 17: one clear line per bad argument


def _one_line(info, *words):
    message = str(info.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, (word, message)


@pytest.mark.parametrize("draw", [diagrams.computation_graph, diagrams.graph_nodes])
def test_graph_needs_tensors(draw):
    name = draw.__name__
    with pytest.raises(ValueError) as info:
        draw()
    _one_line(info, f"{name}:", "at least one Tensor")
    for root in (np.ones(3), 1.0, [Tensor(np.ones(2))]):
        with pytest.raises(TypeError) as info:
            draw(Tensor(np.ones(2)), root)
        _one_line(info, f"{name}:", "root 1", "miniran Tensor", type(root).__name__)
    with pytest.raises(TypeError) as info:
        diagrams.computation_graph(Tensor(np.ones(2)), names={"x": np.ones(2)})
    _one_line(info, "computation_graph:", "names['x']", "Tensor", "ndarray")


@pytest.mark.parametrize(
    "kwargs,error,words",
    [
        (dict(kernel_size=0), ValueError, ["kernel_size", ">= 1", "got 0"]),
        (dict(kernel_size=-1), ValueError, ["kernel_size", ">= 1", "got -1"]),
        (dict(kernel_size=1.5), TypeError, ["kernel_size", "int", "got 1.5"]),
        (dict(kernel_size=(3, 3)), TypeError, ["kernel_size", "int", "got (3, 3)"]),
        (dict(kernel_size=9), ValueError, ["kernel_size 9", "larger than the padded input", "4x4", "padding 1"]),
        (dict(stride=0), ValueError, ["stride", ">= 1", "got 0"]),
        (dict(padding=-1), ValueError, ["padding", ">= 0", "got -1"]),
        (dict(x=np.zeros((1, 4, 4))), ValueError, ["x", "2-D (H, W)", "(1, 4, 4)"]),
        (dict(x=np.zeros(4)), ValueError, ["x", "2-D (H, W)", "(4,)"]),
        (dict(x=np.zeros((1, 1, 4, 4))), ValueError, ["x", "2-D (H, W)", "(1, 1, 4, 4)"]),
        (dict(x=np.zeros((0, 4))), ValueError, ["x", "(0, 4)"]),
        (dict(position=(1, 2, 3)), ValueError, ["position", "(i, j)", "(1, 2, 3)"]),
        (dict(position=(-1, 0)), ValueError, ["position (-1, 0)", "outside the 4x4 output"]),
    ],
)
def test_im2col_window_refuses_bad_arguments(kwargs, error, words):
    """kernel_size=0 drew a figure with zero taps; a 3-D input gave an unpacking error."""
    with pytest.raises(error) as info:
        diagrams.im2col_window(**kwargs)
    _one_line(info, "im2col_window:", *words)
    assert not plt.get_fignums()  # nothing half-drawn left open


def test_im2col_window_takes_a_tensor_image():
    fig = diagrams.im2col_window(Tensor(np.arange(9.0).reshape(3, 3)), kernel_size=2, padding=0)
    assert len([t for t in fig.axes[1].texts if t.get_gid() == diagrams.LABEL_GID]) == 4 * 4


@pytest.mark.parametrize(
    "kwargs,error,words",
    [
        (dict(pools=-1), ValueError, ["pools", ">= 1", "got -1"]),
        (dict(pools=0), ValueError, ["pools", ">= 1", "got 0"]),
        (dict(pools=1.5), TypeError, ["pools", "int", "got 1.5"]),
        (dict(p=-1), ValueError, ["p must be", ">= 0", "got -1"]),
        (dict(t=-2), ValueError, ["t must be", ">= 0", "got -2"]),
        (dict(r=-1), ValueError, ["r must be", ">= 0", "got -1"]),
        (dict(size=0), ValueError, ["size", ">= 1", "got 0"]),
        (dict(module=3), TypeError, ["module", "AttentionModule", "int"]),
    ],
)
def test_attention_module_refuses_bad_arguments(kwargs, error, words):
    """pools=-1 gave an IndexError from the drawing code."""
    with pytest.raises(error) as info:
        diagrams.attention_module(**kwargs)
    _one_line(info, "attention_module:", *words)
    assert not plt.get_fignums()


@pytest.mark.parametrize(
    "kwargs,error,words",
    [
        (dict(in_channels=0), ValueError, ["in_channels", ">= 1", "got 0"]),
        (dict(out_channels=6), ValueError, ["out_channels", "multiple of 4", "got 6"]),
        (dict(stride=0), ValueError, ["stride", ">= 1", "got 0"]),
        (dict(unit=models.AttentionModule(16, pools=1)), TypeError, ["unit", "PreActBottleneck", "AttentionModule"]),
    ],
)
def test_bottleneck_unit_refuses_bad_arguments(kwargs, error, words):
    with pytest.raises(error) as info:
        diagrams.bottleneck_unit(**kwargs)
    _one_line(info, "bottleneck_unit:", *words)
    assert not plt.get_fignums()
