"""Physically remove dead neurons / filters: a smaller dense model computing the same function.

Works on ``nn.Sequential`` models (nested Sequentials are flattened) made of ``Linear``/``ConvNd``
layers with only channel-wise modules between two of them: BatchNorm, element-wise activations,
Dropout, Identity, MaxPool / AvgPool (no padding) / AdaptiveAvgPool, and Flatten. For each pair
producer -> consumer, output unit ``u`` of the producer is removed when either

* the consumer's input slice for ``u`` is entirely zero (the unit is unused), or
* the producer's weight row ``u`` is entirely zero, so the unit outputs a constant ``c_u`` (its
  bias pushed through the modules in between, BatchNorm in eval mode). ``c_u`` is folded into
  the consumer's bias - exact for a Linear consumer and for a conv consumer without padding. A
  padded conv consumer sees ``c_u`` only inside the image, not in the zero padding, so such a
  unit is removed only if ``c_u == 0`` (e.g. a "rows" group that includes its bias and
  BatchNorm, see :mod:`.groups`); otherwise it is kept and listed in ``ShrinkReport.kept_constant``.

The model's input and output sizes never change. The shrunk model matches the original in
``eval()`` mode (BatchNorm uses running statistics).

Example
-------
>>> import torch
>>> from nmsparse.examples import mlp
>>> model = mlp(hidden=(8,), seed=0)
>>> with torch.no_grad():
...     model.fc1.weight[2:] = 0; model.fc1.bias[2:] = 0
>>> small, rep = shrink_model(model)
>>> small.fc1.out_features, rep.params_after < rep.params_before
(2, True)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import List, Tuple

import torch
from torch import nn

from ..errors import ShapeError

__all__ = ["shrink_model", "ShrinkReport"]

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid,
                nn.Hardtanh, nn.Softplus, nn.Mish, nn.Hardswish, nn.Identity, nn.Dropout, nn.Dropout2d)
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
          nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool2d)


@dataclass
class ShrinkReport:
    """What :func:`shrink_model` removed: per layer ``(name, units before, units after)``."""

    layers: List[Tuple[str, int, int]] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    kept_constant: List[Tuple[str, int]] = field(default_factory=list)


def _leaves(seq: nn.Sequential, prefix: str = ""):
    for name, child in seq.named_children():
        full = f"{prefix}{name}"
        if isinstance(child, nn.Sequential):
            yield from _leaves(child, full + ".")
        else:
            yield full, seq, name, child


def _passes_constant(mod: nn.Module) -> bool:
    if isinstance(mod, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
        pad = mod.padding if isinstance(mod.padding, tuple) else (mod.padding,)
        return all(p == 0 for p in pad) or not mod.count_include_pad
    return isinstance(mod, _NORMS + _ELEMENTWISE + _POOLS + (nn.Flatten,))


def _constant_through(c: torch.Tensor, between) -> torch.Tensor:
    """Push a per-channel constant (C,) through the channel-wise modules in eval mode."""
    for mod in between:
        if isinstance(mod, _NORMS):
            rm = mod.running_mean if mod.running_mean is not None else torch.zeros_like(c)
            rv = mod.running_var if mod.running_var is not None else torch.ones_like(c)
            c = (c - rm) / torch.sqrt(rv + mod.eps)
            if mod.affine:
                c = c * mod.weight + mod.bias
        elif isinstance(mod, _ELEMENTWISE):
            c = c if isinstance(mod, (nn.Dropout, nn.Dropout2d, nn.Identity)) else mod(c)
    return c


def _padded(conv: nn.Module) -> bool:
    if isinstance(conv, nn.Linear):
        return False
    if isinstance(conv.padding, str):
        return conv.padding != "valid"
    return any(p != 0 for p in conv.padding)


@torch.no_grad()
def shrink_model(model: nn.Sequential) -> Tuple[nn.Sequential, ShrinkReport]:
    """Return ``(smaller copy of model, ShrinkReport)``; ``model`` itself is not changed.

    Raises ShapeError for a model that is not an ``nn.Sequential`` or has grouped convolutions.
    """
    if not isinstance(model, nn.Sequential):
        raise ShapeError(f"shrink_model: needs an nn.Sequential, got {type(model).__name__}; rebuild the model as a Sequential chain.")
    new = copy.deepcopy(model)
    leaves = list(_leaves(new))
    report = ShrinkReport(params_before=sum(p.numel() for p in model.parameters()))
    layer_pos = [i for i, (_, _, _, m) in enumerate(leaves) if isinstance(m, _LAYERS)]
    for i in layer_pos:
        if getattr(leaves[i][3], "groups", 1) != 1:
            raise ShapeError(f"shrink_model: layer {leaves[i][0]!r} is a grouped convolution (groups={leaves[i][3].groups}); not supported.")
    plans = []  # (producer idx, between idxs, consumer idx, keep mask)
    for a, b in zip(layer_pos, layer_pos[1:]):
        between = [leaves[j][3] for j in range(a + 1, b)]
        if not all(_passes_constant(m) for m in between):
            continue
        prod, cons = leaves[a][3], leaves[b][3]
        out = prod.weight.shape[0]
        cin = cons.weight.shape[1]
        if cin % out:
            continue
        per_unit = cin // out  # > 1 when a Flatten sits between conv and Linear
        w_in = cons.weight.reshape(cons.weight.shape[0], out, per_unit, -1)
        unused = (w_in == 0).flatten(2).all(2).all(0)
        dead = (prod.weight.reshape(out, -1) == 0).all(1)
        bias = prod.bias if prod.bias is not None else torch.zeros(out, dtype=prod.weight.dtype)
        const = _constant_through(bias.clone(), between)
        removable = unused | (dead & ((const == 0) | (not _padded(cons))))
        if bool(removable.all()):  # a layer keeps at least one unit (zero-width layers do not run)
            removable[0] = False
        fold = dead & ~unused & (const != 0) & removable
        for u in torch.nonzero(dead & ~removable).flatten().tolist():
            report.kept_constant.append((leaves[a][0], u))
        if bool(fold.any()):
            contrib = (w_in[:, fold].sum((2, 3)) * const[fold]).sum(1)
            if cons.bias is None:
                cons.bias = nn.Parameter(torch.zeros(cons.weight.shape[0], dtype=cons.weight.dtype))
            cons.bias += contrib
        plans.append((a, list(range(a + 1, b)), b, ~removable, per_unit))
    for a, between, b, keep, per_unit in plans:
        idx = torch.nonzero(keep).flatten()
        _replace(leaves[a], _slice_out(_current(leaves[a]), idx))
        for j in between:
            if isinstance(leaves[j][3], _NORMS):
                _replace(leaves[j], _slice_norm(_current(leaves[j]), idx))
        cols = (idx.unsqueeze(1) * per_unit + torch.arange(per_unit)).reshape(-1)
        _replace(leaves[b], _slice_in(_current(leaves[b]), cols))
        report.layers.append((leaves[a][0], int(keep.numel()), int(idx.numel())))
    report.params_after = sum(p.numel() for p in new.parameters())
    return new, report


def _current(leaf):
    _, parent, name, _ = leaf
    return getattr(parent, name)


def _replace(leaf, module):
    _, parent, name, _ = leaf
    setattr(parent, name, module)


def _clone_layer(mod: nn.Module, out: int, cin: int, weight: torch.Tensor, bias):
    if isinstance(mod, nn.Linear):
        new = nn.Linear(cin, out, bias=bias is not None, dtype=weight.dtype, device=weight.device)
    else:
        new = type(mod)(cin, out, mod.kernel_size, stride=mod.stride, padding=mod.padding, dilation=mod.dilation,
                        bias=bias is not None, padding_mode=mod.padding_mode, dtype=weight.dtype, device=weight.device)
    new.weight.copy_(weight)
    if bias is not None:
        new.bias.copy_(bias)
    new.train(mod.training)
    return new


def _slice_out(mod, idx):
    bias = mod.bias[idx] if mod.bias is not None else None
    return _clone_layer(mod, idx.numel(), mod.weight.shape[1], mod.weight[idx], bias)


def _slice_in(mod, cols):
    return _clone_layer(mod, mod.weight.shape[0], cols.numel(), mod.weight[:, cols], mod.bias)


def _slice_norm(bn, idx):
    new = type(bn)(idx.numel(), eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                   track_running_stats=bn.track_running_stats, dtype=(bn.weight.dtype if bn.affine else None))
    if bn.affine:
        new.weight.copy_(bn.weight[idx])
        new.bias.copy_(bn.bias[idx])
    if bn.track_running_stats:
        new.running_mean.copy_(bn.running_mean[idx])
        new.running_var.copy_(bn.running_var[idx])
        new.num_batches_tracked.copy_(bn.num_batches_tracked)
    new.train(bn.training)
    return new
