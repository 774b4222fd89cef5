"""Attach a fixed mask to a pruned layer: the library's one mask container.

``prune_`` attaches its masks with :func:`nmsparse.nn.attach_mask_` (static ``NMMask``, masked
gradient: pruned entries get no gradient, so fine-tuning keeps them at +0.0). ``summary``,
``squash_`` and checkpoints find them by walking the model; ``register_on_model`` only adds the
model-level checkpoint check.
"""

from __future__ import annotations

from torch import nn

from ...nn.attach import attach_mask_
from ...nn.entries import guard_loads

__all__ = ["attach_mask_", "register_on_model"]


def register_on_model(model: nn.Module, full_name: str, module: nn.Module, param_name: str) -> None:
    """Let ``model.load_state_dict`` check every mask before loading (see ``nn.entries.guard_loads``)."""
    guard_loads(model)
