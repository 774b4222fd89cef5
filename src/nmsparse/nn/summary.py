"""``summary(model)``: a per-layer account of what ``sparsify_`` did and why it skipped layers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

import torch
from torch import nn

from ..errors import ArgumentError
from .sparsify import _STATE, _mask_of


@dataclass
class SparsitySummary:
    """Rows of dicts (name, shape, pattern, density, solver, ste, static, last_refresh, refreshes,
    changed, status); ``str()`` gives a table."""

    rows: List[Dict[str, object]] = field(default_factory=list)
    forward_count: int = 0

    def __str__(self) -> str:
        if not self.rows:
            return "no layer has been sparsified (call nmsparse.sparsify_(model, pattern))"
        headers = ["layer", "shape", "pattern", "density", "solver", "ste", "last refresh", "changed", "status"]
        cells = [
            [
                r["name"], "x".join(map(str, r["shape"])), r["pattern"] or "-",
                "-" if r["density"] is None else f"{r['density']:.3f}", r["solver"] or "-", r["ste"] or "-",
                "-" if r["last_refresh"] is None else f"step {r['last_refresh']}" + (" (static)" if r["static"] else ""),
                "-" if r["changed"] is None else str(r["changed"]), r["status"],
            ]
            for r in self.rows
        ]
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)), "  ".join("-" * w for w in widths)]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
        lines.append(f"training forward passes counted: {self.forward_count}")
        return "\n".join(lines)


def summary(model: nn.Module) -> SparsitySummary:
    """Per-layer table of a sparsified model: chosen layers with their mask, skipped ones with why."""
    if not isinstance(model, nn.Module):
        raise ArgumentError(f"summary: model must be a torch.nn.Module, got {type(model).__name__}; pass the sparsified model.")
    state = getattr(model, _STATE, None)
    if state is None:
        return SparsitySummary()
    rows = []
    for name, (module, pname) in state.entries.items():
        p = _mask_of(module, pname)
        solver = p.method or ("topk" if not hasattr(p.pattern, "n") else ("exact" if p.pattern.transposable else "topn"))
        rows.append({
            "name": name,
            "shape": tuple(p.mask.shape),
            "pattern": p.describe_pattern(),
            "density": float(p.mask.float().mean()),
            "solver": solver,
            "ste": p.ste,
            "static": p.static,
            "update_every": p.update_every,
            "last_refresh": int(p.last_refresh),
            "refreshes": p.refreshes,
            "changed": p.last_changed if p.refreshes else None,
            "status": "sparse",
        })
    for name, (shape, reason) in state.skipped.items():
        rows.append({
            "name": name, "shape": tuple(shape), "pattern": None, "density": None, "solver": None, "ste": None,
            "static": False, "update_every": None, "last_refresh": None, "refreshes": 0, "changed": None,
            "status": f"skipped: {reason}",
        })
    position = {name: i for i, name in enumerate(state.order)}
    rows.sort(key=lambda r: position.get(r["name"], len(position)))
    return SparsitySummary(rows, state.forward_count)


@torch.no_grad()
def kept_and_density(model: nn.Module) -> tuple:
    """(share of sum |W| the masks keep, share of entries kept) over every sparsified weight.

    Measured on the dense weights the masks are chosen from; ``(1.0, 1.0)`` for a model with no
    sparsified weight.
    """
    state = getattr(model, _STATE, None)
    kept = total = count = size = 0.0
    for module, pname in (state.entries.values() if state is not None else ()):
        dense = module.parametrizations[pname].original.abs().double()
        mask = _mask_of(module, pname).mask
        kept += float(torch.where(mask, dense, torch.zeros((), dtype=dense.dtype)).sum())
        total += float(dense.sum())
        count += int(mask.sum())
        size += mask.numel()
    return (kept / total, count / size) if size else (1.0, 1.0)
