"""Independent oracles: brute force and an LP (scipy HiGHS).

They share no code with the solvers in ``nmsparse.masks`` on purpose: a test that compares a
solver with an oracle built from the same pieces could not fail.
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np


@lru_cache(maxsize=None)
def transposable_tile_patterns(n: int, m: int) -> np.ndarray:
    """All m x m 0/1 matrices with exactly n ones in every row and every column.

    Returned as a bool array of shape (count, m, m) in lexicographic order of the row choices.
    Brute force over row combinations (pruned when a column overfills): use only for m <= 6.
    """
    if m > 6:
        raise ValueError(f"brute force over all {m}x{m} tiles is too slow; use m <= 6")
    row_choices = []
    for cols in itertools.combinations(range(m), n):
        row = np.zeros(m, dtype=np.int64)
        row[list(cols)] = 1
        row_choices.append(row)
    found = []

    # Row by row, skipping a row choice as soon as some column would exceed n ones: the same
    # enumeration as filtering all C(m, n)**m products, without visiting the dead ones.
    def extend(rows, fill):
        if len(rows) == m:
            if np.all(fill == n):
                found.append(np.array(rows, dtype=bool))
            return
        for row in row_choices:
            new_fill = fill + row
            if new_fill.max() <= n:
                extend(rows + [row], new_fill)

    extend([], np.zeros(m, dtype=np.int64))
    return np.stack(found) if found else np.zeros((0, m, m), dtype=bool)


def brute_force_transposable(tile: np.ndarray, n: int) -> float:
    """Best objective sum(tile * S) over every valid transposable mask S of one m x m tile."""
    tile = np.asarray(tile, dtype=np.float64)
    m = tile.shape[0]
    patterns = transposable_tile_patterns(n, m)
    return float(np.max(np.einsum("kij,ij->k", patterns.astype(np.float64), tile)))


def lp_transposable_objective(tile: np.ndarray, n: int) -> float:
    """Optimum of the LP relaxation (integral for this bipartite b-matching) via scipy HiGHS.

    maximise sum_ij A_ij x_ij  s.t.  sum_j x_ij = n,  sum_i x_ij = n,  0 <= x_ij <= 1.
    Works for any m x m tile, including rectangular ones is not supported (square only).
    """
    from scipy.optimize import linprog

    a = np.asarray(tile, dtype=np.float64)
    m = a.shape[0]
    a_eq = np.zeros((2 * m, m * m))
    for i in range(m):
        a_eq[i, i * m : (i + 1) * m] = 1.0  # row i
        a_eq[m + i, i::m] = 1.0  # column i
    b_eq = np.full(2 * m, float(n))
    res = linprog(-a.ravel(), A_eq=a_eq, b_eq=b_eq, bounds=(0.0, 1.0), method="highs")
    if res.status != 0:
        raise RuntimeError(f"HiGHS failed: {res.message}")
    return float(-res.fun)


def brute_force_rowwise(group_scores: np.ndarray, n: int) -> float:
    """Best sum of n kept scores in one 1-D group, by enumerating all C(m, n) subsets."""
    g = np.asarray(group_scores, dtype=np.float64)
    return max(float(g[list(c)].sum()) for c in itertools.combinations(range(g.shape[0]), n))
