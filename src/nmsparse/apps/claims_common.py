"""What the claims report (:mod:`.claims`, :mod:`.claims_report`) and its plot (:mod:`.claims_plot`)
share: the structures, STE modes and tasks, each structure's family and mask diversity, and the
row lookup. A leaf module, so that the plot and the report need not import each other.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

from .demo import RunSpec
from ..diversity import log10_masks_per_64

STRUCTURES = (
    "dense", "50%", "1:2", "2:4", "4:8",
    "2:4T@exact", "2:4T@greedy", "4:8T@exact", "4:8T@greedy", "8:16T@exact", "8:16T@greedy",
)
STES = ("ste", "srste")
TASKS = ("digits", "lm")


def log10_diversity_per_64(structure: str) -> float:
    """log10 of the number of masks ``structure`` allows per 64 weights (an 8x8 block); 0 for dense.

    The library's one definition, :func:`nmsparse.diversity.log10_masks_per_64`: 18.26 for
    unstructured 50 %, the same per-weight rate for 8:16T, whose tiles do not fit 8x8.
    """
    return log10_masks_per_64(RunSpec.parse(structure).pattern)


def family(structure: str) -> str:
    """``dense``, ``unstructured``, ``row-wise``, ``transposable exact`` or ``transposable greedy``."""
    spec = RunSpec.parse(structure)
    if spec.pattern is None:
        return "dense"
    if isinstance(spec.pattern, float):
        return "unstructured"
    return f"transposable {spec.method}" if spec.pattern.transposable else "row-wise"


def lookup(rows: Sequence[Dict[str, object]], task: str, structure: str, ste: str) -> Optional[Dict[str, object]]:
    """The aggregated row of (task, structure, ste); dense rows (ste "-") answer for every ste."""
    for r in rows:
        if r["task"] == task and r["structure"] == structure and r["ste"] in (ste, "-"):
            return r
    return None
