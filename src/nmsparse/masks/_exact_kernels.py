"""Compiled exact solvers for batches of transposable n:m tiles (private).

For every square tile ``A`` (m x m) of a batch, find ``S`` in {0,1}^{m x m} with exactly n ones in
every row and every column maximising ``sum(A * S)``: a bipartite b-matching, i.e. a min-cost flow
source -> row (cap n) -> column (cap 1 per edge, cost -A_ij) -> sink (cap n) (Hubara et al. 2021,
arXiv 2102.08124). Its constraint matrix is totally unimodular, so the LP optimum is integral.

Two exact kernels, chosen by (n, m) alone (never by batch size or thread count, so a tile always
gets the same mask):

* m <= 4, and m = 5 with n = 1 or 4: enumerate every valid tile (m = 4: 24 / 90 / 24 for n = 1..3),
  as a sum of per-row choice sums, vectorised across 64 tiles; the first best pattern in
  lexicographic order wins ties.
* larger ``m``: primal-dual min-cost flow (Ahuja, Magnanti & Orlin, *Network Flows*, 1993,
  ch. 9: reduced-cost optimality conditions, successive shortest paths). Dual variables u (rows)
  and v (columns); reduced cost r_ij = u_i + v_j - A_ij. A 0/1 flow x is optimal iff every row
  and column holds n units and r_ij >= 0 where x_ij = 0, r_ij <= 0 where x_ij = 1
  (complementary slackness for the capacitated transportation problem).

  1. Warm start (dual block-coordinate descent): given v, each row keeps its top n of A_ij - v_j
     and u_i is the midpoint of its n-th and (n+1)-th largest value, which satisfies the
     conditions on every edge; only columns can be unbalanced. Then v_j is set the same way from
     the columns of A_ij - u_i, and the rows are re-solved. Three rounds cut the column excess
     from ~0.1*n*m units to ~0.015*n*m (random scores). Ties at a row's threshold go to the
     columns holding the fewest units so far, so constant tiles start balanced.
  2. Successive shortest paths (AMO sec. 9.7) move the remaining excess from over-full to
     under-full columns, one unit per Dijkstra run on the dense residual graph (O(m^2) per run;
     Johnson-style potentials keep reduced costs nonnegative). Each augmentation keeps the
     optimality conditions, so when every column holds n units the flow is optimal.
     The warm start is symmetric in kept and pruned entries, so it needs no complement trick.

Scores are read as float64; the rounding of reduced costs is clamped at 0 so Dijkstra never sees
a negative edge and the number of augmentations is exactly the initial excess (termination does
not depend on rounding). Every choice among equal candidates goes by index order, so the result
depends on the tile alone (not on thread count, batch size or the tile's position in the batch).
Non-finite scores give unspecified (possibly invalid) masks but never hang: callers reject them.
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np
from numba import njit, prange

from ._networks import selection_network as _selection_network

# Crossover between enumeration and min-cost flow, by pattern count (single core, us/tile):
# m = 4 (24-90 patterns) enumerates in ~0.05-0.09; m = 5, n = 1 or 4 (120 patterns): 0.3 vs 1.0
# for the flow kernel; m = 5, n = 2 or 3 (2040 patterns): 2.5 vs 1.0; m = 6, n = 1 (720): 1.5 vs 1.5.
_ENUM_MAX_M = 4


def _use_enumeration(n: int, m: int) -> bool:
    return m <= _ENUM_MAX_M or (m == 5 and min(n, m - n) == 1)

_BLOCK = 64  # tiles per parallel work item: scratch is allocated per block, not per tile
_ROUNDS = 3  # warm-start rounds (row, column, row, ...): measured optimum for m = 5..64


@lru_cache(maxsize=None)
def _enumeration_tables(n: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tables for enumerating every valid m x m tile (small m).

    Returns ``rs_idx`` (m*C, n): flat tile indices summed by row-choice ``r*C + c`` (C = binom(m, n),
    choices in lexicographic order); ``pat_rs`` (P, m): the row-choice ids of each valid tile,
    lexicographic in the choice indices; ``masks`` (P, m*m) bool: each tile, flattened.
    """
    choices = list(itertools.combinations(range(m), n))
    c_count = len(choices)
    found: list[tuple[int, ...]] = []
    counts = [0] * m

    def extend(prefix: list[int]) -> None:
        if len(prefix) == m:
            found.append(tuple(prefix))
            return
        for c, cols in enumerate(choices):
            if all(counts[j] < n for j in cols):
                for j in cols:
                    counts[j] += 1
                prefix.append(c)
                extend(prefix)
                prefix.pop()
                for j in cols:
                    counts[j] -= 1

    extend([])
    rs_idx = np.array([[r * m + j for j in cols] for r in range(m) for cols in choices], dtype=np.int64)
    pat_rs = np.array([[r * c_count + c for r, c in enumerate(p)] for p in found], dtype=np.int64)
    masks = np.zeros((len(found), m * m), dtype=np.bool_)
    for k, p in enumerate(found):
        for r, c in enumerate(p):
            masks[k, [r * m + j for j in choices[c]]] = True
    return rs_idx.reshape(m * c_count, n), pat_rs.reshape(-1, m), masks


@njit(parallel=True, cache=True)
def _enumerate_kernel(scores, rs_idx, pat_rs, masks, out):  # pragma: no cover - compiled
    """Best pattern per tile; lanes are 64 tiles, so every loop over ``l`` vectorises."""
    t_count, mm = scores.shape[0], scores.shape[1] * scores.shape[2]
    n_rs, n = rs_idx.shape[0], rs_idx.shape[1]
    n_pat, m = pat_rs.shape[0], pat_rs.shape[1]
    flat = scores.reshape(t_count, mm)
    oflat = out.reshape(t_count, mm)
    for b in prange((t_count + _BLOCK - 1) // _BLOCK):
        a = np.zeros((mm, _BLOCK))
        rs = np.empty((n_rs, _BLOCK))
        s = np.empty(_BLOCK)
        # Double-buffered running best: an in-place conditional update compiles to masked stores.
        best = np.empty((2, _BLOCK))
        best_p = np.zeros((2, _BLOCK), dtype=np.int64)
        t0 = b * _BLOCK
        lanes = min(t_count, t0 + _BLOCK) - t0
        for l in range(lanes):
            for e in range(mm):
                a[e, l] = np.float64(flat[t0 + l, e])
        for q in range(n_rs):
            for l in range(_BLOCK):
                rs[q, l] = a[rs_idx[q, 0], l]
            for k in range(1, n):
                e = rs_idx[q, k]
                for l in range(_BLOCK):
                    rs[q, l] += a[e, l]
        for l in range(_BLOCK):
            best[0, l] = -np.inf
        for p in range(n_pat):
            if m == 4:
                q0, q1, q2, q3 = pat_rs[p, 0], pat_rs[p, 1], pat_rs[p, 2], pat_rs[p, 3]
                for l in range(_BLOCK):
                    s[l] = (rs[q0, l] + rs[q1, l]) + (rs[q2, l] + rs[q3, l])
            else:
                for l in range(_BLOCK):
                    s[l] = rs[pat_rs[p, 0], l]
                for r in range(1, m):
                    q = pat_rs[p, r]
                    for l in range(_BLOCK):
                        s[l] += rs[q, l]
            src = p & 1
            dst = src ^ 1
            for l in range(_BLOCK):
                old = best[src, l]
                better = s[l] > old  # strict: the first best pattern wins ties
                best[dst, l] = s[l] if better else old
                best_p[dst, l] = p if better else best_p[src, l]
        fin = n_pat & 1
        for l in range(lanes):
            for e in range(mm):
                oflat[t0 + l, e] = masks[best_p[fin, l], e]


@njit(cache=True, inline="always")
def _apply_net(w, net, m):  # pragma: no cover - compiled
    """Apply the comparator network to the m rows of the flat m x m array ``w`` (m lanes each)."""
    # Unsigned indices skip numba's negative-index wraparound, so the lane loop vectorises.
    # "+ 0.0" stops LLVM from turning `w[p] = min(w[p], y)` into a masked store (slow on AMD);
    # it only maps -0.0 to +0.0, which compares equal.
    mu = np.uint64(m)
    for c in range(net.shape[0]):
        p = np.uint64(net[c, 0]) * mu
        q = np.uint64(net[c, 1]) * mu
        for lane in range(mu):
            x = w[p + lane]
            y = w[q + lane]
            w[p + lane] = min(x, y) + 0.0
            w[q + lane] = max(x, y) + 0.0


@njit(cache=True)
def _row_step(at, v, w, net, m, n, u, s_n):  # pragma: no cover - compiled
    """u_i = midpoint of the n-th and (n+1)-th largest of A_ij - v_j; s_n = the n-th largest."""
    for j in range(m):
        vj = v[j]
        for i in range(m):
            w[j * m + i] = at[j * m + i] - vj
    _apply_net(w, net, m)
    for i in range(m):
        s_n[i] = w[(m - n) * m + i]
        u[i] = 0.5 * w[(m - n - 1) * m + i] + 0.5 * s_n[i]


@njit(cache=True)
def _col_step(a, u, w, net, m, n, v):  # pragma: no cover - compiled
    """v_j = midpoint of the n-th and (n+1)-th largest of A_ij - u_i over rows i."""
    for i in range(m):
        ui = u[i]
        for j in range(m):
            w[i * m + j] = a[i * m + j] - ui
    _apply_net(w, net, m)
    for j in range(m):
        v[j] = 0.5 * w[(m - n - 1) * m + j] + 0.5 * w[(m - n) * m + j]


@njit(cache=True)
def _select_rows(a, v, s_n, x, cnt, m, n):  # pragma: no cover - compiled
    """Each row keeps its top n of A_ij - v_j; returns the column excess sum(max(cnt - n, 0)).

    Entries tied with the row's n-th largest value have reduced cost 0 and may go either way;
    they go to the columns that hold the fewest units so far (then lowest index).
    """
    for j in range(m):
        cnt[j] = 0
    for i in range(m):
        base = i * m
        t = s_n[i]
        g = 0
        for j in range(m):
            keep = (a[base + j] - v[j]) > t
            x[base + j] = keep
            g += keep
        for j in range(m):
            cnt[j] += x[base + j]
        while g < n:
            pick = -1
            fewest = m + 1
            for j in range(m):
                if x[base + j] == 0 and (a[base + j] - v[j]) == t and cnt[j] < fewest:
                    fewest = cnt[j]
                    pick = j
            if pick < 0:
                break  # only with NaN scores, which callers reject
            x[base + pick] = 1
            cnt[pick] += 1
            g += 1
    excess = 0
    for j in range(m):
        if cnt[j] > n:
            excess += cnt[j] - n
    return excess


@njit(cache=True)
def _augment(a, at, x, m, n, cnt, u, v, excess, key, dist, pred, xf, xb, tmp):  # pragma: no cover
    """Successive shortest paths: move ``excess`` units from columns with cnt > n to cnt < n.

    Nodes 0..m-1 are columns, m..2m-1 rows. Residual edges: row i -> col j if x_ij = 0 (reduced
    cost r_ij), col j -> row i if x_ij = 1 (reduced cost -r_ij). ``xf``/``xb`` add +inf where an
    edge is absent. Dijkstra keys are nonnegative doubles, compared as int64 bit patterns so the
    selections compile to branch-free code; a settled node's key is -1.
    """
    if excess == 0:
        return True
    inf = np.inf
    key_bits = key.view(np.int64)
    tmp_bits = tmp.view(np.int64)
    inf_bits = np.int64(0x7FF0000000000000)
    for i in range(m):
        for j in range(m):
            flow = x[i * m + j] != 0
            xf[i * m + j] = inf if flow else 0.0
            xb[j * m + i] = 0.0 if flow else inf
    for _ in range(excess):
        for k in range(m):
            key[k] = 0.0 if cnt[k] > n else inf  # every over-full column is a source
            key[m + k] = inf
            pred[k] = -1
            pred[m + k] = -1
        target = -1
        d_end = 0.0
        for _step in range(2 * m):
            bb = inf_bits
            node = -1
            for k in range(2 * m):  # closest unsettled node; ties: lowest index, columns first
                kb = key_bits[k]
                c = (kb >= 0) & (kb < bb)
                bb = kb if c else bb
                node = k if c else node
            if node < 0:
                break
            d = key[node]
            key[node] = -1.0
            dist[node] = d
            if node < m:
                j = node
                if cnt[j] < n:
                    target = j
                    d_end = d
                    break
                vj = v[j]
                base = j * m
                for i in range(m):
                    tmp[i] = d + max(at[base + i] - u[i] - vj, 0.0) + xb[base + i]
                for i in range(m):
                    tb = tmp_bits[i]
                    ob = key_bits[m + i]
                    c = tb < ob
                    key_bits[m + i] = tb if c else ob
                    pred[m + i] = j if c else pred[m + i]
            else:
                i = node - m
                base = i * m
                ui = u[i]
                for j in range(m):
                    tmp[j] = d + max(ui + v[j] - a[base + j], 0.0) + xf[base + j]
                for j in range(m):
                    tb = tmp_bits[j]
                    ob = key_bits[j]
                    c = tb < ob
                    key_bits[j] = tb if c else ob
                    pred[j] = i if c else pred[j]
        if target < 0:
            return False  # unreachable for finite scores: a feasible flow always exists
        # Potentials p <- p + min(d, D) - D (D = d_end): min(d, D) is itself a feasible distance
        # labelling, so reduced costs stay >= 0 and the augmenting path becomes tight.
        for k in range(m):
            if key[m + k] < 0.0:
                u[k] += dist[m + k] - d_end
            if key[k] < 0.0:
                v[k] -= dist[k] - d_end
        j = target
        cnt[j] += 1
        while True:  # the predecessor chain ends at a source column (pred = -1)
            i = pred[j]
            x[i * m + j] = 1
            xf[i * m + j] = inf
            xb[j * m + i] = 0.0
            j = pred[m + i]
            x[i * m + j] = 0
            xf[i * m + j] = 0.0
            xb[j * m + i] = inf
            if pred[j] < 0:
                break
        cnt[j] -= 1
    return True


@njit(parallel=True, cache=True)
def _flow_kernel(scores, n, net, rounds, out):  # pragma: no cover - compiled
    t_count, m = scores.shape[0], scores.shape[1]
    mm = m * m
    flat = scores.reshape(t_count, mm)
    oflat = out.reshape(t_count, mm)
    for b in prange((t_count + _BLOCK - 1) // _BLOCK):
        a = np.empty(mm)
        at = np.empty(mm)
        w = np.empty(mm)
        xf = np.empty(mm)
        xb = np.empty(mm)
        x = np.empty(mm, dtype=np.uint8)
        cnt = np.empty(m, dtype=np.int64)
        u = np.empty(m)
        v = np.empty(m)
        s_n = np.empty(m)
        tmp = np.empty(m)
        key = np.empty(2 * m)
        dist = np.empty(2 * m)
        pred = np.empty(2 * m, dtype=np.int64)
        for t in range(b * _BLOCK, min(t_count, (b + 1) * _BLOCK)):
            for i in range(m):
                for j in range(m):
                    val = np.float64(flat[t, i * m + j])
                    a[i * m + j] = val
                    at[j * m + i] = val
            v[:] = 0.0
            excess = 0
            for r in range(rounds):
                _row_step(at, v, w, net, m, n, u, s_n)
                excess = _select_rows(a, v, s_n, x, cnt, m, n)
                if excess == 0 or r == rounds - 1:
                    break
                _col_step(a, u, w, net, m, n, v)
            _augment(a, at, x, m, n, cnt, u, v, excess, key, dist, pred, xf, xb, tmp)
            for e in range(mm):
                oflat[t, e] = x[e] != 0


def solve_tiles_exact(scores: np.ndarray, n: int) -> np.ndarray:
    """Optimal transposable n:m mask of every square tile in a batch.

    Parameters
    ----------
    scores : ndarray, shape (T, m, m), float32 or float64
        Finite scores of any sign (padding may be marked with large negative values). Other
        dtypes are converted to float64; non-contiguous input is copied.
    n : int
        Entries kept in every row and every column of a tile, 1 <= n <= m.

    Returns
    -------
    ndarray of bool, shape (T, m, m)
        For each tile, a 0/1 matrix with exactly n ones per row and column that maximises
        ``sum(tile * mask)``. Deterministic for any thread count: ties break by index order.

    Examples
    --------
    >>> tiles = np.abs(np.random.default_rng(0).standard_normal((3, 8, 8)))
    >>> solve_tiles_exact(tiles, 4).sum(axis=1).tolist()[0]
    [4, 4, 4, 4, 4, 4, 4, 4]
    """
    if scores.ndim != 3 or scores.shape[1] != scores.shape[2]:
        raise ValueError(f"solve_tiles_exact: scores must have shape (T, m, m), got {scores.shape}")
    t_count, m = scores.shape[0], scores.shape[1]
    if not 1 <= n <= m:
        raise ValueError(f"solve_tiles_exact: need 1 <= n <= m, got n={n}, m={m}")
    if scores.dtype != np.float32 and scores.dtype != np.float64:
        scores = scores.astype(np.float64)
    scores = np.ascontiguousarray(scores)
    out = np.empty((t_count, m, m), dtype=np.bool_)
    if t_count == 0:
        return out
    if n == m:
        out[...] = True
        return out
    if _use_enumeration(n, m):
        _enumerate_kernel(scores, *_enumeration_tables(n, m), out)
    else:
        _flow_kernel(scores, n, _selection_network(n, m), _ROUNDS, out)
    return out
