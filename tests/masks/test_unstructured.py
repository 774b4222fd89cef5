import itertools
import math
from fractions import Fraction

import pytest
import torch
from hypothesis import example, given, settings, strategies as st

import nmsparse as nms
from nmsparse.errors import ScoreError


def _stated_kept_count(total, density):
    # The library's stated rule (unstructured_mask, diversity.kept_count): k = floor(density * total
    # + 1/2) in exact arithmetic on the float's exact binary value. Float arithmetic is not that
    # rule: 0.3 * 5 + 0.5 rounds to 2.0 in floats, but 0.3 is 0.29999999999999998889... so k = 1.
    return math.floor(Fraction(density) * total + Fraction(1, 2))


def test_stated_rule_is_exact_not_float():
    assert _stated_kept_count(5, 0.3) == 1 and math.floor(0.3 * 5 + 0.5) == 2
    assert _stated_kept_count(30, 0.25) == 8  # 7.5 exactly: half rounds up


@settings(max_examples=60, deadline=None)
@given(
    vals=st.lists(st.integers(-3, 3), min_size=1, max_size=10),
    density=st.floats(0, 1),
)
@example(vals=[1, 2, 3, 1, 2], density=0.3)  # the fresh-clone failure of a float oracle
@example(vals=[1, -1, 1, 0], density=0.625)  # an exact half (2.5): rounds up to 3
def test_topk_against_brute_force_with_ties(vals, density):
    w = torch.tensor(vals, dtype=torch.float32)
    mask = nms.unstructured_mask(w, density)
    k = _stated_kept_count(len(vals), density)
    assert int(mask.sum()) == k
    scores = [abs(v) for v in vals]
    # brute force: best sum, ties to the lexicographically smallest index set
    best = max(itertools.combinations(range(len(vals)), k), key=lambda c: (sum(scores[i] for i in c), [-i for i in c]))
    assert set(torch.nonzero(mask).flatten().tolist()) == set(best)


def test_shape_and_rounding():
    w = torch.randn(3, 5, 2)
    mask = nms.unstructured_mask(w, 0.25)
    assert mask.shape == w.shape and int(mask.sum()) == 8  # 0.25 * 30 = 7.5 -> 8 (round half up)


@pytest.mark.parametrize("density", [-0.1, 1.5, float("nan"), "150%", "half", None, True])
def test_bad_density(density):
    with pytest.raises(nms.PatternError, match="density"):
        nms.unstructured_mask(torch.randn(4), density)
