"""Which parameters of a model ``sparsify_`` touches, and why it skips the others.

Default candidates are the ``weight`` of every ``nn.Linear``, ``nn.Conv1d/2d/3d`` and Hugging Face
``Conv1D`` (GPT-2 family, duck-typed by :func:`nmsparse.layout.is_hf_conv1d`; grouped along dim 0). ``include``
and ``exclude`` are regular expressions (a string or a sequence of them) matched in full
(``re.fullmatch``) against a module's name (``"features.3"``) or a parameter's full name
(``"features.3.weight"``). Naming a parameter of any other module in ``include`` sparsifies it too.
A layer chosen only by default and unable to take the pattern is skipped with a reason (see
``summary``); a layer that ``include`` names explicitly must take it, or ``sparsify_`` raises. The
reasons, tied weights included, are :mod:`nmsparse.nn.eligibility`'s, shared with ``prune_``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple, Union

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..layout import is_hf_conv1d
from ..pattern import NMPattern
from ..selection import Patterns, compile_patterns, matches_any
from .eligibility import LAYER_TYPES as DEFAULT_TYPES
from .eligibility import unsupported_layer, weight_problem

__all__ = ["Candidate", "find_candidates", "split", "include_hints", "unsupported_layer"]


@dataclass
class Candidate:
    """A parameter considered by ``sparsify_``: chosen (``reason is None``) or skipped (why)."""

    name: str  # full parameter name, e.g. "features.3.weight"
    module_name: str
    module: nn.Module
    param_name: str
    shape: tuple
    explicit: bool
    reason: Optional[str] = None
    holders: list = field(default_factory=list)  # every (full name, module, param name) holding this weight
    tied_names: list = field(default_factory=list)  # the other holders' names (tied weights)


def find_candidates(model: nn.Module, include: Patterns, exclude: Patterns) -> List[Candidate]:
    """Every parameter ``sparsify_`` considers, in module order, with its selection state."""
    inc = compile_patterns(include, "include", "sparsify_")
    exc = compile_patterns(exclude, "exclude", "sparsify_")
    found: List[Candidate] = []
    for mname, module in model.named_modules():
        unusable = unsupported_layer(module)
        if unusable is not None:  # a Linear/Conv whose weight is no parameter torch can parametrize
            full = f"{mname}.weight" if mname else "weight"
            explicit = bool(inc) and matches_any(inc, mname, full)
            if explicit or not inc:
                why = "excluded by exclude=" if exc and matches_any(exc, mname, full) else unusable
                found.append(Candidate(full, mname, module, "weight", _shape_of(module, "weight"), explicit, why))
            # its real parameters (weight_g / weight_v, bias) can still be named in include=
        for pname in _own_parameter_names(module):
            full = f"{mname}.{pname}" if mname else pname
            default = (isinstance(module, DEFAULT_TYPES) or is_hf_conv1d(module)) and pname == "weight"
            explicit = bool(inc) and matches_any(inc, full) or (default and bool(inc) and matches_any(inc, mname))
            if not (explicit or (default and not inc)):
                continue
            shape = _shape_of(module, pname)
            cand = Candidate(full, mname, module, pname, shape, explicit)
            if exc and matches_any(exc, mname, full):
                cand.reason = "excluded by exclude="
            found.append(cand)
    return found


def _own_parameter_names(module: nn.Module) -> List[str]:
    """Direct parameters, including parametrized ones (whose dense tensor moved to ``.original``)."""
    names = [n for n, p in module._parameters.items() if p is not None]
    if parametrize.is_parametrized(module):
        names += [n for n in module.parametrizations.keys() if n not in names]
    return names


def _dense_param(module: nn.Module, name: str) -> torch.Tensor:
    if parametrize.is_parametrized(module, name):
        return module.parametrizations[name].original
    return module._parameters[name]


def _shape_of(module: nn.Module, name: str) -> tuple:
    """The shape a weight has for its layer (a parametrization with several originals, such as weight_norm's
    ``original0`` / ``original1``, has no single dense tensor: the computed weight's shape)."""
    if parametrize.is_parametrized(module, name) and not hasattr(module.parametrizations[name], "original"):
        try:
            with torch.no_grad():
                return tuple(getattr(module, name).shape)
        except Exception:  # a user's parametrization that cannot run here: the layer is skipped anyway
            return ()
    if name in module._parameters or parametrize.is_parametrized(module, name):
        return tuple(_dense_param(module, name).shape)
    value = getattr(module, name, None)
    if callable(value) and not torch.is_tensor(value):
        value = value()  # a quantized layer's packed weight
    return tuple(value.shape) if torch.is_tensor(value) else ()


def ineligibility(cand: Candidate, pattern: Union[NMPattern, float]) -> Optional[str]:
    """Why ``cand`` cannot take ``pattern`` (None if it can): the shared rules of :mod:`nmsparse.nn.eligibility`."""
    return weight_problem(cand.module, cand.param_name, pattern)


def split(candidates: List[Candidate], pattern) -> Tuple[List[Candidate], List[Candidate]]:
    """(chosen, skipped): fill in each candidate's reason."""
    chosen, skipped = [], []
    for cand in candidates:
        if cand.reason is None:
            cand.reason = ineligibility(cand, pattern)
        (skipped if cand.reason else chosen).append(cand)
    return chosen, skipped


def include_hints(model: nn.Module, include: Patterns, where: str = "sparsify_") -> List[str]:
    """Why ``include`` chose nothing, per regex: it names a module whose type has no default weight (the fix:
    name the parameter, ``"0.weight"``), or it matches no module or parameter name at all (a typo)."""
    hints = []
    modules = dict(model.named_modules())
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    for rx in compile_patterns(include, "include", where):
        hits = [m for m in modules if m and rx.fullmatch(m)]
        default = [m for m in hits if isinstance(modules[m], DEFAULT_TYPES) or is_hf_conv1d(modules[m])]
        named = [n for n in params if rx.fullmatch(n)]
        if default or named:
            continue
        if hits:
            m = hits[0]
            own = [n for n in _own_parameter_names(modules[m])]
            fix = f"name its parameter instead: include={f'{m}.{own[0]}'!r}" if own else "it holds no parameter"
            hints.append(f"include={rx.pattern!r} matches module {m!r} ({type(modules[m]).__name__}), but a module name "
                         f"selects only the weight of nn.Linear / nn.Conv1d/2d/3d / Conv1D layers; {fix}")
        else:
            hints.append(f"include={rx.pattern!r} matches no module or parameter name (matched in full, e.g. 'fc1', "
                         f"'fc1.weight' or 'blocks\\..*')")
    return hints
