"""The permutation search: assign a group's C channels to C/m bins of m so that the optimal mask
keeps the most score.

Why bins. Positions ``[a + b·m, a + (b+1)·m)`` of a member's permuted axis form the b-th group of
m columns (row-wise N:M) or the b-th column strip of m×m tiles (transposable N:M). What the
optimal mask keeps in a group or tile does not depend on the order inside it, so a permutation
matters only through which channels share a bin. A row-wise pattern groups along inputs, so only
the layers *reading* the channels count; a transposable one also makes the rows of a tile
compete, so the layers *writing* them count too (their weight transposed: a tile's optimum is the
same for the tile and its transpose).

Every scored member becomes a stack of ``h × C`` slices (``h = 1`` row-wise: one matrix row;
``h = m`` transposable: m rows of the padded matrix), concatenated into ``X`` of shape
``(Q, h, C)``. The value of a bin is ``Σ_q kept(X[q][:, bin])``: the top-n of each row's m
scores (row-wise), or the exact optimum of each m×m tile
(:func:`nmsparse.masks._exact_kernels.solve_tiles_exact`).

Search (after Pool & Yu, NeurIPS 2021, channel swaps): start from the better of the identity and a
balanced allocation (channels by total score, dealt to the bins in snake order so that large
channels do not share a bin), then rounds of swaps: each round pairs the bins by a seeded random
matching, evaluates every exchange of one channel between the two bins of each pair (all ``m²``
of them, all pairs in one batch) and applies each pair's best exchange if it gains. Row-wise, the
gain of every exchange is exact in closed form (:mod:`.swaps`); transposable, the exchanges are
ranked by the change of the tiles' relaxation bound ``min(rows, cols)`` and only the
:data:`EXACT_CANDIDATES` best of each pair are re-solved exactly (the two bins of the pair, exact
m×m tile solves), which decides. Stops after ``rounds`` rounds, ``patience`` rounds without gain,
or at a deadline. The value never decreases, so the result is never worse than the identity.

Solving every exchange exactly (the first version) took 9-16× longer at 4:8T for about 2 % more of the
gain on random scores; ranking by the bound and solving 8 keeps most of it (``EXACT_CANDIDATES``
4 / 8 / 16 kept 95 / 98 / 100 % of the all-exact gain at 4:8T in a trial on outlier-channel
scores).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch

from ...masks._exact_kernels import solve_tiles_exact
from ...masks._threads import kernel_threads
from ...pattern import NMPattern
from ..hessian import MatrixView
from .structure import Group
from .swaps import column_tops, rowwise_gains, tile_proxy_gains

__all__ = ["SearchResult", "group_matrix", "search_permutation", "bin_values"]

_CHUNK = 1 << 22  # score entries gathered per evaluation call (32 MiB in float64)
EXACT_CANDIDATES = 8  # transposable: exchanges per bin pair and round solved exactly (the proxy's best)
MAX_SLICES = 8192  # slices of a group the search evaluates (a round costs about C·m²·slices·h/2 reads)


@dataclass
class SearchResult:
    perm: torch.Tensor  # new position p holds old channel perm[p]
    before: float  # the group's kept score in the current order
    after: float
    rounds: int
    start: str  # "identity" or "balanced"


def group_matrix(group: Group, scores: Dict[str, torch.Tensor], pattern: NMPattern,
                 scored: Optional[set] = None) -> Optional[torch.Tensor]:
    """``X (Q, h, C)`` of the group's scored members (None if no member's mask depends on the order)."""
    m, tiles = pattern.m, pattern.transposable
    c = group.channels
    parts: List[torch.Tensor] = []
    for mb in group.members:
        if not mb.layer or mb.module_name not in scores or (scored is not None and mb.module_name not in scored):
            continue
        if mb.role == "out" and not tiles:
            continue  # a row-wise mask groups along inputs: the row order does not matter
        view = MatrixView(mb.module, m, tiles)
        mat = view.to_matrix(scores[mb.module_name], fill=0.0)  # padded (rows, K·in_pad)
        if mb.role == "in":
            k = mat.shape[1] // view.in_pad
            cols = mat.reshape(mat.shape[0], k, view.in_pad)[:, :, mb.start:mb.start + c]  # (rows, K, C)
            slab = cols.permute(1, 0, 2)  # (K, rows, C)
            part = slab.reshape(-1, m, c) if tiles else slab.reshape(-1, 1, c)
        else:
            slab = mat[mb.start:mb.start + c, :].t()  # (cols, C): the tile rows become columns
            part = slab.reshape(-1, m, c)
        parts.append(part)
    if not parts:
        return None
    return torch.cat(parts, 0)


def bin_values(x: torch.Tensor, bins: torch.Tensor, n: int) -> torch.Tensor:
    """Kept score of each bin: ``bins (..., m)`` channel indices -> values ``(...)`` (float64).
    ``x`` is channel-major, ``(C, Q, h)`` (see :func:`channel_major`)."""
    shape = bins.shape[:-1]
    flat = bins.reshape(-1, bins.shape[-1])
    _, q, h = x.shape
    m = flat.shape[1]
    per = max(1, _CHUNK // max(1, q * h * m))
    out = []
    for s in range(0, flat.shape[0], per):
        idx = flat[s:s + per]
        g = x[idx.reshape(-1)].reshape(idx.shape[0], m, q, h)  # (B, m, Q, h): one gather of whole rows
        if h == 1:
            out.append(g[..., 0].topk(n, dim=1).values.sum(dim=(1, 2), dtype=torch.float64))
        else:
            # The tile of bin b, slice q is g[b, :, q, :] transposed; a tile's optimum is its transpose's.
            tiles = g.transpose(1, 2).contiguous().numpy().reshape(-1, m, h)
            with kernel_threads(tiles.size):  # small batches serial; the caller's thread counts kept
                keep = solve_tiles_exact(tiles, n)
            kept = (tiles * keep).reshape(idx.shape[0], -1).sum(axis=1, dtype=np.float64)
            out.append(torch.from_numpy(kept))
    return torch.cat(out).reshape(shape) if out else torch.zeros(shape, dtype=torch.float64)


def channel_major(x: torch.Tensor) -> torch.Tensor:
    """``(Q, h, C)`` -> ``(C, Q, h)`` float32, the layout :func:`bin_values` gathers from."""
    return x.permute(2, 0, 1).contiguous().float()


def _balanced(xc: torch.Tensor, m: int) -> torch.Tensor:
    """Channels by total score, dealt to the bins in snake order (largest first)."""
    c = xc.shape[0]
    nb = c // m
    order = torch.argsort(xc.sum(dim=(1, 2), dtype=torch.float64), descending=True, stable=True)
    bins = torch.empty(nb, m, dtype=torch.long)
    for level in range(m):
        chunk = order[level * nb:(level + 1) * nb]
        bins[:, level] = chunk if level % 2 == 0 else chunk.flip(0)
    return bins


def search_permutation(x: torch.Tensor, pattern: NMPattern, *, rounds: int, seed: int, patience: int = 8,
                       deadline: Optional[float] = None, max_slices: int = MAX_SLICES) -> SearchResult:
    """Search a permutation of ``x``'s last axis (C channels, a multiple of m) for more kept score.

    A group with more than ``max_slices`` slices (rows of its layers, or m-row strips) is searched
    on an evenly spaced sample of them; the result is accepted only if it gains on all of them."""
    n, m = pattern.n, pattern.m
    c = x.shape[-1]
    nb = c // m
    full = channel_major(x)
    identity = torch.arange(c).reshape(nb, m)
    q = full.shape[1]
    xc = full if q <= max_slices else full[:, torch.linspace(0, q - 1, max_slices).round().long()].contiguous()
    values = bin_values(xc, identity, n)
    before = float(values.sum())
    exact_before = before if xc is full else float(bin_values(full, identity, n).sum())
    assign, start = identity, "identity"
    if nb > 1:
        bal = _balanced(xc, m)
        bal_values = bin_values(xc, bal, n)
        if float(bal_values.sum()) > before:
            assign, values, start = bal, bal_values, "balanced"
    gen = torch.Generator().manual_seed(int(seed))
    pairs = torch.tensor([(i, j) for i in range(m) for j in range(m)], dtype=torch.long)  # exchange i*m + j
    tops = column_tops(xc, n) if xc.shape[2] > 1 else None
    done = idle = 0
    tol = 1e-6 * abs(before) / nb  # float32 sums: smaller gains may be rounding
    while nb > 1 and done < rounds and idle < patience and (deadline is None or time.perf_counter() < deadline):
        done += 1
        order = torch.randperm(nb, generator=gen)
        half = nb // 2
        a, b = order[:half], order[half:2 * half]
        bins_a, bins_b = assign[a], assign[b]  # (P, m)
        if tops is None:  # row-wise: every exchange's exact gain in closed form
            best_gain, choice = rowwise_gains(xc, bins_a, bins_b, n).reshape(half, -1).max(dim=1)
        else:  # transposable: rank by the relaxations, solve the best few exactly
            proxy = tile_proxy_gains(xc, tops, bins_a, bins_b, n).reshape(half, -1)
            cand = torch.sort(proxy, dim=1, descending=True, stable=True).indices[:, :EXACT_CANDIDATES]
            new_a, new_b = _exchanged(bins_a, bins_b, pairs[cand])
            gain = bin_values(xc, new_a, n) + bin_values(xc, new_b, n) - (values[a] + values[b])[:, None]
            best_gain, pos = gain.max(dim=1)
            choice = cand.gather(1, pos[:, None])[:, 0]
        better = best_gain > tol
        if not bool(better.any()):
            idle += 1
            continue
        idle = 0
        pick = torch.arange(half)[better]
        new_a, new_b = _exchanged(bins_a[pick], bins_b[pick], pairs[choice[pick]][:, None])
        assign = assign.clone()
        assign[a[pick]], assign[b[pick]] = new_a[:, 0], new_b[:, 0]
        values = values.clone()
        values[a[pick]] = bin_values(xc, assign[a[pick]], n)
        values[b[pick]] = bin_values(xc, assign[b[pick]], n)
    perm = _canonical(assign)
    after = float(bin_values(full, perm.reshape(nb, m), n).sum())
    if after <= exact_before * (1 + 1e-6):  # nothing gained (beyond float32 rounding): leave the channels where they are
        perm, after = torch.arange(c), exact_before
    return SearchResult(perm=perm, before=exact_before, after=after, rounds=done, start=start)


def _exchanged(bins_a: torch.Tensor, bins_b: torch.Tensor, swaps: torch.Tensor):
    """Bins after exchanges: ``bins_a, bins_b (P, m)``, ``swaps (P, k, 2)`` positions ``(i, j)``
    -> ``(P, k, m)`` each, ``bins_a[p]`` with its i-th channel and ``bins_b[p]``'s j-th exchanged."""
    k = swaps.shape[1]
    i, j = swaps[..., 0], swaps[..., 1]
    new_a = bins_a[:, None, :].repeat(1, k, 1)
    new_b = bins_b[:, None, :].repeat(1, k, 1)
    new_a.scatter_(2, i[..., None], bins_b.gather(1, j)[..., None])
    new_b.scatter_(2, j[..., None], bins_a.gather(1, i)[..., None])
    return new_a, new_b


def _canonical(assign: torch.Tensor) -> torch.Tensor:
    """Channels ascending inside each bin, bins by their first channel: the identity stays the
    identity, and equal partitions give equal permutations."""
    bins = torch.sort(assign, dim=1).values
    order = torch.argsort(bins[:, 0], stable=True)
    return bins[order].reshape(-1)

