"""Which layers :func:`nmsparse.prune_` prunes, and why it leaves the others dense.

Candidates: the ``weight`` of every ``nn.Linear``, ``nn.Conv1d/2d/3d`` and Hugging Face ``Conv1D``.
``include`` / ``exclude`` follow the library's one rule (:mod:`nmsparse.selection`: full-match
regexes on the module name and the full parameter name). Left dense, with the reason in the
report: excluded or not included layers, non-float weights, grouped convolutions, weights
already carrying a parametrization, **tied weights** (a
parameter shared by several modules, e.g. an ``lm_head`` tied to the token embeddings: pruning
it would prune the embeddings too, which stay dense by default) and, with ``ragged="skip"``,
weights whose shape does not fit the pattern. As for checkpoints
(:func:`nmsparse.convert.rules.is_embedding_name`), layers named as embeddings or patch-embedding
stems (``patch_embed.proj``) stay dense unless ``include`` names them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple, Union

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ConvertError, ScoreError, ShapeError
from ..pattern import NMPattern
from ..selection import NameFilter
from ..convert.rules import is_embedding_name, ragged_error, ragged_problem
from ..layout import is_hf_conv1d
from ..nn.distributed import is_dtensor
from ..nn.select import unsupported_layer
from .hessian import view_problem

__all__ = ["Target", "select_targets"]

PRUNABLE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)  # and HF Conv1D, found by layout.is_hf_conv1d
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass
class Target:
    name: str  # full weight name, "blocks.0.attn.q.weight"
    module_name: str
    module: nn.Module
    pad: bool


def select_targets(
    model: nn.Module, spec: Union[NMPattern, float], include, exclude, ragged: str, where: str, *,
    allow_meta: bool = False,
) -> Tuple[List[Target], List[Tuple[str, str]]]:
    """The layers to prune and ``(name, reason)`` of those left dense. A chosen weight torch holds in a form
    prune_ cannot compute on is an error naming it: a meta tensor (``allow_meta``: the streamed checkpoint
    path, which loads each block's weights before its turn), a sparse layout, a DTensor."""
    chooser = NameFilter(include, exclude, where=where)
    owners: Dict[int, List[str]] = {}
    for pname, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(pname)
    targets: List[Target] = []
    skipped: List[Tuple[str, str]] = []
    for mname, module in model.named_modules():
        full = f"{mname}.weight" if mname else "weight"
        unusable = unsupported_layer(module)
        if unusable is not None:
            skipped.append((full, unusable if chooser(mname, full) else "excluded by include=/exclude="))
            continue
        if not (isinstance(module, PRUNABLE_TYPES) or is_hf_conv1d(module)):
            continue
        if parametrize.is_parametrized(module, "weight"):
            skipped.append((full, "already has a parametrization (a mask from sparsify_? squash_ it first)"))
            continue
        w = module._parameters.get("weight")
        if w is None:
            continue
        if not chooser(mname, full):
            skipped.append((full, "excluded by include=/exclude="))
            continue
        if not chooser.include and is_embedding_name(full):
            skipped.append((full, "embedding or patch-embedding stem, left dense by default (name it in include= to prune it)"))
            continue
        _refuse_unusable(w, full, where, allow_meta)
        reason = _reason(module, w, spec, owners, full)
        pad = False
        if reason is None and isinstance(spec, NMPattern):
            shape = (w.shape[1], w.shape[0]) if is_hf_conv1d(module) else tuple(w.shape)
            problem = ragged_problem(full, shape, spec)
            if problem is not None and ragged == "error":
                raise ragged_error(where, full, shape, problem, spec)
            if problem is not None and ragged == "skip":
                reason = f"shape does not fit {spec}: {problem}"
            pad = problem is not None
        if reason is not None:
            skipped.append((full, reason))
            continue
        targets.append(Target(full, mname, module, pad))
    if not targets:
        hints = _include_hints(model, chooser.include) if chooser.include else []
        why = "; ".join([*hints, *(f"{n}: {r}" for n, r in skipped[:4])]) or \
            "the model has no nn.Linear / nn.Conv / Conv1D layer"
        raise ConvertError(f"{where}: no layer to prune ({why}). Check include=/exclude= and the pattern.")
    return targets, skipped


def _refuse_unusable(w: torch.Tensor, full: str, where: str, allow_meta: bool) -> None:
    if w.device.type == "meta" and not allow_meta:
        raise ScoreError(
            f"{where}: layer {full!r}: the weight is on the meta device, which holds no values to prune; load the "
            "weights first (model.to_empty(device='cpu'), then load_state_dict), or prune the checkpoint itself "
            "(nmsparse.convert.prune_checkpoint, or the prune command), which streams it."
        )
    if is_dtensor(w):
        raise ShapeError(
            f"{where}: layer {full!r}: the weight is a DTensor (sharded by fully_shard, distribute_tensor or "
            "parallelize_module); prune_ works on whole tensors: prune the plain model before sharding it, or "
            "gather the weights first (DTensor.full_tensor())."
        )
    if w.layout != torch.strided:
        raise ShapeError(
            f"{where}: layer {full!r}: the weight has layout {w.layout}; prune_ needs a dense (strided) weight: "
            "convert it (layer.weight = nn.Parameter(layer.weight.to_dense())), or exclude= the layer."
        )


def _reason(module, w, spec, owners, full):
    if w.dtype not in _FLOATS:
        return f"dtype {w.dtype} is not a floating-point type"
    if w.numel() == 0:
        return "empty tensor"
    problem = view_problem(module)
    if problem is not None:
        return problem
    others = [n for n in owners.get(id(w), []) if n != full]
    if others:
        return f"tied weights: shared with {others[0]} (pruning it would prune that too; untie it to prune)"
    if isinstance(spec, NMPattern) and spec.is_dense:
        return f"pattern {spec} keeps every entry (n = m is dense)"
    return None


def _include_hints(model: nn.Module, include) -> List[str]:
    """An ``include`` regex that names only modules prune_ cannot prune (an embedding) or nothing at all."""
    hints = []
    modules = dict(model.named_modules())
    for rx in include:
        hits = [m for m in modules if m and (rx.fullmatch(m) or rx.fullmatch(f"{m}.weight"))]
        if any(isinstance(modules[m], PRUNABLE_TYPES) or is_hf_conv1d(modules[m]) for m in hits):
            continue
        if hits:
            hints.append(f"include={rx.pattern!r} matches {hits[0]!r} ({type(modules[hits[0]]).__name__}), but prune_ prunes "
                         f"only the weights of nn.Linear / nn.Conv1d/2d/3d / Conv1D layers (sparsify_ takes any parameter)")
        else:
            hints.append(f"include={rx.pattern!r} matches no layer name (matched in full, e.g. 'fc1' or 'blocks\\..*')")
    return hints
