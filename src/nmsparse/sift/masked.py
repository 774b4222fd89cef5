"""Masked layers: a dense weight plus a persistent bool mask, materialised as ``where(mask, w, +0)``.

Sparse-IFT layers (and the dynamic sparse training in :mod:`nmsparse.sift.dynamic`) need a weight
whose pruned entries are exactly +0.0 in every forward pass, a mask that travels with the
checkpoint, and - for RigL - the *dense* gradient dL/dW_eff at pruned positions. This module is
self-contained (it does not depend on :mod:`nmsparse.nn`).

* The mask is a persistent bool buffer ``weight_mask`` (so ``state_dict`` carries it).
* ``forward`` uses ``W_eff = torch.where(mask, W, 0)``: pruned entries are +0.0, never -0.0, and
  autograd gives ``dL/dW = where(mask, dL/dW_eff, 0)`` - gradients are masked by construction.
* With ``capture_dense_grad = True`` the layer stores ``dL/dW_eff`` (dense, every position) in
  ``dense_grad`` during backward; RigL grows where it is largest (Evci et al. 2020, Sec. 3).
"""

from __future__ import annotations

import math
from typing import Iterator, Optional, Tuple

import torch
from torch import nn
import torch.nn.functional as F

from ..nn.ste import masked
from ..pattern import NMPattern

__all__ = [
    "MaskedLinear",
    "MaskedConv2d",
    "is_masked",
    "masked_layers",
    "apply_masks_",
    "mask_optimizer_state_",
]


class _MaskedMixin:
    """Shared state of masked layers: ``weight_mask`` buffer, optional pattern, dense-grad capture."""

    weight: nn.Parameter
    weight_mask: torch.Tensor

    def _init_mask(self, pattern: Optional[str]) -> None:
        self.register_buffer("weight_mask", torch.ones_like(self.weight, dtype=torch.bool), persistent=True)
        self.pattern = None if pattern is None else str(NMPattern.parse(pattern))
        self.capture_dense_grad = False
        self.dense_grad: Optional[torch.Tensor] = None

    @property
    def density(self) -> float:
        """Fraction of weight entries kept by the mask."""
        return float(self.weight_mask.sum()) / max(self.weight_mask.numel(), 1)

    def masked_weight(self) -> torch.Tensor:
        """``where(mask, weight, +0.0)``; records the dense gradient if ``capture_dense_grad``."""
        w = masked(self.weight, self.weight_mask)
        if self.capture_dense_grad and w.requires_grad:
            w.register_hook(self._store_dense_grad)
        return w

    def _store_dense_grad(self, grad: torch.Tensor) -> None:
        self.dense_grad = grad.detach().clone()

    @torch.no_grad()
    def set_mask_(self, mask: torch.Tensor) -> None:
        """Install ``mask`` (bool, the weight's shape) and zero the weight where it is False."""
        if mask.shape != self.weight.shape or mask.dtype != torch.bool:
            from ..errors import ShapeError

            raise ShapeError(
                f"set_mask_: mask must be bool with the weight's shape {tuple(self.weight.shape)}, "
                f"got {mask.dtype} {tuple(mask.shape)}."
            )
        self.weight_mask.copy_(mask.to(self.weight_mask.device))
        self.weight.copy_(self.masked_weight_detached())

    def masked_weight_detached(self) -> torch.Tensor:
        return masked(self.weight.detach(), self.weight_mask)

    @torch.no_grad()
    def _copy_parameters_from(self, layer: nn.Module) -> "_MaskedMixin":
        """Match ``layer``'s device and dtype and copy its weight and bias (for ``from_dense``)."""
        self.to(device=layer.weight.device, dtype=layer.weight.dtype)
        self.weight.copy_(layer.weight)
        if layer.bias is not None:
            self.bias.copy_(layer.bias)
        return self

    def _mask_repr(self) -> str:
        return f", density={self.density:.4f}" + (f", pattern={self.pattern}" if self.pattern else "")


class MaskedLinear(_MaskedMixin, nn.Linear):
    """``nn.Linear`` whose weight ``(out, in)`` is multiplied through a bool mask.

    Parameters
    ----------
    in_features, out_features, bias : as for ``nn.Linear``
    pattern : str, optional
        The N:M pattern the mask follows (``"2:4"``, ``"4:8T"``), or None for unstructured. Drop
        and regrow in :class:`~nmsparse.sift.dynamic.DynamicSparsity` keep this pattern.

    Examples
    --------
    >>> layer = MaskedLinear(4, 2)
    >>> layer.set_mask_(torch.tensor([[True, False, True, False]] * 2))
    >>> layer.density
    0.5
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, pattern: Optional[str] = None):
        super().__init__(in_features, out_features, bias=bias)
        self._init_mask(pattern)

    @classmethod
    def from_dense(cls, layer: nn.Linear, pattern: Optional[str] = None) -> "MaskedLinear":
        new = cls(layer.in_features, layer.out_features, layer.bias is not None, pattern=pattern)
        return new._copy_parameters_from(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.masked_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._mask_repr()


class MaskedConv2d(_MaskedMixin, nn.Conv2d):
    """``nn.Conv2d`` (weight ``(out, in, kh, kw)``) with a bool mask; see :class:`MaskedLinear`.

    N:M groups run along input channels at each kernel position (DESIGN.md, "Where groups run").
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", *, pattern: Optional[str] = None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode)
        self._init_mask(pattern)

    @classmethod
    def from_dense(cls, layer: nn.Conv2d, pattern: Optional[str] = None) -> "MaskedConv2d":
        new = cls(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                  layer.dilation, layer.groups, layer.bias is not None, layer.padding_mode, pattern=pattern)
        return new._copy_parameters_from(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.masked_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._mask_repr()


def is_masked(module: nn.Module) -> bool:
    """True for :class:`MaskedLinear` and :class:`MaskedConv2d`."""
    return isinstance(module, _MaskedMixin)


def masked_layers(model: nn.Module) -> Iterator[Tuple[str, nn.Module]]:
    """``(name, layer)`` for every masked layer of ``model``, in ``named_modules`` order."""
    for name, module in model.named_modules():
        if is_masked(module):
            yield name, module


@torch.no_grad()
def mask_optimizer_state_(optimizer: torch.optim.Optimizer, param: torch.Tensor, keep: torch.Tensor) -> None:
    """Zero every per-entry optimizer state tensor of ``param`` (Adam moments, momentum) where
    ``keep`` is False, so a pruned or newly grown weight carries no stale statistics."""
    state = optimizer.state.get(param)
    if not state:
        return
    for value in state.values():
        if torch.is_tensor(value) and value.shape == param.shape:
            value.copy_(torch.where(keep, value, torch.zeros((), dtype=value.dtype, device=value.device)))


@torch.no_grad()
def apply_masks_(model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None) -> nn.Module:
    """Set pruned weights to +0.0 (and their optimizer state to 0) in every masked layer.

    The forward pass already ignores pruned entries; this keeps the stored weights and the
    optimizer's moments consistent with the masks (e.g. after weight decay or momentum moved a
    pruned entry), so a checkpoint holds exact zeros.

    Examples
    --------
    >>> layer = MaskedLinear(4, 2)
    >>> layer.weight_mask[:, :2] = False
    >>> _ = apply_masks_(layer)
    >>> bool((layer.weight[:, :2] == 0).all())
    True
    """
    for _, layer in masked_layers(model):
        layer.weight.copy_(layer.masked_weight_detached())
        if optimizer is not None:
            mask_optimizer_state_(optimizer, layer.weight, layer.weight_mask)
    return model


def sparse_init_scale_(layer: nn.Module) -> None:
    """Scale kept weights by ``1/sqrt(density)`` so the layer's output variance at initialisation
    matches a dense layer's (sparsity-aware init, Evci et al. 2022, "Gradient Flow in Sparse Neural
    Networks", Sec. 3)."""
    d = layer.density
    if 0.0 < d < 1.0:
        with torch.no_grad():
            layer.weight.mul_(1.0 / math.sqrt(d))
            layer.weight.copy_(layer.masked_weight_detached())
