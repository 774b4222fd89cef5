"""Mask-update policies of ``NMMask``: refresh from the dense weights, static, SET and RigL.

Each training forward pass of the model (train mode, gradients on) counts one step on every mask;
``on_training_pass`` then applies the mask's policy:

* ``"refresh"`` - every ``update_every`` passes the mask is recomputed from the dense weight
  (Hubara et al. 2021, dynamic transposable training).
* ``"static"`` - never changes (``update_masks_(force=True)`` still refreshes it).
* ``"set"`` / ``"rigl"`` - after every ``update_every`` completed steps, while
  ``step < stop_fraction · total_steps``, drop the fraction

      f(t) = drop_fraction / 2 · (1 + cos(π t / T_end)),   T_end = stop_fraction · total_steps

  of the active weights (RigL, Evci et al. 2020, Eq. 1) with the smallest ``|w|`` and regrow as
  many: SET (Mocanu et al. 2018) at random, RigL where the dense gradient ``|∂L/∂(W ⊙ S)|`` of the
  last batch is largest. The update runs at the start of the pass after step t, so it sees the
  weights after optimizer step t and the gradient of batch t.

How N:M and transposable patterns survive a regrow (:func:`regrow_scores`): rank every entry with
one score and re-solve the mask for the pattern at the old active count -

* kept entries: ``K = 3 m² + 4`` (more than any sum of regrow scores a tile can gain, so even the
  transposable solver, which maximises a sum, keeps all of them: the old mask is a feasible
  completion of ``kept``);
* never-active entries: ``2 + g``, with g in [0, 1] the normalised grow score;
* just-dropped entries: ``g`` (they regrow only when a group or tile has no other choice).

Every full group (row-wise) or tile (transposable) keeps exactly n per row and column, so each
regrows exactly what it dropped and the active count is exact; unstructured masks take the top
``A`` scores. The policy verifies both and raises :class:`~nmsparse.errors.MaskError` otherwise.
Regrown weights, and their optimizer state when the optimizer is known, start at zero.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional, Tuple

import torch

from ..errors import ArgumentError, MaskError, ShapeError
from ..masks.methods import resolve_method
from ..pattern import NMPattern, PatternLike
from . import distributed
from .parametrization import NMMask, compute_mask

__all__ = ["drop_fraction_schedule", "drop_and_regrow", "regrow_scores", "mask_optimizer_state_", "is_update_step"]


def drop_fraction_schedule(step: int, total_steps: int, drop_fraction: float = 0.3, stop_fraction: float = 0.75) -> float:
    """Cosine-annealed drop fraction at ``step`` (0 once ``step >= stop_fraction * total_steps``)."""
    end = stop_fraction * total_steps
    if step >= end or end <= 0:
        return 0.0
    return drop_fraction / 2.0 * (1.0 + math.cos(math.pi * step / end))


def is_update_step(mask: NMMask, step: int) -> bool:
    """True if a SET/RigL mask changes after completed step ``step``."""
    return (mask.update in ("set", "rigl") and step > 0 and step % mask.update_every == 0
            and drop_fraction_schedule(step, mask.total_steps, mask.drop_fraction, mask.stop_fraction) > 0)


def regrow_scores(weight: torch.Tensor, mask: torch.Tensor, n_drop: int, grow_scores: torch.Tensor,
                  pattern: Optional[NMPattern]) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(scores, kept)``: drop the ``n_drop`` smallest active ``|w|`` (ties: lower flat index) and
    score every entry for the re-solve (see the module docstring). Scores are float64."""
    if mask.shape != weight.shape or grow_scores.shape != weight.shape or mask.dtype != torch.bool:
        raise ShapeError(
            f"drop_and_regrow: weight {tuple(weight.shape)}, bool mask {tuple(mask.shape)} ({mask.dtype}) and "
            f"grow_scores {tuple(grow_scores.shape)} must share one shape."
        )
    active = int(mask.sum())
    if not 0 <= int(n_drop) <= active:
        raise ArgumentError(f"drop_and_regrow: n_drop must be in [0, {active}] (the active count), got {n_drop}.")
    w = weight.detach().abs().double()
    order = torch.sort(torch.where(mask, w, torch.full_like(w, float("inf"))).reshape(-1), stable=True).indices
    kept = mask.reshape(-1).clone()
    kept[order[: int(n_drop)]] = False
    kept = kept.reshape(mask.shape)
    g = grow_scores.detach().abs().double().to(w.device)
    top = float(g.max()) if g.numel() else 0.0
    g = g / top if top > 0 else torch.zeros_like(g)
    big = 3.0 * (pattern.m * pattern.m if pattern is not None else 1) + 4.0
    return torch.where(kept, torch.full_like(g, big), torch.where(mask, g, 2.0 + g)), kept


def _check_regrow(new: torch.Tensor, kept: torch.Tensor, active: int, pattern) -> None:
    if int(new.sum()) != active or bool((kept & ~new).any()):
        raise MaskError(
            f"drop_and_regrow: re-solving pattern {pattern} changed the active count ({active} -> {int(new.sum())}) or "
            f"lost a kept weight; the mask did not follow the pattern. Check it with nmsparse.check_mask(mask, {str(pattern)!r})."
        )


def drop_and_regrow(weight: torch.Tensor, mask: torch.Tensor, n_drop: int, grow_scores: torch.Tensor,
                    pattern: Optional[PatternLike] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Drop the ``n_drop`` smallest active weights and regrow as many by ``grow_scores``.

    Parameters
    ----------
    weight, mask, grow_scores : torch.Tensor
        One shape; ``mask`` is bool; only ``|grow_scores|`` is used (larger grows first).
    n_drop : int
        ``0 <= n_drop <= mask.sum()``.
    pattern : str or NMPattern, optional
        The N:M pattern the mask follows; None for unstructured.

    Returns
    -------
    (new_mask, kept) : tuple of bool tensors
        ``new_mask.sum() == mask.sum()``; ``kept`` = survivors of the drop (``kept <= new_mask``).

    Examples
    --------
    >>> w = torch.tensor([[0.1, 3.0, 0.0, 0.0]]); m = torch.tensor([[True, True, False, False]])
    >>> new, kept = drop_and_regrow(w, m, 1, torch.tensor([[0.0, 0.0, 0.2, 0.9]]))
    >>> new.tolist(), kept.tolist()
    ([[False, True, False, True]], [[False, True, False, False]])
    """
    p = None if pattern is None else NMPattern.parse(pattern)
    score, kept = regrow_scores(weight, mask, n_drop, grow_scores, p)
    if n_drop == 0:
        return mask.clone(), kept
    active = int(mask.sum())
    method = None if p is None else resolve_method(p, None, "drop_and_regrow")
    new = compute_mask(score, p if p is not None else 1.0, method, "drop_and_regrow", keep=active).to(mask.device)
    _check_regrow(new, kept, active, p)
    return new, kept


@torch.no_grad()
def mask_optimizer_state_(optimizer: torch.optim.Optimizer, param: torch.Tensor, keep: torch.Tensor) -> None:
    """Zero ``param``'s per-entry optimizer state (Adam moments, momentum) where ``keep`` is False."""
    state = optimizer.state.get(param)
    if not state:
        return
    for value in state.values():
        if torch.is_tensor(value) and value.shape == param.shape:
            value.copy_(torch.where(keep, value, torch.zeros((), dtype=value.dtype, device=value.device)))


@torch.no_grad()
def regrow_(mask: NMMask, dense: torch.Tensor, step: int, generator: torch.Generator,
            optimizers: Iterable[torch.optim.Optimizer]) -> None:
    """One SET/RigL update of ``mask`` after completed step ``step`` (through ``NMMask.refresh_``)."""
    fraction = drop_fraction_schedule(step, mask.total_steps, mask.drop_fraction, mask.stop_fraction)
    current = mask.mask
    active = int(current.sum())
    n_drop = int(math.floor(fraction * active + 0.5))
    if mask.update == "rigl":
        if mask.dense_grad is None:
            # E.g. the first pass of a resumed run: the gradient of the last batch was not saved.
            mask.history.append({"step": step, "fraction": fraction, "regrown": 0, "skipped": "no dense gradient"})
            return
        grow = _mean_over_ranks(mask.dense_grad)
    else:
        grow = torch.rand(current.shape, generator=generator, dtype=torch.float64).to(current.device)
    pattern = mask.pattern if isinstance(mask.pattern, NMPattern) else None
    score, kept = regrow_scores(dense, current, n_drop, grow, pattern)
    # Regrown weights (and their optimizer state) start at zero: zero everything outside `kept`.
    dense.copy_(torch.where(kept, dense, torch.zeros((), dtype=dense.dtype, device=dense.device)))
    for opt in optimizers:
        mask_optimizer_state_(opt, dense, kept)
    if n_drop:
        method = None if pattern is None else resolve_method(pattern, None, "regrow")
        mask.refresh_(score, step, keep=active, method=method)
        _check_regrow(mask.mask, kept, active, mask.pattern)
    mask.history.append({"step": step, "fraction": fraction, "regrown": int((mask.mask & ~kept).sum())})


def _mean_over_ranks(grad: torch.Tensor) -> torch.Tensor:
    """Under data parallelism (DDP) each rank captured the gradient of its own batch; RigL grows by
    the gradient of the whole batch, so average it (every rank then computes the same mask, as it
    does for refresh and SET, whose inputs - weights, seeded generator - are already identical)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        grad = grad.clone()
        dist.all_reduce(grad)
        grad /= dist.get_world_size()
    return grad


def on_training_pass(mask: NMMask, dense: torch.Tensor, generator: torch.Generator,
                     optimizers: Iterable[torch.optim.Optimizer]) -> None:
    """Count one training pass on ``mask`` and apply its update policy (called before the pass)."""
    mask.steps += 1
    if mask.update == "refresh":
        if mask.steps % mask.update_every == 0:
            mask.refresh_(dense, mask.steps)
        return
    if mask.update not in ("set", "rigl"):
        return
    if distributed.is_dtensor(dense):  # FSDP2 seam: SET/RigL rewrite dense weights and optimizer state
        raise ArgumentError(
            f"layer {mask.layer_name!r}: update={mask.update!r} is not supported on FSDP2-sharded weights "
            "(fully_shard); use update='refresh' or 'static' with FSDP2, or train SET/RigL under DDP."
        )
    done = mask.steps - 1  # optimizer steps completed before this pass
    if is_update_step(mask, done):
        regrow_(mask, dense, done, generator, optimizers)
    mask.dense_grad = None
    mask.capture_dense_grad = mask.update == "rigl" and is_update_step(mask, done + 1)
