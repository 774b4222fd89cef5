"""Mask diversity: how many masks a sparsity structure allows.

Hubara et al. (NeurIPS 2021) define the *mask diversity* of a structure as the number of masks
it admits on a given weight shape; a structure with more masks constrains training less.
This module counts them exactly with Python integers (no torch, no numpy) and offers log10
helpers, because the counts are astronomically large for real layers.

``n:m`` means **n entries kept** in every group of m (NVIDIA's convention; Hubara et al. write N
for the number of zeros, which agrees for n = m/2). Groups run along the **last** dimension of a
2-D shape ``(rows, cols)`` = ``(out, in)``. An N-D shape is read as ``rows = prod(shape[:-1])``,
``cols = shape[-1]``, so pass a conv weight as its implicit-GEMM matrix ``(out, kh*kw*in)``, not
as ``(out, in, kh, kw)``.

Structures
----------
- ``"rowwise"``: every group of m consecutive entries of a row keeps n:  C(m, n) ** groups.
- ``"transposable"``: every m x m tile keeps n in each row and column:  T(n, m) ** tiles, where
  T(n, m) is the number of m x m 0/1 matrices with all line sums n (:func:`count_transposable_tile`).
- ``"unstructured"``: any mask with k = round(density * numel) kept:  C(numel, k).
- ``"block"``: the matrix is cut into blocks, a fraction of whole blocks is kept.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

from ._diversity_args import (  # noqa: F401  (parse_shape, kept_count, STRUCTURES are public here)
    STRUCTURES,
    Density,
    ShapeLike,
    _as_matrix,
    _block_dims,
    _check_block_arg,
    _check_density,
    _check_divisible,
    _check_shape,
    _check_structure,
    kept_count,
    parse_shape,
)
from .errors import ShapeError
from ._tile_count import (
    EXACT_TILE_LIMIT,
    _log10_comb,
    log10_int,
    count_transposable_tile,
    log10_count_transposable_tile_estimate,
    transposable_tile_is_countable,
)
from .pattern import NMPattern, PatternLike

__all__ = [
    "STRUCTURES",
    "EXACT_TILE_LIMIT",
    "parse_shape",
    "count_masks",
    "count_unstructured",
    "count_block_masks",
    "count_transposable_tile",
    "transposable_tile_is_countable",
    "log10_count_transposable_tile_estimate",
    "log10_int",
    "log10_count_masks",
    "log10_masks_per_64",
    "diversity_table",
]

_LOG10_E = math.log10(math.e)


# ---------------------------------------------------------------------------------------------
# counts


def count_unstructured(shape: ShapeLike, density: Density) -> int:
    """C(numel, k): masks keeping k = floor(density * numel + 1/2) of numel entries.

    The rounding is half up, done exactly with :class:`fractions.Fraction` on the density's exact
    value (a float's binary value, so 0.1 is slightly above 1/10). Exact and slow for huge
    shapes; use :func:`log10_count_masks` there.

    Examples
    --------
    >>> count_unstructured((2, 4), 0.5)
    70
    """
    total, kept = _unstructured_args(shape, density, "count_unstructured")
    _check_binomial_size(total, kept, "count_unstructured")
    return math.comb(total, kept)


def _unstructured_args(shape: ShapeLike, density: Density, where: str) -> Tuple[int, int]:
    dims = _check_shape(shape, where)
    d = _check_density(density, where)
    numel = math.prod(dims)
    return numel, kept_count(numel, d)


def count_block_masks(shape: ShapeLike, block: Union[int, Sequence[int]], density: Density) -> int:
    """Masks that keep whole blocks: C(num_blocks, floor(density * num_blocks + 1/2)).

    Parameters
    ----------
    shape : tuple of int
        Read as (rows, cols) = (prod(shape[:-1]), shape[-1]); both must divide by the block.
    block : int or (int, int)
        k for k x k blocks, or (bh, bw).
    density : float or Fraction
        Kept fraction of blocks, in (0, 1]; rounded half up as in :func:`count_unstructured`.

    Examples
    --------
    >>> count_block_masks((4, 4), 2, 0.5)   # 4 blocks of 2x2, keep 2
    6
    """
    total, kept = _block_args(shape, block, density, "count_block_masks")
    _check_binomial_size(total, kept, "count_block_masks")
    return math.comb(total, kept)


def _block_args(shape: ShapeLike, block, density: Density, where: str) -> Tuple[int, int]:
    dims = _check_shape(shape, where)
    bh, bw = _block_dims(block, where)
    d = _check_density(density, where)
    rows, cols = _as_matrix(dims)
    if rows % bh or cols % bw:
        raise ShapeError(
            f"{where}: {bh}x{bw} blocks need rows and cols divisible by ({bh}, {bw}); shape {dims} is "
            f"read as ({rows}, {cols}). Pad the shape or choose a block that divides it."
        )
    num_blocks = (rows // bh) * (cols // bw)
    return num_blocks, kept_count(num_blocks, d)


def count_masks(
    pattern: PatternLike,
    shape: ShapeLike,
    *,
    structure: Optional[str] = None,
    block: Union[int, Sequence[int], None] = None,
) -> int:
    """Exact number of masks of ``shape`` allowed by ``pattern`` (Hubara et al.'s mask diversity).

    Parameters
    ----------
    pattern : str or NMPattern
        ``"n:m"`` or ``"n:mT"`` (n kept per group of m).
    shape : tuple of int
        2-D ``(rows, cols)``, groups along cols; N-D is read as (prod(shape[:-1]), shape[-1]).
    structure : {None, "rowwise", "transposable", "unstructured", "block"}
        None follows the pattern. The others count that structure at the pattern's n, m or
        density n/m: "rowwise" C(m, n)**groups; "transposable" T(n, m)**tiles;
        "unstructured" C(numel, round(numel * n/m)); "block" needs ``block``. Only "rowwise"
        and "transposable" need the shape to divide by m.
    block : int or (int, int), optional
        Block size for ``structure="block"`` (a fraction n/m of the blocks is kept).

    Returns
    -------
    int
        The exact count; it can have millions of digits for real layers, so prefer
        :func:`log10_count_masks` for tables.

    Raises
    ------
    ShapeError
        Shape not a tuple of positive ints, or not divisible by m (rowwise: cols; transposable:
        rows and cols) or by the block; or a count with more than ``MAX_POWER_DIGITS`` digits
        (``MAX_BINOMIAL_DIGITS`` for unstructured and block counts), which would take minutes to
        hours to build: use :func:`log10_count_masks`.
    PatternError
        Bad pattern or structure; or a transposable tile beyond :data:`EXACT_TILE_LIMIT`.

    Examples
    --------
    >>> count_masks("4:8T", (8, 8))
    116963796250
    >>> count_masks("2:4", (1, 8))
    36
    """
    p = NMPattern.parse(pattern)
    kind = _check_structure(structure, p)
    dims = _check_shape(shape, "count_masks")
    _check_block_arg(kind, block)
    _check_count_size(p, dims, kind, block)
    if kind == "unstructured":
        return count_unstructured(dims, p.density_fraction)
    if kind == "block":
        return count_block_masks(dims, block, p.density_fraction)
    rows, cols = _as_matrix(dims)
    _check_divisible(rows, cols, p, kind == "transposable", dims, "count_masks")
    if kind == "rowwise":
        return math.comb(p.m, p.n) ** (rows * cols // p.m)
    return count_transposable_tile(p.n, p.m) ** ((rows // p.m) * (cols // p.m))


# Exact counts are built only up to these sizes (decimal digits): a power of a small integer with
# 10^7 digits takes seconds, a binomial coefficient with 10^5 digits too (math.comb is much slower).
MAX_POWER_DIGITS = 10**7
MAX_BINOMIAL_DIGITS = 10**5


def _check_binomial_size(total: int, kept: int, where: str) -> None:
    digits = _log10_comb(total, kept)
    if digits > MAX_BINOMIAL_DIGITS:
        raise ShapeError(
            f"{where}: the exact count C({total}, {kept}) has about {digits:.4g} digits, more than the "
            f"{MAX_BINOMIAL_DIGITS} this function builds exactly; use log10_count_masks(...) instead."
        )


def _check_count_size(p: NMPattern, dims: Tuple[int, ...], kind: str, block) -> None:
    """Refuse, before computing, an exact count too large to build in reasonable time and memory."""
    if kind == "rowwise":  # the base C(m, n) is itself a binomial: bound it like one
        _check_binomial_size(p.m, p.n, "count_masks")
    digits = _log10_and_exactness(p, dims, kind, block, True)[0]
    limit = MAX_BINOMIAL_DIGITS if kind in ("unstructured", "block") else MAX_POWER_DIGITS
    if digits > limit:
        raise ShapeError(
            f"count_masks: the exact count for {p} ({kind}) on shape {dims} has about {digits:.4g} digits, more than "
            f"the {limit} this function builds exactly; use log10_count_masks(...) instead (log10 = {digits:.6g})."
        )


# ---------------------------------------------------------------------------------------------
# log scale


def _log10_tile(n: int, m: int, allow_estimate: bool) -> Tuple[float, bool]:
    if transposable_tile_is_countable(n, m):
        return log10_int(count_transposable_tile(n, m)), True
    if not allow_estimate:
        count_transposable_tile(n, m)  # raises the explanatory PatternError
    return log10_count_transposable_tile_estimate(n, m), False


def _log10_and_exactness(
    p: NMPattern, dims: Tuple[int, ...], kind: str, block, allow_estimate: bool
) -> Tuple[float, bool]:
    """(log10 count, True if exact) for one structure; shared by log10_count_masks and the table."""
    _check_block_arg(kind, block)
    if kind == "unstructured":
        return _log10_comb(*_unstructured_args(dims, p.density_fraction, "log10_count_masks")), True
    if kind == "block":
        return _log10_comb(*_block_args(dims, block, p.density_fraction, "log10_count_masks")), True
    rows, cols = _as_matrix(dims)
    _check_divisible(rows, cols, p, kind == "transposable", dims, "log10_count_masks")
    if kind == "rowwise":
        # groups * log10 C(m, n): never build the huge power
        return (rows * cols // p.m) * _log10_comb(p.m, p.n), True
    per_tile, exact = _log10_tile(p.n, p.m, allow_estimate)
    return (rows // p.m) * (cols // p.m) * per_tile, exact


def log10_count_masks(
    pattern: PatternLike,
    shape: ShapeLike,
    *,
    structure: Optional[str] = None,
    block: Union[int, Sequence[int], None] = None,
    allow_estimate: bool = True,
) -> float:
    """log10 of :func:`count_masks`, computed without building the huge integer.

    Same arguments as :func:`count_masks`. Counts are products over groups or tiles, so
    log10 = groups * log10 C(m, n) (row-wise) or tiles * log10 T(n, m) (transposable).
    For a transposable tile beyond :data:`EXACT_TILE_LIMIT` (e.g. 16:32T) log10 T(n, m) is the
    labelled Canfield-McKay **estimate** (:func:`log10_count_transposable_tile_estimate`) when
    ``allow_estimate`` is True, else ``PatternError``. Whether the estimate was used is
    ``not transposable_tile_is_countable(n, m)``; :func:`diversity_table` reports it per row.

    Examples
    --------
    >>> round(log10_count_masks("4:8T", (8, 8)), 4)
    11.0681
    """
    p = NMPattern.parse(pattern)
    kind = _check_structure(structure, p)
    dims = _check_shape(shape, "log10_count_masks")
    return _log10_and_exactness(p, dims, kind, block, allow_estimate)[0]


def log10_masks_per_64(structure: Union[None, str, NMPattern, Density]) -> float:
    """Mask diversity per 64 weights: log10 of the number of masks an 8 x 8 block of weights admits.

    The one definition behind every "log10 masks / 64" figure the library prints (``nmsparse
    demo``, the masks tour, ``nmsparse bench claims``):

    * ``None``, ``"dense"`` or density 1: one mask, 0.
    * a density ``d`` (float or Fraction in (0, 1]): unstructured, any mask of the 8 x 8 block
      keeping k = :func:`kept_count` (64, d) entries: log10 C(64, k). For 50 %: log10 C(64, 32) =
      18.26. (Not multiplicative: a 16 x 16 block gives log10 C(256, 128) / 4 = 18.94 per 64, which
      is why a block size must be fixed once.)
    * an N:M pattern (``"2:4"``, ``"4:8T"``, :class:`NMPattern`): row-wise 8 x 8 = 64 / m groups of
      C(m, n) choices, transposable 64 / m^2 tiles of T(n, m) (:func:`count_transposable_tile`).
      These counts multiply over groups and tiles, so when m does not divide 8 (3:6, 8:16T) the same
      per-weight rate is used: 64 / m * log10 C(m, n) and 64 / m^2 * log10 T(n, m). Beyond
      :data:`EXACT_TILE_LIMIT` T(n, m) is the labelled estimate, as in :func:`log10_count_masks`.

    Examples
    --------
    >>> round(log10_masks_per_64(0.5), 2), round(log10_masks_per_64("2:4"), 2), round(log10_masks_per_64("4:8T"), 2)
    (18.26, 12.45, 11.07)
    """
    if structure is None or (isinstance(structure, str) and structure.strip() == "dense"):
        return 0.0
    if isinstance(structure, (str, NMPattern)):
        p = NMPattern.parse(structure)
        if p.transposable:
            return 64 * _log10_tile(p.n, p.m, allow_estimate=True)[0] / (p.m * p.m)
        return 64 * _log10_comb(p.m, p.n) / p.m
    density = _check_density(structure, "log10_masks_per_64")
    return _log10_comb(64, kept_count(64, density))


def diversity_table(pattern: PatternLike, shape: ShapeLike, *, max_count_digits: int = 1000) -> list:
    """Rows comparing unstructured, row-wise n:m and transposable n:mT at the same density.

    All three rows are given whatever the pattern's own flag. Printing is the caller's job.

    Returns
    -------
    list of dict
        One dict per structure with keys ``structure`` ("unstructured", "rowwise",
        "transposable"), ``pattern`` (e.g. "density 1/2", "4:8", "4:8T"), ``log10_count``
        (float), ``count`` (exact int, or None when it is an estimate or would have more than
        ``max_count_digits`` digits, to keep the table fast), ``exact`` (False when
        ``log10_count`` uses the Canfield-McKay estimate), ``log10_vs_unstructured``
        (log10 of count / unstructured count; <= 0) and ``note`` (empty, or why the row is an
        estimate). A structure the shape does not fit (e.g. transposable with rows not a
        multiple of m) gets None values and the ShapeError message as its note.

    Examples
    --------
    >>> [r["count"] for r in diversity_table("2:4T", (4, 4))]
    [12870, 1296, 90]
    """
    p = NMPattern.parse(pattern)
    dims = _check_shape(shape, "diversity_table")
    table = []
    for kind, label in (
        ("unstructured", f"density {p.density_fraction}"),
        ("rowwise", f"{p.n}:{p.m}"),
        ("transposable", f"{p.n}:{p.m}T"),
    ):
        row = {"structure": kind, "pattern": label, "log10_count": None, "count": None, "exact": None, "note": ""}
        try:
            row["log10_count"], row["exact"] = _log10_and_exactness(p, dims, kind, None, True)
        except ShapeError as err:  # e.g. rows not a multiple of m: that structure does not apply
            row["note"] = str(err)
        else:
            if row["exact"] and row["log10_count"] < max_count_digits:  # digits = floor(log10) + 1
                row["count"] = count_masks(p, dims, structure=kind)
            elif not row["exact"]:
                row["note"] = "estimate: Canfield-McKay (2005) asymptotic formula for T(n, m)"
        table.append(row)
    base = table[0]["log10_count"]
    for row in table:
        row["log10_vs_unstructured"] = None if row["log10_count"] is None else row["log10_count"] - base
    return table
