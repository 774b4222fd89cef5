"""Shared helpers for benchmark scripts: weight generators, timing, tables and JSON lines."""

from __future__ import annotations

import json
import os
import platform
import time
from typing import Callable, Dict, Iterable, List, Sequence

import torch


def make_weight(rows: int, cols: int, distribution: str, seed: int = 0) -> torch.Tensor:
    """fp32 weights: 'gaussian' N(0, 1) or 'heavy' Student-t with 2 degrees of freedom."""
    g = torch.Generator().manual_seed(seed)
    if distribution == "gaussian":
        return torch.randn(rows, cols, generator=g)
    if distribution == "heavy":
        normal = torch.randn(rows, cols, generator=g)
        chi2 = torch.randn(rows, cols, generator=g).pow(2) + torch.randn(rows, cols, generator=g).pow(2)
        return normal / torch.sqrt(chi2 / 2)
    raise ValueError(f"unknown distribution {distribution!r}")


def best_of(fn: Callable[[], object], repeats: int) -> tuple:
    """Run fn `repeats` times; return (min seconds, last result)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def machine() -> Dict[str, object]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


def write_jsonl(path: str, records: Iterable[Dict[str, object]]) -> None:
    """Append records as JSON lines (creating the folder)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")


def print_table(rows: Sequence[Dict[str, object]], columns: Sequence[tuple]) -> List[str]:
    """Print rows as a Markdown table; columns are (key, header, format). Returns the lines."""
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        cells = []
        for key, _, fmt in columns:
            v = row.get(key)
            cells.append("-" if v is None else (format(v, fmt) if fmt and not isinstance(v, str) else str(v)))
        lines.append("| " + " | ".join(cells) + " |")
    print("\n".join(lines), flush=True)
    return lines
