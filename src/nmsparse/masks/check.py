"""Checking that a mask obeys a pattern, with an error that names the first bad group or tile."""

from __future__ import annotations

from typing import Optional

import torch

from ..errors import ArgumentError, MaskError, ShapeError, guard_resources
from ..layout import MatrixLayout, matrix_layout, to_groups, to_tiles
from ..pattern import NMPattern, PatternLike
from ._inputs import as_tensor


@guard_resources("check_mask")
def check_mask(mask: torch.Tensor, pattern: PatternLike, *, dim: Optional[int] = None, exact: bool = False) -> None:
    """Raise :class:`MaskError` unless ``mask`` obeys ``pattern``.

    Row-wise ``n:m``: every group of m along the grouped axis (see :mod:`nmsparse.layout`) keeps at
    most n. Transposable ``n:mT``: every m x m tile keeps at most n in each row and each column.
    With ``exact=True`` every *full* group (every row and column of every full tile) must keep
    exactly n, as the exact and refine solvers guarantee. Partial groups at ragged edges
    (padding) are always held to "at most n".

    Parameters
    ----------
    mask : torch.Tensor
        Bool tensor (True = kept). For a weight, pass ``weight != 0``.
    pattern : str or NMPattern
        ``"n:m"`` or ``"n:mT"``; n is the number KEPT per group of m.
    dim : int, optional
        Grouped axis, as in :func:`nmsparse.find_mask`.
    exact : bool
        Require exactly n (rather than at most n) in full groups.

    Examples
    --------
    >>> check_mask(torch.tensor([[True, False, True, False]]), "2:4")
    >>> check_mask(torch.tensor([[True, True, True, False]]), "2:4")
    Traceback (most recent call last):
    ...
    nmsparse.errors.MaskError: check_mask: pattern 2:4 allows at most 2 kept entries in each group of 4 ...
    """
    problem = _first_problem(mask, pattern, dim, exact, "check_mask")
    if problem is not None:
        raise MaskError(problem)


@guard_resources("is_valid_mask")
def is_valid_mask(mask: torch.Tensor, pattern: PatternLike, *, dim: Optional[int] = None, exact: bool = False) -> bool:
    """True if ``mask`` obeys ``pattern`` (see :func:`check_mask`); bad arguments still raise."""
    return _first_problem(mask, pattern, dim, exact, "is_valid_mask") is None


def _first_problem(mask, pattern, dim, exact, where) -> Optional[str]:
    if not isinstance(exact, bool):
        raise ArgumentError(f"{where}: exact must be True or False, got {exact!r} ({type(exact).__name__}).")
    p = NMPattern.parse(pattern)
    mask = as_tensor(mask, "mask", where)
    if mask.dtype != torch.bool:
        raise ShapeError(f"{where}: mask must be a bool tensor, got dtype {mask.dtype}; for a weight pass `weight != 0`.")
    layout = matrix_layout(mask.shape, dim, where=where)
    kept = layout.to_matrix(mask, p.m, p.transposable, fill=False).to(torch.int32)
    real = layout.to_matrix(torch.ones_like(mask), p.m, p.transposable, fill=False).to(torch.int32)
    if p.transposable:
        return _tile_problem(kept, real, p, layout, exact, where)
    return _group_problem(kept, real, p, layout, exact, where)


def _rule(p: NMPattern, exact: bool) -> str:
    amount = "exactly" if exact else "at most"
    if p.transposable:
        return f"pattern {p} allows {amount} {p.n} kept entries in each row and each column of every {p.m}x{p.m} tile"
    return f"pattern {p} allows {amount} {p.n} kept entries in each group of {p.m}"


def _group_problem(kept, real, p, layout: MatrixLayout, exact, where) -> Optional[str]:
    counts = to_groups(kept, p.m).sum(-1)
    full = to_groups(real, p.m).sum(-1) == p.m
    bad = counts > p.n
    if exact:
        bad |= full & (counts != p.n)
    if not bool(bad.any()):
        return None
    r, g = (int(i) for i in torch.nonzero(bad)[0])
    c0 = g * p.m
    return (
        f"{where}: {_rule(p, exact)} ({layout.describe()}), but in the {tuple(kept.shape)} matrix view of the "
        f"mask of shape {layout.shape}, row {r}, columns {c0}..{c0 + p.m - 1} (starting at mask"
        f"{list(layout.original_index(r, c0, p.m))}) keep {int(counts[r, g])}. "
        f"{int(bad.sum())} of {bad.numel()} groups break the rule."
    )


def _tile_problem(kept, real, p, layout: MatrixLayout, exact, where) -> Optional[str]:
    m = p.m
    tiles = to_tiles(kept, m)
    full = to_tiles(real, m).sum((1, 2)) == m * m
    row_counts, col_counts = tiles.sum(2), tiles.sum(1)  # (T, m) each
    bad_rows, bad_cols = row_counts > p.n, col_counts > p.n
    if exact:
        bad_rows |= full[:, None] & (row_counts != p.n)
        bad_cols |= full[:, None] & (col_counts != p.n)
    bad_tiles = bad_rows.any(1) | bad_cols.any(1)
    if not bool(bad_tiles.any()):
        return None
    t = int(torch.nonzero(bad_tiles)[0])
    tiles_per_row = kept.shape[1] // m
    r0, c0 = (t // tiles_per_row) * m, (t % tiles_per_row) * m
    if bool(bad_rows[t].any()):
        i = int(torch.nonzero(bad_rows[t])[0])
        what = f"row {r0 + i} keeps {int(row_counts[t, i])}"
    else:
        j = int(torch.nonzero(bad_cols[t])[0])
        what = f"column {c0 + j} keeps {int(col_counts[t, j])}"
    start = layout.original_index(r0, c0, m)
    return (
        f"{where}: {_rule(p, exact)} ({layout.describe()}), but in the {tuple(kept.shape)} matrix view of the "
        f"mask of shape {layout.shape}, the tile at rows {r0}..{r0 + m - 1}, columns {c0}..{c0 + m - 1}"
        f"{'' if start is None else f' (starting at mask{list(start)})'}: {what}. "
        f"{int(bad_tiles.sum())} of {bad_tiles.numel()} tiles break the rule."
    )
