"""Sparse Factorized: a dense layer becomes sparse U (D_in x d), a non-linearity, sparse V (d x D_out).

Sparse-IFT, Sec. 3 ("Sparse Factorized"): with both factors at sparsity s the cost is
``(1-s) d (D_in + D_out)``; iso-FLOP with the dense ``D_in D_out`` gives
``d = D_in D_out / ((D_in + D_out)(1 - s))``. For a convolution ``D_in = k^2 C_in``: U is the
original k x k convolution (stride, padding, dilation kept) into d channels and V a 1 x 1
convolution, so both run at the same output positions.

Because d is an integer, d is rounded *up* and the density is set to
``D_in D_out / ((D_in + D_out) d)`` (<= 1 - s), so the layer is iso-FLOP up to the rounding of the
kept count (U and V together keep exactly D_in D_out weights). Under an N:M pattern the density is fixed at n/m; d is rounded to the nearest multiple of m
(so V's groups are full) and the layer's cost is off by at most ``m / (2 d)``.

Initialisation: fresh (seeded), kept weights scaled by 1/sqrt(density) (sparsity-aware init,
Evci et al. 2022). Sparse Factorized is not function-preserving at any s.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ..pattern import NMPattern
from ._common import CONVS, conv_class, fan, init_sparse_, kept_for_density, set_parent

__all__ = ["SparseFactorized", "factorized_width", "apply_factorized"]


class SparseFactorized(nn.Module):
    """``y = V act(U x)``; ``u`` and ``v`` are plain layers carrying an ``NMMask``."""

    def __init__(self, u: nn.Module, v: nn.Module, activation: Optional[nn.Module] = None):
        super().__init__()
        self.u = u
        self.act = activation if activation is not None else nn.ReLU()
        self.v = v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.v(self.act(self.u(x)))


def factorized_width(d_in: int, d_out: int, sparsity: float, pattern: Optional[NMPattern]) -> tuple:
    """``(d, density)`` for Sparse Factorized of a ``D_in -> D_out`` layer."""
    ideal = d_in * d_out / ((d_in + d_out) * (1.0 - sparsity))
    if pattern is None:
        d = max(1, math.ceil(ideal - 1e-9))
        return d, min(1.0, d_in * d_out / ((d_in + d_out) * d))
    d = max(pattern.m, pattern.m * int(math.floor(ideal / pattern.m + 0.5)))
    return d, pattern.n / pattern.m


def apply_factorized(model: nn.Module, name: str, sparsity: float, pattern: Optional[NMPattern],
                     generator: torch.Generator) -> dict:
    """Replace layer ``name`` by a :class:`SparseFactorized` of the iso-FLOP inner width."""
    layer = model.get_submodule(name)
    d_in, d_out = fan(layer)
    d, density = factorized_width(d_in, d_out, sparsity, pattern)
    if isinstance(layer, CONVS):
        conv = conv_class(layer)
        u = conv(layer.in_channels, d, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                      bias=False, padding_mode=layer.padding_mode)
        v = conv(d, layer.out_channels, 1, bias=layer.bias is not None)
    else:
        u = nn.Linear(layer.in_features, d, bias=False)
        v = nn.Linear(d, layer.out_features, bias=layer.bias is not None)
    u.to(device=layer.weight.device, dtype=layer.weight.dtype)
    v.to(device=layer.weight.device, dtype=layer.weight.dtype)
    if pattern is None:
        # U and V run at the same positions: split the dense weight count D_in D_out between them.
        kept_u = kept_for_density(u.weight.numel(), density)
        kept_v = min(v.weight.numel(), d_in * d_out - kept_u)
    else:
        kept_u = kept_v = None
    init_sparse_(u, density=density, pattern=pattern, generator=generator, scale=True, kept=kept_u)
    init_sparse_(v, density=density, pattern=pattern, generator=generator, scale=True, kept=kept_v)
    set_parent(model, name, SparseFactorized(u, v))
    return {"inner_width": d, "density": density}
