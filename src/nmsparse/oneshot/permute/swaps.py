"""What exchanging one channel between two bins gains, for every exchange at once, without
re-solving the bins.

A bin's rows (a matrix row for row-wise N:M; each of the h = m rows of every m×m tile for
transposable N:M) keep their top-n of the bin's m channels. Exchanging channel ``out`` of bin A for
channel ``in`` of bin B changes one entry of each of A's rows, and the new top-n sum follows from
three numbers per row, its top-n sum ``S``, n-th largest ``a_n`` and (n+1)-th largest ``a_{n+1}``
(scores are non-negative, so a missing (n+1)-th counts as 0):

* removing ``v_out``: if ``v_out >= a_n`` it was kept, and ``a_{n+1}`` takes its place:
  ``S - v_out + a_{n+1}``, the smallest kept value becomes ``a_{n+1}``; otherwise nothing changes
  and the smallest kept value stays ``a_n``;
* adding ``v_in``: it is kept if it exceeds the smallest kept value, which it replaces.

(Ties do not matter: a tied ``v_out`` swapped for an equal ``a_{n+1}`` leaves the sum.) That is
the **exact** gain of every row-wise exchange in O(1) per row (:func:`rowwise_gains`).

A transposable tile's optimum is not a sum of row terms, but it is bounded by both of its
relaxations, the rows alone and the columns alone: ``kept <= min(rows, cols)``. The row relaxation
changes as above; the column relaxation of bin A changes by the top-n (over the tile's rows) of
the channel that comes in minus that of the channel that leaves. :func:`tile_proxy_gains` ranks
exchanges by the change of ``Σ_tiles min(rows, cols)``; the search then solves only the few best
candidates exactly (``nmsparse.oneshot.permute.search``), so the result stays exact.
"""

from __future__ import annotations

import torch

__all__ = ["rowwise_gains", "tile_proxy_gains", "column_tops"]

_CHUNK = 1 << 22  # entries of the (pairs, m, m, slices, h) work array per step


def column_tops(xc: torch.Tensor, n: int) -> torch.Tensor:
    """Per channel and slice, the top-n over the slice's h rows: ``(C, Q, h) -> (C, Q)``."""
    return xc.topk(min(n, xc.shape[2]), dim=2).values.sum(dim=2)


def _row_stats(g: torch.Tensor, n: int):
    """``g (P, m, Qc, h)`` -> top-n sum, n-th and (n+1)-th largest over the m channels, ``(P, Qc, h)``."""
    rows = g.permute(0, 2, 3, 1)  # (P, Qc, h, m)
    m = rows.shape[-1]
    top = rows.topk(min(n + 1, m), dim=-1).values
    if n >= m:  # every channel kept: a missing (n+1)-th counts as 0 (scores are non-negative)
        top = torch.cat([top, torch.zeros_like(top[..., :1])], dim=-1)
    return top[..., :n].sum(-1), top[..., n - 1], top[..., n]


def _side_delta(g_out: torch.Tensor, g_in: torch.Tensor, a_n: torch.Tensor, a_n1: torch.Tensor, out_axis: int):
    """Row-sum change of one bin when its channel ``i`` (``g_out (P, m, Qc, h)``) is exchanged for
    the other bin's channel ``j`` (``g_in``): ``(P, m_i, m_j, Qc, h)``, i along ``out_axis``."""
    if out_axis == 1:
        v_out, v_in = g_out[:, :, None], g_in[:, None, :]
    else:
        v_out, v_in = g_out[:, None, :], g_in[:, :, None]
    lo, lo1 = a_n[:, None, None], a_n1[:, None, None]
    kept = v_out >= lo
    floor = torch.where(kept, lo1, lo)  # the smallest kept value once v_out is gone
    return torch.where(kept, lo1 - v_out, torch.zeros((), dtype=g_out.dtype)) + (v_in - floor).clamp_min(0)


def _chunks(p: int, m: int, q: int, h: int):
    step = max(1, _CHUNK // max(1, p * m * m * h))
    return range(0, q, step), step


def rowwise_gains(xc: torch.Tensor, bins_a: torch.Tensor, bins_b: torch.Tensor, n: int) -> torch.Tensor:
    """Exact gain of exchanging ``bins_a[p, i]`` with ``bins_b[p, j]``, for every p, i, j:
    ``(P, m, m)`` float64, from ``xc (C, Q, h)`` (every slice row keeps its top-n)."""
    p, m = bins_a.shape
    _, q, h = xc.shape
    total = torch.zeros(p, m, m, dtype=torch.float64)
    starts, step = _chunks(p, m, q, h)
    for s in starts:
        ga, gb = xc[bins_a, s:s + step], xc[bins_b, s:s + step]  # (P, m, Qc, h)
        _, an_a, an1_a = _row_stats(ga, n)
        _, an_b, an1_b = _row_stats(gb, n)
        d = _side_delta(ga, gb, an_a, an1_a, 1) + _side_delta(gb, ga, an_b, an1_b, 2)
        total += d.sum(dim=(3, 4), dtype=torch.float64)
    return total


def tile_proxy_gains(xc: torch.Tensor, tops: torch.Tensor, bins_a: torch.Tensor, bins_b: torch.Tensor,
                     n: int) -> torch.Tensor:
    """Change of ``Σ_tiles min(row relaxation, column relaxation)`` over both bins for every
    exchange ``bins_a[p, i] <-> bins_b[p, j]``: ``(P, m, m)``, a ranking of the exchanges (not
    their exact gain). ``tops`` from :func:`column_tops`."""
    p, m = bins_a.shape
    _, q, h = xc.shape
    total = torch.zeros(p, m, m, dtype=torch.float64)
    starts, step = _chunks(p, m, q, h)
    for s in starts:
        ga, gb = xc[bins_a, s:s + step], xc[bins_b, s:s + step]
        ta, tb = tops[bins_a, s:s + step], tops[bins_b, s:s + step]  # (P, m, Qc)
        sa, an_a, an1_a = _row_stats(ga, n)
        sb, an_b, an1_b = _row_stats(gb, n)
        rows_a, rows_b = sa.sum(-1), sb.sum(-1)  # (P, Qc): each tile's row relaxation
        cols_a, cols_b = ta.sum(1), tb.sum(1)
        new_rows_a = rows_a[:, None, None] + _side_delta(ga, gb, an_a, an1_a, 1).sum(-1)  # (P, m, m, Qc)
        new_rows_b = rows_b[:, None, None] + _side_delta(gb, ga, an_b, an1_b, 2).sum(-1)
        moved = tb[:, None, :] - ta[:, :, None]  # (P, m_i, m_j, Qc): column tops in minus out, for A
        new_a = torch.minimum(new_rows_a, cols_a[:, None, None] + moved)
        new_b = torch.minimum(new_rows_b, cols_b[:, None, None] - moved)
        old = torch.minimum(rows_a, cols_a) + torch.minimum(rows_b, cols_b)
        total += (new_a + new_b - old[:, None, None]).sum(-1, dtype=torch.float64)
    return total
