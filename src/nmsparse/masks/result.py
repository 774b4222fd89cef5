"""MaskResult: a mask with the facts about how it was found."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict

import torch

from ..pattern import NMPattern


@dataclass
class MaskResult:
    """Outcome of :func:`nmsparse.solve_mask`.

    Attributes
    ----------
    mask : torch.Tensor
        Bool tensor of the weight's shape; True = kept.
    objective : float
        Sum of the kept scores (float64 accumulation), the quantity every solver maximises.
    optimal : bool
        True when the method guarantees the maximum objective (row-wise top-n, transposable exact).
    method : str
        The method that produced the mask.
    seconds : float
        Wall-clock time of the solve, including layout and padding.
    pattern : NMPattern
        The pattern the mask obeys.
    info : dict
        Method-specific facts. Always ``score_total`` (sum of all scores) and ``groups`` or
        ``tiles``; transposable methods add ``short_tiles`` (tiles where some row or column keeps
        fewer than n; only ``greedy`` can leave any).
    """

    mask: torch.Tensor
    objective: float
    optimal: bool
    method: str
    seconds: float
    pattern: NMPattern
    info: Dict[str, Any] = field(default_factory=dict)

    @property
    def kept_fraction(self) -> float:
        """Share of the total score kept by the mask (1.0 if all scores are zero)."""
        total = self.info.get("score_total", 0.0)
        return self.objective / total if total > 0 else 1.0

    @property
    def density(self) -> float:
        """Fraction of entries kept."""
        return float(self.mask.sum()) / self.mask.numel()
