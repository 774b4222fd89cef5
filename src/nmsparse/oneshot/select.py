"""Which layers :func:`nmsparse.prune_` prunes, and why it leaves the others dense.

Candidates: the ``weight`` of every ``nn.Linear``, ``nn.Conv1d/2d/3d`` and Hugging Face ``Conv1D``.
``include`` / ``exclude`` follow the library's one rule (:mod:`nmsparse.selection`: full-match
regexes on the module name and the full parameter name). Left dense, with the reason in the
report: excluded or not included layers, layers named as embeddings or patch-embedding stems
(:func:`nmsparse.convert.rules.is_embedding_name`, as for checkpoints; ``include`` overrides), and
every layer :mod:`nmsparse.nn.eligibility` rules out, with the same reason ``sparsify_`` gives:
unusable (quantized, hooked) layers, foreign parametrizations, non-float or empty weights,
grouped convolutions, a dense pattern, a shape that does not fit (with ``ragged="skip"``) and
**tied weights**. A tied weight (an ``lm_head`` sharing the token embedding's parameter) is one
weight: if a holder stays dense (the embedding, by default) it stays dense with it; if every
holder is selected it is still left dense, with the reason, because pruning writes zeros into
every holder fitted to one layer's inputs: untie it to prune it. A weight that already carries an
nmsparse mask is left dense too (``squash_`` it first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ScoreError, ShapeError
from ..pattern import NMPattern
from ..selection import NameFilter
from ..convert.rules import is_embedding_name, ragged_error, ragged_problem
from ..layout import is_hf_conv1d
from ..nn.distributed import is_dtensor
from ..nn.eligibility import LAYER_TYPES, PRUNE_TIED, fit_problem, is_layer, tied_problem, unsupported_layer, weight_problem
from ..nn.entries import holders_of

__all__ = ["Target", "select_targets"]

PRUNABLE_TYPES = LAYER_TYPES  # and HF Conv1D, found by layout.is_hf_conv1d


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
        if not is_layer(module):
            continue
        w = module._parameters.get("weight")
        if w is None and not parametrize.is_parametrized(module, "weight"):
            continue
        if not chooser(mname, full):
            skipped.append((full, "excluded by include=/exclude="))
            continue
        if not chooser.include and is_embedding_name(full):
            skipped.append((full, "embedding or patch-embedding stem, left dense by default (name it in include= to prune it)"))
            continue
        if _nmmask_of(module) is not None:
            skipped.append((full, "already carries an nmsparse mask (from sparsify_, attach_mask_ or attach_masks=True); "
                                  "squash_ the model first to prune its masked weights"))
            continue
        reason = weight_problem(module, "weight", spec, fit=False)
        if reason is None:
            _refuse_unusable(w, full, where, allow_meta)
            reason = _tied_reason(model, module, w, full, owners, chooser)
        pad = False
        if reason is None and isinstance(spec, NMPattern):
            shape = (w.shape[1], w.shape[0]) if is_hf_conv1d(module) else tuple(w.shape)
            problem = ragged_problem(full, shape, spec)
            if problem is not None and ragged == "error":
                raise ragged_error(where, full, shape, problem, spec)
            if problem is not None and ragged == "skip":
                reason = fit_problem(module, "weight", spec)
            pad = problem is not None
        if reason is not None:
            skipped.append((full, reason))
            continue
        targets.append(Target(full, mname, module, pad))
    if not targets:
        hints = _include_hints(model, chooser.include) if chooser.include else []
        why = "; ".join([*hints, *(f"{n}: {r}" for n, r in skipped[:4])]) or \
            "the model has no nn.Linear / nn.Conv / Conv1D layer"
        raise ShapeError(f"{where}: no layer to prune ({why}). Check include=/exclude= and the pattern.")
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


def _nmmask_of(module: nn.Module):
    if not parametrize.is_parametrized(module, "weight"):
        return None
    from ..nn.parametrization import NMMask

    plist = module.parametrizations["weight"]
    return plist[0] if len(plist) == 1 and isinstance(plist[0], NMMask) else None


def _tied_reason(model, module, w, full, owners, chooser) -> Optional[str]:
    """The shared tied-weight rule (:func:`nmsparse.nn.eligibility.tied_problem`): a holder left dense keeps the
    weight dense; if every holder is selected, prune_ still leaves it dense (:data:`PRUNE_TIED`)."""
    if len(owners.get(id(w), ())) < 2:
        return None
    holders = holders_of(model, w)

    def dense_why(name, holder, pname):
        mname = name.rpartition(".")[0]
        if chooser.excluded(mname, name):
            return "exclude"
        if chooser.include:  # naming one holder in include= selects the weight, as in sparsify_
            return None
        return None if is_layer(holder) and pname == "weight" and not is_embedding_name(name) else "default"

    problem = tied_problem(full, holders, dense_why)
    if problem is not None:
        return problem
    others = [n for n, h, _ in holders if n != full and not isinstance(h, parametrize.ParametrizationList)]
    return PRUNE_TIED.format(other=others[0]) if others else None


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
