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

MAX_DIMS = 64
"""Most dimensions a shape may have (torch's own limit on a tensor's dimensions)."""
MAX_NUMEL = 2**63 - 1
"""Most entries a counted shape may have: torch sizes are int64, so no weight holds more. Bounding it
keeps every log-scale count a finite float (a 2,000-dimension shape would overflow one)."""
MAX_SHAPE_TEXT = 2000
"""Longest shape text :func:`parse_shape` reads."""
Density = Union[float, int, Fraction]


def parse_shape(text: str) -> Tuple[int, ...]:
    """Parse ``"64x64"`` (or ``"8x3x3x16"``, ``"64,64"``) into a tuple of positive ints.

    Examples
    --------
    >>> parse_shape("768x3072")
    (768, 3072)
    """
    if not isinstance(text, str) or len(text) > MAX_SHAPE_TEXT or _SHAPE_TEXT_RE.match(text) is None:
        shown = f"{text[:40]!r}... ({len(text)} characters)" if isinstance(text, str) and len(text) > 60 else repr(text)
        raise ShapeError(
            f"cannot parse shape {shown}: write at most {MAX_DIMS} positive integers separated by 'x', "
            "e.g. '64x64' or '768x3072'."
        )
    parts = re.split(r"[xX×,]", text)
    if len(parts) > MAX_DIMS or any(len(part.strip().lstrip("0")) > 19 for part in parts):  # before int()
        raise ShapeError(
            f"parse_shape: a shape has at most {MAX_DIMS} dimensions of at most 2**63 - 1 each (torch's limits); "
            f"got {len(parts)} dimensions in {len(text)} characters."
        )
    return _check_shape(tuple(int(part) for part in parts), "parse_shape", max_numel=None)


def _check_shape(shape: ShapeLike, where: str, max_numel: Optional[int] = MAX_NUMEL) -> Tuple[int, ...]:
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
            raise ShapeError(f"{where}: every dimension must be >= 1, got the shape {_shape_text(shape)}.")
        if d > MAX_NUMEL:
            raise ShapeError(f"{where}: a dimension is at most 2**63 - 1 (torch sizes are int64), got the shape {_shape_text(shape)}.")
        dims.append(d)
    if len(dims) > MAX_DIMS:
        raise ShapeError(f"{where}: a shape has at most {MAX_DIMS} dimensions (torch's limit), got {len(dims)}.")
    if max_numel is not None and math.prod(dims) > max_numel:
        raise ShapeError(
            f"{where}: the shape {_shape_text(dims)} has about 10**{_log10_prod(dims):.0f} entries, more than any tensor "
            f"holds (at most 2**63 - 1); count a shape torch can allocate."
        )
    return tuple(dims)


def _log10_prod(dims: Sequence[int]) -> float:
    return sum(math.log10(d) for d in dims)


def _shape_text(shape) -> str:
    """A shape for a message, cut when it is long (a 2,000-dimension shape is not echoed whole)."""
    shape = tuple(shape)
    if len(shape) <= 8 and all(isinstance(d, int) and abs(d) < 10**30 for d in shape):
        return repr(shape)
    return f"of {len(shape)} dimensions"


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
