"""``summary(model)``: a per-layer account of every nmsparse mask and why layers were skipped."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

import torch
from torch import nn

from ..errors import ArgumentError
from .distributed import full_weight
from .entries import mask_entries
from .sparsify import _STATE


@dataclass
class SparsitySummary:
    """Rows of dicts (name, shape, group_dim (0 for HF Conv1D, grouped along its stored dim 0 =
    input features; shown as ``[groups dim 0]`` after the shape), pattern, density, solver, gradient, update,
    update_every, last_refresh, refreshes, changed, steps, status); ``str()`` gives a table.
    ``forward_count``: the most training passes any mask has counted."""

    rows: List[Dict[str, object]] = field(default_factory=list)
    forward_count: int = 0

    def __str__(self) -> str:
        if not self.rows:
            return "no layer has been sparsified (call nmsparse.sparsify_(model, pattern))"
        headers = ["layer", "shape", "pattern", "density", "solver", "gradient", "update", "last refresh", "changed", "status"]
        cells = [
            [
                r["name"], "x".join(map(str, r["shape"])) + (" [groups dim 0]" if r.get("group_dim") == 0 else ""),
                r["pattern"] or "-",
                "-" if r["density"] is None else f"{r['density']:.3f}", r["solver"] or "-", r["gradient"] or "-",
                r["update"] or "-", "-" if r["last_refresh"] is None else f"step {r['last_refresh']}",
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
    """Per-layer table of a masked model, whichever entry point attached the masks: masked weights
    with their pattern, resolved solver, gradient and update policy; tied holders; skipped layers with why."""
    if not isinstance(model, nn.Module):
        raise ArgumentError(f"summary: model must be a torch.nn.Module, got {type(model).__name__}; pass the sparsified model.")
    state = getattr(model, _STATE, None)
    rows = []
    steps = 0
    for entry in mask_entries(model):
        p = entry.mask
        steps = max(steps, p.steps)
        row = {
            "name": entry.name,
            "shape": tuple(p.mask.shape),
            "group_dim": p.group_dim,
            "pattern": p.describe_pattern(),
            "density": float(p.mask.float().mean()),
            "solver": p.method,
            "gradient": p.gradient,
            "update": p.update,
            "update_every": p.update_every,
            "last_refresh": int(p.last_refresh),
            "refreshes": p.refreshes,
            "changed": p.last_changed if p.refreshes else None,
            "steps": p.steps,
            "status": "sparse",
        }
        rows.append(row)
        for tied_name, _, _ in entry.tied:
            rows.append({**row, "name": tied_name, "status": f"tied: same weight and mask as {entry.name}"})
    masked_names = {r["name"] for r in rows}
    for name, (shape, reason) in (state.skipped.items() if state is not None else ()):
        if name in masked_names:
            continue
        rows.append({
            "name": name, "shape": tuple(shape), "group_dim": None, "pattern": None, "density": None, "solver": None,
            "gradient": None, "update": None, "update_every": None, "last_refresh": None,
            "refreshes": 0, "changed": None, "steps": None, "status": f"skipped: {reason}",
        })
    position = {name: i for i, name in enumerate(state.order)} if state is not None else {}
    rows.sort(key=lambda r: position.get(r["name"], len(position)))
    return SparsitySummary(rows, steps)


@torch.no_grad()
def kept_and_density(model: nn.Module) -> tuple:
    """(share of sum |W| the masks keep, share of entries kept) over every masked weight.

    Measured on the dense weights the masks are chosen from; ``(1.0, 1.0)`` for a model with no
    masked weight. Sees every nmsparse mask, whichever entry point attached it.
    """
    kept = total = count = size = 0.0
    for entry in mask_entries(model):
        dense = full_weight(entry.dense).detach().abs().double()  # FSDP2: gathers a shard (a collective)
        mask = entry.mask.mask
        kept += float(torch.where(mask, dense, torch.zeros((), dtype=dense.dtype, device=dense.device)).sum())
        total += float(dense.sum())
        count += int(mask.sum())
        size += mask.numel()
    return (kept / total if total else 1.0, count / size) if size else (1.0, 1.0)
