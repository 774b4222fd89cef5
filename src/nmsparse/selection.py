"""The one layer-selection rule of every entry point (``include=`` / ``exclude=``).

``include`` and ``exclude`` are a regular expression or a sequence of them, each matched **in full**
(``re.fullmatch``) against a qualified module name (``"encoder.layer.0.attention.query"``) and,
where a parameter is meant, its full parameter name (``"encoder.layer.0.attention.query.weight"``).
``exclude="fc2"`` therefore excludes ``fc2`` but not ``fc20``; write ``"fc2.*"`` for a prefix.
:func:`sparsify_`, :func:`prune_`, :func:`prune_state_dict`, the ``prune`` CLI, AdaPrune,
``sift.transform`` and the WGSEF regularizer all use this module, so the rule is the same everywhere.
"""

from __future__ import annotations

import re
from typing import List, Optional, Sequence, Union

from .errors import PatternError

__all__ = ["Patterns", "compile_patterns", "matches_any", "NameFilter"]

Patterns = Union[None, str, Sequence[str]]


def compile_patterns(patterns: Patterns, argname: str, where: str) -> List["re.Pattern[str]"]:
    """Compile ``include`` / ``exclude``: None → [], a string → one regex, a sequence → each.

    Raises :class:`PatternError` (a ValueError) naming ``where`` and ``argname`` for a non-string
    entry or an invalid regular expression.
    """
    if patterns is None:
        return []
    if isinstance(patterns, (str, bytes)) or not hasattr(patterns, "__iter__"):
        patterns = [patterns]
    out = []
    for p in patterns:
        if not isinstance(p, str):
            raise PatternError(
                f"{where}: {argname} takes regular expressions (a string or a list of strings) matched in full "
                f"against module names, got {p!r} ({type(p).__name__}); pass e.g. {argname}=['lm_head', 'fc2']."
            )
        try:
            out.append(re.compile(p))
        except re.error as err:
            raise PatternError(
                f"{where}: {argname} pattern {p!r} is not a valid regular expression ({err}); "
                f"escape special characters with re.escape."
            ) from None
    return out


def matches_any(regexes: Sequence["re.Pattern[str]"], *names: str) -> bool:
    """True if any regex matches any of ``names`` in full."""
    return any(r.fullmatch(n) for r in regexes for n in names if n is not None)


class NameFilter:
    """``include`` / ``exclude`` compiled once; ``selector(module_name, param_name)`` answers.

    A name is selected when ``include`` is empty or matches it, and ``exclude`` does not.
    ``param_name`` is the full parameter name (``"fc1.weight"``) where one is meant; both it and the
    module name are tried.

    Examples
    --------
    >>> s = NameFilter(exclude="fc2", where="example")
    >>> s("fc2", "fc2.weight"), s("fc20", "fc20.weight")
    (False, True)
    """

    def __init__(self, include: Patterns = None, exclude: Patterns = None, *, where: str = "nmsparse"):
        self.include = compile_patterns(include, "include", where)
        self.exclude = compile_patterns(exclude, "exclude", where)

    def included(self, module_name: str, param_name: Optional[str] = None) -> bool:
        return not self.include or matches_any(self.include, module_name, param_name)

    def excluded(self, module_name: str, param_name: Optional[str] = None) -> bool:
        return matches_any(self.exclude, module_name, param_name)

    def __call__(self, module_name: str, param_name: Optional[str] = None) -> bool:
        return self.included(module_name, param_name) and not self.excluded(module_name, param_name)
