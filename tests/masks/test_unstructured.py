import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import nmsparse as nms
from nmsparse.errors import ScoreError


@settings(max_examples=60, deadline=None)
@given(
    vals=st.lists(st.integers(-3, 3), min_size=1, max_size=10),
    density=st.floats(0, 1),
)
def test_topk_against_brute_force_with_ties(vals, density):
    w = torch.tensor(vals, dtype=torch.float32)
    mask = nms.unstructured_mask(w, density)
    k = int(np.floor(density * len(vals) + 0.5))
    assert int(mask.sum()) == k
    scores = [abs(v) for v in vals]
    # brute force: best sum, ties to the lexicographically smallest index set
    best = max(itertools.combinations(range(len(vals)), k), key=lambda c: (sum(scores[i] for i in c), [-i for i in c]))
    assert set(torch.nonzero(mask).flatten().tolist()) == set(best)


def test_shape_and_rounding():
    w = torch.randn(3, 5, 2)
    mask = nms.unstructured_mask(w, 0.25)
    assert mask.shape == w.shape and int(mask.sum()) == 8  # 0.25 * 30 = 7.5 -> 8 (round half up)


@pytest.mark.parametrize("density", [-0.1, 1.5, float("nan"), "0.5", None, True])
def test_bad_density(density):
    with pytest.raises(ScoreError, match="density"):
        nms.unstructured_mask(torch.randn(4), density)
