"""sparsify_, update_masks_ and squash_: attach N:M masks to a model, refresh them, bake them in.

Masks are computed from the **dense** weights (``parametrizations.<name>.original``), so pruned
weights keep receiving straight-through gradients and can regrow at the next refresh, as in
Hubara et al.'s dynamic transposable training (2021, Sec. 5). A forward pre-hook on the model
counts training forward passes and refreshes each mask every ``update_every`` of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Union

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ArgumentError, MethodError, PatternError, ShapeError
from ..masks import available_methods
from ..pattern import NMPattern, PatternLike
from .parametrization import STE_MODES, NMMask, compute_mask
from .select import Patterns, find_candidates, split
from .sparse_linear import SemiStructuredForward, wants_semi_structured

_STATE = "_nmsparse_state"
KERNELS = ("auto", "dense")


@dataclass
class SparsityState:
    """Book-keeping kept on a sparsified model (a plain attribute; not part of the state_dict)."""

    entries: Dict[str, tuple] = field(default_factory=dict)  # full name -> (module, param name)
    skipped: Dict[str, tuple] = field(default_factory=dict)  # full name -> (shape, reason)
    forward_count: int = 0
    order: List[str] = field(default_factory=list)  # every considered name, in module order

    def note(self, name: str) -> None:
        if name not in self.order:
            self.order.append(name)


class _RefreshHook:
    """Forward pre-hook on the sparsified model: count training passes, refresh masks when due."""

    def __call__(self, model: nn.Module, args) -> None:
        _count_and_refresh_eagerly(model)


def _count_and_refresh_eagerly(model: nn.Module) -> None:
    # Under torch.compile the counting and refreshing run eagerly (dynamo disabled for them): one
    # graph break at the model's entry instead of a recompilation per counter value, and the
    # mask buffers change in place, so compiled graphs are reused across refreshes. The disabled
    # wrapper is built only when compiling, because importing torch._dynamo takes seconds.
    if not torch.compiler.is_compiling():
        _count_and_refresh(model)
        return
    disabled = getattr(_count_and_refresh, "_nmsparse_disabled", None)
    if disabled is None:
        disabled = torch.compiler.disable(_count_and_refresh)
        _count_and_refresh._nmsparse_disabled = disabled
    disabled(model)


def _count_and_refresh(model: nn.Module) -> None:
    state: Optional[SparsityState] = getattr(model, _STATE, None)
    if state is None or not model.training or not torch.is_grad_enabled():
        return
    state.forward_count += 1
    for name, (module, pname) in state.entries.items():
        mask_param = _mask_of(module, pname)
        if not mask_param.static and state.forward_count % mask_param.update_every == 0:
            mask_param.refresh(module.parametrizations[pname].original, state.forward_count)


def sparsify_(
    model: nn.Module,
    pattern: Union[PatternLike, float],
    *,
    method: Optional[str] = None,
    update_every: int = 100,
    include: Patterns = None,
    exclude: Patterns = None,
    ste: str = "ste",
    srste_decay: float = 2e-4,
    static: bool = False,
    kernels: str = "auto",
) -> nn.Module:
    """Make ``model``'s weights obey ``pattern`` during training, in place; returns ``model``.

    Parameters
    ----------
    model : nn.Module
    pattern : str, NMPattern or float
        ``"2:4"`` (row-wise), ``"2:4T"`` (transposable): n entries KEPT per group of m, groups
        along the input dimension (input channels per kernel position for convs). A float in
        (0, 1) is an unstructured density: keep the top fraction of each tensor.
    method : str, optional
        Transposable solver (``"exact"`` default, ``"greedy"``, ``"refine"``); see
        :func:`nmsparse.available_methods`.
    update_every : int
        Refresh masks from the dense weights every this many training forward passes (model in
        train mode, gradients enabled). Evaluation passes never refresh.
    include, exclude : str or sequence of str, optional
        Regular expressions matched in full against module names (``"fc1"``) or full parameter
        names (``"blocks.0.attn.qkv"`` / ``"emb.weight"``). Default candidates: the weight of every
        ``nn.Linear`` and ``nn.Conv1d/2d/3d``. Use ``exclude`` to keep e.g. the first and last
        layers dense.
    ste : {"ste", "srste"}
        Straight-through gradient; ``"srste"`` adds SR-STE's ``srste_decay · (1 − S) ⊙ W``.
    static : bool
        Compute the masks once now and never refresh them automatically.
    kernels : {"auto", "dense"}
        ``"auto"``: 2:4(T) ``nn.Linear`` layers use PyTorch's semi-structured sparse kernels when
        they run on CUDA in fp16/bf16 at supported shapes (forward, and for 2:4T the
        input-gradient product), otherwise the masked dense product. ``"dense"``: always the latter.

    Returns
    -------
    nn.Module
        The same ``model``. ``nmsparse.nn.summary(model)`` lists every layer, including the skipped
        ones and why.

    Raises
    ------
    MethodError
        Unknown method.
    ShapeError
        A layer named in ``include`` that cannot take the pattern, or no layer at all to sparsify.
    ScoreError
        NaN/Inf weights (naming the layer).
    PatternError, ArgumentError
        A bad pattern or density; another option out of range (``update_every``, ``ste``, ...).

    Examples
    --------
    >>> model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    >>> sparsify_(model, "2:4T", method="greedy", update_every=40, exclude="2")  # doctest: +ELLIPSIS
    Sequential(...)
    """
    if not isinstance(model, nn.Module):
        raise ArgumentError(f"sparsify_: model must be a torch.nn.Module, got {type(model).__name__}; pass the model itself.")
    pattern = _parse_pattern(pattern)
    method = _check_method(pattern, method)
    _check_options(update_every, ste, srste_decay, kernels)

    chosen, skipped = split(find_candidates(model, include, exclude), pattern)
    for cand in skipped:
        if cand.explicit and not cand.reason.startswith("excluded"):
            raise ShapeError(f"sparsify_: layer {cand.name!r} with shape {cand.shape} cannot take {_describe(pattern)}: {cand.reason}. Drop it from include=.")
    if not chosen:
        why = "; ".join(f"{c.name}: {c.reason}" for c in skipped) or "the model has no nn.Linear/nn.Conv weights"
        raise ShapeError(f"sparsify_: no layer can take {_describe(pattern)} ({why}). Check include=/exclude= or the pattern.")

    # Every mask first, then attach: an error (e.g. NaN in a later layer) leaves the model untouched.
    masks = [compute_mask(c.module._parameters[c.param_name].detach(), pattern, method, c.name) for c in chosen]
    state: SparsityState = getattr(model, _STATE, None) or SparsityState()
    for cand, mask in zip(chosen, masks):
        param = NMMask(
            pattern, method, mask, ste=ste, srste_decay=srste_decay, static=static,
            update_every=update_every, name=cand.name,
        )
        parametrize.register_parametrization(cand.module, cand.param_name, param)
        if kernels == "auto" and wants_semi_structured(cand.module, cand.param_name, pattern):
            cand.module.forward = SemiStructuredForward(cand.module, cand.name, pattern)
        state.entries[cand.name] = (cand.module, cand.param_name)
        state.skipped.pop(cand.name, None)
    for cand in skipped:
        if cand.name not in state.entries:
            state.skipped[cand.name] = (cand.shape, cand.reason)
    for cand in find_candidates(model, include, exclude):
        state.note(cand.name)
    if getattr(model, _STATE, None) is None:
        setattr(model, _STATE, state)
        model.register_forward_pre_hook(_RefreshHook())
    return model


def update_masks_(model: nn.Module, *, force: bool = False) -> nn.Module:
    """Recompute every mask from the dense weights now (static masks only with ``force=True``)."""
    state = _state(model, "update_masks_")
    for module, pname in state.entries.values():
        mask_param = _mask_of(module, pname)
        if force or not mask_param.static:
            mask_param.refresh(module.parametrizations[pname].original, state.forward_count)
    return model


@torch.no_grad()
def squash_(model: nn.Module) -> nn.Module:
    """Bake the masked weights (+0.0 where pruned) into plain parameters and remove every hook.

    The dense weight's Parameter object is kept (so an optimizer holding it stays valid); its
    pruned entries become +0.0. Afterwards the model is an ordinary PyTorch model.
    """
    state = _state(model, "squash_")
    for module, pname in state.entries.values():
        mask = _mask_of(module, pname).mask
        parametrize.remove_parametrizations(module, pname, leave_parametrized=False)
        param = module._parameters[pname]
        param.copy_(torch.where(mask, param, torch.zeros((), dtype=param.dtype, device=param.device)))
        if isinstance(module.__dict__.get("forward"), SemiStructuredForward):
            del module.__dict__["forward"]
    for key, hook in list(model._forward_pre_hooks.items()):
        if isinstance(hook, _RefreshHook):
            del model._forward_pre_hooks[key]
    delattr(model, _STATE)
    return model


def sparsified_parameters(model: nn.Module) -> Dict[str, tuple]:
    """``{full name: (module, parameter name)}`` of every sparsified parameter (empty if none)."""
    state = getattr(model, _STATE, None)
    return dict(state.entries) if state is not None else {}


def _mask_of(module: nn.Module, pname: str) -> NMMask:
    return next(p for p in module.parametrizations[pname] if isinstance(p, NMMask))


def _state(model: nn.Module, where: str) -> SparsityState:
    state = getattr(model, _STATE, None) if isinstance(model, nn.Module) else None
    if state is None:
        raise ArgumentError(f"{where}: this model has not been sparsified; call nmsparse.sparsify_(model, pattern) first.")
    return state


def _parse_pattern(pattern) -> Union[NMPattern, float]:
    if isinstance(pattern, float) and not isinstance(pattern, bool):
        if not (0.0 < pattern <= 1.0) or math.isnan(pattern):
            raise PatternError(f"sparsify_: an unstructured density (a float pattern) must be in (0, 1], got {pattern}; pass e.g. 0.5.")
        return pattern
    return NMPattern.parse(pattern)


def _check_method(pattern, method: Optional[str]) -> Optional[str]:
    if isinstance(pattern, NMPattern):
        if method is not None and method not in available_methods(pattern) and not (method == "exact"):
            raise MethodError(
                f"sparsify_: unknown method {method!r} for pattern {pattern}; known: {', '.join(available_methods(pattern))}."
            )
        return method
    if method not in (None, "topk"):
        raise MethodError(f"sparsify_: unstructured densities use top-k per tensor (method=None or 'topk'), got {method!r}.")
    return None


def _check_options(update_every, ste, srste_decay, kernels) -> None:
    if isinstance(update_every, bool) or not isinstance(update_every, int) or update_every < 1:
        raise ArgumentError(f"sparsify_: update_every must be a positive int, got {update_every!r}; pass e.g. 100, or static=True to freeze masks.")
    if ste not in STE_MODES:
        raise ArgumentError(f"sparsify_: ste must be one of {STE_MODES}, got {ste!r}; pick one of those.")
    if not isinstance(srste_decay, (int, float)) or not math.isfinite(srste_decay) or srste_decay < 0:
        raise ArgumentError(f"sparsify_: srste_decay must be a finite number >= 0, got {srste_decay!r}; pass e.g. 2e-4.")
    if kernels not in KERNELS:
        raise ArgumentError(f"sparsify_: kernels must be one of {KERNELS}, got {kernels!r}; pick one of those.")


def _describe(pattern) -> str:
    return f"pattern {pattern}" if isinstance(pattern, NMPattern) else f"unstructured density {pattern}"
