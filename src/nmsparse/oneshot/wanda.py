"""Wanda (Sun, Liu, Bair, Kolter, ICLR 2024): prune by weights and activations, no weight update.

The score of weight ``W_ij`` is ``|W_ij| · ‖X_j‖₂``, where ``‖X_j‖₂`` is the norm of input feature j
over every calibration row (token / output position). From the Gram matrix ``H = XᵀX`` that norm
is ``sqrt(H_jj)``. The mask is then the pattern's optimal mask for these scores (top n per group for
``n:m``, the transposable solver for ``n:mT``, top-k per tensor for a density).
"""

from __future__ import annotations

import torch

__all__ = ["wanda_scores"]


def wanda_scores(w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``|W| · sqrt(diag H)`` for a matrix ``w`` ``(rows, cols)`` and ``h`` ``(cols, cols)``.

    Examples
    --------
    >>> x = torch.tensor([[3.0, 0.0], [4.0, 1.0]])
    >>> wanda_scores(torch.tensor([[1.0, -2.0]]), x.T @ x)
    tensor([[5., 2.]])
    """
    norms = torch.sqrt(torch.clamp(torch.diagonal(h), min=0.0))  # a Gram diagonal is >= 0; clamp rounding only
    return w.abs() * norms[None, :].to(w.dtype)
