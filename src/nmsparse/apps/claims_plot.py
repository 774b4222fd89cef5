"""The plots of ``nmsparse bench claims``: quality against log10 mask diversity per protocol, and the
flip rate at every mask refresh of protocol 2.

matplotlib is imported lazily (Agg backend), so the rest of the library never needs it.
"""

from __future__ import annotations

import math
import os
import statistics
from typing import Dict, Sequence

from .claims_common import ALGORITHMS, PROTOCOLS, SCHEDULES, TASKS, dense_reference
from .claims_stats import paired

_COLOURS = {"magnitude": "C0", "wanda": "C1", "sparsegpt": "C2", "fixed": "C3", "growing": "C4"}
_SHIFT = {"magnitude": -0.18, "wanda": 0.0, "sparsegpt": 0.18, "fixed": -0.1, "growing": 0.1}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def _save(fig, plt, path: str) -> str:
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot(rows: Sequence[Dict[str, object]], path: str) -> str:
    """Save a PNG: one panel per (task, protocol), the paired gap to dense (same seed, mean and 95 %
    t-interval over seeds) against log10 mask diversity per 64 weights; protocol 1 one colour per
    algorithm (filled: after the fine-tune, against the fine-tuned dense model; hollow, digits only:
    right after pruning, against the trained dense model), protocol 2 one colour per refresh
    schedule. Paired gaps, because the seed-to-seed spread that all structures share would hide
    differences that hold in every seed."""
    plt = _pyplot()
    tasks = [t for t in TASKS if any(r["task"] == t for r in rows)]
    protocols = [p for p in PROTOCOLS if any(r["protocol"] == p and r["family"] != "dense" for r in rows)] or list(PROTOCOLS)
    fig, axes = plt.subplots(len(tasks), len(protocols), figsize=(6.2 * len(protocols), 4.3 * len(tasks)), squeeze=False)
    for i, task in enumerate(tasks):
        scale = 100.0 if task == "digits" else 1.0
        for j, protocol in enumerate(protocols):
            ax = axes[i][j]
            ref = dense_reference(rows, protocol, task)
            ax.axhline(0.0, color="k", ls="--", lw=1, label="dense (same seed)")
            variants = ALGORITHMS if protocol == "oneshot" else SCHEDULES
            for v in variants:
                rs = sorted((r for r in rows if (r["task"], r["protocol"], r["variant"]) == (task, protocol, v) and r["family"] != "dense"),
                            key=lambda r: r["log10_div64"])
                if not rs or ref is None:
                    continue
                x = [r["log10_div64"] + _SHIFT[v] for r in rs]
                gaps = [paired(r["by_seed"], ref["by_seed"]) for r in rs]
                err = [0.0 if math.isnan(g[2]) else scale * g[2] for g in gaps]
                ax.errorbar(x, [scale * g[0] for g in gaps], yerr=err, fmt="o", color=_COLOURS[v], capsize=2, ms=5,
                            label=v + (" (fine-tuned)" if protocol == "oneshot" else " refresh"))
                if protocol == "oneshot" and task == "digits":  # LM right-after-pruning gaps would flatten the axis
                    pg = [paired(r["pruned_by_seed"], ref["pruned_by_seed"]) for r in rs]
                    ax.errorbar(x, [scale * g[0] for g in pg], yerr=[0.0 if math.isnan(g[2]) else scale * g[2] for g in pg],
                                fmt="o", color=_COLOURS[v], mfc="white", capsize=2, ms=5, alpha=0.6, label=f"{v} (pruned)")
                if v == variants[0]:
                    for r, xx, g in zip(rs, x, gaps):
                        ax.annotate(r["structure"], (xx, scale * g[0]), textcoords="offset points", xytext=(-6, 7), fontsize=7)
            ax.set_xlabel("log10 masks per 64 weights (mask diversity)")
            ax.set_ylabel("accuracy − dense, points (higher is better)" if task == "digits"
                          else "val loss − dense, nats/byte (lower is better)")
            title = "protocol 1: prune the trained dense model" if protocol == "oneshot" else "protocol 2: sparse from scratch"
            ax.set_title(f"{'digits CNN' if task == 'digits' else 'byte-level LM'}, {title}", fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="best")
    return _save(fig, plt, path)


def plot_flips(records: Sequence[Dict[str, object]], path: str) -> str:
    """Save a PNG: per task, the flip rate (% of mask entries changed) at every refresh of protocol
    2, mean over seeds, one colour per structure; solid: fixed interval, dashed: growing interval."""
    plt = _pyplot()
    recs = [r for r in records if r.get("protocol") == "scratch" and r.get("flips")]
    tasks = [t for t in TASKS if any(r["task"] == t for r in recs)] or ["lm"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.5), squeeze=False)
    structures = list(dict.fromkeys(r["structure"] for r in sorted(recs, key=lambda r: r["log10_div64"])))
    colour = {s: f"C{k % 10}" for k, s in enumerate(structures)}
    for ax, task in zip(axes[0], tasks):
        for s in structures:
            for v, ls in (("fixed", "-"), ("growing", "--")):
                runs = [r["flips"] for r in recs if (r["task"], r["structure"], r["variant"]) == (task, s, v)]
                if not runs:
                    continue
                by_step: Dict[int, list] = {}
                for f in runs:
                    for step, rate in f:
                        by_step.setdefault(int(step), []).append(100 * rate)
                steps = sorted(by_step)
                ax.plot(steps, [max(statistics.fmean(by_step[k]), 1e-3) for k in steps], ls=ls, marker="." if v == "fixed" else "o",
                        ms=3, color=colour[s], label=f"{s} ({v})")
        ax.set_yscale("log")
        from matplotlib.ticker import FuncFormatter

        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if str(v)[0] in "2356" else ""))
        ax.set_xlabel("training step of the refresh")
        ax.set_ylabel("flip rate: % of mask entries changed")
        ax.set_title(f"{'digits CNN' if task == 'digits' else 'byte-level LM'}: mask flips per refresh (protocol 2)", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6, ncol=2, loc="best")
    return _save(fig, plt, path)
