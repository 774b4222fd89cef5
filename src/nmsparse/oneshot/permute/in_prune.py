"""``prune_(permute=True)``: channel permutations first, then the masks.

In memory, the whole model is permuted before the pipeline starts (one more forward pass per
calibration batch). Streamed from a checkpoint (:mod:`nmsparse.oneshot.hf`), only one block is in
memory at a time, so each block is permuted at the start of its turn from its cached inputs (one
more block forward per batch) and its reordered tensors are written back with its pruned weights.
"""

from __future__ import annotations

import time
from typing import Callable, List, Optional, Sequence, Tuple

from torch import nn

from ...pattern import NMPattern
from ..calibration import run_batch
from .api import model_groups, permute_groups_
from .groups import find_groups
from .report import PermuteReport

__all__ = ["start_permutations"]

# The defaults of permute_; prune_(permute=True) takes no search options (call permute_ for those).
_SEARCH = dict(iterations=50, patience=8, time_budget=None, seed=0, progress=False)


def start_permutations(model: nn.Module, spec: NMPattern, targets, batches: Optional[Sequence], token_masks: Sequence,
                       scores, streamed: bool, where: str) -> Tuple[PermuteReport, Optional[Callable], List[tuple], set]:
    """Permute ``model`` now (in memory) or return a per-block permuter for the pipeline (streamed).
    Returns ``(report, permuter or None, folded groups for undo_, names of the tensors reordered)``."""
    rep = PermuteReport(pattern=str(spec), scores=scores if isinstance(scores, str) else type(scores).__name__)
    done: List[tuple] = []
    changed: set = set()
    count = len(batches) if batches is not None else 0
    config = getattr(model, "config", None)
    if not streamed:
        start = time.perf_counter()
        groups = model_groups(model, config, True, rep)
        done += permute_groups_(groups, targets, spec, rep, run=lambda i: run_batch(model, batches[i], i, where),
                                count=count, token_masks=token_masks, scores=scores, check=True, where=where,
                                changed=changed, **_SEARCH)
        rep.seconds = time.perf_counter() - start
        return rep, None, done, changed

    rep.notes.append("residual stream: not permuted when streaming (its permutation spans every block, and only one "
                     "block is in memory at a time)")

    def permuter(block: nn.Module, name: str, call: Callable[[int], object], masks: Sequence) -> None:
        start = time.perf_counter()
        groups, skipped = find_groups(block, config, prefix=name)
        rep.skipped += skipped
        mine = {id(m) for m in block.modules()}
        local = [t for t in targets if id(t.module) in mine]
        done.extend(permute_groups_(groups, local, spec, rep, run=call, count=count, token_masks=masks, scores=scores,
                                    check=True, where=where, changed=changed, **_SEARCH))
        rep.seconds += time.perf_counter() - start

    return rep, permuter, done, changed
