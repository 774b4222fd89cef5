"""``prune_(permute=True)``'s guard: a permutation stays only where the pruned model errs less with it.

The search (:mod:`.search`) raises the score the optimal masks keep. That is the pruners' first
step, not their result: SparseGPT updates the weights it keeps, and a layer's error depends on how
its inputs correlate, so a higher kept score can still give a worse pruned model (measured in
``benchmarks/bench_permute.py``: on the claims LM, SparseGPT at 2:4T kept 2.6 % more score
permuted and ended 0.6 % worse in perplexity). So ``prune_`` asks the pruning algorithm itself, on the
calibration data, and keeps an order only if the pruned outputs come out closer to the dense ones:

* **a block's own groups** (MLP hidden channels, value/output and query/key channels), at the
  block's turn in the block-wise pipeline: the block is pruned on its cached inputs once permuted
  and once not (every layer from the block's inputs, as with ``sequential=False``), and the squared
  error of its output against the dense block's output decides; the trials are undone and the
  pipeline then prunes the block for real in the chosen order;
* **the residual stream** (one permutation shared by every block, permuted in memory): a trial walk
  prunes every block from the dense model's inputs with and without it, and the blocks' summed
  output errors decide.

Both orders compute the same dense function, so the dense references are shared and the errors
are comparable. A permutation is reverted only when its trial errs clearly more, by over
:data:`MARGIN` (5 %): the trials prune each block from dense inputs, a proxy of the sequential
pipeline, and on the benchmark's trained Llama, reverting groups whose trials erred up to ~1 %
more lost perplexity on the full validation split (SparseGPT 2:4T: 21.5 % of the gap closed
unguarded, 7.2 % reverting at any rise). The guard is for orders that clearly hurt; it does not
see everything (on the claims LM the blocks' errors fell while the perplexity rose), so a model
that computes its own loss is judged by that instead (:mod:`.loss_check`). The trials cost about
two more pruning passes for the blocks' groups and two for the residual stream (AdaPrune's fit
is left out of a trial: its mask decides). Models without repeated blocks keep the search's
choice (nothing to try it on).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from ..blocks import output_hidden
from ..capture import iterate_runs
from ..hessian import InputStats, MatrixView
from ..layer_state import restore, snapshot
from ..pipeline import iterate_pipeline
from .fold import fold_, inverse

__all__ = ["Trial", "guard_block", "guard_residual", "MARGIN"]

MARGIN = 0.05  # revert only when the permuted trial errs more than 5 % above the original order's


@dataclass
class Trial:
    """What the guard needs from :func:`nmsparse.prune_`: the layers that will be pruned, their
    matrix views, and ``prune_layer(target, stats)``, the algorithm applied to one layer in place."""

    targets: Sequence
    views: Dict[str, MatrixView]
    prune_layer: Callable[[object, InputStats], None]
    batches: Sequence
    token_masks: Sequence
    blocks: object
    where: str


def guard_block(trial: Trial, block: nn.Module, call: Callable[[int], object], done: List[tuple],
                local: Sequence[tuple], scores: Optional[dict] = None) -> None:
    """Keep ``local`` (the ``(group, perm, row)`` folded inside ``block``) only if pruning the block
    permuted errs less than pruning it in the original order; otherwise unfold them and drop them
    from ``done``. ``call(i)``: the block on batch i's cached inputs; ``scores`` (the search's layer
    scores) move with the folds."""
    if not local:
        return
    mine = {id(m) for m in block.modules()}
    targets = [t for t in trial.targets if id(t.module) in mine]
    count = len(trial.batches)
    if not targets or not count:
        return
    reference = [_hidden(call(i)) for i in range(count)]
    energy = sum(float(r.double().pow(2).sum()) for r in reference)
    permuted = _pruned_error(trial, targets, call, reference)
    for g, perm, _ in reversed(local):
        fold_(g, inverse(perm), scores)
    try:
        plain = _pruned_error(trial, targets, call, reference)
    except BaseException:  # leave the folds as ``done`` says, so that the caller's undo is exact
        for g, perm, _ in local:
            fold_(g, perm, scores)
        raise
    keep = not permuted > plain * (1 + MARGIN)
    if keep:
        for g, perm, _ in local:
            fold_(g, perm, scores)
    _record(local, done, keep, plain, permuted, energy, "the pruned block's")


def guard_residual(trial: Trial, model: nn.Module, done: List[tuple], residual: tuple,
                   scores: Optional[dict] = None) -> Optional[bool]:
    """Keep the residual stream's permutation (``residual`` = its folded ``(group, perm, row)``) only
    if a trial walk over the blocks prunes the model with less summed block-output error; returns
    whether it stayed (None: no block was measured, the search's choice stands)."""
    g, perm, _ = residual
    permuted = _walk(trial, model)
    fold_(g, inverse(perm), scores)
    try:
        plain = _walk(trial, model)
    except BaseException:  # leave the folds as ``done`` says, so that the caller's undo is exact
        fold_(g, perm, scores)
        raise
    if permuted is None or plain is None:
        fold_(g, perm, scores)
        return None
    keep = not permuted[0] > plain[0] * (1 + MARGIN)
    if keep:
        fold_(g, perm, scores)
    _record([residual], done, keep, plain[0], permuted[0], plain[1], "the pruned blocks' summed")
    return keep


def _record(local, done: List[tuple], keep: bool, plain: float, permuted: float, energy: float, what: str) -> None:
    """Both errors on the groups' report rows, relative to the dense output's ``energy``; a reverted
    group leaves ``done``."""
    if energy:
        plain, permuted = plain / energy, permuted / energy
    for entry in local:
        row = entry[2]
        row.error_plain, row.error_permuted = plain, permuted
        if keep:
            row.reason = f"kept: {what} output error on the calibration data {plain:.4g} -> {permuted:.4g} (relative)"
            continue
        row.status = "reverted"
        row.reason = (f"reverted: {what} output error on the calibration data would rise by more than "
                      f"{100 * MARGIN:g} % ({plain:.4g} -> {permuted:.4g}, relative), although the kept score rose")
        row.kept_after = row.kept_before
        for k, d in enumerate(done):
            if d is entry:
                del done[k]
                break


def _hidden(out) -> torch.Tensor:
    h = output_hidden(out)
    return h.detach().clone() if h is not None else torch.zeros(0)


@torch.no_grad()
def _pruned_error(trial: Trial, targets: Sequence, call: Callable[[int], object], reference) -> float:
    """Prune ``targets`` (statistics from one pass of ``call`` over every batch), sum the squared
    output error against ``reference``, and put the weights back."""
    snaps = [snapshot(t.module) for t in targets]
    try:
        views = {t.name: trial.views[t.name] for t in targets}
        stats = dict(iterate_runs(call, len(reference), trial.token_masks, views, sequential=False, keep_samples=False))
        for t in targets:
            if t.name in stats:
                trial.prune_layer(t, stats[t.name])
        return sum(_sq_error(_hidden(call(i)), r) for i, r in enumerate(reference))
    finally:
        for t, snap in zip(targets, snaps):
            restore(t.module, snap)


def _walk(trial: Trial, model: nn.Module):
    """Prune every block from the dense model's inputs, one at a time, and sum the squared error of
    its output against the dense block's output (then put it back): ``(error, dense energy)``, or
    None if no block ran."""
    state = {"targets": [], "snaps": [], "reference": None, "error": 0.0, "energy": 0.0, "blocks": 0}
    by_module = {id(t.module): t for t in trial.targets}

    def start(block, name, call, masks):
        state["targets"] = [by_module[id(m)] for m in block.modules() if id(m) in by_module]
        state["snaps"] = [snapshot(t.module) for t in state["targets"]]
        state["reference"] = [_hidden(call(i)) for i in range(len(trial.batches))]

    def end(block, name, call):
        ref = state["reference"]
        try:
            state["error"] += sum(_sq_error(_hidden(call(i)), r) for i, r in enumerate(ref))
            state["energy"] += sum(float(r.double().pow(2).sum()) for r in ref)
            state["blocks"] += 1
        finally:
            _put_back(state)

    try:
        with torch.no_grad():
            for name, stats in iterate_pipeline(model, trial.views, trial.batches, sequential=False, keep_samples=False,
                                                where=trial.where, blocks=trial.blocks, permuter=start, after_block=end):
                t = next((t for t in state["targets"] if t.name == name), None)
                if t is not None:  # a layer outside the blocks (before them, the LM head) is not tried
                    trial.prune_layer(t, stats)
    finally:
        _put_back(state)
    return (state["error"], state["energy"]) if state["blocks"] else None


def _put_back(state) -> None:
    for t, snap in zip(state["targets"], state["snaps"]):
        restore(t.module, snap)
    state["targets"], state["snaps"] = [], []


def _sq_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    if out.shape != ref.shape:
        return float("inf")
    return float((out.double() - ref.double()).pow(2).sum())
