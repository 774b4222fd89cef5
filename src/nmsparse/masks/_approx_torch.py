"""Approximate transposable n:m masks as batched torch operations (CPU or CUDA; no numba).

Same methods as :mod:`nmsparse.masks._greedy_kernels` and :mod:`nmsparse.masks._refine_kernels`, vectorised over a batch of T tiles
instead of compiled per tile, so that scores already on a GPU need not leave it.

* :func:`greedy_tiles_torch` gives exactly the mask of ``greedy_tiles`` (same stable
  descending order, same rule), one batched step per entry of the sorted tile (m*m steps).
* :func:`refine_tiles_torch` runs the same three steps as ``refine_tiles`` (dual warm start,
  column repair, 2-swaps) with batched tie-breaking of its own, so its masks are valid and
  near-optimal but not always identical to the numba ones. Step 2 moves one unit per
  over-full tile per iteration; step 3 applies the best 2-swap of every tile per iteration
  and evaluates all row pairs, costing O(T m^3) work per iteration (in chunks), which a GPU
  absorbs easily; on CPU prefer the numba kernels.

``n`` counts KEPT entries per row and column of each m x m tile.
"""

from __future__ import annotations

import torch

__all__ = ["greedy_tiles_torch", "refine_tiles_torch"]

_TOL = 1e-12  # as in _refine_kernels: a swap must clearly gain, row by row
_CHUNK_ELEMS = 1 << 24  # elements of one (tiles, m, m, m) intermediate in step 3


def _check(scores: torch.Tensor, n: int) -> int:
    if scores.dim() != 3 or scores.shape[1] != scores.shape[2]:
        raise ValueError(f"scores must have shape (T, m, m), got {tuple(scores.shape)}")
    m = scores.shape[1]
    if not (1 <= int(n) <= m):
        raise ValueError(f"n must satisfy 1 <= n <= m = {m}, got n = {n}")
    if scores.is_complex() or not (scores.is_floating_point() or scores.dtype in _INT_DTYPES):
        raise ValueError(f"scores must be real, got dtype {scores.dtype}")
    return m


_INT_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)


def greedy_tiles_torch(scores: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's greedy 2-approximation, batched over tiles (Hubara et al. 2021, Sec. 4).

    Parameters
    ----------
    scores : Tensor, shape (T, m, m), real, any device
    n : int
        Entries kept per row and per column, 1 <= n <= m.

    Returns
    -------
    mask : bool Tensor (T, m, m)
        Visiting each tile's entries by descending score (ties: lower row-major index first,
        i.e. ``torch.sort(..., descending=True, stable=True)``), an entry is kept iff its row
        and its column hold fewer than n so far. Identical to ``greedy_tiles``.
    short : bool Tensor (T,)
        True where some row (equivalently some column) keeps fewer than n.
    """
    m = _check(scores, n)
    t_count, k_count = scores.shape[0], m * m
    dev = scores.device
    flat = scores.reshape(t_count, k_count)
    if flat.is_floating_point():
        flat = flat + 0.0  # -0.0 -> +0.0, so that it ties with 0.0 exactly as in the numba kernel
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    rows = torch.div(order, m, rounding_mode="floor")
    cols = order - rows * m
    rc = torch.zeros(t_count, m, dtype=torch.int32, device=dev)
    cc = torch.zeros(t_count, m, dtype=torch.int32, device=dev)
    kept = torch.zeros(t_count, k_count, dtype=torch.bool, device=dev)
    for p in range(k_count):
        i = rows[:, p : p + 1]
        j = cols[:, p : p + 1]
        ok = (rc.gather(1, i) < n) & (cc.gather(1, j) < n)
        kept[:, p : p + 1] = ok
        inc = ok.to(torch.int32)
        rc.scatter_add_(1, i, inc)
        cc.scatter_add_(1, j, inc)
    mask = torch.zeros(t_count, k_count, dtype=torch.bool, device=dev)
    mask.scatter_(1, order, kept)
    return mask.reshape(t_count, m, m), (rc < n).any(dim=1)


def _potentials(a: torch.Tensor, n: int, rounds: int):
    """Dual block-coordinate warm start: u (T, m), v (T, m) and the row thresholds."""
    t_count, m, _ = a.shape
    v = torch.zeros(t_count, m, dtype=a.dtype, device=a.device)
    u = sn = None
    for r in range(rounds):
        top = torch.topk(a - v[:, None, :], n + 1, dim=2).values  # sorted, largest first
        sn = top[:, :, n - 1]
        u = 0.5 * top[:, :, n] + 0.5 * sn
        if r == rounds - 1:
            break
        top = torch.topk(a - u[:, :, None], n + 1, dim=1).values
        v = 0.5 * top[:, n, :] + 0.5 * top[:, n - 1, :]
    return u, v, sn


def _select_rows(a: torch.Tensor, v: torch.Tensor, n: int) -> torch.Tensor:
    """Each row keeps its top n of A - v (ties: lower column first)."""
    b = a - v[:, None, :]
    idx = torch.sort(b, dim=2, descending=True, stable=True).indices[:, :, :n]
    s = torch.zeros_like(b, dtype=torch.bool)
    return s.scatter_(2, idx, True)


def _repair(s: torch.Tensor, c: torch.Tensor, n: int) -> None:
    """Move units from over-full to under-full columns, least reduced-cost loss first.

    One move per over-full tile per iteration. A move always exists (see ``_repair`` in
    ``_refine_kernels``: every row holds n, so some row holds an over-full column and lacks an
    under-full one), and each lowers the tile's excess by one: the loop ends."""
    inf = torch.tensor(float("inf"), dtype=c.dtype, device=c.device)
    while True:
        cnt = s.sum(dim=1)  # (T, m) kept per column
        act = (cnt > n).any(dim=1).nonzero().squeeze(1)
        if act.numel() == 0:
            return
        sa, ca, cn = s[act], c[act], cnt[act]
        over = (cn > n)[:, None, :]
        under = (cn < n)[:, None, :]
        enter_v, enter_j = torch.where(~sa & under, ca, -inf).max(dim=2)  # (A, m)
        leave_v, leave_j = torch.where(sa & over, ca, inf).min(dim=2)
        loss = leave_v - enter_v  # +inf where the row has no move
        row = loss.argmin(dim=1, keepdim=True)
        if not bool(torch.isfinite(loss.gather(1, row)).all()):
            raise RuntimeError("refine_tiles_torch: column repair found no move; please report")
        jl = leave_j.gather(1, row)
        je = enter_j.gather(1, row)
        r = row.squeeze(1)
        sa[torch.arange(act.numel(), device=s.device), r, jl.squeeze(1)] = False
        sa[torch.arange(act.numel(), device=s.device), r, je.squeeze(1)] = True
        s[act] = sa


def _hop(a: torch.Tensor, s: torch.Tensor):
    """G[t, x, y] = max over l in S_y - S_x of A_xl - A_yl (-inf if none), for a chunk."""
    ninf = torch.tensor(float("-inf"), dtype=a.dtype, device=a.device)
    d = a[:, :, None, :] - a[:, None, :, :]  # (T, x, y, l)
    ok = s[:, None, :, :] & ~s[:, :, None, :]
    return torch.where(ok, d, ninf).amax(dim=3)


def _swap_round(a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Apply the best 2-swap of every tile if it gains; returns which tiles changed."""
    t_count, m, _ = a.shape
    dev = a.device
    chunk = max(1, _CHUNK_ELEMS // (m * m * m))
    changed = torch.zeros(t_count, dtype=torch.bool, device=dev)
    ar_m = torch.arange(m, device=dev)
    for t0 in range(0, t_count, chunk):
        at, st = a[t0 : t0 + chunk], s[t0 : t0 + chunk]
        g = _hop(at, st)
        pair = g + g.transpose(1, 2)
        pair = torch.where(ar_m[:, None] < ar_m[None, :], pair, torch.full_like(pair, float("-inf")))
        best = pair.reshape(pair.shape[0], -1).argmax(dim=1)
        i = torch.div(best, m, rounding_mode="floor")
        k = best - i * m
        tl = torch.arange(at.shape[0], device=dev)
        ai, ak, si, sk = at[tl, i], at[tl, k], st[tl, i], st[tl, k]
        ninf = torch.full_like(ai, float("-inf"))
        l1 = torch.where(sk & ~si, ai - ak, ninf).argmax(dim=1)  # i takes l1 from k
        l2 = torch.where(si & ~sk, ak - ai, ninf).argmax(dim=1)  # k takes l2 from i
        valid = (sk & ~si).any(dim=1) & (si & ~sk).any(dim=1)
        di = ai[tl, l1] - ai[tl, l2]
        dk = ak[tl, l2] - ak[tl, l1]
        ok = valid & (di + dk > _TOL * (di.abs() + dk.abs()))
        if bool(ok.any()):
            w = ok.nonzero().squeeze(1)
            iw, kw, l1w, l2w = i[w], k[w], l1[w], l2[w]
            sub = st[w]
            sw = torch.arange(w.numel(), device=dev)
            sub[sw, iw, l1w] = True
            sub[sw, kw, l1w] = False
            sub[sw, kw, l2w] = True
            sub[sw, iw, l2w] = False
            st[w] = sub
            changed[t0 + w] = True
    return changed


def refine_tiles_torch(
    scores: torch.Tensor, n: int, rounds: int | None = None, max_swap_rounds: int | None = None
) -> torch.Tensor:
    """Near-optimal transposable n:m masks, batched torch version of ``refine_tiles``.

    Parameters
    ----------
    scores : Tensor, shape (T, m, m), real, any device
        Finite scores; computed in float64.
    n : int
        Entries kept per row and per column, 1 <= n <= m.
    rounds : int, optional
        Row potential updates of the warm start (default 4, or 3 for m < 8), as in
        ``refine_tiles``.
    max_swap_rounds : int, optional
        Cap on batched 2-swap iterations (default 2 * m; 0 disables them).

    Returns
    -------
    mask : bool Tensor (T, m, m) on ``scores.device``, exactly n per row and per column.
    """
    m = _check(scores, n)
    if rounds is None:
        rounds = 3 if m < 8 else 4
    if int(rounds) < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    t_count = scores.shape[0]
    if t_count == 0 or n == m:
        return torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    a = scores.to(torch.float64) + 0.0
    u, v, _ = _potentials(a, n, int(rounds))
    s = _select_rows(a, v, n)
    c = a - u[:, :, None] - v[:, None, :]
    _repair(s, c, n)
    cap = 2 * m if max_swap_rounds is None else int(max_swap_rounds)
    active = torch.arange(t_count, device=a.device)
    for _ in range(cap):
        sub = s[active]
        changed = _swap_round(a[active], sub)
        s[active] = sub
        active = active[changed]
        if active.numel() == 0:
            break
    return s
