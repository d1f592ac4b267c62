"""``tools/measure_notebook13.py``: the code behind the numbers of answers.md section 13.

The tool runs notebook 13's own ``Top``, ``features``, ``accuracy`` and
``train_top``, read out of the notebook file; these tests check that it still
finds them, that its ``TopFrom`` with two stages frozen is the notebook's top
(the same parameters, the same logits), and that its other splits have the
shapes exercise 2 names. The measurement itself (minutes) is not run here.
"""

from __future__ import annotations


import numpy as np

import miniran
from miniran import Tensor, models
from conftest import load_tool


def _tool():
    return load_tool("measure_notebook13")


def _namespace():
    return _tool().notebook_namespace(np.zeros((3, 32, 32), np.float32), np.ones(3, np.float32))


def test_the_notebook_definitions_are_found_and_nothing_else_runs():
    ns = _tool().notebook_definitions(_namespace())
    assert all(callable(ns[name]) for name in ("Top", "features", "accuracy", "train_top"))
    assert "history" not in ns and "shipped" not in ns and "top" not in ns  # statements were not executed


def test_top_from_two_stages_is_the_notebook_top():
    tool = _tool()
    ns = tool.notebook_definitions(_namespace())
    net = models.attention56(seed=1).eval()
    theirs, ours = ns["Top"](net), tool.TopFrom(net, 2)
    assert sorted(p.data.size for p in theirs.parameters()) == sorted(p.data.size for p in ours.parameters())
    h = np.random.default_rng(0).standard_normal((2, 128, 16, 16)).astype(np.float32)
    with miniran.no_grad():
        np.testing.assert_array_equal(theirs(Tensor(h)).data, ours(Tensor(h)).data)


def test_the_other_splits_take_the_features_exercise_2_names():
    tool = _tool()
    net = models.attention56(seed=0).eval()
    rng = np.random.default_rng(0)
    with miniran.no_grad():
        h1 = tool.frozen_bottom(net, 1)(Tensor(rng.standard_normal((2, 3, 32, 32)).astype(np.float32))).data
        assert h1.shape == (2, 64, 32, 32)
        assert tool.TopFrom(models.attention56(seed=1), 1).eval()(Tensor(h1)).data.shape == (2, 10)
        h3 = tool.frozen_bottom(net, 3)(Tensor(rng.standard_normal((2, 3, 32, 32)).astype(np.float32))).data
        assert tool.TopFrom(models.attention56(seed=1), 3).eval()(Tensor(h3)).data.shape == (2, 10)
    assert not any(p.requires_grad for p in tool.frozen_bottom(net, 2).parameters())
