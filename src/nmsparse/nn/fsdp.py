"""``refresh_plan(model)``: how each mask of a (possibly FSDP2-sharded) model will be refreshed.

The refresh itself lives in :mod:`nmsparse.nn.distributed`; this module only reports its plan
per layer, so that a user can see before training which layers refresh shard-locally and which
gather their weight (and why).
"""

from __future__ import annotations

from typing import Dict

from torch import nn

from .distributed import RefreshPlan, plan_for
from .entries import mask_entries

__all__ = ["refresh_plan"]


def refresh_plan(model: nn.Module) -> Dict[str, RefreshPlan]:
    """``{layer name: RefreshPlan}`` for every masked weight of ``model`` in its current state.

    ``mode`` is ``"shard-local"`` (each rank solves its own rows), ``"gathered"`` (every rank
    all-gathers the weight; ``reason`` says why) or ``"unsharded"`` (a plain tensor).

    Examples
    --------
    After ``sparsify_(model, "2:4T")`` and ``fully_shard`` on two ranks, a ``Linear(64, 32)``
    plans ``shard-local`` (16 rows per rank hold whole 4x4 tiles) and a ``Linear(32, 12)``
    ``gathered`` (shards of 6 rows cut its tiles).
    """
    return {entry.name: plan_for(entry.dense, entry.mask.pattern, entry.mask.group_dim) for entry in mask_entries(model)}
