"""AdaPrune's layer fit (Hubara et al., NeurIPS 2021, Sec. 5): Adam on the kept weights and the
bias, the mask fixed, to reproduce the dense layer's outputs on calibration samples. The one
implementation behind ``prune_(algorithm="adaprune")`` and :func:`nmsparse.oneshot.adaprune`.

Speed: ``nn.Linear`` layers call ``F.linear`` directly (no ``functional_call`` dispatch per step) and
mini-batches walk one ``randperm`` per epoch instead of drawing a full ``randperm`` of every
calibration row at every step, which dominated for token-level calibration sets.
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..errors import ConvertError

__all__ = ["check_adaprune_options", "fit_layer", "stack_samples"]


ITERATIONS_MAX = 1_000_000  # ~1000x the paper's 1000 steps: a larger count is a typo that would not answer
LR_MAX = 1.0  # Adam moves a weight by about lr per step, whatever the gradient's scale
SEED_RANGE = 2**64  # torch.Generator.manual_seed takes 0 <= seed < 2**64


def check_adaprune_options(iterations, lr, batch_size, where: str, seed=0) -> None:
    """AdaPrune's option ranges, checked before any work (nothing is clamped):
    ``0 <= iterations <= ITERATIONS_MAX`` (an int; 0 = mask only), ``0 < lr <= LR_MAX`` (Adam's step
    is about lr in weight units per iteration, so beyond 1 it only diverges), ``batch_size >= 1`` (an
    int; more than the calibration rows means all of them per step) and ``0 <= seed < 2**64``."""
    if isinstance(iterations, bool) or not isinstance(iterations, int) or not 0 <= iterations <= ITERATIONS_MAX:
        raise ConvertError(
            f"{where}: iterations must be an int with 0 <= iterations <= {ITERATIONS_MAX} (Adam steps per layer; 0 = mask "
            f"only), got {iterations!r}; AdaPrune's default is 1000."
        )
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or not 0 < lr <= LR_MAX:
        raise ConvertError(
            f"{where}: lr must be a finite number with 0 < lr <= {LR_MAX:g} (Adam moves a weight by about lr per step), "
            f"got {lr!r}; use e.g. 1e-3 (the default)."
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConvertError(f"{where}: batch_size must be an int >= 1 (calibration rows per Adam step, e.g. 50), got {batch_size!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_RANGE:
        raise ConvertError(f"{where}: seed must be an int with 0 <= seed < 2**64, got {seed!r}; e.g. seed=0 (the default).")


def stack_samples(xs: List[torch.Tensor], ys: List[torch.Tensor]) -> Tuple[object, object]:
    """One fp32 tensor of samples along dim 0, or lists of batches when the shapes differ
    (e.g. conv inputs of several resolutions)."""
    xs = [x.float() for x in xs]
    ys = [y.float() for y in ys]
    if len({tuple(x.shape[1:]) for x in xs}) == 1 and len({tuple(y.shape[1:]) for y in ys}) == 1:
        return torch.cat(xs), torch.cat(ys)
    return xs, ys


def fit_layer(module: nn.Module, mask: torch.Tensor, x, y, *, iterations: int, lr: float, batch_size: int,
              gen: torch.Generator, check: Optional[Callable] = None) -> Tuple[float, float, bool]:
    """Fit ``module``'s kept weights (``mask``, the stored weight's shape) and bias to ``y`` in place.

    Starts from the module's current weights (masked). Returns ``(error_before, error_after,
    improved)`` as relative errors ``||Y' - Y||² / ||Y||²`` on the samples; if fitting does not
    lower the error the starting weights are kept. ``check(w, b)``, if given, sees the fitted fp32
    weight and bias before they are written and may raise (:func:`~nmsparse.oneshot.options.check_step_result`).
    """
    zero = torch.zeros((), dtype=torch.float32, device=mask.device)
    with torch.no_grad():
        w = torch.where(mask, module.weight.detach().float(), zero)
    w.requires_grad_(True)
    b = module.bias.detach().float().clone().requires_grad_(True) if getattr(module, "bias", None) is not None else None
    params = [w] if b is None else [w, b]
    w0, b0 = w.detach().clone(), None if b is None else b.detach().clone()
    run = _forward(module, w, b)
    before = _relative_error(run, x, y)
    if iterations:
        opt = torch.optim.Adam(params, lr=lr)
        with torch.enable_grad():
            batches = _Batches(x, y, batch_size, gen)
            for _ in range(iterations):
                xb, yb = batches.next()
                loss = F.mse_loss(run(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                # The mask is fixed: pruned entries get no gradient, so Adam's moments for them stay 0
                # and the re-masking below only guards against rounding.
                w.grad.masked_fill_(~mask, 0.0)
                opt.step()
                with torch.no_grad():
                    w.copy_(torch.where(mask, w, zero))
    after = _relative_error(run, x, y)
    improved = after < before
    if not improved:  # keep the better of the two: fitting never makes a layer worse
        with torch.no_grad():
            w.copy_(w0)
            if b is not None:
                b.copy_(b0)
        after = before
    if check is not None:
        check(w.detach(), None if b is None else b.detach())
    with torch.no_grad():
        new = w.detach().to(module.weight.dtype)
        # +0.0 wherever the stored value is zero (a tiny kept value may round to -0.0 in fp16).
        module.weight.copy_(torch.where(mask & (new != 0), new, torch.zeros((), dtype=new.dtype, device=new.device)))
        if b is not None:
            module.bias.copy_(b.detach().to(module.bias.dtype))
    return before, after, improved


def _forward(module: nn.Module, w: torch.Tensor, b):
    """The layer's forward with weight ``w`` and bias ``b`` (no ``torch.func``, whose first use
    imports torch._dynamo: seconds)."""
    if isinstance(module, nn.Linear):
        return lambda xb: F.linear(xb, w, b)
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return lambda xb: module._conv_forward(xb, w, b)
    if type(module).__name__ == "Conv1D":  # Hugging Face GPT-2: weight stored (in, out)
        return lambda xb: (xb.reshape(-1, w.shape[0]) @ w + (0 if b is None else b)).reshape(*xb.shape[:-1], w.shape[1])
    return lambda xb: functional_call(module, {"weight": w} if b is None else {"weight": w, "bias": b}, (xb,))


class _Batches:
    """Mini-batches without replacement: one random permutation per epoch, walked in order."""

    def __init__(self, x, y, batch_size: int, gen: torch.Generator):
        self.x, self.y, self.batch_size, self.gen = x, y, batch_size, gen
        self.order, self.pos = None, 0

    def next(self):
        if isinstance(self.x, list):
            i = int(torch.randint(len(self.x), (1,), generator=self.gen))
            return self.x[i], self.y[i]
        n = self.x.shape[0]
        if self.order is None or self.pos >= n:
            self.order, self.pos = torch.randperm(n, generator=self.gen).to(self.x.device), 0
        idx = self.order[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return self.x[idx], self.y[idx]


@torch.no_grad()
def _relative_error(run, x, y, chunk: int = 4096) -> float:
    pairs = list(zip(x, y)) if isinstance(x, list) else [(x[i : i + chunk], y[i : i + chunk]) for i in range(0, x.shape[0], chunk)]
    err = ref = 0.0
    for xb, yb in pairs:
        out = run(xb)
        err += float((out.double() - yb.double()).pow(2).sum())
        ref += float(yb.double().pow(2).sum())
    return err / ref if ref > 0 else err
