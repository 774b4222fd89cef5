"""The plot of ``nmsparse bench claims``: quality against log10 mask diversity per structure.

matplotlib is imported lazily (Agg backend), so the rest of the library never needs it.
"""

from __future__ import annotations

import os
from typing import Dict, Sequence

from .claims_common import TASKS, lookup


def plot(rows: Sequence[Dict[str, object]], path: str) -> str:
    """Save a PNG: per task, quality against log10 mask diversity per 64 weights, one marker per
    structure family (filled: STE, hollow: SR-STE), dense as a dashed line with its seed band."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    tasks = [t for t in TASKS if any(r["task"] == t for r in rows)]
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.6), squeeze=False)
    markers = {"unstructured": "s", "row-wise": "o", "transposable exact": "^", "transposable greedy": "v"}
    colours = {"unstructured": "C3", "row-wise": "C0", "transposable exact": "C2", "transposable greedy": "C1"}
    for ax, task in zip(axes[0], tasks):
        value = (lambda r: 100 * r["mean"]) if task == "digits" else (lambda r: r["ppl_mean"])
        err = (lambda r: 100 * r["std"]) if task == "digits" else (lambda r: r["ppl_std"])
        dense = lookup(rows, task, "dense", "-")
        if dense is not None:
            ax.axhline(value(dense), color="k", ls="--", lw=1, label="dense")
            ax.axhspan(value(dense) - err(dense), value(dense) + err(dense), color="k", alpha=0.08)
        seen = set()
        for r in rows:
            if r["task"] != task or r["family"] == "dense":
                continue
            fam, ste = r["family"], r["ste"]
            # Exact and greedy share a diversity; spread them (and STE / SR-STE) apart a little.
            x = r["log10_div64"] + {"transposable exact": -0.16, "transposable greedy": 0.16}.get(fam, 0.0)
            x += 0.07 if ste == "srste" else -0.07
            label = f"{fam} ({'SR-STE' if ste == 'srste' else 'STE'})"
            ax.errorbar(
                x, value(r), yerr=err(r), fmt=markers[fam], color=colours[fam], capsize=2, ms=6,
                mfc=colours[fam] if ste == "ste" else "white", label=None if label in seen else label,
            )
            seen.add(label)
            if ste == "ste" and fam != "transposable greedy":
                ax.annotate(r["structure"].split("@")[0], (x, value(r)), textcoords="offset points", xytext=(-4, 7), fontsize=7)
        ax.set_xlabel("log10 masks per 64 weights (mask diversity)")
        ax.set_ylabel("test accuracy (%)" if task == "digits" else "validation perplexity per byte (lower is better)")
        ax.set_title("small CNN, digits" if task == "digits" else "char-level transformer, stdlib text")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
