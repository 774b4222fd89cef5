"""Which weights of a layer form a group: labels over one or more parameter tensors.

A :class:`LayerGroups` assigns every entry of the listed tensors one group id in ``[0, G)``; the
groups therefore partition those entries (no overlaps, nothing left out). Kinds, for a weight of
shape ``(out, in)`` (``nn.Linear``) or ``(out, in, k1, ..., kd)`` (``nn.ConvNd``):

``"rows"`` (aliases ``"neurons"``, ``"filters"``)
    Group ``i`` is output unit ``i``: ``weight[i]``, plus ``bias[i]`` and, when the layer is
    followed by a BatchNorm, that norm's ``weight[i]`` and ``bias[i]``. A dead group then outputs
    exactly zero, which lets :func:`~nmsparse.regularizers.shrink.shrink_model` remove it exactly.
``"columns"`` (aliases ``"inputs"``, ``"channels"``)
    Group ``j`` is input unit ``j``: ``weight[:, j]`` (all kernel positions).
``"kernel_shapes"`` (alias ``"shapes"``), conv only
    Group ``(c, p)`` is ``weight[:, c, p]`` for input channel ``c`` and kernel position ``p``: one
    column of the implicit-GEMM matrix (Wen et al.'s "filter shapes").
``"nm:M"`` (alias ``"blocks:M"``)
    Blocks of ``M`` consecutive weights along the N:M grouped axis of
    :func:`nmsparse.layout.matrix_layout` (input channels at each kernel position); a ragged
    last block is a smaller group.
``"entries"`` (alias ``"unstructured"``)
    Every weight is its own group.
custom
    An integer tensor of labels with the weight's shape (ids ``0..G-1``, every id used).

Example
-------
>>> from torch import nn
>>> g = layer_groups(nn.Linear(4, 3), "rows")
>>> g.n_groups, [t.shape for t in g.labels]
(3, [torch.Size([3, 4]), torch.Size([3])])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Union

import torch
from torch import nn

from ..errors import ArgumentError, ShapeError
from ..layout import matrix_layout
from ..selection import NameFilter, Patterns
from ._group_index import resolve_groups

__all__ = ["LayerGroups", "layer_groups", "model_groups", "GROUP_KINDS", "prunable_layers"]

GROUP_KINDS = ("rows", "columns", "kernel_shapes", "nm:M", "entries")
_ALIASES = {
    "rows": "rows", "neurons": "rows", "filters": "rows",
    "columns": "columns", "inputs": "columns", "channels": "columns",
    "kernel_shapes": "kernel_shapes", "shapes": "kernel_shapes",
    "entries": "entries", "unstructured": "entries",
}
_LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class LayerGroups:
    """Group labels of one layer.

    Attributes
    ----------
    name : str
        Layer name (as in ``model.named_modules()``).
    kind : str
        Canonical kind (``"rows"``, ``"columns"``, ``"kernel_shapes"``, ``"nm:4"``, ``"entries"``, ``"custom"``).
    params : list of Parameter
        The tensors grouped; ``params[0]`` is the layer's weight.
    labels : list of LongTensor
        ``labels[t]`` has ``params[t]``'s shape; entry -> group id.
    n_groups : int
    sizes : LongTensor ``(n_groups,)``
        Number of entries in each group.
    """

    name: str
    kind: str
    params: List[torch.Tensor]
    labels: List[torch.Tensor]
    n_groups: int
    sizes: torch.Tensor = field(repr=False, default=None)

    def norms(self) -> torch.Tensor:
        """Euclidean norm of every group, float64 ``(n_groups,)``."""
        sq = torch.zeros(self.n_groups, dtype=torch.float64, device=self.params[0].device)
        for p, lab in zip(self.params, self.labels):
            sq.index_add_(0, lab.reshape(-1).to(p.device), p.detach().reshape(-1).to(torch.float64).pow(2))
        return sq.sqrt()


def _canonical(kind: str, where: str) -> str:
    if kind in _ALIASES:
        return _ALIASES[kind]
    head, _, tail = kind.partition(":")
    if head in ("nm", "blocks") and tail.isdigit() and int(tail) >= 1:
        return f"nm:{int(tail)}"
    raise ShapeError(
        f"{where}: unknown group kind {kind!r}; use one of rows/neurons/filters, columns/inputs/"
        "channels, kernel_shapes/shapes, nm:M/blocks:M, entries/unstructured, or an integer label tensor."
    )


def layer_groups(
    module: nn.Module,
    kind: Union[str, torch.Tensor] = "rows",
    *,
    name: str = "",
    norm: Optional[nn.Module] = None,
    include_bias: bool = True,
) -> LayerGroups:
    """Group labels for ``module`` (``nn.Linear`` or ``nn.ConvNd``); see the module docstring.

    ``norm`` (a BatchNorm over the layer's outputs) and ``include_bias`` only affect ``"rows"``.
    """
    where = f"layer_groups({name or type(module).__name__})"
    if not isinstance(module, _LAYER_TYPES):
        raise ShapeError(f"{where}: expected nn.Linear or nn.Conv1d/2d/3d, got {type(module).__name__}.")
    w = module.weight
    shape = tuple(w.shape)
    if isinstance(kind, torch.Tensor):
        if tuple(kind.shape) != shape:
            raise ShapeError(f"{where}: custom labels have shape {tuple(kind.shape)}, the weight has {shape}; pass one label per weight.")
        labels, g = resolve_groups(w.numel(), kind, where)
        return _finish(name, "custom", [w], [labels.reshape(shape)], g)
    kind = _canonical(kind, where)
    out = shape[0]
    if kind == "rows":
        lab = torch.arange(out).reshape(-1, *([1] * (len(shape) - 1))).expand(shape).contiguous()
        params, labels = [w], [lab]
        if include_bias and getattr(module, "bias", None) is not None:
            params.append(module.bias)
            labels.append(torch.arange(out))
        if norm is not None:
            if not isinstance(norm, _NORM_TYPES) or norm.num_features != out:
                raise ShapeError(f"{where}: norm must be a BatchNorm with {out} features, got {norm!r}.")
            for p in (norm.weight, norm.bias):
                if p is not None:
                    params.append(p)
                    labels.append(torch.arange(out))
        return _finish(name, kind, params, labels, out)
    if kind == "columns":
        cin = shape[1]
        lab = torch.arange(cin).reshape(1, cin, *([1] * (len(shape) - 2))).expand(shape).contiguous()
        return _finish(name, kind, [w], [lab], cin)
    if kind == "kernel_shapes":
        if len(shape) < 3:
            raise ShapeError(f"{where}: kernel_shapes groups need a conv weight (out, in, k...), got shape {shape}; use 'columns' for Linear.")
        per_out = torch.arange(w[0].numel()).reshape(shape[1:])
        return _finish(name, kind, [w], [per_out.unsqueeze(0).expand(shape).contiguous()], w[0].numel())
    if kind == "entries":
        return _finish(name, kind, [w], [torch.arange(w.numel()).reshape(shape)], w.numel())
    m = int(kind.split(":")[1])
    layout = matrix_layout(shape, where=where)
    idx = torch.arange(w.numel()).reshape(shape)
    mat = layout.to_matrix(idx)  # (rows, positions * group_len), grouped axis innermost
    per_pos = -(-layout.group_len // m)
    col = torch.arange(mat.shape[1])
    block_of_col = (col // layout.group_len) * per_pos + (col % layout.group_len) // m
    block = torch.arange(mat.shape[0]).unsqueeze(1) * (block_of_col.max() + 1) + block_of_col
    flat = torch.empty(w.numel(), dtype=torch.long)
    flat[mat.reshape(-1)] = block.reshape(-1)
    return _finish(name, kind, [w], [flat.reshape(shape)], int(block.max()) + 1)


def _finish(name, kind, params, labels, n_groups) -> LayerGroups:
    sizes = torch.zeros(n_groups, dtype=torch.long)
    for lab in labels:
        sizes += torch.bincount(lab.reshape(-1), minlength=n_groups)
    return LayerGroups(name, kind, params, labels, n_groups, sizes)


def prunable_layers(model: nn.Module) -> Dict[str, nn.Module]:
    """Every ``nn.Linear`` / ``nn.ConvNd`` of ``model`` by name, in definition order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, _LAYER_TYPES)}


def _following_norms(model: nn.Module) -> Dict[str, nn.Module]:
    """Layer name -> the BatchNorm that comes right after it in module order (if its size matches)."""
    leaves = [(n, m) for n, m in model.named_modules() if len(list(m.children())) == 0]
    found = {}
    for (n, m), (_, nxt) in zip(leaves, leaves[1:]):
        if isinstance(m, _LAYER_TYPES) and isinstance(nxt, _NORM_TYPES) and nxt.num_features == m.weight.shape[0]:
            found[n] = nxt
    return found


def model_groups(model: nn.Module, groups: Union[str, Dict[str, object]] = "rows", layers=None, *,
                 include: Patterns = None, exclude: Patterns = None, where: str = "model_groups") -> List[LayerGroups]:
    """:class:`LayerGroups` for the chosen layers of ``model``.

    ``groups`` is one kind for every layer, or ``{layer name: kind or label tensor}`` (then the
    dict's keys are the layers). ``layers`` (list of exact names) restricts a single kind to some
    layers; default: every Linear/Conv layer. ``include`` / ``exclude`` then filter those layers
    by the library's one selection rule (:mod:`nmsparse.selection`): regexes matched in full
    against the layer name (``"fc1"``) or its weight's name (``"fc1.weight"``). ``"rows"`` groups pull in the BatchNorm that
    follows a layer in module order (``nn.Sequential`` models), so dead units output exactly 0.
    """
    if not isinstance(model, nn.Module):
        raise ArgumentError(f"model_groups: model must be a torch.nn.Module, got {type(model).__name__}; pass the model itself.")
    available = prunable_layers(model)
    if isinstance(groups, dict):
        spec = dict(groups)
        if layers is not None:
            raise ShapeError("model_groups: pass layers either as the keys of a groups dict or as layers=, not both.")
    else:
        names = list(available) if layers is None else list(layers)
        spec = {n: groups for n in names}
    unknown = [n for n in spec if n not in available]
    if unknown:
        raise ShapeError(f"model_groups: no Linear/Conv layer named {unknown[0]!r}; layers are {list(available)}.")
    if include is not None or exclude is not None:
        chosen = NameFilter(include, exclude, where=where)
        spec = {n: kind for n, kind in spec.items() if chosen(n, f"{n}.weight")}
    if not spec:
        raise ShapeError(
            f"{where}: no layer selected (Linear/Conv layers: {list(available)}); check groups=, layers=, "
            f"include= and exclude= (regexes matched in full)."
        )
    norms = _following_norms(model)
    return [layer_groups(available[n], kind, name=n, norm=norms.get(n) if _is_rows(kind) else None) for n, kind in spec.items()]


def _is_rows(kind) -> bool:
    return isinstance(kind, str) and _ALIASES.get(kind) == "rows"
