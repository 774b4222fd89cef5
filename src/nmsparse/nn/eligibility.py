"""Which layers can take a pattern, and why the others stay dense: the one rule of ``sparsify_`` and ``prune_``.

Both entry points (:mod:`nmsparse.nn.select` for :func:`nmsparse.sparsify_`, :mod:`nmsparse.oneshot.select`
for :func:`nmsparse.prune_`) ask this module, so a layer left dense gets the same reason from both.
For a selected weight the first rule that applies is its reason:

1. the layer cannot hold a mask at all (:func:`unsupported_layer`: a quantized layer's packed weight,
   a weight recomputed by the old ``weight_norm`` / ``spectral_norm`` hooks);
2. the weight already carries a parametrization that is not an nmsparse mask (masks never stack);
3. its dtype is not floating point; 4. it is empty; 5. it belongs to a grouped convolution;
6. the pattern keeps every entry (n = m); 7. its grouped axis (or, for a transposable pattern, its
   row count) is not a multiple of m (:func:`fit_problem`; ``prune_`` does this only under
   ``ragged="skip"``: it raises under ``"error"`` and pads under ``"pad"``);
8. it is **tied** and one of its holders stays dense (:func:`tied_problem`).

**Tied weights.** A ``Parameter`` held by several modules (an ``lm_head`` tied to the token
embedding, two layers sharing one weight) is one weight, so it takes one decision: it takes the
pattern only if *every* holder is selected. A holder that stays dense (an ``nn.Embedding`` or any
other non-Linear/Conv module by default, a holder ``exclude=`` names) keeps the whole weight dense,
with the same reason in both entry points, so no entry point ever changes a weight through a
holder the user did not select. When every holder is selected (by default, or because ``include=``
names the weight), ``sparsify_`` registers one mask on all holders (``summary`` lists the others as
``tied: same weight and mask as ...``); ``prune_`` leaves it dense with the reason
:data:`PRUNE_TIED` (it writes zeros into the shared tensor, fitted to one layer's inputs; untie the
weight to prune it).
"""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple, Union

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..layout import group_dim_of, is_hf_conv1d, matrix_layout
from ..pattern import NMPattern

__all__ = ["LAYER_TYPES", "FLOATS", "is_layer", "unsupported_layer", "weight_problem", "fit_problem",
           "tied_problem", "PRUNE_TIED"]

LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)  # and HF Conv1D, found by layout.is_hf_conv1d
FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)

PRUNE_TIED = ("tied weights: shared with {other} (prune_ would write this layer's fit into every holder of the "
              "shared tensor; untie it to prune it, e.g. layer.weight = nn.Parameter(layer.weight.detach().clone()))")


def is_layer(module: nn.Module) -> bool:
    """True for the layers whose ``weight`` is a default candidate: Linear, Conv1d/2d/3d, HF Conv1D."""
    return isinstance(module, LAYER_TYPES) or is_hf_conv1d(module)


def unsupported_layer(module: nn.Module) -> Optional[str]:
    """Why a Linear/Conv-like layer's weight cannot take a mask at all (None if it can or is no such layer):
    quantized layers (packed int8 weights) and weights recomputed by a forward pre-hook (the old
    ``torch.nn.utils.weight_norm`` / ``spectral_norm``, which turn ``weight`` into a plain attribute)."""
    cls = type(module)
    if cls.__module__.startswith(("torch.ao.nn.quantized", "torch.nn.quantized", "torch.ao.nn.intrinsic.quantized")) \
            and "weight" not in module._parameters and callable(getattr(module, "weight", None)):
        return (f"quantized layer ({cls.__module__}.{cls.__name__}: packed integer weights, no parameter to mask); "
                "sparsify or prune the float model, then quantize it")
    if not is_layer(module):
        return None
    if "weight" in module._parameters or parametrize.is_parametrized(module, "weight"):
        return None
    if not torch.is_tensor(getattr(module, "weight", None)):
        return None
    hooks = sorted({type(h).__name__ for h in module._forward_pre_hooks.values()})
    by = f" (forward pre-hook {', '.join(hooks)})" if hooks else ""
    return (f"weight is not a parameter but recomputed before each forward{by}, as the old torch.nn.utils.weight_norm / "
            "spectral_norm do; remove it first (torch.nn.utils.remove_weight_norm / remove_spectral_norm)")


def _parametrization_problem(module: nn.Module, pname: str) -> Optional[str]:
    """A parametrization other than one nmsparse mask (an nmsparse mask alone is no problem here: ``sparsify_``
    replaces it, ``prune_`` refuses it with its own reason)."""
    if not parametrize.is_parametrized(module, pname):
        return None
    from .parametrization import NMMask

    plist = module.parametrizations[pname]
    if len(plist) == 1 and isinstance(plist[0], NMMask):
        return None
    others = ", ".join(type(p).__name__ for p in plist if not isinstance(p, NMMask))
    return (f"already carries the parametrization {others} (masks never stack); remove it first "
            f"(torch.nn.utils.parametrize.remove_parametrizations(layer, {pname!r}))")


def _dense(module: nn.Module, pname: str) -> torch.Tensor:
    if parametrize.is_parametrized(module, pname):
        return module.parametrizations[pname].original
    return module._parameters[pname]


def weight_problem(module: nn.Module, pname: str, pattern: Union[NMPattern, float], *, fit: bool = True) -> Optional[str]:
    """Why ``module.<pname>`` cannot take ``pattern`` (None if it can): rules 2-7 of the module docstring, in
    that order; ``fit=False`` leaves rule 7 (the shape's fit) to the caller (``prune_``'s ``ragged=``)."""
    problem = _parametrization_problem(module, pname)
    if problem is not None:
        return problem
    tensor = _dense(module, pname)
    if tensor.dtype not in FLOATS:
        return f"dtype {tensor.dtype} is not a floating-point type"
    if tensor.numel() == 0:
        return "empty tensor"
    if isinstance(module, _CONVS) and pname == "weight" and module.groups != 1:
        return f"grouped convolution (groups={module.groups}); N:M groups need the dense implicit GEMM"
    if not isinstance(pattern, NMPattern):
        return None
    if pattern.is_dense:
        return f"pattern {pattern} keeps every entry (n = m is dense)"
    return fit_problem(module, pname, pattern) if fit else None


def fit_problem(module: nn.Module, pname: str, pattern: NMPattern) -> Optional[str]:
    """Why the shape of ``module.<pname>`` does not fit ``pattern`` (None if it fits): the grouped axis, or for a
    transposable pattern the matrix's row count, is not a multiple of m."""
    layout = matrix_layout(_dense(module, pname).shape, group_dim_of(module, pname), where="layer")
    if layout.cols % pattern.m:
        return (
            f"{_group_axis_name(module, pname)}={layout.group_len} is not a multiple of m={pattern.m} "
            f"(pattern {pattern} groups {layout.describe()})"
        )
    if pattern.transposable and layout.rows % pattern.m:
        return f"{layout.rows} matrix rows is not a multiple of m={pattern.m} (transposable tiles are m x m)"
    return None


def _group_axis_name(module: nn.Module, pname: str) -> str:
    if isinstance(module, nn.Linear) and pname == "weight":
        return "in_features"
    if group_dim_of(module, pname) == 0:
        return "nx (input features, dim 0)"
    if isinstance(module, _CONVS) and pname == "weight":
        return "in_channels"
    return "grouped axis length"


Holder = Tuple[str, nn.Module, str]  # (full name, module, parameter name)


def tied_problem(name: str, holders: List[Holder], dense_why: Callable[[str, nn.Module, str], Optional[str]]) -> Optional[str]:
    """Why the tied weight ``name`` stays dense (None if every holder is selected): the first other holder
    that stays dense. ``dense_why(full, module, pname)`` says how a holder is left out: ``"exclude"`` (an
    ``exclude=`` names it), ``"default"`` (not selected by default and not named in ``include=``) or None."""
    for full, module, pname in holders:
        if full == name or isinstance(module, parametrize.ParametrizationList):
            continue  # the list holds a parametrized owner's original: the owner is listed itself
        why = dense_why(full, module, pname)
        if why == "exclude":
            return (f"tied to {full}, which exclude= keeps dense (a tied weight is one weight: it takes the pattern "
                    "with every holder or not at all)")
        if why is not None:
            kind = "the embedding " if isinstance(module, nn.Embedding) else ""
            return (f"tied to {kind}{full}, which stays dense by default (a tied weight is one weight: it takes the "
                    f"pattern with every holder or not at all; include={name!r} selects every holder)")
    return None
