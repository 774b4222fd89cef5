"""Finding, registering and removing ``NMMask`` parametrizations: the one registry is the model.

Nothing keeps a separate list of masked layers: every function that needs "all masks" walks the
modules and looks for ``NMMask`` in their parametrizations, so masks attached by any entry point
(``sparsify_``, Sparse-IFT, ``attach_mask_``, the one-shot pruners) are seen by all of them.

Two pieces of ``torch.nn.utils.parametrize`` behaviour are handled here:

* **deepcopy** - parametrize gives a module a generated class (``ParametrizedLinear``) and puts the
  ``weight`` property on that class. ``copy.deepcopy`` reuses the class, so removing the
  parametrization from the copy (``squash_``) deleted the property from the original too. Every
  module we parametrize gets a ``__deepcopy__`` that gives the replica its own class.
* **pickle** - parametrize makes ``torch.save(model)`` / ``pickle`` raise a multi-line RuntimeError;
  the class also gets a ``__getstate__`` raising a one-line CheckpointError that says what to save.
* **tied weights** - one ``Parameter`` held by several modules (an embedding tied to an LM head)
  gets one ``NMMask`` registered on every holder, so every use reads the same masked weight.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import CheckpointError, MaskError
from .parametrization import PLAIN_FIX, NMMask, check_tensor_entry


# Bumped whenever a mask is registered, removed or changes driver, so drivers can cache their list
# of masks instead of walking every module on every training pass (thousands of modules in an LLM).
GENERATION = [0]


def bump() -> None:
    GENERATION[0] += 1


@dataclass
class MaskEntry:
    """One masked weight: where it lives, its ``NMMask``, and the other holders of a tied weight."""

    name: str  # full parameter name of the first holder in module order, e.g. "fc1.weight"
    module: nn.Module
    param_name: str
    mask: NMMask
    tied: List[Tuple[str, nn.Module, str]] = field(default_factory=list)  # (full name, module, param name)

    @property
    def dense(self) -> torch.Tensor:
        """The dense weight the mask is applied to (``parametrizations.<name>.original``)."""
        return self.module.parametrizations[self.param_name].original


def nmmask_of(module: nn.Module, pname: str) -> Optional[NMMask]:
    """The ``NMMask`` on ``module.<pname>``, or None."""
    if not parametrize.is_parametrized(module, pname):
        return None
    return next((p for p in module.parametrizations[pname] if isinstance(p, NMMask)), None)


def mask_entries(model: nn.Module) -> List[MaskEntry]:
    """Every masked weight of ``model`` once, in module order (tied holders folded into one entry)."""
    entries: Dict[int, MaskEntry] = {}
    for mname, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for pname in list(module.parametrizations.keys()):
            mask = nmmask_of(module, pname)
            if mask is None:
                continue
            full = f"{mname}.{pname}" if mname else pname
            if id(mask) in entries:
                entries[id(mask)].tied.append((full, module, pname))
            else:
                entries[id(mask)] = MaskEntry(full, module, pname, mask)
    return list(entries.values())


def holders_of(model: nn.Module, param: torch.Tensor) -> List[Tuple[str, nn.Module, str]]:
    """Every ``(full name, module, param name)`` holding ``param`` (plain or as a parametrized original)."""
    out = []
    for mname, module in model.named_modules():
        names = [n for n, p in module._parameters.items() if p is param]
        if parametrize.is_parametrized(module):
            names += [n for n in module.parametrizations.keys()
                      if getattr(module.parametrizations[n], "original", None) is param]  # weight_norm: original0/1
        out += [(f"{mname}.{n}" if mname else n, module, n) for n in names]
    return out


def register(module: nn.Module, pname: str, mask: NMMask) -> None:
    """``register_parametrization`` plus an independent-deepcopy class."""
    parametrize.register_parametrization(module, pname, mask)
    type(module).__deepcopy__ = _independent_deepcopy
    type(module).__getstate__ = _refuse_pickle
    bump()


@torch.no_grad()
def remove(entry: MaskEntry, *, bake: bool) -> None:
    """Remove ``entry``'s parametrization from every holder; with ``bake`` the kept Parameter's
    pruned entries become +0.0 (the Parameter object stays, so optimizers holding it stay valid)."""
    mask = entry.mask.mask
    for _, module, pname in [(entry.name, entry.module, entry.param_name), *entry.tied]:
        if len(module.parametrizations[pname]) != 1:
            raise MaskError(f"{entry.name}: {pname} of {type(module).__name__} carries other parametrizations besides "
                            f"the nmsparse mask; remove them first (torch.nn.utils.parametrize.remove_parametrizations).")
        parametrize.remove_parametrizations(module, pname, leave_parametrized=False)
        _drop_semi_structured_forward(module)
    bump()
    if bake:
        param = entry.module._parameters[entry.param_name]
        param.copy_(torch.where(mask, param, torch.zeros((), dtype=param.dtype, device=param.device)))


class _MaskLoadCheck:
    """Load pre-hook on a masked model: check every incoming tensor of every masked layer (the dense
    weight, the mask and its counters and pattern code: tensor, shape, dtype, values), and the shape
    of every other tensor, before any tensor is copied, so a refused checkpoint leaves the model
    untouched. torch itself copies what fits and reports the rest at the end, in several lines."""

    def __call__(self, module, state_dict, prefix, *_args) -> None:
        strict = _load_is_strict()
        for mname, sub in module.named_modules():
            at = f"{prefix}{mname}." if mname else prefix
            _check_shapes(sub, state_dict, at)
            if not parametrize.is_parametrized(sub):
                continue
            for pname in list(sub.parametrizations.keys()):
                nm = nmmask_of(sub, pname)
                if nm is None:
                    continue
                base = f"{at}parametrizations.{pname}."
                where = f"load_state_dict: layer {nm.layer_name!r}"
                if base + "original" not in state_dict and at + pname in state_dict:
                    raise CheckpointError(
                        f"{where}: the checkpoint holds the plain weight {at + pname!r}, but this model's weight is "
                        f"masked (it expects {base + 'original'!r} and its mask); load a plain state dict with "
                        f"nmsparse.nn.load_plain_state_dict_(model, state_dict), or squash_ the model first."
                    )
                if strict:
                    missing = [k for k in (base + "original", *(f"{base}0.{b}" for b in _MASK_KEYS)) if k not in state_dict]
                    if missing:
                        raise CheckpointError(
                            f"{where}: the checkpoint has no {missing[0]!r}"
                            f"{f' (and {len(missing) - 1} more of this mask)' if len(missing) > 1 else ''}; it was saved "
                            f"from a model masked differently or edited. Load it with strict=False to keep this model's "
                            f"own values for the missing entries, or {PLAIN_FIX}."
                        )
                nm.check_incoming(state_dict, base + "0.")


_MASK_KEYS = ("mask", "last_refresh", "step_count", "pattern_code")


def _check_shapes(module: nn.Module, state_dict, at: str) -> None:
    """The shape check torch's default loader makes per tensor, made for every tensor first. Modules
    that load their own way (a custom ``_load_from_state_dict``, lazy parameters) are left to torch."""
    if type(module)._load_from_state_dict not in (nn.Module._load_from_state_dict, NMMask._load_from_state_dict):
        return
    persistent = {k: v for k, v in module._buffers.items() if k not in module._non_persistent_buffers_set}
    for name, own in [*module._parameters.items(), *persistent.items()]:
        key = at + name
        if own is None or key not in state_dict or isinstance(own, nn.parameter.UninitializedTensorMixin):
            continue
        check_tensor_entry(state_dict[key], key, tuple(own.shape), "load_state_dict")


def _load_is_strict() -> Optional[bool]:
    """``strict`` of the ``nn.Module.load_state_dict`` call running this hook (None if not found).

    torch hands every load hook ``strict=True`` whatever the caller passed and reports missing keys
    only after copying everything else; reading the caller's argument lets missing mask entries be
    refused before anything is copied, only where torch would refuse them afterwards."""
    code = nn.Module.load_state_dict.__code__
    frame = sys._getframe(1)
    for _ in range(32):
        if frame is None:
            return None
        if frame.f_code is code:
            return bool(frame.f_locals.get("strict", True))
        frame = frame.f_back
    return None


def guard_loads(root: nn.Module) -> None:
    """Install the mask check on ``root``'s ``load_state_dict`` (once)."""
    hooks = root._load_state_dict_pre_hooks.values()
    if not any(isinstance(getattr(h, "hook", h), _MaskLoadCheck) for h in hooks):
        root.register_load_state_dict_pre_hook(_MaskLoadCheck())


def _drop_semi_structured_forward(module: nn.Module) -> None:
    from .sparse_linear import SemiStructuredForward

    if isinstance(module.__dict__.get("forward"), SemiStructuredForward):
        del module.__dict__["forward"]


def _refuse_pickle(self: nn.Module):
    """``torch.save(model)`` / ``pickle``: torch refuses parametrized modules in a multi-line message; say what works."""
    names = [n for n in self.parametrizations.keys() if nmmask_of(self, n) is not None]
    layer = nmmask_of(self, names[0]).layer_name if names else type(self).__name__
    raise CheckpointError(
        f"pickle / torch.save(model): layer {layer!r} carries an nmsparse mask (a torch parametrization), which "
        f"cannot be pickled; save torch.save(model.state_dict(), path) (masks travel with it; rebuild the model, "
        f"sparsify_ it alike and load_state_dict), or pickle a plain copy: nms.squash_(copy.deepcopy(model))."
    )


def _independent_deepcopy(self: nn.Module, memo: dict) -> nn.Module:
    """Deep-copy a parametrized module into its own generated class (see the module docstring)."""
    found = memo.get(id(self))
    if found is not None:
        return found
    cls = type(self)
    own = type(cls.__name__, cls.__bases__, {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")})
    replica = own.__new__(own)
    memo[id(self)] = replica
    replica.__dict__ = copy.deepcopy(self.__dict__, memo)
    return replica
