"""The claims report's numbers: aggregation over seeds (means, 95 % t-intervals), the Markdown
tables per protocol, the Spearman and paired-gap checks, the JSON-lines file, and re-rendering a
report from that file without training again.

Quality is accuracy (digits) or minus the validation loss (LM), so "higher is better" and a
positive Spearman rho means "more diverse structures do better". LM values are losses in nats
per byte (lower is better); gaps are ``structure - dense`` in the metric's own units.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from typing import Dict, List, Optional, Sequence

from .claims_common import (
    ALGORITHMS, DENSE_FINETUNED, PROTOCOLS, SCHEDULES, STRUCTURES, dense_reference, log10_diversity_per_64, lookup,
)
from .claims_stats import fmt_ci, mean_ci, paired, spearman, verdict
from ..errors import ArgumentError

__all__ = ["aggregate", "claim_checks", "markdown_report", "spearman", "write_jsonl", "report_from_jsonl", "rho_table"]


def aggregate(records: Sequence[Dict[str, object]]) -> List[Dict[str, object]]:
    """Group by (protocol, task, structure, variant): mean, std and 95 % half-width over seeds of the
    metric (and, for protocol 1, of the value right after pruning); flip-rate summaries (protocol 2).
    Rows come in a fixed order (task, protocol, structure, variant)."""
    groups: Dict[tuple, List[Dict[str, object]]] = {}
    for r in records:
        groups.setdefault((r["protocol"], r["task"], r["structure"], r["variant"]), []).append(r)
    rows = []
    for (protocol, task, structure, variant), rs in groups.items():
        mean, sd, half = mean_ci([float(r["value"]) for r in rs])
        row = {
            "protocol": protocol, "task": task, "structure": structure, "family": rs[0]["family"], "variant": variant,
            "n": len(rs), "metric": rs[0]["metric"], "mean": mean, "std": sd, "ci": half,
            "by_seed": {int(r["seed"]): float(r["value"]) for r in rs}, "log10_div64": rs[0]["log10_div64"],
            "seconds": statistics.fmean(float(r["seconds"]) for r in rs),
            "cpu_seconds": statistics.fmean(float(r.get("cpu_seconds", r["seconds"])) for r in rs),
            "kept": statistics.fmean(float(r["kept"]) for r in rs),
            "density": statistics.fmean(float(r.get("density", 0.0)) for r in rs),
            "params": rs[0].get("params"), "tokens_seen": rs[0].get("tokens_seen"), "steps": rs[0].get("steps"),
        }
        if all("value_pruned" in r for r in rs):
            pm, psd, ph = mean_ci([float(r["value_pruned"]) for r in rs])
            row.update(pruned_mean=pm, pruned_std=psd, pruned_ci=ph,
                       pruned_by_seed={int(r["seed"]): float(r["value_pruned"]) for r in rs})
        flips = [r.get("flips") or [] for r in rs]
        if any(flips):
            row.update(
                refreshes=statistics.fmean(len(f) for f in flips),
                flip_first=statistics.fmean(f[0][1] for f in flips if f),
                flip_mean=statistics.fmean(statistics.fmean(x[1] for x in f) for f in flips if f),
                flip_last=statistics.fmean(f[-1][1] for f in flips if f),
                flip_total=statistics.fmean(sum(x[1] for x in f) for f in flips),
            )
        rows.append(row)
    # One canonical order, whatever order the runs finished in (so a re-render is identical).
    rank = lambda r: (r["task"], PROTOCOLS.index(r["protocol"]) if r["protocol"] in PROTOCOLS else 9,
                      STRUCTURES.index(r["structure"]) if r["structure"] in STRUCTURES else 99, r["structure"], _order(r["variant"]))
    return sorted(rows, key=rank)


def _quality(task: str, value: float) -> float:
    return value if task == "digits" else -value


def _scale(task: str):
    return (100.0, 2, " pts") if task == "digits" else (1.0, 3, " nats/byte")


def rho_table(rows: Sequence[Dict[str, object]]) -> List[Dict[str, object]]:
    """Spearman rho of log10 diversity with quality over the sparse structures, for every
    (task, protocol, variant, stage): on the seed means and for each seed alone."""
    out = []
    keys = sorted({(r["task"], r["protocol"], r["variant"]) for r in rows if r["family"] != "dense"},
                  key=lambda k: (k[0], PROTOCOLS.index(k[1]), _order(k[2])))
    for task, protocol, variant in keys:
        sparse = [r for r in rows if (r["task"], r["protocol"], r["variant"]) == (task, protocol, variant) and r["family"] != "dense"]
        if len(sparse) < 3:
            continue
        stages = [("after fine-tune", "mean", "by_seed")] if protocol == "oneshot" else [("end of training", "mean", "by_seed")]
        if protocol == "oneshot":
            stages.insert(0, ("right after pruning", "pruned_mean", "pruned_by_seed"))
        div = [r["log10_div64"] for r in sparse]
        for stage, key, seeds_key in stages:
            rho = spearman(div, [_quality(task, r[key]) for r in sparse])
            seeds = sorted(set.intersection(*(set(r[seeds_key]) for r in sparse)))
            per_seed = [spearman(div, [_quality(task, r[seeds_key][k]) for r in sparse]) for k in seeds]
            signs = {math.copysign(1.0, p) for p in per_seed if not math.isnan(p) and p != 0}
            out.append({"task": task, "protocol": protocol, "variant": variant, "stage": stage, "rho": rho,
                        "per_seed": per_seed, "n": len(sparse), "same_sign": len(signs) == 1 and len(per_seed) > 1 and not any(math.isnan(p) for p in per_seed)})
    return out


def _order(variant: str) -> int:
    known = (DENSE_FINETUNED,) + ALGORITHMS + SCHEDULES
    return known.index(variant) if variant in known else len(known)


def claim_checks(rows: Sequence[Dict[str, object]]) -> List[str]:
    """Lines of numbers behind the claims, per task and protocol.

    (a) Spearman rho(log10 diversity, quality) over the sparse structures, on the seed means and
    per seed. (b) Paired gap of every sparse structure to its dense reference (protocol 1: the
    dense model after the same fine-tune; protocol 2: dense from scratch), mean ± 95 % half-width
    over seeds, and whether the interval excludes 0. (r) Protocol 2's remedy: paired ``growing -
    fixed`` per structure.
    """
    out = []
    for t in rho_table(rows):
        seeds = ", ".join(f"{p:+.2f}" for p in t["per_seed"])
        out.append(f"{t['task']} {t['protocol']} {t['variant']} ({t['stage']}): (a) Spearman rho(log10 diversity, quality) = "
                   f"{t['rho']:+.2f} over {t['n']} structures; per seed {seeds}"
                   + ("; same sign in every seed" if t["same_sign"] else
                      "; sign differs between seeds" if len(t["per_seed"]) > 1 else "; only one seed has every structure"))
    for r in rows:
        if r["family"] == "dense":
            continue
        ref = dense_reference(rows, r["protocol"], r["task"])
        if ref is None:
            continue
        scale, digits, unit = _scale(r["task"])
        mean, _, half, n = paired(r["by_seed"], ref["by_seed"])
        v = verdict(mean, half)
        out.append(f"{r['task']} {r['protocol']} {r['variant']}: (b) paired {r['structure']} - dense = "
                   f"{fmt_ci(mean, half, scale, digits, True)}{unit} over {n} seeds"
                   + _ci_words(v, half))
        if r["protocol"] == "scratch" and r["variant"] == "growing":
            fixed = lookup(rows, "scratch", r["task"], r["structure"], "fixed")
            if fixed is not None:
                mean, _, half, n = paired(r["by_seed"], fixed["by_seed"])
                v = verdict(mean, half)
                out.append(f"{r['task']} scratch: (r) paired {r['structure']} growing - fixed = "
                           f"{fmt_ci(mean, half, scale, digits, True)}{unit} over {n} seeds"
                           + _ci_words(v, half))
    return out


def _ci_words(v: Optional[str], half: float) -> str:
    if math.isnan(half):
        return " (one seed: no interval)"
    return f" (95 % CI {v})" if v else " (95 % CI includes 0)"


def _gap_cell(row, ref, task) -> str:
    if row is None or ref is None:
        return "-"
    scale, digits, _ = _scale(task)
    mean, _, half, _ = paired(row["by_seed"], ref["by_seed"])
    return fmt_ci(mean, half, scale, digits, True) + ("" if verdict(mean, half) is None else " *")


def _structures(rows, task, structures) -> List[str]:
    return [s for s in structures if any(r["task"] == task and r["structure"] == s for r in rows)]


def oneshot_table(rows: Sequence[Dict[str, object]], task: str, structures: Sequence[str] = STRUCTURES) -> str:
    """Protocol 1, one task: per structure and algorithm, the metric right after pruning and after
    the fine-tune (mean ± 95 % half-width over seeds) and the paired gap to dense after it."""
    scale, digits, unit = _scale(task)
    algos = [a for a in ALGORITHMS if any(r["task"] == task and r["protocol"] == "oneshot" and r["variant"] == a for r in rows)]
    what = "accuracy %" if task == "digits" else "val loss (nats/byte)"
    head = ["structure", "log10 masks/64"] + [f"{a}: {what} pruned → fine-tuned" for a in algos] + [f"{a}: Δ vs dense" for a in algos]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ref = dense_reference(rows, "oneshot", task)
    for s in _structures(rows, task, structures):
        cells = [s, f"{log10_diversity_per_64(s):.2f}"]
        for a in algos:
            r = ref if s == "dense" else lookup(rows, "oneshot", task, s, a)
            cells.append("-" if r is None else f"{fmt_ci(r['pruned_mean'], r['pruned_ci'], scale, digits)} → {fmt_ci(r['mean'], r['ci'], scale, digits)}")
        for a in algos:
            cells.append("0" if s == "dense" else _gap_cell(lookup(rows, "oneshot", task, s, a), ref, task))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def scratch_table(rows: Sequence[Dict[str, object]], task: str, structures: Sequence[str] = STRUCTURES) -> str:
    """Protocol 2, one task: per structure and schedule, the metric (mean ± 95 % half-width), the
    paired gap to dense, the paired effect of the remedy, and the flip rates."""
    scale, digits, _ = _scale(task)
    scheds = [v for v in SCHEDULES if any(r["task"] == task and r["protocol"] == "scratch" and r["variant"] == v for r in rows)]
    what = "accuracy %" if task == "digits" else "val loss"
    head = (["structure", "log10 masks/64"] + [f"{v}: {what}" for v in scheds] + [f"{v}: Δ vs dense" for v in scheds]
            + (["growing − fixed"] if len(scheds) == 2 else [])
            + [f"{v}: refreshes: flip rate first / mean / last, Σ" for v in scheds] + ["kept Σ|W| (fixed)"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ref = dense_reference(rows, "scratch", task)
    for s in _structures(rows, task, structures):
        cells = [s, f"{log10_diversity_per_64(s):.2f}"]
        rs = {v: (ref if s == "dense" else lookup(rows, "scratch", task, s, v)) for v in scheds}
        cells += ["-" if rs[v] is None else fmt_ci(rs[v]["mean"], rs[v]["ci"], scale, digits) for v in scheds]
        cells += ["0" if s == "dense" else _gap_cell(rs[v], ref, task) for v in scheds]
        if len(scheds) == 2:
            cells.append("-" if s == "dense" else _gap_cell(rs["growing"], rs["fixed"], task))
        for v in scheds:
            r = rs[v]
            cells.append("-" if r is None or "flip_mean" not in r else
                         f"{r['refreshes']:.0f}: {100 * r['flip_first']:.1f} / {100 * r['flip_mean']:.1f} / {100 * r['flip_last']:.1f} %, Σ {100 * r['flip_total']:.0f} %")
        fixed = rs.get("fixed")
        cells.append("-" if fixed is None else f"{fixed['kept']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rho_markdown(rows: Sequence[Dict[str, object]]) -> str:
    lines = ["| task | protocol | variant | stage | ρ (seed means) | ρ per seed | same sign every seed |", "|---|---|---|---|---|---|---|"]
    for t in rho_table(rows):
        lines.append(f"| {t['task']} | {t['protocol']} | {t['variant']} | {t['stage']} | {t['rho']:+.2f} | "
                     + ", ".join(f"{p:+.2f}" for p in t["per_seed"]) + f" | {'yes' if t['same_sign'] else 'no' if len(t['per_seed']) > 1 else 'one seed'} |")
    return "\n".join(lines)


def _setup_line(rows, task) -> str:
    r = next((r for r in rows if r["task"] == task and r["protocol"] == "scratch" and r["family"] == "dense"), None)
    if r is None:
        return ""
    tokens = f", {r['tokens_seen']:,} tokens seen per training run" if r.get("tokens_seen") else ""
    return f"{task}: {r['params']:,} parameters, {r['steps']} training steps{tokens}, {r['n']} seeds."


def markdown_report(rows: Sequence[Dict[str, object]], records: Sequence[Dict[str, object]] = (),
                    structures: Sequence[str] = STRUCTURES) -> str:
    """The whole report as Markdown: per task the protocol-1 and protocol-2 tables, then the
    Spearman table and the check lines. ``±`` is the 95 % t-interval half-width over seeds; ``*``
    marks a paired gap whose interval excludes 0."""
    parts = []
    for task in [t for t in ("digits", "lm") if any(r["task"] == t for r in rows)]:
        parts.append(f"### {task}\n\n{_setup_line(rows, task)}")
        if any(r["task"] == task and r["protocol"] == "oneshot" for r in rows):
            parts.append(f"Protocol 1 (one-shot from the trained dense model; dense row: before → after the same fine-tune):\n\n{oneshot_table(rows, task, structures)}")
        if any(r["task"] == task and r["protocol"] == "scratch" and r["family"] != "dense" for r in rows):
            parts.append(f"Protocol 2 (sparse from scratch; flip rate = % of mask entries changed at a refresh, Σ = summed over the refreshes):\n\n{scratch_table(rows, task, structures)}")
    parts.append("Spearman ρ(log10 diversity, quality) over the sparse structures (positive: more diverse does better):\n\n" + rho_markdown(rows))
    parts.append("Checks (± = 95 % t-interval half-width over seeds):\n\n" + "\n".join(f"- {c}" for c in claim_checks(rows)))
    return "\n\n".join(parts)


def write_jsonl(path: str, records: Sequence[Dict[str, object]]) -> None:
    """Append records as JSON lines (creating the folder)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")


def report_from_jsonl(path: str, run_id: Optional[str] = None, plot_path: Optional[str] = None) -> Dict[str, object]:
    """Rebuild the tables, the checks and (if ``plot_path``) both plots from a ``claims.jsonl``.

    Uses the per-run lines of ``run_id`` (default: the last run in the file), so a report can be
    re-rendered without training again. Returns ``rows, records, markdown, checks, run_id``.
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
    if any("protocol" not in r for r in records):
        raise ArgumentError(f"report_from_jsonl: run {run_id!r} in {path!r} was written by the first edition of the report (no protocol field); re-run `nmsparse bench claims`.")
    rows = aggregate(records)
    structures = [s for s in STRUCTURES if any(r["structure"] == s for r in rows)]
    structures += sorted({r["structure"] for r in rows} - set(structures))
    if plot_path:
        from .claims_plot import plot, plot_flips

        plot(rows, plot_path)
        plot_flips(records, os.path.splitext(plot_path)[0] + "_flips.png")
    return {"rows": rows, "records": records, "markdown": markdown_report(rows, records, structures),
            "checks": claim_checks(rows), "run_id": run_id}
