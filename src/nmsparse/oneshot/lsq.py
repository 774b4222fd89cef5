"""Exact least-squares refit of a layer's kept weights (and bias) for a fixed mask.

AdaPrune's objective for ``Y = X Wᵀ + b`` with the mask fixed is, row by row, a linear least-squares
problem over the kept weights and the bias. With ``G = [X 1]ᵀ[X 1]`` and ``Θ = [W b]`` the dense
parameters, each row's optimum is (K = kept columns plus the bias, P = pruned columns)

    Θ'_K = Θ_K + (G_KK + λI)⁻¹ G_KP Θ_P,     Θ'_P = 0,

with ``λ = damp · mean(diag H)`` on the weight part (zero damping gives the plain optimum). Rows with
the same number of kept entries are solved together in batches (Cholesky), so an ``n:m`` layer costs
``rows · (cols·n/m)³ / 3`` flops: fast for the layers of small and mid-size models, heavy for
layers thousands wide (there AdaPrune's Adam or SparseGPT's updates are the practical choice).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

__all__ = ["lsq_refit"]

_BATCH_BYTES = 128 * 2**20  # memory for one batch of gathered G_KK blocks


def lsq_refit(
    w0: torch.Tensor, b0: Optional[torch.Tensor], gram: torch.Tensor, mask: torch.Tensor, damp: float = 0.01
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Optimal kept weights (and bias) for ``mask``, given the dense ``w0`` ``(rows, cols)``, ``b0``
    ``(rows,)`` or None, and the augmented Gram ``gram`` ``((cols+1), (cols+1))``; fp64 in and out."""
    rows, cols = w0.shape
    has_bias = b0 is not None
    theta = torch.cat([w0, b0[:, None]], 1) if has_bias else w0
    g = gram if has_bias else gram[:cols, :cols]
    free = torch.cat([mask, torch.ones(rows, 1, dtype=torch.bool, device=mask.device)], 1) if has_bias else mask
    g = g.clone()
    mean = float(torch.diagonal(gram[:cols, :cols]).mean())
    idx = torch.arange(cols, device=g.device)
    g[idx, idx] += damp * (mean if mean > 0 else 1.0)
    out = torch.where(free, theta, torch.zeros((), dtype=theta.dtype, device=theta.device))
    counts = free.sum(1)
    for k in torch.unique(counts).tolist():
        if k == 0:
            continue
        sel = torch.nonzero(counts == k).flatten()
        per = max(1, _BATCH_BYTES // (8 * k * k))
        for s in range(0, len(sel), per):
            r = sel[s : s + per]
            kept = _indices(free[r], k)  # (R, k) column indices
            gkk = g[kept[:, :, None], kept[:, None, :]]  # (R, k, k)
            pruned_theta = torch.where(free[r], torch.zeros((), dtype=theta.dtype, device=theta.device), theta[r])
            rhs = torch.einsum("rkc,rc->rk", g[kept], pruned_theta)  # G_KP Θ_P
            chol, info = torch.linalg.cholesky_ex(gkk)
            sol = torch.cholesky_solve(rhs[:, :, None], chol)[:, :, 0] if not bool(info.any()) else torch.linalg.lstsq(gkk, rhs[:, :, None]).solution[:, :, 0]
            out[r[:, None], kept] = theta[r[:, None], kept] + sol
    w = out[:, :cols]
    return w, (out[:, cols] if has_bias else None)


def _indices(free: torch.Tensor, k: int) -> torch.Tensor:
    """Column indices of the True entries of each row (every row has exactly k)."""
    order = torch.argsort((~free).to(torch.int8), dim=1, stable=True)
    return order[:, :k]
