"""A layer's weight and bias, copied and put back: how ``prune_`` undoes its work on an error and
how the permutation guard's trials leave no trace."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

__all__ = ["snapshot", "restore"]

Snapshot = Tuple[torch.Tensor, Optional[torch.Tensor]]


def snapshot(module: nn.Module) -> Snapshot:
    """Copies of ``module.weight`` and ``module.bias`` (None without one), on the CPU: a block pruned
    on a GPU (``device=``) must not keep every layer's dense copy there."""
    bias = getattr(module, "bias", None)
    copy_ = lambda t: t.detach().to("cpu", copy=True)  # noqa: E731
    return copy_(module.weight), None if bias is None else copy_(bias)


@torch.no_grad()
def restore(module: nn.Module, snap: Snapshot) -> None:
    """Write a :func:`snapshot` back."""
    module.weight.copy_(snap[0])
    if snap[1] is not None:
        module.bias.copy_(snap[1])
