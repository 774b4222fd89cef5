"""Moving state dicts between a masked model and its plain counterpart, both ways.

A masked model's ``state_dict`` stores, per masked weight ``<layer>.<name>``:

* ``<layer>.parametrizations.<name>.original`` - the dense weight,
* ``<layer>.parametrizations.<name>.0.mask`` / ``.0.last_refresh`` / ``.0._extra_state``.

:func:`plain_state_dict` turns that into the state dict of the plain model (what ``squash_``
gives): ``<layer>.<name> = where(mask, original, +0.0)``, mask keys dropped.
:func:`load_plain_state_dict_` loads a plain state dict (e.g. a pretrained checkpoint) into a
masked model and, by default, recomputes the masks from the loaded weights.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping, Union

import torch
from torch import nn

from ..errors import ArgumentError, CheckpointError
from .entries import mask_entries

_ORIGINAL = ".original"
_PARAMS = ".parametrizations."


def plain_state_dict(model_or_state_dict: Union[nn.Module, Mapping[str, torch.Tensor]]) -> "OrderedDict[str, torch.Tensor]":
    """The plain model's state dict: masked weights baked (+0.0 where pruned), mask keys removed.

    Parameters
    ----------
    model_or_state_dict : nn.Module or mapping
        A masked model, or its ``state_dict()`` (e.g. loaded with ``torch.load(..., weights_only=True)``).

    Returns
    -------
    OrderedDict
        Loadable into the plain model (``strict=True``); the input is not modified.

    Examples
    --------
    >>> from nmsparse import sparsify_
    >>> model = sparsify_(nn.Sequential(nn.Linear(8, 4)), "2:4")
    >>> sorted(plain_state_dict(model))
    ['0.bias', '0.weight']
    """
    sd = model_or_state_dict.state_dict() if isinstance(model_or_state_dict, nn.Module) else model_or_state_dict
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"plain_state_dict: expected an nn.Module or a state dict (a mapping), got {type(sd).__name__}.")
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for key, value in sd.items():
        if _PARAMS in key and key.endswith(_ORIGINAL):
            layer, _, name = key[: -len(_ORIGINAL)].rpartition(_PARAMS)
            mask = sd.get(f"{layer}{_PARAMS}{name}.0.mask")
            if mask is None:
                raise CheckpointError(f"plain_state_dict: {key!r} is a parametrized weight without an nmsparse mask "
                                      f"({layer}{_PARAMS}{name}.0.mask); only nmsparse masks can be baked.")
            out[f"{layer}.{name}" if layer else name] = _bake(value, mask)
        elif _PARAMS in key:
            continue  # the mask's own entries (mask, last_refresh, _extra_state)
        else:
            out[key] = value
    return out


def load_plain_state_dict_(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, strict: bool = True,
                           masks: str = "refresh"):
    """Load a plain model's state dict into the masked ``model``; returns ``load_state_dict``'s result.

    Parameters
    ----------
    model : nn.Module
        A model carrying nmsparse masks.
    state_dict : mapping
        Keys of the plain model (``fc1.weight``), e.g. a pretrained checkpoint or :func:`plain_state_dict`.
    strict : bool
        As in ``nn.Module.load_state_dict`` (the masks' own keys are never required).
    masks : {"refresh", "keep"}
        ``"refresh"``: recompute every mask from the loaded dense weights (its pattern and solver);
        ``"keep"``: keep the current masks.
    """
    if masks not in ("refresh", "keep"):
        raise ArgumentError(f"load_plain_state_dict_: masks must be 'refresh' or 'keep', got {masks!r}.")
    entries = mask_entries(model)
    rename = {}
    for entry in entries:
        for full, _, pname in [(entry.name, entry.module, entry.param_name), *entry.tied]:
            layer = full[: -len(pname) - 1] if full != pname else ""
            prefix = f"{layer}." if layer else ""
            rename[full] = f"{prefix}parametrizations.{pname}{_ORIGINAL}"
    translated = OrderedDict((rename.get(k, k), v) for k, v in state_dict.items())
    own = model.state_dict()
    for key, value in own.items():  # the masks' own entries come from the model
        if _PARAMS in key and not key.endswith(_ORIGINAL):
            translated.setdefault(key, value)
    if strict:  # refused before anything is copied (torch reports these after loading the rest)
        back = {v: k for k, v in rename.items()}
        missing = [back.get(k, k) for k in own if k not in translated]
        unexpected = [k for k in state_dict if rename.get(k, k) not in own]
        if missing or unexpected:
            what = f"has no {missing[0]!r}" if missing else f"has {unexpected[0]!r}, which this model does not"
            more = len(missing) + len(unexpected) - 1
            raise CheckpointError(
                f"load_plain_state_dict_: the state dict {what}{f' ({more} more keys differ)' if more else ''}; it was "
                f"saved from another model. Pass the plain state dict of this model's architecture, or strict=False to "
                f"load only the keys that match."
            )
    result = model.load_state_dict(translated, strict=strict)
    if masks == "refresh":
        for entry in entries:
            entry.mask.refresh_(entry.dense)
    return result


def _bake(value: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if mask.shape != value.shape:
        raise CheckpointError(f"plain_state_dict: a mask of shape {tuple(mask.shape)} belongs to a weight of shape "
                              f"{tuple(value.shape)}; the state dict is inconsistent.")
    return torch.where(mask.to(torch.bool), value, torch.zeros((), dtype=value.dtype, device=value.device))
