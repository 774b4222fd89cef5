"""``transform``: the front door to the four Sparse-IFT families.

Sparse Iso-FLOP Transformations (Sparse-IFT; Thangarasa et al., Cerebras, ICML 2024) replace a
dense layer by a larger sparse structure that costs the same forward FLOPs, parameterised by one
number, the sparsity s. See :mod:`.wide`, :mod:`.parallel`, :mod:`.factorized` and :mod:`.doped`
for the iso-FLOP rule of each family and how integer sizes are handled.
"""

from __future__ import annotations

import copy
import warnings
from typing import Optional, Sequence

import torch
from torch import nn

from ..errors import ArgumentError
from ..nn.entries import nmmask_of
from ..pattern import PatternLike
from ._common import WEIGHT_TYPES, check_family, check_pattern, check_sparsity, check_usable, name_masks, select_layers
from .doped import apply_doped
from .factorized import apply_factorized
from .parallel import apply_parallel
from .wide import apply_wide

__all__ = ["transform"]


def _nonzero_weights(module: nn.Module) -> int:
    total = 0
    for m in module.modules():
        if isinstance(m, WEIGHT_TYPES):
            nm = nmmask_of(m, "weight")
            total += int(nm.mask.sum()) if nm is not None else m.weight.numel()
    return total

_LAYERWISE = {"parallel": apply_parallel, "factorized": apply_factorized, "doped": apply_doped}


def transform(
    model: nn.Module,
    family: str,
    sparsity: float,
    *,
    pattern: Optional[PatternLike] = None,
    include: Optional[Sequence[str]] = None,
    exclude: Optional[Sequence[str]] = None,
    input_shape: Optional[Sequence[int]] = None,
    seed: int = 0,
) -> nn.Module:
    """Return a Sparse-IFT copy of ``model`` (the input model is not modified).

    Parameters
    ----------
    model : nn.Module
        The dense model. ``"wide"`` needs an ``nn.Sequential`` chain; the other families replace
        ``nn.Linear`` / ``nn.Conv1d/2d/3d`` layers wherever they sit.
    family : {"wide", "parallel", "factorized", "doped"}
        - wide: widths x sqrt(1/(1-s)), sparse at (about) s, whole-network MACs = dense (+-0.1 %).
        - parallel: round(1/(1-s)) sparse copies of the layer, each with its own norm, summed.
        - factorized: sparse U (D_in x d), ReLU, sparse V (d x D_out), d = D_in D_out/((D_in+D_out)(1-s)).
        - doped: dense rank-r U V, r = s D_in D_out/(D_in+D_out), plus a sparse full-size W.
    sparsity : float
        s in [0, 1).
    pattern : str or NMPattern, optional
        None: unstructured random masks. ``"2:4"``, ``"4:8T"``, ...: N:M (n KEPT of every m) or
        transposable N:M masks. The density is then n/m, so ``sparsity`` must be ``1 - n/m``
        (0.5 for 2:4 and 4:8T, 0.75 for 1:4).
    include, exclude : str or sequence of str, optional
        Regexes matched in full against layer names (``"conv.*"``, not the glob ``"conv*"``); see
        :mod:`nmsparse.selection`. Default: every Linear/Conv layer except the first and the last.
    input_shape : sequence of int, optional
        Input shape with batch dimension; needed by ``"wide"`` for models with convolutions
        (the whole-network FLOP match depends on spatial sizes).
    seed : int
        Seeds the random masks and the initialisation of new weights (the global RNG is left as
        it was).

    Returns
    -------
    nn.Module
        The transformed copy. Its sparse layers are plain ``nn.Linear`` / ``nn.Conv*d`` carrying a
        static random ``NMMask`` (masked gradients; ``<layer>.parametrizations.weight.0.mask``), seen by
        ``nmsparse.nn.summary``, ``squash_``, ``kept_and_density``; make them SET or RigL with
        ``nmsparse.nn.set_update_(model, "rigl", total_steps=..., update_every=...)``. Its
        ``sift_info`` dict records the family, sparsity, pattern and, per layer (``"network"`` for
        wide), the sizes chosen and ``flop_ratio`` (transformed / dense MACs). A ``UserWarning``
        is issued when a ratio is off by more than 2 % (possible only under N:M patterns).

    Examples
    --------
    >>> from nmsparse.examples import mlp
    >>> dense = mlp(hidden=(32, 32, 32))
    >>> sparse = transform(dense, "doped", 0.5)
    >>> from nmsparse.sift import count_flops
    >>> abs(count_flops(sparse, (1, 64)).total / count_flops(dense, (1, 64)).total - 1) < 0.01
    True
    """
    if not isinstance(model, nn.Module):
        raise ArgumentError(f"transform: model must be a torch.nn.Module, got {type(model).__name__}; pass the dense model.")
    family = check_family(family)
    s = check_sparsity(sparsity)
    p = check_pattern(pattern, s)
    check_usable(model, select_layers(model, include, exclude))  # first: torch cannot deepcopy e.g. a sparse weight
    new = copy.deepcopy(model)
    names = select_layers(new, include, exclude)
    generator = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        if family == "wide":
            layers = {"network": apply_wide(new, names, s, p, generator, input_shape)}
            layers["network"]["flop_ratio"] = layers["network"]["flops"] / layers["network"]["dense_flops"]
        else:
            layers = {}
            for name in names:
                dense_weights = new.get_submodule(name).weight.numel()
                layers[name] = _LAYERWISE[family](new, name, s, p, generator)
                # Every part of a transformed layer runs at the dense layer's output positions, so
                # the layer's MAC ratio is its ratio of non-zero weights.
                layers[name]["flop_ratio"] = _nonzero_weights(new.get_submodule(name)) / dense_weights
    off = {n: round(i["flop_ratio"], 4) for n, i in layers.items() if abs(i["flop_ratio"] - 1.0) > 0.02}
    if off:
        warnings.warn(
            f"transform({family!r}, {s}, pattern={None if p is None else str(p)!r}): not iso-FLOP within 2 % "
            f"(FLOPs / dense: {off}). Under an N:M pattern, sizes move in steps of m and a grouped dimension "
            f"that is not a multiple of m keeps up to n in its partial group; see sift_info.",
            stacklevel=2,
        )
    name_masks(new)
    new.sift_info = {"family": family, "sparsity": s, "pattern": None if p is None else str(p), "layers": layers}
    return new
