"""Attach a fixed mask to a pruned layer as the library's one mask container (:class:`NMMask`).

``attach_mask_`` has the signature nn-core's ``nmsparse.nn.attach_mask_`` will have; until that
lands on main this module provides it over today's :class:`~nmsparse.nn.NMMask` (static, with a
masked gradient: pruned entries get no gradient, so fine-tuning keeps them at +0.0).
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn
from torch.nn.utils import parametrize

from ...errors import MaskError
from ...nn.parametrization import NMMask
from ...nn.ste import masked
from ...pattern import NMPattern

__all__ = ["attach_mask_", "register_on_model"]

GRADIENTS = ("masked", "ste")


class _MaskedGradientMask(NMMask):
    """NMMask whose pruned entries get a zero gradient (``torch.where`` routes none to them)."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return masked(weight, self.mask)

    def extra_repr(self) -> str:
        return f"pattern={self.describe_pattern()}, gradient=masked, static={self.static}"


def attach_mask_(
    module: nn.Module,
    param_name: str,
    mask: torch.Tensor,
    pattern: Union[NMPattern, float],
    *,
    gradient: str = "masked",
    update: str = "static",
    name: Optional[str] = None,
) -> nn.Module:
    """Attach ``mask`` to ``module.<param_name>`` as an :class:`NMMask` parametrization; returns ``module``.

    Parameters
    ----------
    module : nn.Module
    param_name : str
        The parameter to mask (``"weight"``).
    mask : torch.Tensor
        Bool, the parameter's shape (True = kept).
    pattern : NMPattern or float
        What the mask obeys (recorded on the container; an unstructured density is a float).
    gradient : {"masked", "ste"}
        ``"masked"``: pruned entries get no gradient; ``"ste"``: straight-through.
    update : {"static"}
        Only static masks are attached here (one-shot pruning fixes the mask).
    name : str, optional
        The parameter's full name, for messages and ``summary``.
    """
    if gradient not in GRADIENTS:
        raise MaskError(f"attach_mask_: gradient must be one of {GRADIENTS}, got {gradient!r}.")
    if update != "static":
        raise MaskError(f"attach_mask_: only update='static' is supported here, got {update!r}.")
    param = module._parameters.get(param_name)
    if param is None:
        raise MaskError(f"attach_mask_: module has no parameter {param_name!r} to mask (already parametrized?).")
    if tuple(mask.shape) != tuple(param.shape) or mask.dtype != torch.bool:
        raise MaskError(
            f"attach_mask_: mask must be a bool tensor of the parameter's shape {tuple(param.shape)}, "
            f"got {mask.dtype} {tuple(mask.shape)}."
        )
    cls = _MaskedGradientMask if gradient == "masked" else NMMask
    container = cls(pattern, None, mask.to(param.device), static=True, name=name or param_name)
    parametrize.register_parametrization(module, param_name, container)
    return module


def register_on_model(model: nn.Module, full_name: str, module: nn.Module, param_name: str) -> None:
    """Record an attached mask in the model's sparsity state so ``summary`` and ``squash_`` see it."""
    from ...nn import sparsify as _sp

    state = getattr(model, _sp._STATE, None)
    if state is None:
        state = _sp.SparsityState()
        setattr(model, _sp._STATE, state)
        model.register_forward_pre_hook(_sp._RefreshHook())
    state.entries[full_name] = (module, param_name)
    state.note(full_name)
