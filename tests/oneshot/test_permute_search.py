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
from nmsparse.oneshot.permute.swaps import column_tops, rowwise_gains, tile_proxy_gains

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


def test_large_m_ranks_every_exchange_and_still_gains():
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


# -- the exchange evaluation of nmsparse.oneshot.permute.swaps, against recomputation from scratch --

SWAP_PATTERNS = ["2:4", "1:4", "3:4", "4:4", "4:8", "2:4T", "1:4T", "3:4T", "4:8T"]


def _exchange(bins_a, bins_b, p, i, j):
    a, b = bins_a.clone(), bins_b.clone()
    a[p, i], b[p, j] = bins_b[p, j], bins_a[p, i]
    return a, b


def _relaxed(xc: torch.Tensor, bins: torch.Tensor, n: int) -> torch.Tensor:
    """Per bin, Σ over its tiles of min(rows' top-n sums, columns' top-n sums), from scratch."""
    g = xc[bins].double()  # (B, m channels, Q, h rows)
    rows = g.topk(n, dim=1).values.sum(dim=1).sum(dim=2)  # each row keeps n of the m channels
    cols = g.topk(min(n, g.shape[3]), dim=3).values.sum(dim=3).sum(dim=1)  # each channel keeps n of h rows
    return torch.minimum(rows, cols).sum(dim=1)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), pattern=st.sampled_from(SWAP_PATTERNS), pairs=st.integers(1, 3),
       ties=st.booleans())
def test_exchange_gains_equal_recomputation(seed, pattern, pairs, ties):
    """Row-wise: the closed-form gain of every exchange is the exact one (bin_values recomputed);
    transposable: the ranking equals the relaxation bound recomputed from scratch, and that bound
    is never below the exact tile optimum."""
    p = nms.NMPattern.parse(pattern)
    h = p.m if p.transposable else 1
    g = torch.Generator().manual_seed(seed)
    c = 2 * pairs * p.m
    x = torch.rand(3, h, c, generator=g, dtype=torch.float64) * (1 + 4 * torch.rand(c, generator=g, dtype=torch.float64) ** 6)
    xc = channel_major(x.round(decimals=1) if ties else x)
    order = torch.randperm(c, generator=g).reshape(2 * pairs, p.m)
    bins_a, bins_b = order[:pairs], order[pairs:]
    if p.transposable:
        got = tile_proxy_gains(xc, column_tops(xc, p.n), bins_a, bins_b, p.n)
        base = _relaxed(xc, bins_a, p.n) + _relaxed(xc, bins_b, p.n)
    else:
        got = rowwise_gains(xc, bins_a, bins_b, p.n)
        base = bin_values(xc, bins_a, p.n) + bin_values(xc, bins_b, p.n)
    for q in range(pairs):
        for i in range(p.m):
            for j in range(p.m):
                a, b = _exchange(bins_a, bins_b, q, i, j)
                if p.transposable:
                    want = _relaxed(xc, a, p.n)[q] + _relaxed(xc, b, p.n)[q] - base[q]
                    bound = _relaxed(xc, a, p.n)[q]
                    assert float(bound) >= float(bin_values(xc, a[q:q + 1], p.n)[0]) - 1e-4
                else:
                    want = bin_values(xc, a, p.n)[q] + bin_values(xc, b, p.n)[q] - base[q]
                assert float(got[q, i, j]) == pytest.approx(float(want), abs=1e-4), (q, i, j)
