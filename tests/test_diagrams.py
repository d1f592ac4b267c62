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
