"""Compiled kernels for approximate transposable n:m masks: ``greedy``.

A transposable n:m mask of one m x m score tile A keeps exactly n entries in every row and
every column and maximises sum(A * S): a bipartite b-matching on K_{m,m} (each vertex degree
n, each edge capacity 1). ``n`` counts KEPT entries. Every tile is solved on its own, in
float64, so results do not depend on the thread count.

greedy (Hubara et al. 2021, arXiv 2102.08124, Sec. 4: the 2-approximation), faithfully
    Visit the entries by descending score (ties: lower row-major index first, i.e. a stable
    sort) and keep an entry iff its row and its column each hold fewer than n. The kept set
    is maximal and weighs at least half of the best set with AT MOST n per row and column
    (the classical greedy b-matching bound), hence at least half of the transposable optimum
    when scores are >= 0. It may leave rows short of n; then it can even exceed the
    exact-n optimum (it is infeasible). Cost: one sort per tile (rank sort for m*m <= 64,
    radix sort on the top 32 bits plus a fix-up of equal runs above).

Scores must be finite. Padding may use large negative values; keep them moderate (like the
driver's padding_score), since float64 cannot resolve real score differences beyond ~16
digits of the padding's magnitude (results stay valid, they only lose quality).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._approx_common import lane_chunk as _chunk
from ._approx_common import prepare_tiles as _prepare

__all__ = ["greedy_tiles"]

# Helpers are compiled with _nrt=False: they never allocate, and without it every call pays an
# atomic reference-count increment and decrement per array argument (~30 ns a call here).
_LOW32 = np.uint64(0xFFFFFFFF)
_SIGN = np.uint64(0x8000000000000000)
_RANK_SORT_MAX = 64  # up to this many entries per tile an O(K^2) rank sort beats radix


# --------------------------------------------------------------------------------------------
# descending stable order of one tile
# --------------------------------------------------------------------------------------------
@njit(cache=True, _nrt=False)
def _order_rank(v, order, K):
    # rank of p = #{q: v_q > v_p} + #{q < p: v_q == v_p}  (exact float compares, -0.0 == 0.0)
    for p in range(K):
        vp = v[p]
        r = 0
        for q in range(K):
            r += np.int64(v[q] > vp)
        for q in range(p):
            r += np.int64(v[q] == vp)
        order[r] = p


@njit(cache=True, _nrt=False)
def _order_radix(v, order, K, keys, tmp, full, cnt):
    # full[p]: uint64 whose ascending order is v's descending order (after -0.0 -> +0.0).
    # keys[p] = high 32 bits of full[p] << 32 | p; an LSD radix sort on the high half, which
    # is stable, leaves equal high halves in index order; those runs are re-sorted by the
    # full key (then index) afterwards.
    vb = v.view(np.uint64)  # v holds no -0.0 (see _load_tile)
    for p in range(K):
        u = vb[p]
        f = u if (u & _SIGN) else ~(u | _SIGN)
        full[p] = f
        keys[p] = (f & ~_LOW32) | np.uint64(p)
    cnt[:, :] = 0
    for p in range(K):
        k = keys[p]
        cnt[0, (k >> np.uint64(32)) & np.uint64(255)] += 1
        cnt[1, (k >> np.uint64(40)) & np.uint64(255)] += 1
        cnt[2, (k >> np.uint64(48)) & np.uint64(255)] += 1
        cnt[3, (k >> np.uint64(56)) & np.uint64(255)] += 1
    src = keys
    dst = tmp
    for d in range(4):
        sh = np.uint64(32 + 8 * d)
        if cnt[d, (src[0] >> sh) & np.uint64(255)] == K:
            continue  # every key has the same digit here: the pass would be the identity
        tot = 0
        for b in range(256):
            c = cnt[d, b]
            cnt[d, b] = tot
            tot += c
        for p in range(K):
            k = src[p]
            b = (k >> sh) & np.uint64(255)
            dst[cnt[d, b]] = k
            cnt[d, b] += 1
        src, dst = dst, src
    i = 0
    while i < K:
        h = src[i] >> np.uint64(32)
        e = i + 1
        while e < K and (src[e] >> np.uint64(32)) == h:
            e += 1
        for a in range(i + 1, e):  # insertion sort of the (short, rare) run by (full, index)
            x = src[a]
            fx = full[x & _LOW32]
            b = a - 1
            while b >= i:
                y = src[b]
                fy = full[y & _LOW32]
                if fy > fx or (fy == fx and y > x):
                    src[b + 1] = y
                    b -= 1
                else:
                    break
            src[b + 1] = x
        i = e
    for r in range(K):
        order[r] = np.int64(src[r] & _LOW32)


@njit(cache=True, _nrt=False)
def _load_tile(tile, v, m):
    # float64 copy, row-major; "+ 0.0" turns -0.0 into +0.0 so both tie with 0.0 everywhere
    for i in range(m):
        for j in range(m):
            v[i * m + j] = np.float64(tile[i, j]) + 0.0


@njit(cache=True, _nrt=False)
def _greedy_tile(v, n, m, s, rc, cc, order, keys, tmp, full, cnt):
    """Greedy mask of one tile into s (uint8, K); returns the number of kept entries."""
    K = m * m
    if K <= _RANK_SORT_MAX:
        _order_rank(v, order, K)
    else:
        _order_radix(v, order, K, keys, tmp, full, cnt)
    rc[:] = 0
    cc[:] = 0
    s[:] = 0
    kept = 0
    for r in range(K):
        p = order[r]
        i = p // m
        j = p - i * m
        ok = np.int64((rc[i] < n) & (cc[j] < n))
        s[p] = ok
        rc[i] += ok
        cc[j] += ok
        kept += ok
        if kept == n * m:
            break
    return kept


@njit(parallel=True, cache=True)
def _greedy_kernel(scores, n, chunk):
    T, m = scores.shape[0], scores.shape[1]
    K = m * m
    mask = np.zeros((T, m, m), np.bool_)
    short = np.zeros(T, np.bool_)
    nchunks = (T + chunk - 1) // chunk
    for c in prange(nchunks):
        v = np.empty(K, np.float64)
        s = np.empty(K, np.uint8)
        order = np.empty(K, np.int64)
        keys = np.empty(K, np.uint64)
        tmp = np.empty(K, np.uint64)
        full = np.empty(K, np.uint64)
        cnt = np.empty((4, 256), np.int64)
        rc = np.empty(m, np.int64)
        cc = np.empty(m, np.int64)
        for t in range(c * chunk, min(T, (c + 1) * chunk)):
            _load_tile(scores[t], v, m)
            kept = _greedy_tile(v, n, m, s, rc, cc, order, keys, tmp, full, cnt)
            short[t] = kept < n * m
            mt = mask[t]
            for i in range(m):
                for j in range(m):
                    mt[i, j] = s[i * m + j] != 0
    return mask, short


def greedy_tiles(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The paper's greedy 2-approximation on a batch of m x m score tiles.

    Parameters
    ----------
    scores : ndarray, shape (T, m, m), float32 or float64 (other real dtypes are converted)
        Finite scores; larger is more important.
    n : int
        Entries kept per row and per column, 1 <= n <= m.

    Returns
    -------
    mask : ndarray of bool, shape (T, m, m)
        Per tile: visiting entries by descending score (ties: lower row-major index first),
        an entry is kept iff its row and its column hold fewer than n kept entries so far
        (Hubara et al. 2021, Sec. 4). At most n per row and column; maximal.
    short : ndarray of bool, shape (T,)
        True where some row (equivalently some column) of the tile keeps fewer than n.

    Notes
    -----
    The kept set weighs at least 1/2 of the best set with at most n per row and column, which
    is at least the transposable optimum when scores are >= 0. Cost: one sort per tile.
    """
    a, n, m = _prepare(scores, n)
    if a.shape[0] == 0:
        return np.zeros(a.shape, np.bool_), np.zeros(0, np.bool_)
    return _greedy_kernel(a, n, _chunk(m))
