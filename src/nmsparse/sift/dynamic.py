"""Sparse training of masked models: static masks, SET and RigL.

Every ``update_every`` steps (Delta T, default 100) while ``step < stop_fraction * total_steps``
(default 75 % of training) each masked layer drops the fraction

    f(t) = drop_fraction / 2 * (1 + cos(pi * t / T_end)),   T_end = stop_fraction * total_steps

of its active weights (cosine annealing from 0.3; RigL, Evci et al. 2020, Eq. 1) with the
smallest magnitude and regrows as many: SET (Mocanu et al. 2018) at random, RigL where the dense
gradient ``|dL/dW_eff|`` of the current batch is largest. Regrown weights start at zero. The
drop/regrow rule, including how N:M and transposable patterns are kept, is in
:mod:`nmsparse.sift.regrow`.

Masks constrain everything:

* weights - the forward pass uses ``where(mask, W, +0)``, and after every step the stored
  pruned weights are set to +0.0;
* gradients - ``dL/dW = where(mask, dL/dW_eff, 0)`` by construction of the masked layers;
* optimizer state - per-entry state (Adam moments, momentum) is zeroed where the mask is False
  after every step, so grown weights start from fresh statistics. This needs the optimizer: pass
  ``optimizer=`` or wrap training in ``with controller.track_optimizers():``.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, List, Optional

import torch
from torch import nn

from ..errors import MethodError, ShapeError
from .masked import mask_optimizer_state_, masked_layers
from .regrow import drop_and_regrow

__all__ = ["DynamicSparsity", "drop_fraction_schedule", "METHODS"]

METHODS = ("static", "set", "rigl")


def drop_fraction_schedule(step: int, total_steps: int, drop_fraction: float = 0.3, stop_fraction: float = 0.75) -> float:
    """Cosine-annealed drop fraction at ``step`` (0 once ``step >= stop_fraction * total_steps``)."""
    end = stop_fraction * total_steps
    if step >= end or end <= 0:
        return 0.0
    return drop_fraction / 2.0 * (1.0 + math.cos(math.pi * step / end))


class DynamicSparsity:
    """Keep a masked model's masks enforced and (SET/RigL) update them during training.

    Call it after every optimizer step: ``controller(model, step)`` - the signature of
    ``nmsparse.examples.train``'s ``after_step``.

    Parameters
    ----------
    model : nn.Module
        A model with masked layers (e.g. from :func:`nmsparse.sift.transform`).
    method : {"static", "set", "rigl"}
    total_steps : int
        Length of training in optimizer steps (for the schedule).
    update_every : int
        Delta T between mask updates.
    drop_fraction : float
        Initial drop fraction, in [0, 1).
    stop_fraction : float
        Fraction of training after which masks freeze.
    optimizer : torch.optim.Optimizer, optional
        Whose per-entry state is masked; see also :meth:`track_optimizers`.
    seed : int
        Seeds SET's random regrowth.

    Attributes
    ----------
    history : list of dict
        One record per update: step, fraction, number of weights regrown.

    Examples
    --------
    >>> from nmsparse.examples import small_cnn, load_digits_split, train, steps_per_epoch
    >>> from nmsparse.sift import transform
    >>> data = load_digits_split(0)
    >>> model = transform(small_cnn(width=4), "wide", 0.5, input_shape=(1, 1, 8, 8))
    >>> ctl = DynamicSparsity(model, "rigl", total_steps=steps_per_epoch(data), update_every=5)
    >>> with ctl.track_optimizers():
    ...     _ = train(model, data, epochs=1, after_step=ctl)
    >>> len(ctl.history) > 0
    True
    """

    def __init__(self, model: nn.Module, method: str = "rigl", *, total_steps: int, update_every: int = 100,
                 drop_fraction: float = 0.3, stop_fraction: float = 0.75,
                 optimizer: Optional[torch.optim.Optimizer] = None, seed: int = 0):
        if method not in METHODS:
            raise MethodError(f"DynamicSparsity: unknown method {method!r}; known methods: {', '.join(METHODS)}.")
        for arg, value, ok in (("total_steps", total_steps, isinstance(total_steps, int) and total_steps >= 1),
                               ("update_every", update_every, isinstance(update_every, int) and update_every >= 1),
                               ("drop_fraction", drop_fraction, 0.0 <= drop_fraction < 1.0),
                               ("stop_fraction", stop_fraction, 0.0 <= stop_fraction <= 1.0)):
            if not ok:
                raise ShapeError(f"DynamicSparsity: {arg} out of range, got {value!r} (total_steps, update_every: "
                                 f"positive integers; drop_fraction in [0, 1); stop_fraction in [0, 1]).")
        self.layers = list(masked_layers(model))
        if not self.layers:
            raise ShapeError("DynamicSparsity: the model has no masked layer; make one with nmsparse.sift.transform(...).")
        self.method = method
        self.total_steps = total_steps
        self.update_every = update_every
        self.drop_fraction = drop_fraction
        self.stop_fraction = stop_fraction
        self.optimizers: List[torch.optim.Optimizer] = [optimizer] if optimizer is not None else []
        self.generator = torch.Generator().manual_seed(int(seed))
        self.history: List[dict] = []
        self._set_capture(self.is_update_step(1))

    def is_update_step(self, step: int) -> bool:
        """True if the masks change after optimizer step ``step``."""
        return (self.method != "static" and step > 0 and step % self.update_every == 0
                and drop_fraction_schedule(step, self.total_steps, self.drop_fraction, self.stop_fraction) > 0)

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Also mask ``optimizer``'s per-entry state."""
        if all(o is not optimizer for o in self.optimizers):
            self.optimizers.append(optimizer)

    @contextlib.contextmanager
    def track_optimizers(self) -> Iterator["DynamicSparsity"]:
        """Attach every optimizer that steps one of the model's masked weights inside the block
        (for training loops that build their own optimizer, like ``nmsparse.examples.train``)."""
        from torch.optim.optimizer import register_optimizer_step_post_hook

        ours = {id(layer.weight) for _, layer in self.layers}

        def hook(optimizer, _args, _kwargs):
            if any(id(p) in ours for group in optimizer.param_groups for p in group["params"]):
                self.attach(optimizer)

        handle = register_optimizer_step_post_hook(hook)
        try:
            yield self
        finally:
            handle.remove()

    def _set_capture(self, on: bool) -> None:
        for _, layer in self.layers:
            layer.capture_dense_grad = bool(on) and self.method == "rigl"
            if not on:
                layer.dense_grad = None

    @torch.no_grad()
    def __call__(self, model: Optional[nn.Module], step: int) -> None:
        """After optimizer step ``step`` (1-based): update masks if due, then enforce them."""
        if self.is_update_step(step):
            self._update(step)
        for _, layer in self.layers:
            layer.weight.copy_(layer.masked_weight_detached())
            for opt in self.optimizers:
                mask_optimizer_state_(opt, layer.weight, layer.weight_mask)
        self._set_capture(self.is_update_step(step + 1))

    def _update(self, step: int) -> None:
        fraction = drop_fraction_schedule(step, self.total_steps, self.drop_fraction, self.stop_fraction)
        regrown = 0
        for name, layer in self.layers:
            mask = layer.weight_mask
            n_drop = int(math.floor(fraction * int(mask.sum()) + 0.5))
            if self.method == "rigl":
                if layer.dense_grad is None:
                    raise ShapeError(f"DynamicSparsity: layer {name!r} has no dense gradient at step {step}; call the "
                                     f"controller after every optimizer step (after backward).")
                grow = layer.dense_grad
            else:
                grow = torch.rand(mask.shape, generator=self.generator, dtype=torch.float64).to(mask.device)
            new, kept = drop_and_regrow(layer.weight, mask, n_drop, grow, layer.pattern)
            regrown += int((new & ~kept).sum())
            # Regrown weights (and their optimizer state) start at zero: zero outside `kept` first.
            layer.weight.copy_(torch.where(kept, layer.weight, torch.zeros((), dtype=layer.weight.dtype)))
            for opt in self.optimizers:
                mask_optimizer_state_(opt, layer.weight, kept)
            layer.weight_mask.copy_(new)
        self.history.append({"step": step, "fraction": fraction, "regrown": regrown})
