"""Folding a channel permutation into a model: every member of a group reordered the same way.

A permutation ``perm`` of a group's C channels puts old channel ``perm[p]`` at position ``p``:
``t[..., start + p, ...] = t_old[..., start + perm[p], ...]`` along each member's axis. It moves
values and computes nothing, so it is exact and undone exactly by the inverse permutation.
The score tensors of the layers (kept in the ``(out, in, k...)`` orientation of
:class:`~nmsparse.oneshot.hessian.MatrixView`) move with their weights, so a later group's
search sees the current order.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch

from .structure import Group, Member

__all__ = ["fold_", "inverse", "member_tensor", "oriented_dim"]


def member_tensor(mb: Member) -> Optional[torch.Tensor]:
    return getattr(mb.module, mb.tensor, None)


def oriented_dim(mb: Member) -> int:
    """The member's axis in the ``(out, in, k...)`` orientation of its layer's weight."""
    if mb.role == "in":
        return 1
    return 0


def _move(t: torch.Tensor, dim: int, start: int, perm: torch.Tensor) -> None:
    idx = torch.arange(start, start + perm.numel(), device=t.device)
    src = (perm.to(t.device) + start)
    t.index_copy_(dim, idx, t.index_select(dim, src))


@torch.no_grad()
def fold_(group: Group, perm: torch.Tensor, scores: Optional[Dict[str, torch.Tensor]] = None) -> None:
    """Reorder every member of ``group`` by ``perm`` in place (and the layers' entries of ``scores``,
    keyed by module name)."""
    moved_scores: List[tuple] = []
    moved: set = set()
    for mb in group.members:
        t = member_tensor(mb)
        if t is None:
            continue
        key = (id(t), mb.dim, mb.start)
        if key not in moved:  # a tied tensor (embeddings and LM head) listed twice moves once
            moved.add(key)
            _move(t.data if hasattr(t, "data") else t, mb.dim, mb.start, perm)
        if scores is not None and mb.layer and mb.module_name in scores:
            key = (mb.module_name, oriented_dim(mb), mb.start)
            if key not in moved_scores:  # one layer may appear once per axis/offset
                moved_scores.append(key)
                _move(scores[mb.module_name], oriented_dim(mb), mb.start, perm)


def inverse(perm: torch.Tensor) -> torch.Tensor:
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), device=perm.device)
    return inv

