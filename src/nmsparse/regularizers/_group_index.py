"""Validate a grouping of a flat vector and its group weights (shared by the penalty, prox, projection).

A grouping is stored as one label per entry: ``labels[j]`` is the group of entry ``j`` of the
flattened tensor. Groups must **partition** the entries: every entry in exactly one group.
Overlapping groups are rejected because the closed-form proximal operator of WGSEF needs disjoint
groups (with overlaps the penalty no longer separates into a function of the group norms).
Groups that leave entries out are rejected too, so that no entry is silently unpenalised: keep
entries you do not want to penalise out of the tensor you pass.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Tuple, Union

import torch

from ..errors import ScoreError, ShapeError

GroupsLike = Union[None, torch.Tensor, Sequence[Sequence[int]]]


def resolve_groups(numel: int, groups: GroupsLike, where: str) -> Tuple[Optional[torch.Tensor], int]:
    """Return ``(labels, n_groups)``; ``labels`` is ``None`` when every entry is its own group.

    ``groups`` is ``None`` (singletons), an integer tensor of ``numel`` labels in ``[0, G)`` with
    every label used, or a sequence of index lists that together partition ``range(numel)``.
    """
    if groups is None:
        return None, numel
    if isinstance(groups, torch.Tensor):
        if groups.dtype in (torch.bool,) or groups.is_floating_point() or groups.is_complex():
            raise ShapeError(f"{where}: group labels must be an integer tensor, got dtype {groups.dtype}.")
        labels = groups.reshape(-1).to(torch.long)
        if labels.numel() != numel:
            raise ShapeError(
                f"{where}: groups has {labels.numel()} labels but x has {numel} entries; pass one "
                "group label per entry of x (same shape or flattened)."
            )
        if numel == 0:
            raise ShapeError(f"{where}: x is empty; pass at least one entry.")
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0:
            raise ShapeError(f"{where}: group labels must be >= 0, got {lo}.")
        counts = torch.bincount(labels, minlength=hi + 1)
        empty = torch.nonzero(counts == 0).flatten()
        if empty.numel():
            raise ShapeError(
                f"{where}: group labels must use every id in [0, {hi}], but group {int(empty[0])} is "
                "empty; relabel the groups consecutively (e.g. torch.unique(labels, return_inverse=True))."
            )
        return labels, hi + 1
    labels = torch.full((numel,), -1, dtype=torch.long)
    n_groups = 0
    for gi, members in enumerate(groups):
        idx = torch.as_tensor(list(members), dtype=torch.long)
        if idx.numel() == 0:
            raise ShapeError(f"{where}: group {gi} is empty; every group needs at least one entry.")
        if int(idx.min()) < 0 or int(idx.max()) >= numel:
            raise ShapeError(f"{where}: group {gi} has index out of range [0, {numel}): {idx.tolist()}.")
        if torch.unique(idx).numel() != idx.numel():
            raise ShapeError(f"{where}: group {gi} lists an index twice: {idx.tolist()}.")
        taken = labels[idx] >= 0
        if bool(taken.any()):
            j = int(idx[taken][0])
            raise ShapeError(
                f"{where}: groups must be disjoint, but entry {j} is in group {int(labels[j])} and in "
                f"group {gi}. WGSEF's closed-form prox needs a partition; split or merge the groups."
            )
        labels[idx] = gi
        n_groups += 1
    if n_groups == 0:
        raise ShapeError(f"{where}: groups is an empty sequence; pass at least one group.")
    missing = torch.nonzero(labels < 0).flatten()
    if missing.numel():
        raise ShapeError(
            f"{where}: groups must cover every entry of x, but entry {int(missing[0])} (and "
            f"{missing.numel() - 1} more) is in no group. Add the entries to a group, or leave "
            "them out of x."
        )
    return labels, n_groups


def resolve_weights(weights, n_groups: int, where: str) -> Optional[torch.Tensor]:
    """Validate per-group weights ``d`` (``None`` means all ones); returns float64 ``(G,)`` or None."""
    if weights is None:
        return None
    d = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
    if d.numel() == 1 and n_groups != 1:
        d = d.expand(n_groups).clone()
    if d.numel() != n_groups:
        raise ShapeError(f"{where}: weights has {d.numel()} entries but there are {n_groups} groups; pass one weight per group.")
    if not bool(torch.isfinite(d).all()) or bool((d <= 0).any()):
        bad = d[~(torch.isfinite(d) & (d > 0))][0].item()
        raise ScoreError(f"{where}: group weights must be positive and finite, got {bad}.")
    return d


def check_k(k, n_groups: int, where: str) -> int:
    """``k`` must be an int in ``[1, n_groups]``; no clamping."""
    if isinstance(k, bool) or not isinstance(k, int):
        if isinstance(k, torch.Tensor) and k.numel() == 1 and not k.is_floating_point():
            k = int(k)
        else:
            raise ShapeError(f"{where}: k must be an int (number of groups to keep), got {k!r}.")
    if not 1 <= k <= n_groups:
        raise ShapeError(f"{where}: k must be in [1, {n_groups}] (the number of groups), got {k}.")
    return k


def finite_number(value) -> Optional[float]:
    """``value`` as a finite float, or ``None`` if it is not a real finite number (bools excluded)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def check_x(x, where: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ShapeError(f"{where}: x must be a torch.Tensor, got {type(x).__name__}.")
    if x.device.type == "meta":
        raise ScoreError(f"{where}: x is a meta tensor (shape {tuple(x.shape)}), which holds no values; materialise it first.")
    if not x.is_floating_point():
        raise ScoreError(f"{where}: x must be a floating-point tensor, got dtype {x.dtype}.")
    if x.numel() == 0:
        raise ShapeError(f"{where}: x is empty; pass at least one entry.")
    if not bool(torch.isfinite(x).all()):
        raise ScoreError(f"{where}: x contains NaN or Inf; WGSEF is defined for finite values only.")
    return x


def group_norms(flat: torch.Tensor, labels: Optional[torch.Tensor], n_groups: int) -> torch.Tensor:
    """Euclidean norm of every group, float64 ``(G,)``, summed deterministically by scatter-add."""
    sq = flat.detach().to(torch.float64).pow(2)
    if labels is None:
        return sq.sqrt()
    out = torch.zeros(n_groups, dtype=torch.float64, device=flat.device)
    return out.index_add_(0, labels.to(flat.device), sq).sqrt()
