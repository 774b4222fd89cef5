"""``attach_mask_``: attach a GIVEN mask to a weight as an ``NMMask`` (one-shot pruners, Sparse-IFT).

Also the option checks shared with :func:`nmsparse.sparsify_`, and the one place that builds an
``NMMask`` and registers it on every holder of the weight (tied weights: one mask, one view).
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple, Union

import torch
from torch import nn

from ..errors import ArgumentError, MaskError, PatternError, ShapeError
from ..layout import group_dim_of
from ..masks import check_mask
from ..pattern import NMPattern, PatternLike, parse_spec
from . import entries as _entries
from .driver import install_driver
from .parametrization import GRADIENTS, UPDATES, NMMask

Pattern = Union[NMPattern, float]


def parse_pattern(pattern, where: str, *, allow_zero: bool = False) -> Pattern:
    """An ``NMPattern``, or a float density in (0, 1] (``[0, 1]`` with ``allow_zero``) for unstructured masks
    (:func:`nmsparse.pattern.parse_spec`, the one parser: ``"2:4"``, ``0.5`` and ``"50%"`` alike)."""
    return parse_spec(pattern, where, allow_zero=allow_zero)


def check_options(where: str, *, gradient: str, update: str, update_every, total_steps, drop_fraction,
                  stop_fraction, srste_decay) -> None:
    """Raise a ValueError subclass naming ``where`` for a bad gradient / update option."""
    if gradient not in GRADIENTS:
        raise ArgumentError(f"{where}: gradient must be one of {', '.join(GRADIENTS)}, got {gradient!r}; pick one of those.")
    if update not in UPDATES:
        raise ArgumentError(f"{where}: update must be one of {', '.join(UPDATES)}, got {update!r}; pick one of those.")
    if isinstance(update_every, bool) or not isinstance(update_every, int) or update_every < 1:
        raise ArgumentError(f"{where}: update_every must be a positive int, got {update_every!r}; pass e.g. 100, or update='static' to freeze masks.")
    if update in ("set", "rigl"):
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ArgumentError(f"{where}: update={update!r} anneals its drop fraction over training and needs "
                             f"total_steps, the run's length in optimizer steps (a positive int), got {total_steps!r}.")
    for arg, value, rule, ok in (
        ("drop_fraction", drop_fraction, "a number in [0, 1)", lambda v: 0.0 <= v < 1.0),
        ("stop_fraction", stop_fraction, "a number in [0, 1]", lambda v: 0.0 <= v <= 1.0),
        ("srste_decay", srste_decay, "a finite number >= 0", lambda v: math.isfinite(v) and v >= 0),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(float(value)):
            raise ArgumentError(f"{where}: {arg} must be {rule}, got {value!r}; pass e.g. "
                                f"{dict(drop_fraction=0.3, stop_fraction=0.75, srste_decay=2e-4)[arg]}.")


def resolve_param(module: nn.Module, param_name: str, where: str) -> Tuple[nn.Module, str, torch.Tensor]:
    """``(owner module, parameter name, dense tensor)`` for a dotted ``param_name`` under ``module``."""
    owner_name, _, pname = param_name.rpartition(".")
    try:
        owner = module.get_submodule(owner_name) if owner_name else module
    except AttributeError:
        owner = None
    dense = None
    if owner is not None:
        if _entries.parametrize.is_parametrized(owner, pname):
            existing_mask(owner, pname, where, repr(param_name))  # another parametrization (weight_norm...): refused
            dense = owner.parametrizations[pname].original
        else:
            dense = owner._parameters.get(pname)
    if dense is None:
        known = [n for n, _ in module.named_parameters()][:8]
        raise ArgumentError(f"{where}: {type(module).__name__} has no parameter {param_name!r}; parameters include: {', '.join(known)}.")
    return owner, pname, dense


def existing_mask(owner: nn.Module, pname: str, where: str, label: str) -> Optional[NMMask]:
    """The NMMask already on ``owner.<pname>`` (None if none); other parametrizations are an error."""
    if not _entries.parametrize.is_parametrized(owner, pname):
        return None
    found = _entries.nmmask_of(owner, pname)
    if found is None or len(owner.parametrizations[pname]) != 1:
        others = ", ".join(type(p).__name__ for p in owner.parametrizations[pname] if not isinstance(p, NMMask))
        raise MaskError(f"{where}: {label} carries the parametrization {others}, which is not an nmsparse mask (masks "
                        f"never stack); remove it first (torch.nn.utils.parametrize.remove_parametrizations).")
    return found


def replace_existing(root: nn.Module, dense: torch.Tensor) -> None:
    """Remove the nmsparse mask on ``dense`` (all holders) without baking: the dense values stay."""
    for entry in _entries.mask_entries(root):
        if entry.dense is dense:
            _entries.remove(entry, bake=False)


def attach(root: nn.Module, holders: List[Tuple[str, nn.Module, str]], mask: torch.Tensor, pattern: Pattern,
           method: Optional[str], name: str, **options) -> NMMask:
    """Build one NMMask and register it on every holder of the weight (the first is the primary)."""
    _, primary, pname = holders[0]
    nm = NMMask(pattern, method, mask, name=name, group_dim=group_dim_of(primary, pname), **options)
    for _, owner, pname in holders:
        _entries.register(owner, pname, nm)
    return nm


def attach_mask_(
    module: nn.Module,
    param_name: str,
    mask: torch.Tensor,
    pattern: Union[PatternLike, float],
    *,
    gradient: str = "masked",
    update: str = "static",
    name: Optional[str] = None,
    method: Optional[str] = None,
    update_every: int = 100,
    total_steps: Optional[int] = None,
    drop_fraction: float = 0.3,
    stop_fraction: float = 0.75,
    srste_decay: float = 2e-4,
) -> NMMask:
    """Attach the given ``mask`` to ``module.<param_name>`` as an ``NMMask``; returns it.

    Parameters
    ----------
    module : nn.Module
        The layer, or any ancestor with a dotted ``param_name`` (``"blocks.0.fc1.weight"``). A weight
        shared with other modules under ``module`` (tied) gets the one mask on every holder.
    param_name : str
        The parameter's name relative to ``module``.
    mask : torch.Tensor
        Bool, the weight's shape; checked against ``pattern`` (at most n per group / tile row and
        column) along the module's grouped axis: dim 0 for a Hugging Face ``Conv1D`` (stored
        ``(in, out)``), the last axis (input features / channels) otherwise.
    pattern : str, NMPattern or float
        ``"2:4"``, ``"2:4T"`` (n KEPT per group of m), or an unstructured density in [0, 1].
    gradient : {"masked", "ste", "srste"}
        How pruned weights get gradients (see :class:`NMMask`).
    update : {"static", "refresh", "set", "rigl"}
        How the mask changes during training (:mod:`nmsparse.nn.policies`); anything but
        ``"static"`` installs the pass-counting hook on ``module``. SET/RigL need ``total_steps``.
    name : str, optional
        Name for messages and ``summary`` (default: ``param_name``).
    method : str, optional
        Solver for refreshes (stored resolved).

    Returns
    -------
    NMMask
        The attached mask. An nmsparse mask already on the weight is replaced; the weight's values
        are not changed (pruned entries read as +0.0 through the mask).

    Examples
    --------
    >>> layer = nn.Linear(8, 4)
    >>> from nmsparse import find_mask
    >>> m = attach_mask_(layer, "weight", find_mask(layer.weight.detach(), "2:4"), "2:4")
    >>> bool((layer.weight != 0).sum() == 16)
    True
    """
    where = "attach_mask_"
    if not isinstance(module, nn.Module):
        raise ArgumentError(f"{where}: module must be a torch.nn.Module, got {type(module).__name__}; pass the layer or model.")
    if not isinstance(param_name, str) or not param_name:
        raise ArgumentError(f"{where}: param_name must be a parameter name such as 'weight', got {param_name!r}.")
    p = parse_pattern(pattern, where, allow_zero=True)  # a one-shot pruner may keep nothing
    check_options(where, gradient=gradient, update=update, update_every=update_every, total_steps=total_steps,
                  drop_fraction=drop_fraction, stop_fraction=stop_fraction, srste_decay=srste_decay)
    owner, pname, dense = resolve_param(module, param_name, where)
    label = name or param_name
    if not torch.is_tensor(mask) or mask.dtype != torch.bool or tuple(mask.shape) != tuple(dense.shape):
        got = f"{mask.dtype} {tuple(mask.shape)}" if torch.is_tensor(mask) else type(mask).__name__
        raise ShapeError(f"{where}: {label!r}: mask must be a bool tensor of the weight's shape {tuple(dense.shape)}, got {got}.")
    if isinstance(p, NMPattern):
        try:
            check_mask(mask, p, dim=group_dim_of(owner, pname))
        except MaskError as err:
            raise MaskError(f"{where}: {label!r}: {err}") from None
    if existing_mask(owner, pname, where, repr(label)) is not None:
        replace_existing(module, dense)
    holders = _entries.holders_of(module, dense)
    nm = attach(module, holders, mask.to(dense.device), p, method, label, gradient=gradient, update=update,
                update_every=update_every, total_steps=total_steps, drop_fraction=drop_fraction,
                stop_fraction=stop_fraction, srste_decay=srste_decay)
    _entries.guard_loads(module)
    if update != "static":
        install_driver(module)  # counts `module`'s training passes (sparsify_/set_update_ on a parent take over)
    return nm
