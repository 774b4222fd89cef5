"""Straight-through estimators for masked weights (STE and SR-STE).

The forward pass uses the masked weight ``W ⊙ S`` (+0.0 in pruned places); the backward pass
hands the gradient of the masked weight straight to the dense weight, so pruned weights keep
learning and can regrow when the mask is recomputed (Hubara et al. 2021, dynamic training;
Zhou et al. 2021, eq. 3).

SR-STE (Zhou et al., ICLR 2021, eq. 4) adds a decay on the pruned weights only:

    g(W) = ∂L/∂(W ⊙ S) + λ_W · (1 − S) ⊙ W

which pulls pruned weights towards zero and stabilises the mask. The decay is added to the
gradient, so the optimiser's learning rate scales it, as in the paper.
"""

from __future__ import annotations

import torch


def masked(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``W ⊙ S`` with +0.0 (never -0.0) in pruned places."""
    return torch.where(mask, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))


class _MaskedWeightSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: torch.Tensor, mask: torch.Tensor, decay: float) -> torch.Tensor:
        ctx.decay = float(decay)
        if ctx.decay:
            ctx.save_for_backward(weight, mask)
        return masked(weight, mask)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.decay:
            weight, mask = ctx.saved_tensors
            pruned = torch.where(mask, torch.zeros((), dtype=weight.dtype, device=weight.device), weight)
            grad = grad + ctx.decay * pruned
        return grad, None, None


def masked_weight_ste(weight: torch.Tensor, mask: torch.Tensor, decay: float = 0.0) -> torch.Tensor:
    """``W ⊙ S`` whose gradient w.r.t. the dense ``W`` is straight-through (plus SR-STE decay).

    Parameters
    ----------
    weight : torch.Tensor
        The dense weight (any shape).
    mask : torch.Tensor
        Bool tensor of the weight's shape; True = kept.
    decay : float
        SR-STE's λ_W; 0 gives the plain STE.

    Examples
    --------
    >>> w = torch.tensor([1.0, -4.0], requires_grad=True)
    >>> masked_weight_ste(w, torch.tensor([True, False]), decay=0.5).sum().backward()
    >>> w.grad  # 1 for both (straight through), plus 0.5 * -4 on the pruned entry
    tensor([ 1., -1.])
    """
    return _MaskedWeightSTE.apply(weight, mask, decay)
