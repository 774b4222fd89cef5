"""Shared pieces of the Sparse-IFT transforms: argument checks, layer selection, random masks
attached as ``NMMask`` (nmsparse.nn's one mask container)."""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import MethodError, PatternError, ScoreError, ShapeError
from ..masks import find_mask
from ..masks.topk import topk_mask
from ..nn.attach import attach_mask_
from ..nn.entries import guard_loads, mask_entries
from ..nn.ste import masked
from ..pattern import NMPattern, check_fraction, parse_spec
from ..selection import Patterns, compile_patterns, matches_any

FAMILIES = ("wide", "parallel", "factorized", "doped")
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
WEIGHT_TYPES = (nn.Linear, *CONVS)
NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm,
              nn.InstanceNorm1d, nn.InstanceNorm2d)
# Tolerance for "s is n/m-compatible": 1 - s must equal n/m up to float rounding.
_PATTERN_TOL = 1e-9


def check_family(family: object, where: str = "transform") -> str:
    if family not in FAMILIES:
        raise MethodError(f"{where}: unknown Sparse-IFT family {family!r}; known families: {', '.join(FAMILIES)}.")
    return str(family)


def check_sparsity(sparsity: object, where: str = "transform") -> float:
    # A PatternError, as every bad density-like argument of the library (one check: pattern.check_fraction).
    return check_fraction(sparsity, where, name="sparsity", high_open=True, example="0.5, 0.75 or 0.9",
                          meaning="the fraction of weights PRUNED (1 would leave no weights and an infinite width)")


def check_pattern(pattern: object, sparsity: float, where: str = "transform") -> Optional[NMPattern]:
    """Parse ``pattern``; an N:M pattern fixes the density at n/m, so iso-FLOP needs s = 1 - n/m."""
    if pattern is None:
        return None
    p = parse_spec(pattern, f"{where}: pattern=", densities=False)
    if sparsity > 0 and abs((1.0 - sparsity) - p.n / p.m) > _PATTERN_TOL:
        raise PatternError(
            f"{where}: pattern {p} keeps {p.n} of every {p.m} weights (sparsity {1 - p.n / p.m:g}), but "
            f"sparsity={sparsity!r} was asked for; the iso-FLOP sizes are computed from s, so s must be "
            f"1 - n/m. Pass sparsity={1 - p.n / p.m:g}, or a pattern with n/m = {1 - sparsity:g}."
        )
    return p


def check_usable(model: nn.Module, names: Sequence[str], where: str = "transform") -> None:
    """Refuse, naming the layer, a chosen layer whose weight torch holds in a form the transform cannot
    compute on: a meta tensor (no values), a sparse layout, a DTensor shard."""
    from ..nn.distributed import is_dtensor

    for name in names:
        w = getattr(model.get_submodule(name), "weight", None)
        if not torch.is_tensor(w):
            continue
        if w.device.type == "meta":
            raise ScoreError(f"{where}: layer {name!r}: the weight is on the meta device, which holds no values; load the "
                             "weights first (model.to_empty(device='cpu'), then load_state_dict).")
        if is_dtensor(w):
            raise ShapeError(f"{where}: layer {name!r}: the weight is a DTensor (sharded); transform the plain model, "
                             "then shard the result.")
        if w.layout != torch.strided:
            raise ShapeError(f"{where}: layer {name!r}: the weight has layout {w.layout}; the transform needs dense "
                             "weights: convert it (layer.weight = nn.Parameter(layer.weight.to_dense())), or exclude= it.")


def weight_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``(name, layer)`` for every ``nn.Linear`` / ``nn.Conv1d/2d/3d`` in ``named_modules`` order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, WEIGHT_TYPES)]


def select_layers(model: nn.Module, include: Patterns, exclude: Patterns, where: str = "transform") -> List[str]:
    """Names of the layers to transform.

    Default: every Linear/Conv layer except the first and the last (the input layer and the
    classifier stay dense, as in Sparse-IFT). ``include`` / ``exclude`` follow the library's one
    selection rule (:mod:`nmsparse.selection`): a regex or a list of regexes, each matched in full
    against the layer name (``"features.3"``) or its weight's name (``"features.3.weight"``).
    ``include`` replaces the default; ``exclude`` removes layers. An entry that matches no
    Linear/Conv layer is an error (it is almost always a typo).
    """
    layers = [n for n, _ in weight_layers(model)]
    if not layers:
        raise ShapeError(f"{where}: the model has no nn.Linear or nn.Conv1d/2d/3d layer to transform.")

    def matches(patterns: Patterns, arg: str) -> set:
        out = set()
        for regex in compile_patterns(patterns, arg, where):
            hit = {n for n in layers if matches_any([regex], n, f"{n}.weight")}
            if not hit:
                raise ShapeError(
                    f"{where}: {arg} entry {regex.pattern!r} matches no Linear/Conv layer in full; "
                    f"layers are: {', '.join(layers)}."
                )
            out |= hit
        return out

    chosen = matches(include, "include") if include is not None else set(layers[1:-1])
    if exclude is not None:
        chosen -= matches(exclude, "exclude")
    selected = [n for n in layers if n in chosen]
    if not selected:
        raise ShapeError(
            f"{where}: no layer left to transform (layers: {', '.join(layers)}; the first and last stay dense "
            f"by default). Name layers with include=[...]."
        )
    for name in selected:
        layer = model.get_submodule(name)
        if isinstance(layer, CONVS) and layer.groups != 1:
            raise ShapeError(f"{where}: layer {name!r} is a grouped convolution (groups={layer.groups}); "
                             f"Sparse-IFT here supports groups=1 only. Exclude it with exclude=[{name!r}].")
    return selected


def fan(layer: nn.Module) -> Tuple[int, int]:
    """``(D_in, D_out)``: fan-in (C_in times the kernel volume for a convolution) and fan-out of a dense layer."""
    if isinstance(layer, CONVS):
        return layer.in_channels * math.prod(layer.kernel_size), layer.out_channels
    return layer.in_features, layer.out_features


def set_parent(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule called ``name`` (dotted path) by ``module``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    parent._modules[child] = module


def random_mask(shape: Sequence[int], kept: Optional[int], pattern: Optional[NMPattern], generator: torch.Generator) -> torch.Tensor:
    """A uniformly random mask: exactly ``kept`` entries (unstructured), or a random N:M mask.

    Random scores in (0, 1) are ranked; for N:M the pattern's solver picks the top scores under
    the pattern (ragged edges padded: partial groups keep at most n).
    """
    scores = torch.rand(tuple(shape), generator=generator, dtype=torch.float64)
    if pattern is None:
        return topk_mask(scores, int(kept))
    return find_mask(scores, pattern, pad=True)


def kept_for_density(numel: int, density: float) -> int:
    """Entries kept at ``density`` (round half up, as :func:`nmsparse.unstructured_mask`)."""
    return int(math.floor(density * numel + 0.5))


def init_sparse_(layer: nn.Module, *, density: float, pattern: Optional[NMPattern], generator: torch.Generator,
                 scale: bool, kept: Optional[int] = None) -> None:
    """Give a plain Linear/Conv layer a random static ``NMMask`` at ``density`` (or ``pattern``).

    The mask is attached with masked gradients (pruned weights get none) and the stored pruned
    weights are set to +0.0; with ``scale`` the kept weights get the sparsity-aware init scale
    ``1/sqrt(density)`` (Evci et al. 2022, "Gradient Flow in Sparse Neural Networks", Sec. 3), so
    the layer's output variance at initialisation matches a dense layer's. ``kept`` overrides the
    unstructured kept count (callers use it to make a layer's parts add up to the dense cost exactly).
    """
    weight = layer.weight
    numel = weight.numel()
    if kept is None:
        kept = kept_for_density(numel, density)
    if pattern is None and kept >= numel:
        mask = torch.ones_like(weight, dtype=torch.bool)
    else:
        mask = random_mask(weight.shape, kept, pattern, generator).to(weight.device)
    actual = float(mask.sum()) / max(numel, 1)
    with torch.no_grad():
        weight.copy_(masked(weight, mask))
        if scale and 0.0 < actual < 1.0:
            weight.mul_(1.0 / math.sqrt(actual))
            weight.copy_(masked(weight, mask))
    # Unstructured masks record their exact density, so a checkpoint check compares like with like.
    attach_mask_(layer, "weight", mask, pattern if pattern is not None else actual, gradient="masked", update="static")


def copy_layer(layer: nn.Module) -> nn.Module:
    """A new plain layer like ``layer`` (built by its constructor, so it draws the same random
    numbers as a fresh one) holding ``layer``'s weight and bias, on its device and dtype."""
    if isinstance(layer, CONVS):
        new = conv_class(layer)(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                        layer.dilation, layer.groups, layer.bias is not None, layer.padding_mode)
    else:
        new = nn.Linear(layer.in_features, layer.out_features, layer.bias is not None)
    new.to(device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(layer.weight)
        if layer.bias is not None:
            new.bias.copy_(layer.bias)
    return new


def conv_class(layer: nn.Module) -> type:
    """``nn.Conv1d``, ``nn.Conv2d`` or ``nn.Conv3d``: the plain class new parts of ``layer`` are built from."""
    return next(c for c in CONVS if isinstance(layer, c))


def name_masks(model: nn.Module) -> None:
    """Give every mask its qualified parameter name (for messages and ``summary``)."""
    for entry in mask_entries(model):
        entry.mask.layer_name = entry.name
    guard_loads(model)


def round_width(x: float, pattern: Optional[NMPattern]) -> int:
    """Nearest integer width >= 1; a multiple of m (>= m) under an N:M pattern, so groups and
    transposable tiles are full."""
    if pattern is None:
        return max(1, int(round(x)))
    return max(pattern.m, pattern.m * int(round(x / pattern.m)))
