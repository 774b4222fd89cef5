"""`nmsparse masks`: masks of several patterns and solvers on one realistic weight matrix.

The matrix is synthetic but shaped like a trained transformer projection: heavy-tailed entries
(Student-t, 5 degrees of freedom) scaled per input channel by a log-normal factor, with a few
outlier input channels, as reported for LLM weights. It is made here from a fixed seed, so the
demo needs no download and prints the same masks on every machine.
"""

from __future__ import annotations

import time
from typing import Dict, Iterator, Sequence

import torch

from ..diversity import log10_count_masks, log10_masks_per_64
from ..errors import MethodError, ShapeError
from ..masks import available_methods, solve_mask, unstructured_mask
from ..pattern import NMPattern

DEFAULT_PATTERNS = ("1:2", "2:4", "4:8", "8:16", "2:4T", "4:8T", "8:16T")


def demo_weight(rows: int = 1024, cols: int = 1024, seed: int = 0) -> torch.Tensor:
    """A deterministic ``(rows, cols)`` float32 weight resembling a trained linear layer."""
    g = torch.Generator().manual_seed(seed)
    # Student-t(5) as normal / sqrt(chi2_5 / 5): heavy tails, finite variance.
    normal = torch.randn(rows, cols, generator=g)
    chi2 = torch.randn(rows, cols, 5, generator=g).pow(2).sum(-1)
    t = normal / torch.sqrt(chi2 / 5)
    col_scale = torch.exp(0.4 * torch.randn(cols, generator=g))
    outliers = torch.randperm(cols, generator=g)[: max(1, cols // 100)]
    col_scale[outliers] *= 6.0
    row_scale = torch.exp(0.2 * torch.randn(rows, 1, generator=g))
    return (t * col_scale * row_scale * (2.0 / (rows + cols)) ** 0.5).float()


def _methods_for(p: NMPattern, methods: Sequence[str]) -> list:
    return [m for m in methods if m in available_methods(p)] if p.transposable else ["topn"]


def run_demo(
    weight: torch.Tensor, patterns: Sequence[str] = DEFAULT_PATTERNS, methods: Sequence[str] = ("exact", "refine", "greedy")
) -> Iterator[Dict[str, object]]:
    """Yield one result row per (pattern, method), after unstructured top-k at each pattern density.

    Row keys: pattern, method, density, kept (share of sum |W| kept), log10_masks (log10 of the
    number of masks the structure allows for this weight), log10_masks_64 (the same per 64
    weights, :func:`nmsparse.diversity.log10_masks_per_64`, as ``nmsparse demo`` and the claims
    report print it), optimal, short_tiles, seconds.
    """
    shape = tuple(weight.shape)
    parsed = [NMPattern.parse(p) for p in patterns]
    # Every argument is checked before the first row is printed: no half table, then an error.
    for p in parsed:
        if any(side % p.m for side in shape):
            raise ShapeError(
                f"masks: pattern {p} needs a matrix side that is a multiple of {p.m}, got {shape[0]}x{shape[1]}; "
                f"choose --size as a multiple of {max(q.m for q in parsed)}."
            )
    known = sorted({name for q in parsed if q.transposable for name in available_methods(q)})
    unknown = [m for m in methods if m not in known] if known else []
    if unknown:
        raise MethodError(f"masks: unknown method(s) {', '.join(map(repr, unknown))}; known for transposable patterns: {', '.join(known)}.")
    magnitude = weight.abs().double()
    total = float(magnitude.sum())
    by_density = {}
    for p in parsed:
        by_density.setdefault(p.density_fraction, p)
    for fraction, p in by_density.items():
        start = time.perf_counter()
        mask = unstructured_mask(weight, float(fraction))
        seconds = time.perf_counter() - start
        yield {
            "pattern": f"unstructured {float(fraction):.4g}",
            "method": "top-k",
            "density": float(mask.float().mean()),
            "kept": float(torch.where(mask, magnitude, 0.0).sum()) / total,
            "log10_masks": log10_count_masks(p, shape, structure="unstructured"),
            "log10_masks_64": log10_masks_per_64(fraction),
            "optimal": True,
            "short_tiles": None,
            "seconds": seconds,
        }
    plan = [(p, name) for p in parsed for name in _methods_for(p, methods)]
    warm = torch.rand(2 * max(p.m for p in parsed), 2 * max(p.m for p in parsed), generator=torch.Generator().manual_seed(0))
    for p, name in plan:  # load (or, on a first run, compile) every kernel before timing anything
        solve_mask(warm[: 2 * p.m, : 2 * p.m], p, method=name)
    for p, name in plan:
        res = solve_mask(weight, p, method=name)
        yield {
            "pattern": str(p),
            "method": res.method,
            "density": res.density,
            "kept": res.kept_fraction,
            "log10_masks": log10_count_masks(p, shape),
            "log10_masks_64": log10_masks_per_64(p),
            "optimal": res.optimal,
            "short_tiles": res.info.get("short_tiles"),
            "seconds": res.seconds,
        }
