"""What the claims report's modules share: structures, protocols, schedules, algorithms, tasks,
each structure's family and mask diversity, and the row lookup. A leaf module, so that the
runner, the report and the plot need not import each other.

Two protocols (issue 16):

* ``oneshot`` (protocol 1, the setting of the mask-diversity argument, Hubara et al. 2021 Sec. 3):
  train dense once per seed, prune the trained model to each structure with each one-shot
  algorithm, measure right after pruning and after a short fine-tune with the mask fixed;
* ``scratch`` (protocol 2, sparse from scratch, Hubara et al. 2021 Sec. 5): masks recomputed from
  the dense weights during training, on a ``fixed`` refresh interval or on a ``growing`` one (the
  remedy tested against mask instability).
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

from .demo import RunSpec
from ..diversity import log10_masks_per_64

STRUCTURES = ("dense", "50%", "1:2", "2:4", "4:8", "2:4T", "4:8T", "8:16T")
TASKS = ("digits", "lm")
PROTOCOLS = ("oneshot", "scratch")
#: Refresh schedules of protocol 2: every ``update_every`` steps, or an interval that starts at
#: ``update_every`` and grows by ``growth`` after every refresh.
SCHEDULES = ("fixed", "growing")
#: One-shot algorithms of protocol 1, as ``nmsparse.prune_`` names them; "magnitude" needs no
#: calibration data and runs even where ``prune_`` is missing.
ALGORITHMS = ("magnitude", "wanda", "sparsegpt")
DENSE_VARIANT = "-"
#: Protocol 1's dense reference gets the same fixed-budget fine-tune as the pruned models.
DENSE_FINETUNED = "finetune"


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


def lookup(rows: Sequence[Dict[str, object]], protocol: str, task: str, structure: str,
           variant: str) -> Optional[Dict[str, object]]:
    """The aggregated row of (protocol, task, structure, variant), or None."""
    for r in rows:
        if (r["protocol"], r["task"], r["structure"], r["variant"]) == (protocol, task, structure, variant):
            return r
    return None


def dense_reference(rows: Sequence[Dict[str, object]], protocol: str, task: str) -> Optional[Dict[str, object]]:
    """The row a sparse row of ``protocol`` is compared with: the dense model after the same
    fine-tune (protocol 1), the dense model trained from scratch (protocol 2)."""
    if protocol == "oneshot":
        return lookup(rows, "oneshot", task, "dense", DENSE_FINETUNED)
    return lookup(rows, "scratch", task, "dense", DENSE_VARIANT)
