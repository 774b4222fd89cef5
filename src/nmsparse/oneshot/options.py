"""Arguments of :func:`nmsparse.prune_`: the algorithm chain, the pattern or density, the options."""

from __future__ import annotations

import math
from typing import List, Optional, Union

from ..errors import ConvertError, MethodError
from ..pattern import NMPattern

__all__ = ["ALGORITHMS", "REFINEMENTS", "parse_algorithm", "parse_spec", "check_topk", "check_options"]

ALGORITHMS = ("magnitude", "wanda", "sparsegpt", "adaprune")
REFINEMENTS = ("adaprune", "sparsegpt", "lsq")


def parse_algorithm(algorithm, where: str = "prune_") -> List[str]:
    """``"sparsegpt+adaprune"`` -> ``["sparsegpt", "adaprune"]``; unknown names are a MethodError."""
    if not isinstance(algorithm, str) or not algorithm.strip():
        raise MethodError(f"{where}: algorithm must be a string such as 'sparsegpt' or 'sparsegpt+adaprune', got {algorithm!r}.")
    steps = [s.strip().lower() for s in algorithm.split("+")]
    if steps[0] not in ALGORITHMS:
        raise MethodError(f"{where}: unknown algorithm {steps[0]!r} in {algorithm!r}; known: {', '.join(ALGORITHMS)}.")
    for s in steps[1:]:
        if s not in REFINEMENTS:
            raise MethodError(
                f"{where}: {s!r} cannot refine a fixed mask in {algorithm!r}; refinements after '+': {', '.join(REFINEMENTS)}."
            )
    return steps

def parse_spec(pattern, where: str) -> Union[NMPattern, float]:
    """An NMPattern or a density in [0, 1]: the library's one parser (a bad one is a PatternError everywhere)."""
    from ..pattern import parse_spec as parse

    return parse(pattern, where)

def check_topk(method, where: str) -> Optional[str]:
    if method not in (None, "exact", "topk"):
        raise MethodError(f"{where}: unstructured densities keep the top-k per tensor (method None, 'exact' or 'topk'), got {method!r}.")
    return "topk"

def check_options(damp, blocksize, sequential, where: str) -> None:
    if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not math.isfinite(damp) or damp < 0:
        raise ConvertError(f"{where}: damp must be a finite number >= 0 (a fraction of mean(diag H), e.g. 0.01), got {damp!r}.")
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
        raise ConvertError(f"{where}: blocksize must be an int >= 1, got {blocksize!r}.")
    if not isinstance(sequential, bool):
        raise ConvertError(f"{where}: sequential must be True or False, got {sequential!r}.")
