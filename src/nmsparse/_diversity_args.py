"""Argument checks and parsing shared by :mod:`nmsparse.diversity` (shapes, densities, structures).

Pure Python like diversity itself; kept apart so that diversity.py holds the counting.
"""

from __future__ import annotations

import math
import numbers
import operator
import re
from fractions import Fraction
from typing import Optional, Sequence, Tuple, Union

from .errors import PatternError, ShapeError
from .pattern import NMPattern

STRUCTURES = ("unstructured", "rowwise", "transposable", "block")
"""Names accepted by ``structure=``; ``None`` follows the pattern (``"n:mT"`` -> transposable)."""

_SHAPE_TEXT_RE = re.compile(r"^\s*\d+(\s*[xX×,]\s*\d+)*\s*$")

ShapeLike = Sequence[int]
Density = Union[float, int, Fraction]


def parse_shape(text: str) -> Tuple[int, ...]:
    """Parse ``"64x64"`` (or ``"8x3x3x16"``, ``"64,64"``) into a tuple of positive ints.

    Examples
    --------
    >>> parse_shape("768x3072")
    (768, 3072)
    """
    if not isinstance(text, str) or _SHAPE_TEXT_RE.match(text) is None:
        raise ShapeError(
            f"cannot parse shape {text!r}: write positive integers separated by 'x', e.g. '64x64' or '768x3072'."
        )
    dims = tuple(int(part) for part in re.split(r"[xX×,]", text))
    return _check_shape(dims, "parse_shape")


def _check_shape(shape: ShapeLike, where: str) -> Tuple[int, ...]:
    if isinstance(shape, str):
        raise ShapeError(
            f"{where}: shape must be a tuple of ints, got the string {shape!r}; use parse_shape({shape!r})."
        )
    if not isinstance(shape, (tuple, list)) or len(shape) == 0:
        raise ShapeError(f"{where}: shape must be a non-empty tuple of positive ints, e.g. (64, 64); got {shape!r}.")
    dims = []
    for d in shape:
        if isinstance(d, bool):
            raise ShapeError(f"{where}: shape entries must be ints, got bool in {shape!r}.")
        try:
            d = operator.index(d)  # ints and integer-like (numpy ints); floats are refused, not truncated
        except TypeError:
            raise ShapeError(
                f"{where}: shape entries must be ints, got {d!r} ({type(d).__name__}) in {tuple(shape)!r}."
            ) from None
        if d < 1:
            raise ShapeError(f"{where}: every dimension must be >= 1, got {tuple(shape)!r}.")
        dims.append(d)
    return tuple(dims)


def _as_matrix(dims: Tuple[int, ...]) -> Tuple[int, int]:
    """(rows, cols) of the 2-D view: groups run along the last dimension."""
    return math.prod(dims[:-1]), dims[-1]


def _check_density(density: Density, where: str) -> Fraction:
    if isinstance(density, bool) or not isinstance(density, numbers.Real):
        raise PatternError(f"{where}: density must be a real number in (0, 1], got {density!r}.")
    try:
        exact = Fraction(density)  # exact binary value of a float, so the rounding rule is exact
    except (ValueError, OverflowError, TypeError):
        raise PatternError(f"{where}: density must be a finite number in (0, 1], got {density!r}.") from None
    if not (0 < exact <= 1):
        raise PatternError(f"{where}: density is the kept fraction and must lie in (0, 1], got {density!r}.")
    return exact


def kept_count(total: int, density: Density) -> int:
    """Entries kept at ``density``: k = floor(density * total + 1/2), round half up, computed in
    exact rational arithmetic on the density's exact (binary) value.

    The one rounding rule for "a fraction of entries": :func:`nmsparse.unstructured_mask` keeps
    exactly this many, so counts here match the masks it makes.
    """
    return math.floor(Fraction(density) * total + Fraction(1, 2))


def _check_structure(structure: Optional[str], pattern: NMPattern) -> str:
    if structure is None:
        return "transposable" if pattern.transposable else "rowwise"
    if structure not in STRUCTURES:
        raise PatternError(
            f"unknown structure {structure!r}; known structures: {', '.join(STRUCTURES)} "
            f"(or None to follow the pattern)."
        )
    return structure


def _check_divisible(rows: int, cols: int, p: NMPattern, transposable: bool, dims: Tuple[int, ...], where: str) -> None:
    if cols % p.m:
        raise ShapeError(
            f"{where}: pattern {p.n}:{p.m} groups the last dimension in chunks of {p.m}, but shape {dims} has "
            f"{cols} columns. Pad the last dimension to a multiple of {p.m}."
        )
    if transposable and rows % p.m:
        raise ShapeError(
            f"{where}: transposable {p.n}:{p.m}T needs {p.m}x{p.m} tiles, so rows = prod(shape[:-1]) must be a "
            f"multiple of {p.m}; shape {dims} has {rows} rows. Pad the rows to a multiple of {p.m}."
        )


def _block_dims(block: Union[int, Sequence[int]], where: str) -> Tuple[int, int]:
    if isinstance(block, (tuple, list)):
        if len(block) != 2:
            raise ShapeError(f"{where}: block must be an int k (k x k blocks) or a pair (bh, bw), got {block!r}.")
        bh, bw = _check_shape(tuple(block), where)
        return bh, bw
    (k,) = _check_shape((block,), where)
    return k, k


def _check_block_arg(kind: str, block) -> None:
    if kind == "block" and block is None:
        raise ShapeError('structure="block" needs block=k (k x k blocks) or block=(bh, bw).')
    if kind != "block" and block is not None:
        raise ShapeError(
            f'block={block!r} only applies to structure="block", not {kind!r}; drop it or set structure="block".'
        )
