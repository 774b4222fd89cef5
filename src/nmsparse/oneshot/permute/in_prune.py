"""``prune_(permute=True)``: channel permutations first, then the masks.

In memory, the whole model is permuted before the pipeline starts (one more forward pass per
calibration batch). Streamed from a checkpoint (:mod:`nmsparse.oneshot.hf`), only one block is in
memory at a time, so each block is permuted at the start of its turn from its cached inputs (one
more block forward per batch) and its reordered tensors are written back with its pruned weights.

With calibration data, :mod:`.guard` then keeps each permutation only where the pruning algorithm
errs less with it: the residual stream up front (a trial walk over the blocks, in memory), each
block's own groups at the block's turn.
"""

from __future__ import annotations

import time
from typing import Callable, List, Optional, Sequence, Tuple

from torch import nn

from ...pattern import NMPattern
from ..calibration import run_batch
from .api import ITERATIONS, PATIENCE, changed_tensors, model_groups, permute_groups_, refresh_kept, undo_
from .check import probe_batches
from .groups import find_groups
from .guard import Trial, guard_block, guard_residual
from .report import PermuteReport

__all__ = ["start_permutations", "Trial"]

# The defaults of permute_; prune_(permute=True) takes no search options (call permute_ for those).
_SEARCH = dict(iterations=ITERATIONS, patience=PATIENCE, time_budget=None, seed=0)


def start_permutations(model: nn.Module, spec: NMPattern, targets, batches: Optional[Sequence], token_masks: Sequence,
                       scores, streamed: bool, where: str,
                       trial: Optional[Trial] = None,
                       progress: bool = False, seed: int = 0) -> Tuple[PermuteReport, Optional[Callable], List[tuple], set]:
    """Permute ``model`` now (in memory) or return a per-block permuter for the pipeline (streamed);
    with a ``trial`` (calibration data), the permuter also guards each block's groups.
    Returns ``(report, permuter or None, folded groups for undo_, names of the tensors reordered)``:
    the list and the set stay current as the guard reverts groups. ``progress``: the search's bar
    (one step per group; in memory only: streamed, the pipeline's bar counts the blocks); ``seed``:
    the search's."""
    rep = PermuteReport(pattern=str(spec), scores=scores if isinstance(scores, str) else type(scores).__name__)
    done: List[tuple] = []
    changed: set = set()
    count = len(batches) if batches is not None else 0
    config = getattr(model, "config", None)
    keeps: List[dict] = []

    def settle() -> None:  # after the guard reverted groups: the report's kept scores and the tensor names
        for keep in keeps:
            refresh_kept(keep, spec)
        changed.clear()
        changed.update(changed_tensors(done))
        canonical_names_(model, changed)

    if not streamed:
        start = time.perf_counter()
        keeps.append({})
        groups = model_groups(model, config, True, rep)
        checks = batches if batches is not None or not groups else probe_batches(model, rep)
        done += permute_groups_(groups, targets, spec, rep, run=lambda i: run_batch(model, checks[i], i, where),
                                count=len(checks) if checks is not None else 0, token_masks=token_masks,
                                scores=scores, check=True, where=where, changed=changed, keep=keeps[0],
                                progress=progress, **dict(_SEARCH, seed=seed))
        canonical_names_(model, changed)
        residual = next((d for d in done if d[0].kind == "residual"), None)
        if trial is not None and residual is not None:
            try:
                tried = guard_residual(trial, model, done, residual, keeps[0].get("score"))
            except BaseException:  # the caller never sees ``done``: put every channel back here
                undo_(done)
                raise
            if tried is None:
                rep.notes.append("residual stream: kept untried (no block ran on the calibration data)")
            settle()
        rep.seconds = time.perf_counter() - start
        if trial is None:
            return rep, None, done, changed

        def guard(block: nn.Module, name: str, call: Callable[[int], object], masks: Sequence) -> None:
            t0 = time.perf_counter()
            mine = {id(m) for m in block.modules()}
            local = [d for d in done if d[0].kind != "residual"
                     and all(id(mb.module) in mine for mb in d[0].members if mb.layer)]
            if local:
                guard_block(trial, block, call, done, local, keeps[0].get("score"))
                settle()
            rep.seconds += time.perf_counter() - t0

        return rep, guard, done, changed

    rep.notes.append("residual stream: not permuted when streaming (its permutation spans every block, and only one "
                     "block is in memory at a time)")

    def permuter(block: nn.Module, name: str, call: Callable[[int], object], masks: Sequence) -> None:
        start = time.perf_counter()
        groups, skipped = find_groups(block, config, prefix=name)
        rep.skipped += skipped
        mine = {id(m) for m in block.modules()}
        local = [t for t in targets if id(t.module) in mine]
        keeps.append({})
        new = permute_groups_(groups, local, spec, rep, run=call, count=count, token_masks=masks, scores=scores,
                              check=True, where=where, changed=changed, keep=keeps[-1], progress=False, **dict(_SEARCH, seed=seed))
        done.extend(new)
        if trial is not None and new:
            guard_block(trial, block, call, done, new, keeps[-1].get("score"))
            settle()
        rep.seconds += time.perf_counter() - start

    return rep, permuter, done, changed


def canonical_names_(model: nn.Module, names: set) -> None:
    """Name each reordered tensor once, by its first name in ``model`` (``named_parameters`` /
    ``named_buffers`` order), in place. A tied tensor (an LM head sharing the embeddings) is one
    tensor under two names, and a checkpoint stores it under the first only (Hugging Face drops
    the tied key): the second name would send the folder writer after a tensor it does not have."""
    first: dict = {}
    alias: dict = {}
    for name, t in list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False)):
        alias[name] = first.setdefault(id(t), name)
    renamed = {alias.get(n, n) for n in names}
    names.clear()
    names.update(renamed)
