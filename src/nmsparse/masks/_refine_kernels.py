"""Compiled kernels for approximate transposable n:m masks: ``refine``.

A transposable n:m mask of one m x m score tile A keeps exactly n entries in every row and
every column and maximises sum(A * S): a bipartite b-matching on K_{m,m} (each vertex degree
n, each edge capacity 1). ``n`` counts KEPT entries. Every tile is solved on its own, in
float64, so results do not depend on the thread count.

refine (near-optimal, always exactly n per row and column)
    1. Dual warm start (LP duality): alternately set row potentials u_i and column
       potentials v_j to the midpoint of the n-th and (n+1)-th largest of A_ij - v_j (resp.
       A_ij - u_i), ``rounds`` times; then every row keeps its top n of A_ij - v_j. All
       entries then satisfy complementary slackness (reduced cost c_ij = A_ij - u_i - v_j
       >= 0 if kept, <= 0 if not); only column counts can be off.
    2. Column repair: move one unit at a time from an over-full to an under-full column
       within one row, least loss in c first. Such a move always exists (see ``_repair``),
       so this always ends with exactly n everywhere.
    3. 2-swaps (i,j),(k,l) -> (i,l),(k,j) while they gain, searched only from rows that a
       repair or swap touched: with u, v fixed, an exchange gains sum(c added) -
       sum(c removed), which is <= 0 unless it touches an entry that broke slackness.
    This is the structure of the exact primal-dual solver with its exact repair (successive
    shortest paths) replaced by greedy moves and local search: measured 99.96-99.98 % of the
    optimum on |Gaussian| and |Student-t(2)| tiles for 2:4 .. 16:32.

Scores must be finite. Padding may use large negative values; keep them moderate (like the
driver's padding_score), since float64 cannot resolve real score differences beyond ~16
digits of the padding's magnitude (results stay valid, they only lose quality).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._approx_common import lane_chunk as _chunk
from ._approx_common import prepare_tiles as _prepare
from ._networks import selection_network as _selection_network

__all__ = ["refine_tiles"]

# Helpers are compiled with _nrt=False: they never allocate, and without it every call pays an
# atomic reference-count increment and decrement per array argument (~30 ns a call here).


# --------------------------------------------------------------------------------------------
# refine, step 1: dual block-coordinate warm start (LP duality of the b-matching)
# --------------------------------------------------------------------------------------------
# Dual: min n*sum(u) + n*sum(v) + sum(max(0, A_ij - u_i - v_j)). Given v, the best u_i is
# any value between the n-th and (n+1)-th largest of A_ij - v_j over j (we take the midpoint);
# given u, likewise for v_j over i. A few such rounds give potentials under which every row's
# top n (of A_ij - v_j) is almost column-balanced. The order statistics come from a pruned
# Batcher odd-even merge network applied to all m rows (or columns) at once, so its inner
# loop is a plain vectorised min/max over m lanes.
@njit(cache=True, _nrt=False)
def _apply_net(w, net, m, t0, t1):
    # Each comparator orders rows p and q of w lane by lane. The rows are first copied to
    # t0, t1: storing min/max of values loaded from the same addresses makes LLVM emit
    # masked stores (slow on some x86 cores) instead of vminpd/vmaxpd.
    # For m < 16 the copies cost more than they save.
    for c in range(net.shape[0]):
        p = net[c, 0] * m
        q = net[c, 1] * m
        wp = w[p:p + m]
        wq = w[q:q + m]
        if m >= 16:
            for lane in range(m):
                t0[lane] = wp[lane]
                t1[lane] = wq[lane]
            for lane in range(m):
                x = t0[lane]
                y = t1[lane]
                wp[lane] = x if x < y else y
                wq[lane] = y if x < y else x
        else:
            for lane in range(m):
                x = wp[lane]
                y = wq[lane]
                wp[lane] = min(x, y)
                wq[lane] = max(x, y)


@njit(cache=True, _nrt=False)
def _row_potentials(at, v, w, net, m, n, u, sn, t0, t1):
    # lanes are rows: w[j, i] = A_ij - v_j; sn[i] = n-th largest, u[i] = midpoint
    for j in range(m):
        vj = v[j]
        for i in range(m):
            w[j * m + i] = at[j * m + i] - vj
    _apply_net(w, net, m, t0, t1)
    for i in range(m):
        sn[i] = w[(m - n) * m + i]
        u[i] = 0.5 * w[(m - n - 1) * m + i] + 0.5 * sn[i]


@njit(cache=True, _nrt=False)
def _col_potentials(a, u, w, net, m, n, v, t0, t1):
    # lanes are columns: w[i, j] = A_ij - u_i
    for i in range(m):
        ui = u[i]
        for j in range(m):
            w[i * m + j] = a[i * m + j] - ui
    _apply_net(w, net, m, t0, t1)
    for j in range(m):
        v[j] = 0.5 * w[(m - n - 1) * m + j] + 0.5 * w[(m - n) * m + j]


@njit(cache=True, _nrt=False)
def _select_rows(a, v, u, sn, s, c, cnt, m, n):
    """Each row keeps its top n of A_ij - v_j; c = reduced costs A_ij - u_i - v_j.

    Exactly n per row: fewer than n values exceed the n-th largest and at least n reach it;
    ties at the threshold go to the columns holding the fewest so far (then the lowest)."""
    cnt[:] = 0
    for i in range(m):
        t = sn[i]
        g = 0
        for j in range(m):
            b = a[i * m + j] - v[j]
            c[i * m + j] = b - u[i]
            keep = b > t
            s[i * m + j] = keep
            g += keep
        while g < n:
            pick = -1
            for j in range(m):
                if s[i * m + j] == 0 and a[i * m + j] - v[j] == t:
                    if pick < 0 or cnt[j] < cnt[pick]:
                        pick = j
            if pick < 0:
                break  # unreachable for finite scores
            s[i * m + pick] = 1
            g += 1
        for j in range(m):
            cnt[j] += s[i * m + j]


# --------------------------------------------------------------------------------------------
# refine, step 2: column repair
# --------------------------------------------------------------------------------------------
@njit(cache=True, _nrt=False)
def _push(queue, inq, qs, i, m):
    # qs = [head, size]; a row is queued at most once, so m slots suffice
    if not inq[i]:
        inq[i] = True
        queue[(qs[0] + qs[1]) % m] = i
        qs[1] += 1


@njit(cache=True, _nrt=False)
def _repair(c, s, cnt, m, n, cols, queue, inq, qs):
    """Move units from over-full to under-full columns, one row at a time, least loss first.

    Every row holds exactly n, so an over-full column (> n) exists iff an under-full one
    (< n) does, and for any such pair some row holds the first and lacks the second
    (pigeonhole): a move always exists and each one lowers the total excess by one. The loss
    of a move is measured in reduced costs; summed over all moves it differs from the loss in
    scores by a constant, since every column's net transfer is fixed.
    Returns the number of moves, or -1 if no move was found (unreachable)."""
    moves = 0
    while True:
        no = 0
        nu = 0
        for j in range(m):
            if cnt[j] > n:
                cols[no] = j
                no += 1
        for j in range(m):
            if cnt[j] < n:
                cols[m + nu] = j
                nu += 1
        if no == 0:
            return moves
        best = 0.0
        bi = -1
        bj = -1
        bk = -1
        for i in range(m):
            io = i * m
            ej = -1
            e = 0.0
            for t in range(nu):
                j = cols[m + t]
                if s[io + j] == 0 and (ej < 0 or c[io + j] > e):
                    e = c[io + j]
                    ej = j
            if ej < 0:
                continue
            lj = -1
            lv = 0.0
            for t in range(no):
                j = cols[t]
                if s[io + j] != 0 and (lj < 0 or c[io + j] < lv):
                    lv = c[io + j]
                    lj = j
            if lj >= 0 and (bi < 0 or lv - e < best):
                best = lv - e
                bi = i
                bj = lj
                bk = ej
        if bi < 0:
            return -1
        s[bi * m + bj] = 0
        s[bi * m + bk] = 1
        cnt[bj] -= 1
        cnt[bk] += 1
        moves += 1
        _push(queue, inq, qs, bi, m)


# --------------------------------------------------------------------------------------------
# refine, step 3: 2-swaps around the repaired rows
# --------------------------------------------------------------------------------------------
# With the potentials fixed, every entry satisfies complementary slackness after step 1
# (kept: A_ij - u_i - v_j >= 0, pruned: <= 0), and an exchange gains the sum of the reduced
# costs it adds minus those it removes. So only exchanges that touch an entry moved by the
# repair (or by a later swap) can gain: we search 2-swaps from the rows in a work queue.
#   Ut[l, k] = A[k, l] if (k, l) pruned else -inf   (what row k could gain)
#   Wt[l, k] = A[k, l] if (k, l) kept else +inf     (what row k could give up)
# The best swap of row i with each row k is then two masked max-plus products over columns,
# computed for all k at once (contiguous, vectorised). The inner loops write to a second
# buffer instead of updating in place: LLVM then emits vmaxpd, not slow masked stores.
_TOL = 1e-12  # a swap must gain more than this fraction of its summed |row gains|


@njit(cache=True, _nrt=False)
def _set_t(at, s, Ut, Wt, m, r, col, keep):
    q = col * m + r
    s[r * m + col] = keep
    if keep:
        Ut[q] = -np.inf
        Wt[q] = at[q]
    else:
        Ut[q] = at[q]
        Wt[q] = np.inf


@njit(cache=True, _nrt=False)
def _swap_gains(a, s, Ut, Wt, m, i, g, b0, b1):
    """g[k] = max over l in S_k - S_i of (A_il - A_kl) + max over j in S_i - S_k of (A_kj - A_ij)."""
    io = i * m
    b0[:] = -np.inf
    for l in range(m):
        if s[io + l] != 0:
            continue
        x = a[io + l]
        w = Wt[l * m:(l + 1) * m]
        for k in range(m):
            y = x - w[k]
            z = b0[k]
            b1[k] = y if y > z else z
        b0, b1 = b1, b0
    for k in range(m):
        g[k] = b0[k]
    b0[:] = -np.inf
    for l in range(m):
        if s[io + l] == 0:
            continue
        x = a[io + l]
        w = Ut[l * m:(l + 1) * m]
        for k in range(m):
            y = w[k] - x
            z = b0[k]
            b1[k] = y if y > z else z
        b0, b1 = b1, b0
    for k in range(m):
        g[k] += b0[k]  # -inf where no swap exists, including k == i


@njit(cache=True, _nrt=False)
def _hop_arg(a, s, m, x, y):
    # column l in S_y - S_x maximising A_xl - A_yl (lowest on ties): row x takes l from row y
    best = 0.0
    arg = -1
    for l in range(m):
        if s[y * m + l] != 0 and s[x * m + l] == 0:
            d = a[x * m + l] - a[y * m + l]
            if arg < 0 or d > best:
                best = d
                arg = l
    return arg


@njit(cache=True, _nrt=False)
def _two_swaps(a, at, s, Ut, Wt, m, queue, inq, qs, max_moves, g, b0, b1):
    moves = 0
    while qs[1] > 0 and moves < max_moves:
        i = queue[qs[0]]
        qs[0] = (qs[0] + 1) % m
        qs[1] -= 1
        inq[i] = False
        _swap_gains(a, s, Ut, Wt, m, i, g, b0, b1)
        while True:
            k = -1
            for x in range(m):
                if g[x] > 0.0 and (k < 0 or g[x] > g[k]):
                    k = x
            if k < 0:
                break
            l1 = _hop_arg(a, s, m, i, k)  # i takes l1 from k
            l2 = _hop_arg(a, s, m, k, i)  # k takes l2 from i
            di = a[i * m + l1] - a[i * m + l2]
            dk = a[k * m + l2] - a[k * m + l1]
            if di + dk > _TOL * (abs(di) + abs(dk)):  # the exact gain, row by row
                _set_t(at, s, Ut, Wt, m, i, l1, True)
                _set_t(at, s, Ut, Wt, m, k, l1, False)
                _set_t(at, s, Ut, Wt, m, k, l2, True)
                _set_t(at, s, Ut, Wt, m, i, l2, False)
                moves += 1
                _push(queue, inq, qs, i, m)
                _push(queue, inq, qs, k, m)
                break
            g[k] = -np.inf  # rounding promised a gain that is not there
    return moves


@njit(parallel=True, cache=True)
def _refine_kernel(scores, n, net, rounds, max_moves, chunk):
    T, m = scores.shape[0], scores.shape[1]
    K = m * m
    mask = np.zeros((T, m, m), np.bool_)
    failed = np.zeros(T, np.bool_)
    nchunks = (T + chunk - 1) // chunk
    for ch in prange(nchunks):
        fk = np.empty((6, K), np.float64)
        a, at, w, c, Ut, Wt = fk[0], fk[1], fk[2], fk[3], fk[4], fk[5]
        fm = np.empty((6, m), np.float64)
        u, v, sn, g, b0, b1 = fm[0], fm[1], fm[2], fm[3], fm[4], fm[5]
        s = np.empty(K, np.uint8)
        cnt = np.empty(m, np.int64)
        cols = np.empty(2 * m, np.int64)
        queue = np.empty(m, np.int64)
        qs = np.empty(2, np.int64)
        inq = np.empty(m, np.bool_)
        for t in range(ch * chunk, min(T, (ch + 1) * chunk)):
            tile = scores[t]
            for i in range(m):
                for j in range(m):
                    x = np.float64(tile[i, j]) + 0.0
                    a[i * m + j] = x
                    at[j * m + i] = x
            v[:] = 0.0
            for r in range(rounds):
                _row_potentials(at, v, w, net, m, n, u, sn, b0, b1)
                if r == rounds - 1:
                    break
                _col_potentials(a, u, w, net, m, n, v, b0, b1)
            _select_rows(a, v, u, sn, s, c, cnt, m, n)
            qs[0] = 0
            qs[1] = 0
            inq[:] = False
            if _repair(c, s, cnt, m, n, cols, queue, inq, qs) < 0:
                failed[t] = True
            if qs[1] > 0 and max_moves > 0:
                for l in range(m):
                    for k in range(m):
                        q = l * m + k
                        kept = s[k * m + l] != 0
                        Ut[q] = -np.inf if kept else at[q]
                        Wt[q] = at[q] if kept else np.inf
                _two_swaps(a, at, s, Ut, Wt, m, queue, inq, qs, max_moves, g, b0, b1)
            mt = mask[t]
            for i in range(m):
                for j in range(m):
                    mt[i, j] = s[i * m + j] != 0
    return mask, failed


def refine_tiles(
    scores: np.ndarray, n: int, rounds: int | None = None, max_moves: int | None = None
) -> np.ndarray:
    """Near-optimal transposable n:m masks: dual warm start, column repair, 2-swaps.

    Parameters
    ----------
    scores : ndarray, shape (T, m, m), float32 or float64 (other real dtypes are converted)
        Finite scores; larger is more important.
    n : int
        Entries kept per row and per column, 1 <= n <= m.
    rounds : int, optional
        Row potential updates of the warm start (with a column update between two of them);
        default 4, or 3 for m < 8. More rounds leave less to repair (closer, not much slower).
    max_moves : int, optional
        Cap on improving 2-swaps per tile (default 4 * n * m; 0 disables step 3). Validity
        never depends on it.

    Returns
    -------
    mask : ndarray of bool, shape (T, m, m), exactly n True per row and per column of each tile.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> mask = refine_tiles(np.abs(rng.standard_normal((10, 8, 8))), 4)
    >>> bool((mask.sum(axis=1) == 4).all() and (mask.sum(axis=2) == 4).all())
    True
    """
    a, n, m = _prepare(scores, n)
    if rounds is None:
        rounds = 3 if m < 8 else 4
    if int(rounds) < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if a.shape[0] == 0 or n == m:
        return np.ones(a.shape, np.bool_)
    if max_moves is None:
        max_moves = 4 * n * m
    net = _selection_network(n, m)
    mask, failed = _refine_kernel(a, n, net, int(rounds), int(max_moves), _chunk(m))
    if failed.any():  # unreachable for finite scores: a repair move always exists (_repair)
        raise RuntimeError("refine_tiles: column repair found no move; are all scores finite?")
    return mask
