"""The forward pre-hook that counts training passes and runs every mask's update policy.

``sparsify_``, the Sparse-IFT transforms and ``attach_mask_`` (for a changing mask) install one
``MaskDriver`` on the module they were given. The driver walks that module's masks (cached until a
mask is attached or removed anywhere) at the start of every training pass (train mode, gradients enabled; evaluation passes never count) and hands each
to :func:`nmsparse.nn.policies.on_training_pass`. A mask is counted by exactly one driver (its
``driver_key``): installing a driver on a model takes over the masks of drivers further down.

The driver also holds what SET/RigL need beyond a mask: the random generator of SET's regrowth
(seeded, one stream over the masks in module order) and weak references to the optimizers whose
per-entry state is zeroed for regrown weights (:func:`watch_optimizer_`, :func:`track_optimizers`).
"""

from __future__ import annotations

import contextlib
import itertools
import weakref
from typing import Iterator, List, Optional

import torch
from torch import nn

from . import entries as _entries
from .entries import mask_entries
from .policies import on_training_pass

_KEYS = itertools.count(1)


class MaskDriver:
    """Forward pre-hook of a masked model (see the module docstring)."""

    def __init__(self, seed: int = 0):
        self.key = next(_KEYS)
        self.generator = torch.Generator().manual_seed(int(seed))
        self._optimizers: List[weakref.ref] = []
        self._cache = None  # (generation, [MaskEntry]) of the masks this driver counts

    def __call__(self, module: nn.Module, args) -> None:
        # Under torch.compile the counting and refreshing run eagerly (dynamo disabled for them): one
        # graph break at the model's entry instead of a recompilation per counter value; masks change
        # in place, so compiled graphs are reused. The disabled wrapper is built only when compiling
        # (importing torch._dynamo takes seconds).
        if not torch.compiler.is_compiling():
            self.run(module)
            return
        disabled = getattr(MaskDriver, "_nmsparse_disabled", None)
        if disabled is None:
            disabled = torch.compiler.disable(MaskDriver.run)
            MaskDriver._nmsparse_disabled = disabled
        disabled(self, module)

    def run(self, module: nn.Module) -> None:
        if not module.training or not torch.is_grad_enabled():
            return
        optimizers = self.optimizers
        if self._cache is None or self._cache[0] != _entries.GENERATION[0]:
            mine = [e for e in mask_entries(module) if e.mask.driver_key == self.key]
            self._cache = (_entries.GENERATION[0], mine)
        for entry in self._cache[1]:  # the dense tensor is looked up each pass (model.to() may swap it)
            on_training_pass(entry.mask, entry.dense, self.generator, optimizers)

    @property
    def optimizers(self) -> List[torch.optim.Optimizer]:
        live = [r() for r in self._optimizers]
        return [o for o in live if o is not None]

    def watch(self, optimizer: torch.optim.Optimizer) -> None:
        if all(o is not optimizer for o in self.optimizers):
            self._optimizers.append(weakref.ref(optimizer))

    def __deepcopy__(self, memo: dict) -> "MaskDriver":
        # A copied model gets its own generator stream (same state) and no optimizers: the
        # original's optimizers hold the original's parameters, not the copy's.
        new = MaskDriver.__new__(MaskDriver)
        new.key = self.key  # the copy's masks carry the same key
        new.generator = torch.Generator().set_state(self.generator.get_state())
        new._optimizers = []
        new._cache = None
        memo[id(self)] = new
        return new


def driver_of(module: nn.Module) -> Optional[MaskDriver]:
    return next((h for h in module._forward_pre_hooks.values() if isinstance(h, MaskDriver)), None)


def install_driver(module: nn.Module, seed: Optional[int] = None) -> MaskDriver:
    """The driver of ``module`` (created if needed); it takes over every mask below ``module``."""
    driver = driver_of(module)
    if driver is None:
        driver = MaskDriver(0 if seed is None else seed)
        module.register_forward_pre_hook(driver)
    elif seed is not None:
        driver.generator.manual_seed(int(seed))
    for entry in mask_entries(module):
        entry.mask.driver_key = driver.key
    _entries.bump()
    return driver


def remove_drivers(model: nn.Module) -> None:
    """Remove every driver hook from ``model`` and its submodules."""
    for module in model.modules():
        for key, hook in list(module._forward_pre_hooks.items()):
            if isinstance(hook, MaskDriver):
                del module._forward_pre_hooks[key]


def watch_optimizer_(model: nn.Module, optimizer: torch.optim.Optimizer) -> nn.Module:
    """Zero ``optimizer``'s per-entry state (moments, momentum) of weights that SET/RigL regrow.

    Held by weak reference; returns ``model``.
    """
    drivers = [h for m in model.modules() for h in m._forward_pre_hooks.values() if isinstance(h, MaskDriver)]
    for d in drivers:
        d.watch(optimizer)
    return model


@contextlib.contextmanager
def track_optimizers(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, every optimizer that steps one of ``model``'s masked weights is watched
    (:func:`watch_optimizer_`) - for training loops that build their own optimizer.

    Uses ``torch.optim``'s global step post-hook registry; the hook is removed on exit.
    """
    from torch.optim.optimizer import register_optimizer_step_post_hook

    ours = {id(e.dense) for e in mask_entries(model)}

    def hook(optimizer, _args, _kwargs):
        if any(id(p) in ours for group in optimizer.param_groups for p in group["params"]):
            watch_optimizer_(model, optimizer)

    handle = register_optimizer_step_post_hook(hook)
    try:
        yield model
    finally:
        handle.remove()
