"""sparsify_, update_masks_, squash_ and set_update_: attach N:M masks, change them, bake them in.

Masks are ``NMMask`` parametrizations (:mod:`nmsparse.nn.parametrization`) computed from the
**dense** weights (``parametrizations.<name>.original``). A forward pre-hook on the model
(:mod:`nmsparse.nn.driver`) counts training passes and runs each mask's update policy
(:mod:`nmsparse.nn.policies`): refresh from the dense weights (default; Hubara et al. 2021,
dynamic transposable training), static, SET or RigL. Masks never stack: one ``NMMask`` per weight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Union

import torch
from torch import nn

from ..errors import ArgumentError, MaskError, ShapeError
from ..layout import group_dim_of
from ..pattern import PatternLike
from ..selection import compile_patterns, matches_any
from . import distributed
from . import entries as _entries
from .attach import attach, check_options, parse_pattern, replace_existing
from .driver import install_driver, remove_drivers, watch_optimizer_
from .eligibility import is_layer, tied_problem
from .parametrization import compute_mask, describe, resolve_solver
from .select import Patterns, find_candidates, include_hints, split
from .sparse_linear import SemiStructuredForward, wants_semi_structured

_STATE = "_nmsparse_state"
KERNELS = ("auto", "dense")


@dataclass
class SparsityState:
    """What ``summary`` reports beyond the masks themselves (a plain attribute, not in the state_dict)."""

    skipped: Dict[str, tuple] = field(default_factory=dict)  # full name -> (shape, reason)
    order: List[str] = field(default_factory=list)  # every considered name, in module order

    def note(self, name: str) -> None:
        if name not in self.order:
            self.order.append(name)


def sparsify_(
    model: nn.Module,
    pattern: Union[PatternLike, float],
    *,
    method: Optional[str] = None,
    update: Optional[str] = None,
    update_every: int = 100,
    include: Patterns = None,
    exclude: Patterns = None,
    gradient: Optional[str] = None,
    srste_decay: float = 2e-4,
    total_steps: Optional[int] = None,
    drop_fraction: float = 0.3,
    stop_fraction: float = 0.75,
    seed: int = 0,
    optimizer: Optional[torch.optim.Optimizer] = None,
    replace: bool = True,
    kernels: str = "auto",
) -> nn.Module:
    """Make ``model``'s weights obey ``pattern`` during training, in place; returns ``model``.

    Parameters
    ----------
    model : nn.Module
    pattern : str, NMPattern or float
        ``"2:4"`` (row-wise), ``"2:4T"`` (transposable): n entries KEPT per group of m, groups
        along the input dimension (input channels per kernel position for convs). A number in
        (0, 1] (``0.5``, or text such as ``"50%"``) is an unstructured density: keep the top fraction
        of each tensor. A bad pattern or density is a :class:`~nmsparse.errors.PatternError`, as at
        every entry point (:func:`nmsparse.pattern.parse_spec`).
    method : str, optional
        Solver (``"exact"`` default, ``"greedy"``, ``"refine"`` for transposable patterns); stored
        resolved, so ``summary`` shows what runs (``"exact"`` on a row-wise pattern is ``"topn"``).
    update : {"refresh", "static", "set", "rigl"}
        How masks change during training (see :mod:`nmsparse.nn.policies`). ``"refresh"``
        (default): recompute from the dense weights every ``update_every`` training passes.
        ``"static"``: never. ``"set"`` / ``"rigl"``: drop the smallest
        and regrow at random / by gradient every ``update_every`` steps, keeping every mask valid
        for ``pattern`` (row-wise, transposable or unstructured); they need ``total_steps``.
    update_every : int
        ΔT in training forward passes (model in train mode, gradients enabled).
    include, exclude : str or sequence of str, optional
        Regular expressions matched in full against module names (``"fc1"``) or full parameter
        names (``"emb.weight"``). Default candidates: the weight of every ``nn.Linear``,
        ``nn.Conv1d/2d/3d`` and Hugging Face ``Conv1D`` (GPT-2 family; stored ``(in, out)``, so
        its groups run along dim 0, the input features).
    gradient : {"ste", "srste", "masked"}, optional
        Straight-through (default for refresh/static), SR-STE (adds ``srste_decay · (1 − S) ⊙ W``)
        or masked (pruned weights get no gradient; default for SET/RigL).
    total_steps, drop_fraction, stop_fraction : SET/RigL schedule (cosine-annealed from
        ``drop_fraction`` until ``stop_fraction · total_steps``).
    seed : int
        Seeds SET's random regrowth.
    optimizer : torch.optim.Optimizer, optional
        Its per-entry state is zeroed for weights SET/RigL regrow (also :func:`track_optimizers`).
    replace : bool
        A weight that already carries an nmsparse mask (from any entry point) gets the new one in
        its place (the dense values are kept); ``replace=False`` raises :class:`MaskError` instead.
    kernels : {"auto", "dense"}
        ``"auto"``: 2:4(T) ``nn.Linear`` layers with STE/SR-STE gradients (refresh or static
        updates, untied weights) use PyTorch's
        semi-structured sparse kernels on CUDA fp16/bf16 at supported shapes; ``"dense"``: always
        the masked dense product.

    Returns
    -------
    nn.Module
        The same ``model``; ``nmsparse.nn.summary(model)`` lists every layer, skipped ones with why.
        A weight shared by several modules (tied) is one weight: it gets one mask seen by every
        holder when every holder is selected (by default: every holder is a Linear/Conv weight; or
        ``include`` names one of them); if a holder stays dense (an embedding by default, or
        ``exclude`` names it) the weight is skipped with that reason, as in ``prune_``
        (:mod:`nmsparse.nn.eligibility`).

    Raises
    ------
    NMSparseError (a ValueError subclass)
        Unknown method/gradient/update, a layer named in ``include`` that cannot take the pattern,
        NaN/Inf weights (naming the layer), no layer to sparsify, or a masked weight with ``replace=False``.

    Examples
    --------
    >>> model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    >>> sparsify_(model, "2:4T", method="greedy", update_every=40, exclude="2")  # doctest: +ELLIPSIS
    Sequential(...)
    """
    where = "sparsify_"
    if not isinstance(model, nn.Module):
        raise ArgumentError(f"{where}: model must be a torch.nn.Module, got {type(model).__name__}; pass the model itself.")
    pattern = parse_pattern(pattern, where)
    method = resolve_solver(pattern, method, where)
    update = update or "refresh"
    gradient = gradient or ("masked" if update in ("set", "rigl") else "ste")
    check_options(where, gradient=gradient, update=update, update_every=update_every, total_steps=total_steps,
                  drop_fraction=drop_fraction, stop_fraction=stop_fraction, srste_decay=srste_decay)
    if kernels not in KERNELS:
        raise ArgumentError(f"{where}: kernels must be one of {KERNELS}, got {kernels!r}; pick one of those.")

    candidates = find_candidates(model, include, exclude)
    chosen, skipped = split(candidates, pattern)
    for cand in skipped:
        if cand.explicit and not cand.reason.startswith("excluded"):
            raise ShapeError(f"{where}: layer {cand.name!r} with shape {cand.shape} cannot take {_describe(pattern)}: {cand.reason}. Drop it from include=.")
    chosen, tied_skips = _fold_tied(model, chosen, exclude)
    skipped += tied_skips
    if not chosen:
        hints = include_hints(model, include, where) if include is not None else []
        if hints:
            raise ShapeError(f"{where}: no layer can take {_describe(pattern)}: {'; '.join(hints)}.")
        first = next((n for n, _ in model.named_parameters()), None)
        why = "; ".join(f"{c.name}: {c.reason}" for c in skipped) or (
            "the model has no nn.Linear / nn.Conv1d/2d/3d / Conv1D weight" + (
                f"; name other parameters in include=, e.g. include={first!r}" if first else ", nor any parameter"))
        raise ShapeError(f"{where}: no layer can take {_describe(pattern)} ({why}). Check include=/exclude= or the pattern.")
    for cand in chosen:
        old = _entries.nmmask_of(cand.module, cand.param_name)
        if old is not None and not replace:
            raise MaskError(f"{where}: {cand.name!r} already carries an nmsparse mask ({describe(old.pattern)}, update="
                            f"{old.update}); masks never stack. Pass replace=True to replace it, or squash_ the model first.")

    # Every mask first, then attach: an error (e.g. NaN in a later layer) leaves the model untouched.
    dense = {c.name: _entries_dense(c) for c in chosen}
    masks = [compute_mask(dense[c.name].detach(), pattern, method, c.name, dim=group_dim_of(c.module, c.param_name))
             for c in chosen]
    options = dict(gradient=gradient, srste_decay=srste_decay, update=update, update_every=update_every,
                   total_steps=total_steps, drop_fraction=drop_fraction, stop_fraction=stop_fraction)
    state: SparsityState = getattr(model, _STATE, None) or SparsityState()
    for cand, mask in zip(chosen, masks):
        replace_existing(model, dense[cand.name])
        attach(model, cand.holders, mask, pattern, method, cand.name, **options)
        if kernels == "auto" and gradient != "masked" and update in ("refresh", "static") and not cand.tied_names \
                and wants_semi_structured(cand.module, cand.param_name, pattern):
            cand.module.forward = SemiStructuredForward(cand.module, cand.name, pattern)
        state.skipped.pop(cand.name, None)
    for cand in skipped:
        if _entries.nmmask_of(cand.module, cand.param_name) is None:
            state.skipped[cand.name] = (cand.shape, cand.reason)
    for cand in candidates:
        state.note(cand.name)
    setattr(model, _STATE, state)
    install_driver(model, seed)
    _entries.guard_loads(model)
    if optimizer is not None:
        watch_optimizer_(model, optimizer)
    return model


def set_update_(
    model: nn.Module,
    update: str,
    *,
    update_every: int = 100,
    total_steps: Optional[int] = None,
    drop_fraction: float = 0.3,
    stop_fraction: float = 0.75,
    gradient: Optional[str] = None,
    seed: int = 0,
    optimizer: Optional[torch.optim.Optimizer] = None,
    include: Patterns = None,
    exclude: Patterns = None,
) -> nn.Module:
    """Change the update policy of the masks already on ``model`` (e.g. a Sparse-IFT model's
    random static masks to RigL), keeping the masks; returns ``model``.

    Arguments as in :func:`sparsify_`; ``gradient=None`` keeps each mask's gradient mode.
    ``include`` / ``exclude`` (full-match regexes on module or parameter names) pick masks.

    Examples
    --------
    >>> model = sparsify_(nn.Sequential(nn.Linear(8, 8)), "2:4T", update="static")
    >>> set_update_(model, "rigl", total_steps=1000, update_every=10)  # doctest: +ELLIPSIS
    Sequential(...)
    """
    where = "set_update_"
    check_options(where, gradient=gradient or "masked", update=update, update_every=update_every,
                  total_steps=total_steps, drop_fraction=drop_fraction, stop_fraction=stop_fraction, srste_decay=0.0)
    inc, exc = compile_patterns(include, "include", where), compile_patterns(exclude, "exclude", where)
    picked = []
    for entry in _entries.mask_entries(model):
        module_name = entry.name.rpartition(".")[0]
        if (inc and not matches_any(inc, module_name, entry.name)) or matches_any(exc, module_name, entry.name):
            continue
        picked.append((entry, entry.mask))
    if not picked:
        raise ArgumentError(f"{where}: no nmsparse mask on this model matches; attach masks first (sparsify_, "
                         f"sift.transform, attach_mask_) or check include=/exclude=.")
    for entry, nm in picked:
        if update in ("set", "rigl"):  # the sparse-kernel forward bypasses NMMask (no dense-grad capture)
            for _, module, _ in [(entry.name, entry.module, entry.param_name), *entry.tied]:
                _entries._drop_semi_structured_forward(module)
        nm.update, nm.update_every, nm.total_steps = update, update_every, total_steps
        nm.drop_fraction, nm.stop_fraction = float(drop_fraction), float(stop_fraction)
        if gradient is not None:
            nm.gradient = gradient
        nm.capture_dense_grad, nm.dense_grad = False, None
    install_driver(model, seed)
    if optimizer is not None:
        watch_optimizer_(model, optimizer)
    return model


def update_masks_(model: nn.Module, *, force: bool = False) -> nn.Module:
    """Recompute every refresh-policy mask from its dense weight now; ``force=True`` also
    recomputes static, SET and RigL masks (by magnitude)."""
    for entry in _sparse_entries(model, "update_masks_"):
        if force or entry.mask.update == "refresh":
            entry.mask.refresh_(entry.dense)
    return model


@torch.no_grad()
def squash_(model: nn.Module) -> nn.Module:
    """Bake the masked weights (+0.0 where pruned) into plain parameters and remove every hook.

    Works on any nmsparse mask (``sparsify_``, Sparse-IFT, ``attach_mask_``). The dense weight's
    Parameter object is kept (an optimizer holding it stays valid). Squashing a ``copy.deepcopy``
    of a model leaves the original untouched, and the reverse.
    """
    found = _sparse_entries(model, "squash_")
    distributed.refuse_sharded(model, "squash_")  # FSDP2 seam: parametrizations cannot leave a sharded model
    for entry in found:
        _entries.remove(entry, bake=True)
    remove_drivers(model)
    if hasattr(model, _STATE):
        delattr(model, _STATE)
    return model


def sparsified_parameters(model: nn.Module) -> Dict[str, tuple]:
    """``{full name: (module, parameter name)}`` of every masked weight (empty if none); a tied
    weight appears once, under its first holder in module order."""
    return {e.name: (e.module, e.param_name) for e in _entries.mask_entries(model)}


def _sparse_entries(model: nn.Module, where: str) -> list:
    found = _entries.mask_entries(model) if isinstance(model, nn.Module) else []
    if not found:
        raise ArgumentError(f"{where}: this model has not been sparsified (it carries no nmsparse mask); call "
                         f"nmsparse.sparsify_(model, pattern) first.")
    return found


def _entries_dense(cand) -> torch.Tensor:
    if _entries.parametrize.is_parametrized(cand.module, cand.param_name):
        return cand.module.parametrizations[cand.param_name].original
    return cand.module._parameters[cand.param_name]


def _fold_tied(model: nn.Module, chosen: list, exclude: Patterns) -> tuple:
    """One candidate per weight: tied holders ride along (``cand.holders``) when every holder is selected,
    else the weight is skipped with :func:`~nmsparse.nn.eligibility.tied_problem`'s reason (the rule
    ``prune_`` follows too: one weight, one decision)."""
    exc = compile_patterns(exclude, "exclude", "sparsify_")
    seen, keep, skips = {}, [], []
    for cand in chosen:
        dense = _entries_dense(cand)
        if id(dense) in seen:
            cand.reason = f"tied to {seen[id(dense)]} (same weight, same mask)"
            continue
        seen[id(dense)] = cand.name
        cand.holders = _entries.holders_of(model, dense)
        cand.tied_names = [n for n, _, _ in cand.holders if n != cand.name]

        def dense_why(full, module, pname, explicit=cand.explicit):
            if matches_any(exc, full.rpartition(".")[0], full):
                return "exclude"
            # Naming one holder in include= selects the weight; by default only layer weights are selected.
            return None if explicit or (is_layer(module) and pname == "weight") else "default"

        cand.reason = tied_problem(cand.name, cand.holders, dense_why)
        (skips if cand.reason else keep).append(cand)
    return keep, skips


def _describe(pattern) -> str:
    return f"pattern {pattern}" if not isinstance(pattern, float) else f"unstructured density {pattern}"
