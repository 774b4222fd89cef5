"""The claims report's numbers: aggregation over seeds, the Markdown table, the claim checks,
the JSON-lines file, and re-rendering a report from that file without training again."""

from __future__ import annotations

import json
import math
import os
import statistics
from typing import Dict, List, Optional, Sequence

from .claims_common import STES, STRUCTURES, log10_diversity_per_64, lookup
from ..errors import ArgumentError


def aggregate(records: Sequence[Dict[str, object]]) -> List[Dict[str, object]]:
    """Group by (task, structure, ste): mean and sample std (ddof 1; 0 for one seed) of the metric."""
    groups: Dict[tuple, List[Dict[str, object]]] = {}
    for r in records:
        groups.setdefault((r["task"], r["structure"], r["ste"]), []).append(r)
    rows = []
    for (task, structure, ste), rs in groups.items():
        vals = [float(r["value"]) for r in rs]
        row = {
            "task": task, "structure": structure, "family": rs[0]["family"], "ste": ste, "n": len(rs),
            "metric": rs[0]["metric"], "mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "log10_div64": rs[0]["log10_div64"], "seconds": statistics.fmean(float(r["seconds"]) for r in rs),
            "cpu_seconds": statistics.fmean(float(r.get("cpu_seconds", r["seconds"])) for r in rs),
            "kept": statistics.fmean(float(r["kept"]) for r in rs),
            "by_seed": {int(r["seed"]): float(r["value"]) for r in rs},
        }
        if task == "lm":
            ppl = [math.exp(v) for v in vals]
            row.update(ppl_mean=statistics.fmean(ppl), ppl_std=statistics.stdev(ppl) if len(ppl) > 1 else 0.0)
        rows.append(row)
    return rows


def _cell(row, task) -> str:
    if row is None:
        return "-"
    if task == "digits":
        return f"{100 * row['mean']:.2f} ± {100 * row['std']:.2f}"
    return f"{row['ppl_mean']:.3f} ± {row['ppl_std']:.3f}"


def results_table(rows: Sequence[Dict[str, object]], structures: Sequence[str] = STRUCTURES) -> str:
    """Markdown table: one line per structure; digits accuracy (%) and LM validation perplexity,
    mean ± std over seeds, for STE and SR-STE; mean wall-clock and CPU seconds per run. Dense
    fills both columns."""
    head = (
        "| structure | log10 masks/64 | digits acc % (STE) | digits acc % (SR-STE) | LM val ppl (STE) | "
        "LM val ppl (SR-STE) | s/run digits | s/run LM |\n|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for s in structures:
        cells = [s, f"{log10_diversity_per_64(s):.2f}"]
        secs = []
        for task in ("digits", "lm"):
            for ste in STES:
                cells.append(_cell(lookup(rows, task, s, ste), task))
        for task in ("digits", "lm"):
            found = [r for r in rows if r["task"] == task and r["structure"] == s]
            wall = statistics.fmean(r["seconds"] for r in found) if found else 0.0
            cpu = statistics.fmean(r["cpu_seconds"] for r in found) if found else 0.0
            secs.append(f"{wall:.1f} ({cpu:.1f} CPU)" if found else "-")
        lines.append("| " + " | ".join(cells + secs) + " |")
    return "\n".join(lines)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN if either side is constant."""
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    rx, ry = ranks(list(x)), ranks(list(y))
    if len(set(rx)) < 2 or len(set(ry)) < 2:
        return float("nan")
    return statistics.correlation(rx, ry)


def claim_checks(rows: Sequence[Dict[str, object]]) -> List[str]:
    """Lines of numbers behind claims (a) and (b), for each task and STE.

    (a) Spearman rho between log10 diversity and quality (accuracy, or minus the validation
    loss) over the sparse structures; the exact solver stands for each transposable pattern.
    (b) For each transposable pattern (exact solver): its gap to dense and the larger of the two
    seed standard deviations.
    (c) For every sparse structure, the paired gap to dense: the same seed shares the initial
    weights and batch order, so per-seed differences cancel most of the seed-to-seed spread;
    mean ± std of those differences.
    """
    out = []
    for task in sorted({r["task"] for r in rows}):
        dense = lookup(rows, task, "dense", "-")
        sign = 1.0 if task == "digits" else -1.0
        scale, unit = (100.0, " pts acc") if task == "digits" else (1.0, " nats/byte")
        for ste in STES:
            sparse = [r for r in rows if r["task"] == task and r["ste"] == ste and r["family"] != "transposable greedy"]
            if len(sparse) >= 3:
                rho = spearman([r["log10_div64"] for r in sparse], [sign * r["mean"] for r in sparse])
                out.append(f"{task} {ste}: (a) Spearman rho(log10 diversity, quality) = {rho:+.2f} over {len(sparse)} structures")
            if dense is None:
                continue
            for r in rows:
                if r["task"] == task and r["ste"] == ste and r["family"] == "transposable exact":
                    gap = scale * (r["mean"] - dense["mean"])
                    spread = scale * max(r["std"], dense["std"])
                    out.append(f"{task} {ste}: (b) {r['structure']} - dense = {gap:+.3f}{unit} (seed std up to {spread:.3f})")
            for r in rows:
                if r["task"] == task and r["ste"] == ste:
                    seeds = sorted(set(r["by_seed"]) & set(dense["by_seed"]))
                    diffs = [scale * (r["by_seed"][k] - dense["by_seed"][k]) for k in seeds]
                    if diffs:
                        sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
                        out.append(f"{task} {ste}: (c) paired {r['structure']} - dense = {statistics.fmean(diffs):+.3f} ± {sd:.3f}{unit} over {len(diffs)} seeds")
    return out


def write_jsonl(path: str, records: Sequence[Dict[str, object]]) -> None:
    """Append records as JSON lines (creating the folder)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")


def report_from_jsonl(path: str, run_id: Optional[str] = None, plot_path: Optional[str] = None) -> Dict[str, object]:
    """Rebuild the table, the claim checks and (if ``plot_path``) the plot from a ``claims.jsonl``.

    Uses the per-run lines of ``run_id`` (default: the last run in the file), so a report can be
    re-rendered without training again. Returns ``rows, table, checks, run_id``.
    """
    with open(path, encoding="utf-8") as fh:
        lines = [json.loads(line) for line in fh if line.strip()]
    runs = [r for r in lines if "summary" not in r and "task" in r]
    if not runs:
        raise ArgumentError(f"report_from_jsonl: the file must hold per-run result lines, but {path!r} has none; run `nmsparse bench claims` first.")
    run_id = run_id or runs[-1]["run_id"]
    records = [r for r in runs if r["run_id"] == run_id]
    if not records:
        raise ArgumentError(f"report_from_jsonl: run_id must name a run in the file, got {run_id!r}, not in {path!r}; pass run_id=None for the last run.")
    rows = aggregate(records)
    structures = [s for s in STRUCTURES if any(r["structure"] == s for r in rows)]
    structures += sorted({r["structure"] for r in rows} - set(structures))
    if plot_path:
        from .claims_plot import plot

        plot(rows, plot_path)
    return {"rows": rows, "table": results_table(rows, structures), "checks": claim_checks(rows), "run_id": run_id}
