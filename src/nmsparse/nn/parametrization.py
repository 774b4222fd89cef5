"""The mask parametrization attached to a weight by :func:`nmsparse.nn.sparsify_`.

``torch.nn.utils.parametrize`` keeps the dense weight as ``<module>.parametrizations.weight.original``
and computes ``<module>.weight`` through :class:`NMMask`, which applies the mask with a
straight-through gradient. The mask is a persistent bool buffer
(``<module>.parametrizations.weight.0.mask``), so a ``state_dict`` carries it; the step of the
last refresh is a persistent buffer too, so ``summary`` survives a save/load.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from ..errors import NMSparseError
from ..masks import find_mask, unstructured_mask
from ..pattern import NMPattern
from .ste import masked_weight_ste

STE_MODES = ("ste", "srste")


class NMMask(nn.Module):
    """Apply an N:M, transposable N:M or unstructured mask to a weight, with STE gradients.

    Parameters
    ----------
    pattern : NMPattern or float
        The N:M pattern, or a density in (0, 1] for an unstructured (top-k per tensor) mask.
    method : str or None
        Mask solver for transposable patterns (``"exact"``, ``"greedy"``, ``"refine"``).
    mask : torch.Tensor
        Initial bool mask, the weight's shape.
    ste : {"ste", "srste"}
        Gradient estimator; ``"srste"`` adds ``srste_decay · (1 − S) ⊙ W`` to the gradient.
    static : bool
        Freeze the mask: automatic refreshes skip it (``update_masks_(..., force=True)`` still refreshes).
    name : str
        The parameter's name in the model (for error messages and ``summary``).
    """

    def __init__(
        self,
        pattern: Union[NMPattern, float],
        method: Optional[str],
        mask: torch.Tensor,
        *,
        ste: str = "ste",
        srste_decay: float = 2e-4,
        static: bool = False,
        update_every: int = 100,
        name: str = "",
    ):
        super().__init__()
        self.pattern = pattern
        self.method = method
        self.ste = ste
        self.srste_decay = float(srste_decay)
        self.static = bool(static)
        self.update_every = int(update_every)
        self.layer_name = name
        self.register_buffer("mask", mask.to(torch.bool).clone(), persistent=True)
        self.register_buffer("last_refresh", torch.zeros((), dtype=torch.long), persistent=True)
        self.refreshes = 0
        self.last_changed = 0

    @property
    def decay(self) -> float:
        return self.srste_decay if self.ste == "srste" else 0.0

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return masked_weight_ste(weight, self.mask, self.decay)

    @torch.no_grad()
    def refresh(self, weight: torch.Tensor, step: int) -> int:
        """Recompute the mask from the dense ``weight``; return how many entries changed."""
        new = compute_mask(weight.detach(), self.pattern, self.method, self.layer_name)
        changed = int(torch.count_nonzero(new != self.mask))
        self.mask.copy_(new)  # in place: the buffer's identity (and torch.compile's view of it) stays
        self.last_refresh.fill_(step)
        self.refreshes += 1
        self.last_changed = changed
        return changed

    def describe_pattern(self) -> str:
        if isinstance(self.pattern, NMPattern):
            return str(self.pattern)
        return f"unstructured {self.pattern:.0%}"

    def extra_repr(self) -> str:
        solver = f", method={self.method}" if self.method else ""
        return f"pattern={self.describe_pattern()}{solver}, ste={self.ste}, static={self.static}"


def compute_mask(
    weight: torch.Tensor, pattern: Union[NMPattern, float], method: Optional[str], name: str
) -> torch.Tensor:
    """The mask of a dense weight; errors name the layer."""
    try:
        if isinstance(pattern, NMPattern):
            return find_mask(weight, pattern, method=method)
        return unstructured_mask(weight, pattern)
    except NMSparseError as err:
        raise type(err)(f"layer {name!r}: {err}") from None
