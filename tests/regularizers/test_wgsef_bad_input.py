"""Bad input to the WGSEF functions gets a library error that names the rule and the value."""

from __future__ import annotations

import pytest
import torch

from nmsparse.errors import MethodError, NMSparseError, ScoreError, ShapeError
from nmsparse.regularizers.envelope import k_support_norm, wgsef, wgsef_project, wgsef_prox

x = torch.tensor([1.0, -2.0, 3.0, 0.5])


@pytest.mark.parametrize("fn", [lambda **kw: wgsef(x, **kw), lambda **kw: wgsef_prox(x, step=0.1, **kw),
                                lambda **kw: wgsef_project(x, **kw)])
@pytest.mark.parametrize("k, groups, match", [
    (0, None, r"k must be in \[1, 4\].*got 0"),
    (5, None, r"k must be in \[1, 4\].*got 5"),
    (3, [[0, 1], [2, 3]], r"k must be in \[1, 2\].*got 3"),
    (1.5, None, r"k must be an int"),
    (True, None, r"k must be an int"),
    (1, [[0, 1], [1, 2, 3]], r"disjoint.*entry 1"),
    (1, [[0, 1], [2]], r"cover every entry.*entry 3"),
    (1, [[0, 1], [], [2, 3]], r"group 1 is empty"),
    (1, [[0, 4], [1, 2, 3]], r"out of range"),
    (1, [[0, 0, 1], [2, 3]], r"lists an index twice"),
    (1, torch.tensor([0, 0, 2, 2]), r"group 1 is empty"),
    (1, torch.tensor([0, 0, 1]), r"3 labels but x has 4"),
    (1, torch.tensor([0.0, 0.0, 1.0, 1.0]), r"integer tensor"),
    (1, torch.tensor([-1, 0, 1, 1]), r">= 0"),
])
def test_bad_k_and_groups(fn, k, groups, match):
    with pytest.raises(ShapeError, match=match):
        fn(k=k, groups=groups)


def test_bad_weights_x_method_step():
    with pytest.raises(ScoreError, match="positive and finite, got -1"):
        wgsef(x, 2, weights=[1.0, -1.0, 1.0, 1.0])
    with pytest.raises(ScoreError, match="positive and finite, got 0"):
        wgsef_prox(x, 2, 0.1, groups=[[0, 1], [2, 3]], weights=[1.0, 0.0])
    with pytest.raises(ShapeError, match="3 entries but there are 4 groups"):
        wgsef(x, 2, weights=[1.0, 1.0, 1.0])
    with pytest.raises(ScoreError, match="NaN or Inf"):
        wgsef_prox(torch.tensor([1.0, float("nan")]), 1, 0.1)
    with pytest.raises(ScoreError, match="floating-point"):
        wgsef(torch.tensor([1, 2]), 1)
    with pytest.raises(ShapeError, match="empty"):
        wgsef(torch.tensor([]), 1)
    with pytest.raises(MethodError, match="known methods are sort, select"):
        wgsef_prox(x, 1, 0.1, method="bisect")
    with pytest.raises(ValueError, match="step must be a finite number >= 0, got -0.5"):
        wgsef_prox(x, 1, -0.5)
    with pytest.raises(ShapeError):
        k_support_norm(x, 0)
    assert issubclass(ShapeError, NMSparseError) and issubclass(ShapeError, ValueError)
