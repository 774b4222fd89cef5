"""The permutation search against independent oracles: its bin objective equals the optimal mask's
objective (``solve_mask``) of the permuted weight; brute force over every partition of tiny
layers bounds it from above (the optimality gap); it never lowers the kept score."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import nmsparse as nms
from nmsparse.oneshot.permute.search import bin_values, channel_major, search_permutation

PATTERNS = ["2:4", "1:4", "2:4T", "1:4T", "3:4T"]


def _x_reading(w: torch.Tensor, pattern: nms.NMPattern) -> torch.Tensor:
    """X of one layer that reads the C channels (its columns), as search.group_matrix builds it."""
    h = pattern.m if pattern.transposable else 1
    return w.abs().double().reshape(-1, h, w.shape[1])


def _x_writing(w: torch.Tensor, pattern: nms.NMPattern) -> torch.Tensor:
    """X of one layer that writes the C channels (its rows; transposable only)."""
    return w.abs().double().t().reshape(-1, pattern.m, w.shape[0])


def _kept(w: torch.Tensor, pattern) -> float:
    return float(nms.solve_mask(w.double().abs(), pattern, scores=w.double().abs()).objective)


def _weights(seed, rows, cols, ties=False):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g, dtype=torch.float64) * (1 + 5 * torch.rand(1, cols, generator=g) ** 6)
    return w.round() if ties else w


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), pattern=st.sampled_from(PATTERNS), bins=st.integers(1, 4), ties=st.booleans())
def test_bin_objective_is_the_optimal_masks_objective(seed, pattern, bins, ties):
    p = nms.NMPattern.parse(pattern)
    c = bins * p.m
    w = _weights(seed, 2 * p.m, c, ties).float()  # float32, as the search evaluates
    perm = torch.randperm(c, generator=torch.Generator().manual_seed(seed))
    got = float(bin_values(channel_major(_x_reading(w, p)), perm.reshape(bins, p.m), p.n).sum())
    assert got == pytest.approx(_kept(w[:, perm], p), rel=1e-5, abs=1e-6)
    if p.transposable:
        wt = w.t().contiguous()  # a layer writing the channels: rows permuted
        got = float(bin_values(channel_major(_x_writing(wt, p)), perm.reshape(bins, p.m), p.n).sum())
        assert got == pytest.approx(_kept(wt[perm, :], p), rel=1e-5, abs=1e-6)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), pattern=st.sampled_from(PATTERNS), bins=st.integers(1, 6), ties=st.booleans(),
       rounds=st.integers(0, 6))
def test_search_never_lowers_the_kept_score(seed, pattern, bins, ties, rounds):
    p = nms.NMPattern.parse(pattern)
    c = bins * p.m
    w = _weights(seed, 2 * p.m, c, ties)
    res = search_permutation(_x_reading(w, p), p, rounds=rounds, seed=seed)
    assert sorted(res.perm.tolist()) == list(range(c))
    before, after = _kept(w, p), _kept(w[:, res.perm], p)
    assert res.before == pytest.approx(before, rel=1e-5, abs=1e-6)
    assert after >= before * (1 - 1e-6) - 1e-9
    assert res.after == pytest.approx(after, rel=1e-5, abs=1e-6)
    if res.after == res.before:
        assert torch.equal(res.perm, torch.arange(c))  # nothing gained: nothing moves


def _partitions(c: int, m: int):
    """Every partition of range(c) into bins of m, each once (bins ordered by their first channel)."""
    def rec(left):
        if not left:
            yield []
            return
        first, rest = left[0], left[1:]
        for others in itertools.combinations(rest, m - 1):
            remaining = [x for x in rest if x not in others]
            for tail in rec(remaining):
                yield [(first, *others)] + tail
    yield from rec(list(range(c)))


@pytest.mark.parametrize("pattern,channels", [("2:4", 8), ("2:4T", 8), ("1:4T", 8), ("2:4", 12)])
def test_optimality_gap_against_brute_force(pattern, channels):
    p = nms.NMPattern.parse(pattern)
    gaps = []
    for seed in range(6):
        w = _weights(seed, 8, channels)
        best = max(_kept(w[:, torch.tensor([c for b in part for c in b])], p) for part in _partitions(channels, p.m))
        res = search_permutation(_x_reading(w, p), p, rounds=30, seed=seed)
        got = _kept(w[:, res.perm], p)
        assert got <= best * (1 + 1e-9)  # brute force is an upper bound
        assert got >= _kept(w, p) * (1 - 1e-9)
        gaps.append((best - got) / (best - _kept(w, p)) if best > _kept(w, p) else 0.0)
    # The share of the brute-force gain the search misses, averaged over the seeds (measured: 0 to 5 %;
    # single exchanges can stop in a local optimum, e.g. 30 % of the gain missed on one 2:4 seed).
    assert sum(gaps) / len(gaps) <= 0.1, gaps


def test_nothing_to_gain_keeps_the_identity():
    p = nms.NMPattern.parse("2:4T")
    res = search_permutation(torch.ones(6, 4, 16, dtype=torch.float64), p, rounds=5, seed=0)
    assert torch.equal(res.perm, torch.arange(16)) and res.after == res.before


def test_large_m_samples_the_swaps_and_still_gains():
    p = nms.NMPattern.parse("8:16T")
    w = _weights(0, 32, 64)
    res = search_permutation(_x_reading(w, p), p, rounds=4, seed=0)
    assert _kept(w[:, res.perm], p) >= _kept(w, p)


@pytest.mark.parametrize("pattern", ["2:4", "2:4T"])
def test_sampled_search_is_accepted_only_if_it_gains_on_every_slice(pattern):
    p = nms.NMPattern.parse(pattern)
    w = _weights(3, 64, 32)
    res = search_permutation(_x_reading(w, p), p, rounds=10, seed=0, max_slices=3)
    assert res.before == pytest.approx(_kept(w, p), rel=1e-5)
    assert _kept(w[:, res.perm], p) >= _kept(w, p) * (1 - 1e-6)
