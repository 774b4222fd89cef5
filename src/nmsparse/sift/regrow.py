"""One drop-and-regrow step on one mask (SET / RigL), unstructured or N:M.

The rule (the same for every pattern, so the active count never changes):

1. **Drop** the ``n_drop`` active entries of smallest ``|w|`` (ties: lower flat index), as in
   SET (Mocanu et al. 2018) and RigL (Evci et al. 2020, Sec. 3). What stays is ``kept``.
2. **Regrow** by ranking every entry with one score and re-solving the mask for the layer's
   pattern at the *old* active count:

   - kept entries: ``K = 3 m^2 + 4`` (larger than any sum of regrow scores a tile can gain, so
     even the transposable solver, which maximises a sum, keeps every one of them: the old mask
     is a feasible completion of ``kept``);
   - never-active entries: ``2 + g`` with ``g`` in [0, 1] the normalised grow score (RigL:
     ``|dL/dW_eff|``; SET: uniform random);
   - just-dropped entries: ``g`` (they regrow only when a group or tile has no other choice).

   Unstructured masks take the top-``A`` scores (``A`` = old active count). N:M masks are
   re-solved with :func:`nmsparse.find_mask`: every full group (row-wise) or tile (transposable)
   keeps exactly n per row (and column), so each group regrows exactly what it dropped and the
   count is exact; partial (padded) groups keep what they kept before. The function verifies
   both properties and raises :class:`~nmsparse.errors.MaskError` if they ever fail.

Regrown entries are ``new_mask & ~kept``; callers start them (weights and optimizer state) at zero.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..errors import MaskError, ShapeError
from ..masks import find_mask
from ..pattern import NMPattern, PatternLike
from ._common import topk_mask

__all__ = ["drop_and_regrow"]


def drop_and_regrow(
    weight: torch.Tensor,
    mask: torch.Tensor,
    n_drop: int,
    grow_scores: torch.Tensor,
    pattern: Optional[PatternLike] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Drop the ``n_drop`` smallest active weights and regrow as many by ``grow_scores``.

    Parameters
    ----------
    weight : torch.Tensor
        The layer's weight, any shape (N:M layouts as in :func:`nmsparse.find_mask`).
    mask : torch.Tensor
        Current bool mask, the weight's shape.
    n_drop : int
        Number of active weights to drop, ``0 <= n_drop <= mask.sum()``.
    grow_scores : torch.Tensor
        Non-negative (only ``|.|`` is used) scores of the weight's shape; larger grows first.
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
    if mask.shape != weight.shape or grow_scores.shape != weight.shape or mask.dtype != torch.bool:
        raise ShapeError(
            f"drop_and_regrow: weight {tuple(weight.shape)}, bool mask {tuple(mask.shape)} ({mask.dtype}) and "
            f"grow_scores {tuple(grow_scores.shape)} must share one shape."
        )
    active = int(mask.sum())
    if not 0 <= int(n_drop) <= active:
        raise ShapeError(f"drop_and_regrow: n_drop must be in [0, {active}] (the active count), got {n_drop}.")
    p = None if pattern is None else NMPattern.parse(pattern)
    w = weight.detach().abs().double()
    # Drop: smallest |w| among active entries; inactive ones sort last (+inf).
    order = torch.sort(torch.where(mask, w, torch.full_like(w, float("inf"))).reshape(-1), stable=True).indices
    kept = mask.reshape(-1).clone()
    kept[order[: int(n_drop)]] = False
    kept = kept.reshape(mask.shape)
    if n_drop == 0:
        return mask.clone(), kept
    g = grow_scores.detach().abs().double()
    top = float(g.max()) if g.numel() else 0.0
    g = g / top if top > 0 else torch.zeros_like(g)
    big = 3.0 * (p.m * p.m if p is not None else 1) + 4.0
    score = torch.where(kept, torch.full_like(g, big), torch.where(mask, g, 2.0 + g))
    if p is None:
        new = topk_mask(score, active)
    else:
        new = find_mask(score, p, pad=True).to(mask.device)
    if int(new.sum()) != active or bool((kept & ~new).any()):
        raise MaskError(
            f"drop_and_regrow: re-solving pattern {p} changed the active count ({active} -> {int(new.sum())}) or "
            f"lost a kept weight; this breaks the regrow invariant (the mask did not follow the pattern?). "
            f"Check the mask with nmsparse.check_mask(mask, {str(p)!r})."
        )
    return new, kept
