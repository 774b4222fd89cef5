"""Sparse Parallel: k = round(1/(1-s)) sparse copies of a layer, each with its own norm, summed.

Sparse-IFT, Sec. 3 ("Sparse Parallel"): a dense layer ``y = W x`` becomes
``y = sum_{i<k} norm_i(W_i x)`` with every ``W_i`` of the original shape and sparsity ``s``, so
the layer costs ``k (1-s) = 1`` times the dense FLOPs. Because k is an integer, the mask density
is set to ``1/k`` (kept counts split so the k branches keep exactly as many weights as the
dense layer; the actual sparsity is ``1 - 1/k``, equal to s when 1/(1-s) is an
integer: s = 0.5, 0.75, 0.9). Under an N:M pattern the density is n/m, so iso-FLOP needs m/n to
be (within 2 %) an integer: 2:4 -> 2 branches, 1:4 -> 4, 1:10 -> 10.

Initialisation: branch 0 is the original layer (and its norm) with its mask; the other branches
are freshly initialised. At s = 0 there is one dense branch and the transformed model computes
exactly the dense function. No sparse-init rescaling: k branches of density 1/k summed already
have the dense layer's output variance.
"""

from __future__ import annotations

import copy
import math
from typing import List, Optional

import torch
from torch import nn

from ..errors import PatternError
from ..pattern import NMPattern
from ._common import NORM_TYPES, copy_layer, init_sparse_, set_parent

__all__ = ["SparseParallel", "parallel_branches", "apply_parallel"]


class SparseParallel(nn.Module):
    """Sum of ``k`` branches applied to the same input: ``y = sum_i branch_i(x)``.

    Each branch is a plain layer carrying an ``NMMask``, or ``nn.Sequential(that layer, norm)`` when
    the original layer was followed by a normalisation.
    """

    def __init__(self, branches: List[nn.Module]):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


def parallel_branches(sparsity: float, pattern: Optional[NMPattern], where: str = "transform") -> tuple:
    """``(k, density)`` for Sparse Parallel at ``sparsity``."""
    k = int(math.floor(1.0 / (1.0 - sparsity) + 0.5))
    if pattern is None:
        return k, 1.0 / k
    density = pattern.n / pattern.m
    if sparsity > 0 and abs(k * density - 1.0) > 0.02:
        raise PatternError(
            f"{where}: Sparse Parallel with pattern {pattern} needs m/n = {pattern.m / pattern.n:g} branches to be "
            f"iso-FLOP, which is not an integer; {k} branches would cost {k * density:.3f}x the dense layer. "
            f"Use a pattern with n dividing m (2:4, 1:4, 4:8, 1:10) or pattern=None."
        )
    return k, density


def _next_norm(model: nn.Module, name: str) -> Optional[str]:
    """Name of the norm directly after ``name`` in its ``nn.Sequential`` parent, if any."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if not isinstance(parent, nn.Sequential):
        return None
    keys = list(parent._modules)
    i = keys.index(child)
    if i + 1 < len(keys) and isinstance(parent._modules[keys[i + 1]], NORM_TYPES):
        return f"{parent_name}.{keys[i + 1]}" if parent_name else keys[i + 1]
    return None


def _plain_copy(layer: nn.Module, fresh: bool) -> nn.Module:
    new = copy_layer(layer)
    if fresh:
        new.reset_parameters()
    return new


def _fresh_norm(norm: nn.Module) -> nn.Module:
    new = copy.deepcopy(norm)
    if hasattr(new, "reset_parameters"):
        new.reset_parameters()
    if hasattr(new, "reset_running_stats") and getattr(new, "track_running_stats", False):
        new.reset_running_stats()
    return new


def apply_parallel(model: nn.Module, name: str, sparsity: float, pattern: Optional[NMPattern],
                   generator: torch.Generator) -> dict:
    """Replace layer ``name`` (and the norm right after it) by a :class:`SparseParallel`."""
    layer = model.get_submodule(name)
    k, density = parallel_branches(sparsity, pattern)
    norm_name = _next_norm(model, name)
    norm = model.get_submodule(norm_name) if norm_name else None
    branches = []
    numel = layer.weight.numel()
    for i in range(k):
        sparse = _plain_copy(layer, fresh=i > 0)
        # Unstructured: branch i keeps floor(numel (i+1)/k) - floor(numel i/k) weights, so the k
        # branches keep exactly numel in total (exactly the dense layer's MACs).
        kept = (numel * (i + 1)) // k - (numel * i) // k
        init_sparse_(sparse, density=density, pattern=pattern if sparsity > 0 else None, generator=generator,
                     scale=False, kept=kept)
        if norm is not None:
            branches.append(nn.Sequential(sparse, copy.deepcopy(norm) if i == 0 else _fresh_norm(norm)))
        else:
            branches.append(sparse)
    set_parent(model, name, SparseParallel(branches))
    if norm_name:
        set_parent(model, norm_name, nn.Identity())
    return {"branches": k, "density": density, "norm": norm_name}
