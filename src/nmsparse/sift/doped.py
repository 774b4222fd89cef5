"""Sparse Doped: a dense low-rank product U V plus a sparse full-size W.

Sparse-IFT, Sec. 3 ("Sparse Doped"): ``y = W x + V (U x)`` with U (D_in -> r) and V (r -> D_out)
dense and W at sparsity s. Iso-FLOP: ``r (D_in + D_out) + (1 - s) D_in D_out = D_in D_out``, so
``r = s D_in D_out / (D_in + D_out)``. For a convolution, U is the original k x k convolution into
r channels and V a 1 x 1 convolution.

r is rounded to the nearest integer and W's density set to ``1 - r (D_in + D_out) / (D_in D_out)``
so the layer stays iso-FLOP up to the kept-count rounding. Under an N:M pattern W's density is
n/m (= 1 - s) and only r is rounded (the layer is off by at most ``(D_in + D_out) / 2`` MACs per
position).

Initialisation: W is the original layer's weight (and bias) under a random mask; U is freshly
initialised and V starts at zero, so at initialisation the doped layer computes the masked dense
layer, and at s = 0 (r = 0, W dense) exactly the dense function.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ..pattern import NMPattern
from ._common import CONVS, conv_class, copy_layer, fan, init_sparse_, set_parent

__all__ = ["SparseDoped", "doped_rank", "apply_doped"]


class SparseDoped(nn.Module):
    """``y = sparse(x) + v(u(x))``; ``u``/``v`` are None when the rank is 0."""

    def __init__(self, sparse: nn.Module, u: Optional[nn.Module], v: Optional[nn.Module]):
        super().__init__()
        self.sparse = sparse
        self.u = u
        self.v = v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.sparse(x)
        if self.u is not None:
            y = y + self.v(self.u(x))
        return y


def doped_rank(d_in: int, d_out: int, sparsity: float, pattern: Optional[NMPattern]) -> tuple:
    """``(r, density of W)`` for Sparse Doped of a ``D_in -> D_out`` layer."""
    r = int(math.floor(sparsity * d_in * d_out / (d_in + d_out) + 0.5))
    if pattern is not None and sparsity > 0:
        return r, pattern.n / pattern.m
    return r, max(0.0, 1.0 - r * (d_in + d_out) / (d_in * d_out))


def apply_doped(model: nn.Module, name: str, sparsity: float, pattern: Optional[NMPattern],
                generator: torch.Generator) -> dict:
    """Replace layer ``name`` by a :class:`SparseDoped` of the iso-FLOP rank."""
    layer = model.get_submodule(name)
    d_in, d_out = fan(layer)
    r, density = doped_rank(d_in, d_out, sparsity, pattern)
    sparse = copy_layer(layer)
    if isinstance(layer, CONVS):
        conv = conv_class(layer)
        u = conv(layer.in_channels, r, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                      bias=False, padding_mode=layer.padding_mode) if r else None
        v = conv(r, layer.out_channels, 1, bias=False) if r else None
    else:
        u = nn.Linear(layer.in_features, r, bias=False) if r else None
        v = nn.Linear(r, layer.out_features, bias=False) if r else None
    init_sparse_(sparse, density=density, pattern=pattern if sparsity > 0 else None, generator=generator, scale=False)
    if r:
        u.to(device=layer.weight.device, dtype=layer.weight.dtype)
        v.to(device=layer.weight.device, dtype=layer.weight.dtype)
        with torch.no_grad():
            v.weight.zero_()
    set_parent(model, name, SparseDoped(sparse, u, v))
    return {"rank": r, "density": density}
