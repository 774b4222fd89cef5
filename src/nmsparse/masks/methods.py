"""The registry of mask methods per pattern kind. Solvers are imported lazily (numba compiles)."""

from __future__ import annotations

from typing import Dict, Tuple

from ..errors import MethodError
from ..pattern import NMPattern, PatternLike
from .transposable import TransposableMethod

ROWWISE_METHOD = "topn"


def _exact():
    from ._exact_kernels import solve_tiles_exact

    return lambda tiles, n: (solve_tiles_exact(tiles, n), None)


def _greedy():
    from ._greedy_kernels import greedy_tiles

    return greedy_tiles


def _greedy_torch():
    from ._approx_torch import greedy_tiles_torch

    return greedy_tiles_torch


def _refine():
    from ._refine_kernels import refine_tiles

    return lambda tiles, n: (refine_tiles(tiles, n), None)


def _refine_torch():
    from ._approx_torch import refine_tiles_torch

    return lambda tiles, n: (refine_tiles_torch(tiles, n), None)


TRANSPOSABLE_METHODS: Dict[str, TransposableMethod] = {
    "exact": TransposableMethod(
        "exact", True, "optimal on every tile (min-cost flow / b-matching, compiled, batched)", _exact
    ),
    "greedy": TransposableMethod(
        "greedy",
        False,
        "Hubara et al.'s 2-approximation: visit entries by descending score, keep if row and column have room; "
        "may leave rows short of n (counted in info['short_tiles'])",
        _greedy,
        _greedy_torch,
    ),
    "refine": TransposableMethod(
        "refine",
        False,
        "near-optimal: dual-potential warm start (each row keeps its top n of reduced scores), column repair to "
        "exactly n per row and column, then improving 2-swaps",
        _refine,
        _refine_torch,
    ),
}


def available_methods(pattern: PatternLike) -> Tuple[str, ...]:
    """Names of the methods that can solve ``pattern``; the first is the default.

    Row-wise patterns have one method, ``"topn"`` (optimal); ``"exact"`` is accepted as its alias.
    Transposable patterns: ``"exact"`` (default, optimal), ``"greedy"``, ``"refine"``.

    Examples
    --------
    >>> available_methods("2:4")
    ('topn',)
    >>> available_methods("4:8T")
    ('exact', 'greedy', 'refine')
    """
    p = NMPattern.parse(pattern)
    if p.transposable:
        return tuple(TRANSPOSABLE_METHODS)
    return (ROWWISE_METHOD,)


def resolve_method(pattern: NMPattern, method, where: str) -> str:
    """Validate ``method`` for ``pattern``; ``None`` gives the default."""
    known = available_methods(pattern)
    if method is None:
        return known[0]
    if not isinstance(method, str):
        raise MethodError(f"{where}: method must be a string, got {type(method).__name__}; known: {', '.join(known)}.")
    if not pattern.transposable and method == "exact":
        return ROWWISE_METHOD  # top-n is the exact row-wise solver
    if method not in known:
        extra = ""
        if not pattern.transposable and method in TRANSPOSABLE_METHODS:
            extra = f" ({method!r} is a transposable method: use pattern '{pattern}T' for transposable masks)"
        raise MethodError(
            f"{where}: unknown method {method!r} for pattern {pattern}{extra}; known methods: {', '.join(known)}."
        )
    return method
