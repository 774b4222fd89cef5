"""Row-wise N:M: top-n per group against brute force, with the tie rule and dtype/scale/sign properties."""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import nmsparse as nms
from nmsparse.masks.rowwise import topn_matrix, topn_matrix_torch
from nmsparse.testing import brute_force_rowwise


def reference_group_mask(group, n):
    """Obviously-correct rule: best subset by score; among equal-score subsets, lexicographically
    smallest index set (= ties to the lower index)."""
    best = None
    for combo in itertools.combinations(range(len(group)), n):
        key = (sum(group[i] for i in combo), [-i for i in combo])
        if best is None or key > best[0]:
            best = (key, combo)
    mask = [False] * len(group)
    for i in best[1]:
        mask[i] = True
    return mask


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 8])
def test_topn_matches_brute_force_with_ties(m):
    rng = np.random.default_rng(m)
    for n in range(1, m + 1):
        # small integer scores force many ties
        scores = rng.integers(0, 3, size=(40, 3 * m)).astype(np.float32)
        mask = nms.find_mask(torch.from_numpy(scores), f"{n}:{m}")
        for r in range(scores.shape[0]):
            for g in range(3):
                grp = scores[r, g * m : (g + 1) * m].tolist()
                assert mask[r, g * m : (g + 1) * m].tolist() == reference_group_mask(grp, n)


@pytest.mark.parametrize("m, n", [(16, 3), (32, 16), (64, 5), (128, 100)])
def test_large_groups_use_selection_and_agree_with_torch_sort(m, n):
    rng = np.random.default_rng(0)
    scores = torch.from_numpy(rng.integers(0, 4, size=(17, 2 * m)).astype(np.float64))
    kernel = topn_matrix(scores, n, m)
    assert torch.equal(kernel, topn_matrix_torch(scores, n, m))
    assert (kernel.reshape(17, 2, m).sum(-1) == n).all()


@settings(max_examples=80, deadline=None)
@given(
    m=st.integers(1, 9),
    data=st.data(),
    rows=st.integers(1, 5),
    groups=st.integers(1, 4),
)
def test_objective_is_brute_force_optimum(m, data, rows, groups):
    n = data.draw(st.integers(1, m))
    vals = data.draw(st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=rows * groups * m, max_size=rows * groups * m))
    w = torch.tensor(vals, dtype=torch.float32).reshape(rows, groups * m)
    res = nms.solve_mask(w, f"{n}:{m}")
    a = w.abs().double().numpy()
    expected = sum(brute_force_rowwise(a[r, g * m : (g + 1) * m], n) for r in range(rows) for g in range(groups))
    assert res.optimal and res.method == "topn"
    assert res.objective == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert (res.mask.reshape(rows, groups, m).sum(-1) == n).all()
    nms.check_mask(res.mask, f"{n}:{m}", exact=True)


def _stable_topn_reference(w, n, m):
    """The stated rule, independently: per group of m along the last dim, the n largest |w|,
    ties to the lower index."""
    a = w.abs().tolist()
    out = []
    for row in a:
        keep = [False] * len(row)
        for c0 in range(0, len(row), m):
            order = sorted(range(c0, c0 + m), key=lambda i: (-row[i], i))
            for i in order[:n]:
                keep[i] = True
        out.append(keep)
    return torch.tensor(out)


@settings(max_examples=40, deadline=None)
@given(scale=st.floats(1e-20, 1e20), exponent=st.integers(-60, 60), seed=st.integers(0, 2**31 - 1))
def test_scale_and_sign_invariance_and_determinism(scale, exponent, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, 16, generator=g, dtype=torch.float64)
    base = nms.find_mask(w, "2:8")
    assert torch.equal(base, _stable_topn_reference(w, 2, 8))
    # A power of two scales exactly, so the very same mask comes back (ties included).
    assert torch.equal(nms.find_mask(w * 2.0**exponent, "2:8"), base)
    # Any other scale may round two scores into a tie, which then goes to the lower index: the
    # stated rule applied to the scaled values, not the unscaled mask, is the oracle.
    scaled = w * scale
    assert torch.equal(nms.find_mask(scaled, "2:8"), _stable_topn_reference(scaled, 2, 8))
    assert torch.equal(nms.find_mask(-w, "2:8"), base)
    assert torch.equal(nms.find_mask(w, "2:8"), base)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_low_precision_dtypes_match_their_fp32_values(dtype):
    w = torch.randn(32, 64).to(dtype)
    mask = nms.find_mask(w, "2:4")
    assert mask.dtype == torch.bool and mask.shape == w.shape
    assert torch.equal(mask, nms.find_mask(w.float(), "2:4"))


def test_conv_groups_run_along_input_channels_per_position():
    w = torch.randn(8, 8, 3, 3)
    mask = nms.find_mask(w, "2:4")
    per_position = mask.permute(0, 2, 3, 1).reshape(8, 3, 3, 2, 4).sum(-1)
    assert (per_position == 2).all()


def test_ragged_partial_group_keeps_top_entries_up_to_n():
    w = torch.tensor([[5.0, 1.0, 4.0, 3.0, 9.0, 0.5]])  # groups: [5,1,4,3], partial [9, 0.5]
    assert nms.find_mask(w, "2:4", pad=True).tolist() == [[True, False, True, False, True, True]]
    assert nms.find_mask(w, "1:4", pad=True).tolist() == [[True, False, False, False, True, False]]
    conv = torch.randn(4, 3, 2, 2)  # in = 3 < m = 4: each position keeps 2 of its 3 channels
    mask = nms.find_mask(conv, "2:4", pad=True)
    assert (mask.sum(1) == 2).all()


def test_dense_pattern_keeps_everything():
    w = torch.randn(4, 8)
    assert nms.find_mask(w, "4:4").all()


def test_custom_scores_choose_the_mask():
    w = torch.ones(1, 4)
    scores = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    assert nms.find_mask(w, "2:4", scores=scores).tolist() == [[False, True, False, True]]
    res = nms.solve_mask(w, "2:4", scores=scores)
    assert res.objective == 5.0 and res.kept_fraction == pytest.approx(5 / 6)


def test_exact_is_an_alias_of_topn_for_rowwise():
    w = torch.randn(4, 8)
    res = nms.solve_mask(w, "2:4", method="exact")
    assert res.method == "topn" and torch.equal(res.mask, nms.find_mask(w, "2:4"))
