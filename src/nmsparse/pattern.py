"""N:M sparsity patterns.

``n:m`` means **n entries kept in every group of m** (NVIDIA's, SR-STE's and PyTorch's
convention). Hubara et al. (2021) write N for the number of *zeros*; for n = m/2 (2:4, 4:8) both
readings agree, for anything else they do not.

``"2:4"`` is row-wise (1-D) N:M: every group of 4 consecutive entries along the reduction
dimension keeps 2. ``"2:4T"`` is transposable N:M: every 4x4 tile keeps exactly 2 entries in each
row and in each column, so both W and its transpose are 2:4 sparse. ``n == m`` is legal and
means dense.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from numbers import Real
from typing import Union

from .errors import PatternError

__all__ = ["NMPattern", "PatternLike", "parse_density_text", "parse_spec", "check_density", "check_fraction"]

_ACCEPTED = 'accepted forms: "n:m" (row-wise, e.g. "2:4") or "n:mT" (transposable, e.g. "4:8T"), with integers 1 <= n <= m'
_PATTERN_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*([tT]?)\s*$")
MAX_GROUP = 2**63 - 1
"""Largest n and m: a group cannot be longer than a tensor dimension (torch sizes are int64)."""


@dataclass(frozen=True)
class NMPattern:
    """An N:M sparsity pattern: ``n`` kept out of every ``m``.

    Parameters
    ----------
    n : int
        Entries kept per group (per row and per column of a tile if transposable), 1 <= n <= m.
    m : int
        Group length (tile side if transposable).
    transposable : bool
        If True, every m x m tile keeps exactly n per row and per column.

    Examples
    --------
    >>> p = NMPattern.parse("4:8T")
    >>> p.n, p.m, p.transposable, p.density
    (4, 8, True, 0.5)
    >>> str(p)
    '4:8T'
    """

    n: int
    m: int
    transposable: bool = False

    def __post_init__(self) -> None:
        for name, value in (("n", self.n), ("m", self.m)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise PatternError(
                    f"NMPattern: {name} must be an int, got {value!r} ({type(value).__name__}); {_ACCEPTED}."
                )
        if not isinstance(self.transposable, bool):
            raise PatternError(f"NMPattern: transposable must be a bool, got {self.transposable!r}.")
        if self.m > MAX_GROUP:
            raise PatternError(
                f"NMPattern: m = {_digits(self.m)} is longer than any tensor dimension (at most 2**63 - 1); "
                f"{_ACCEPTED}."
            )
        if self.m < 1 or not (1 <= self.n <= self.m):
            raise PatternError(
                f"NMPattern: need 1 <= n <= m (n = entries KEPT per group of m), got n={_digits(self.n)}, m={self.m}. "
                f"{_ACCEPTED}; n = m means dense."
            )

    @classmethod
    def parse(cls, text: "PatternLike") -> "NMPattern":
        """Parse ``"n:m"`` or ``"n:mT"``; an ``NMPattern`` is returned unchanged.

        n is the number of entries **kept** per group of m. A trailing ``T`` (or ``t``) asks for
        the transposable pattern.
        """
        if isinstance(text, NMPattern):
            return text
        if isinstance(text, Real) and not isinstance(text, bool):
            raise PatternError(
                f"pattern must be a string or NMPattern, got the number {text!r}; {_ACCEPTED}. A number is an "
                f"unstructured density, taken by unstructured_mask, sparsify_, prune_ and prune_state_dict, not here."
            )
        if not isinstance(text, str):
            raise PatternError(f"pattern must be a string or NMPattern, got {_shown(text)}; {_ACCEPTED}.")
        match = _PATTERN_RE.match(text) if len(text) <= 100 else None
        if match is None:
            raise PatternError(f"cannot parse pattern {_short(text)}; {_ACCEPTED}.")
        if max(len(match.group(1).lstrip("0")), len(match.group(2).lstrip("0"))) > 19:  # before int(): no huge ints
            raise PatternError(
                f"pattern {_short(text)}: n and m are at most 2**63 - 1 (a group cannot be longer than a tensor "
                f"dimension); {_ACCEPTED}."
            )
        n, m, t = int(match.group(1)), int(match.group(2)), bool(match.group(3))
        if not (1 <= n <= m):
            raise PatternError(
                f"pattern {text!r}: need 1 <= n <= m (n = entries KEPT per group of m), got n={n}, m={m}; "
                f"{_ACCEPTED}; n = m means dense."
            )
        return cls(n, m, t)

    def __str__(self) -> str:
        return f"{self.n}:{self.m}{'T' if self.transposable else ''}"

    @property
    def density(self) -> float:
        """Fraction of entries kept, n / m."""
        return self.n / self.m

    @property
    def density_fraction(self) -> Fraction:
        """Exact kept fraction n/m."""
        return Fraction(self.n, self.m)

    @property
    def sparsity(self) -> float:
        """Fraction of entries pruned, 1 - n/m."""
        return 1.0 - self.density

    @property
    def is_dense(self) -> bool:
        """True when n == m: every entry is kept."""
        return self.n == self.m

    def rowwise(self) -> "NMPattern":
        """The row-wise pattern with the same n and m."""
        return NMPattern(self.n, self.m, False)


PatternLike = Union[str, NMPattern]


def _short(text: str) -> str:
    """repr of user text, cut to a readable length (a 5000-character pattern is not echoed whole)."""
    return repr(text) if len(text) <= 60 else f"{text[:40]!r}... ({len(text)} characters)"


def _digits(value: int) -> str:
    """An int for a message, without converting a huge one to a string (Python's int-string limit)."""
    return str(value) if value.bit_length() <= 200 else f"an integer of {value.bit_length()} bits"


_DENSITY_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(%?)\s*$")
_DENSITY_FORMS = 'a density (the fraction of entries KEPT, unstructured) such as 0.5 or "50%"'


def parse_density_text(text: str, where: str = "pattern") -> "float | None":
    """A density written on a command line: ``"50%"`` or ``"0.5"`` -> 0.5 (the fraction KEPT, in [0, 1]);
    None for text that is not a number (an ``n:m`` pattern). A number out of range is a PatternError.

    Examples
    --------
    >>> parse_density_text("50%"), parse_density_text("0.25"), parse_density_text("2:4")
    (0.5, 0.25, None)
    """
    value = _density_of_text(text)
    return None if value is None else check_density(value, where, shown=repr(text))


def _density_of_text(text) -> "float | None":
    m = _DENSITY_RE.match(text) if isinstance(text, str) and len(text) <= 40 else None
    return None if m is None else float(m.group(1)) / (100.0 if m.group(2) else 1.0)


def _shown(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:40] + '...'}"


def check_fraction(value, where: str, *, name: str, meaning: str, low_open: bool = False, high_open: bool = False,
                   example: str = "0.5", shown: "str | None" = None) -> float:
    """``value`` as a float in [0, 1] (``low_open`` / ``high_open`` exclude an end), or a one-line PatternError
    stating the rule, the value and an example. The one range check of every density-like argument."""
    number = isinstance(value, Real) and not isinstance(value, bool)
    x = float(value) if number else math.nan
    ok = number and math.isfinite(x) and (x > 0.0 if low_open else x >= 0.0) and (x < 1.0 if high_open else x <= 1.0)
    if not ok:
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        got = shown if shown is not None else (repr(value) if number else _short(value) if isinstance(value, str) else
                                               _shown(value))
        raise PatternError(f"{where}: {name} is {meaning}, a number in {interval}, got {got}; pass e.g. {example}.")
    return x


def check_density(value, where: str, *, allow_zero: bool = True, shown: "str | None" = None) -> float:
    """An unstructured density (the fraction of entries KEPT) in [0, 1], or (0, 1] without ``allow_zero``."""
    return check_fraction(value, where, name="an unstructured density", meaning="the fraction of entries KEPT",
                          low_open=not allow_zero, example='0.5 (or "50%"), or an N:M pattern such as "2:4"', shown=shown)


def parse_spec(value, where: str, *, allow_zero: bool = True, densities: bool = True) -> "NMPattern | float":
    """The one parser of a pattern argument: an ``NMPattern``, an ``"n:m"`` / ``"n:mT"`` string, or (with
    ``densities``) an unstructured density, given as a number (0.5) or text (``"0.5"``, ``"50%"``), returned as a
    float in [0, 1] (``(0, 1]`` without ``allow_zero``). Anything else is a one-line PatternError naming ``where``.

    Examples
    --------
    >>> parse_spec("2:4T", "f"), parse_spec(0.5, "f"), parse_spec("25%", "f")
    (NMPattern(n=2, m=4, transposable=True), 0.5, 0.25)
    """
    if isinstance(value, NMPattern):
        return value
    if isinstance(value, Real) and not isinstance(value, bool):
        if not densities:
            raise PatternError(f"{where} takes an N:M pattern, got the number {value!r} (a density); {_ACCEPTED}.")
        return check_density(value, where, allow_zero=allow_zero)
    if isinstance(value, str):
        density = _density_of_text(value)
        if density is not None:
            if not densities:
                raise PatternError(f"{where} takes an N:M pattern, got {_short(value)} (a density); {_ACCEPTED}.")
            return check_density(density, where, allow_zero=allow_zero, shown=repr(value))
        try:
            return NMPattern.parse(value)
        except PatternError as err:
            if _PATTERN_RE.match(value) if len(value) <= 100 else None:
                raise PatternError(f"{where}: {err}") from None  # an n:m out of range
            forms = f"{_ACCEPTED}, or {_DENSITY_FORMS}" if densities else _ACCEPTED
            raise PatternError(f"{where}: cannot parse pattern {_short(value)}; {forms}.") from None
    forms = f"{_ACCEPTED}, or {_DENSITY_FORMS}" if densities else _ACCEPTED
    raise PatternError(f"{where}: pattern must be a string, an NMPattern{' or a number' if densities else ''}, got "
                       f"{_shown(value)}; {forms}.")
