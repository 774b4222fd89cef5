"""Proximal WGSEF training: a prox step after any optimizer step, per-layer k and lambda, reports.

Training minimises ``loss(W) + sum_l lam_l * WGSEF_{k_l}(W_l)`` by proximal gradient (Refael et
al., Sec. 5): the optimizer takes its step on the loss, then every regularized layer goes through
``prox_{lr * lam_l * WGSEF_{k_l}}``. At the end, :meth:`WGSEFRegularizer.project_` keeps exactly
``k_l`` groups per layer for deployment.

Example
-------
>>> import torch
>>> from nmsparse.examples import mlp
>>> model = mlp(hidden=(32,), seed=0)
>>> reg = WGSEFRegularizer(model, groups="rows", k={"fc1": 8}, lam=0.5)
>>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
>>> for _ in range(3):
...     opt.zero_grad(); model(torch.randn(16, 64)).pow(2).mean().backward(); opt.step()
...     reg.step(lr=0.1)
>>> _ = reg.project_()
>>> reg.report()[0].nonzero_groups
8
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Union

import torch
from torch import nn

from ..errors import ArgumentError, MethodError, ShapeError
from ..selection import Patterns
from ._group_index import check_k, resolve_weights
from ._group_index import finite_number as _finite_number
from .envelope import PROX_METHODS, apply_scale, prox_scale, top_groups
from .envelope import wgsef as _wgsef_value
from .groups import LayerGroups, model_groups

__all__ = ["WGSEFRegularizer", "GroupReport", "group_sparsity"]

Number = Union[int, float]


@dataclass(frozen=True)
class GroupReport:
    """Group sparsity of one layer: ``nonzero_groups`` of ``n_groups`` survive (target ``k``)."""

    layer: str
    kind: str
    n_groups: int
    nonzero_groups: int
    k: Optional[int]
    zero_weight_fraction: float

    @property
    def group_sparsity(self) -> float:
        """Share of groups that are entirely zero."""
        return 1.0 - self.nonzero_groups / self.n_groups


def _per_layer(value, name: str, what: str):
    if isinstance(value, dict):
        if name not in value:
            raise ShapeError(f"WGSEFRegularizer: {what} has no entry for layer {name!r}; give every regularized layer one.")
        return value[name]
    return value


def _resolve_k(value, n_groups: int, name: str) -> int:
    """int -> groups kept; float in (0, 1] -> that share of the groups, rounded, at least 1."""
    where = f"WGSEFRegularizer (layer {name!r})"
    if isinstance(value, float):
        if not 0.0 < value <= 1.0:
            raise ShapeError(f"{where}: a float k is the share of groups kept and must be in (0, 1], got {value}.")
        value = max(1, int(math.floor(value * n_groups + 0.5)))
    return check_k(value, n_groups, where)


def _resolve_lam(value, name: str) -> float:
    lam = _finite_number(value)
    if lam is None or lam < 0:
        raise ArgumentError(f"WGSEFRegularizer (layer {name!r}): lam must be a finite number >= 0, got {value!r}; pass e.g. 1e-3.")
    return lam


def _resolve_layer_weights(value, g: LayerGroups):
    where = f"WGSEFRegularizer (layer {g.name!r})"
    if isinstance(value, str):
        if value == "size":
            return g.sizes.to(torch.float64)
        if value == "sqrt_size":
            return g.sizes.to(torch.float64).sqrt()
        raise ShapeError(f"{where}: weights must be None, 'size', 'sqrt_size' or a tensor, got {value!r}.")
    return resolve_weights(value, g.n_groups, where)


class WGSEFRegularizer:
    """WGSEF proximal step for the chosen layers of a model.

    Parameters
    ----------
    model : nn.Module
    groups : str or dict
        A group kind for every Linear/Conv layer (see :mod:`nmsparse.regularizers.groups`), or
        ``{layer name: kind or label tensor}`` to choose layers and kinds one by one.
    k : int, float or dict
        Groups kept per layer: an int, a share in (0, 1] of the layer's groups, or a dict by name.
    lam : float or dict
        lambda per layer (>= 0); the prox step is ``lr * lam``.
    layers : list of str, optional
        With a single ``groups`` kind: the layers to regularize, by exact name (default all
        Linear/Conv).
    include, exclude : str or list of str, optional
        Filter the layers by the library's one selection rule (:mod:`nmsparse.selection`):
        regexes matched in full against the layer name (``"fc1"``) or its weight's name
        (``"fc1.weight"``); ``exclude="fc2"`` spares ``fc2``, not ``fc20``.
    weights : None, "size", "sqrt_size", tensor, or dict by layer
        Group weights ``d_i`` (multiplying squared group norms; see :mod:`.envelope`).
    method : {"sort", "select"}
        Threshold search of the prox.
    """

    def __init__(self, model: nn.Module, groups="rows", k: Union[Number, Dict[str, Number]] = 0.5,
                 lam: Union[float, Dict[str, float]] = 1e-3, *, layers=None, include: Patterns = None,
                 exclude: Patterns = None, weights=None, method: str = "sort"):
        if method not in PROX_METHODS:
            raise MethodError(f"WGSEFRegularizer: unknown method {method!r}; known: {', '.join(PROX_METHODS)}.")
        if isinstance(k, dict) and not isinstance(groups, dict) and layers is None:
            layers = list(k)
        self.model = model
        self.method = method
        self.layers: List[LayerGroups] = model_groups(
            model, groups, layers, include=include, exclude=exclude, where="WGSEFRegularizer"
        )
        self.k: Dict[str, int] = {}
        self.lam: Dict[str, float] = {}
        self.weights: Dict[str, Optional[torch.Tensor]] = {}
        for g in self.layers:
            self.k[g.name] = _resolve_k(_per_layer(k, g.name, "k"), g.n_groups, g.name)
            self.lam[g.name] = _resolve_lam(_per_layer(lam, g.name, "lam"), g.name)
            self.weights[g.name] = _resolve_layer_weights(_per_layer(weights, g.name, "weights"), g)

    @torch.no_grad()
    def step(self, lr: float) -> None:
        """Apply ``prox_{lr * lam_l * WGSEF_{k_l}}`` to every regularized layer, in place."""
        value, lr = lr, _finite_number(lr)
        if lr is None or lr < 0:
            raise ArgumentError(
                f"WGSEFRegularizer.step: lr must be a finite number >= 0, got {value!r}; pass the optimizer's learning rate."
            )
        for g in self.layers:
            step = lr * self.lam[g.name]
            if step == 0.0:
                continue
            scale = prox_scale(g.norms(), self.k[g.name], step, self.weights[g.name], self.method)
            self.rescale_groups(g, scale)

    def after_step(self, lr: float) -> Callable[[nn.Module, int], None]:
        """A callback ``fn(model, step)`` that runs :meth:`step` (for ``examples.train(after_step=...)``)."""
        return lambda _model, _step: self.step(lr)

    @torch.no_grad()
    def project_(self) -> Dict[str, torch.Tensor]:
        """Keep exactly ``k_l`` groups (largest norm, ties to the lower index) per layer; zero the rest.

        Returns ``{layer: bool (n_groups,)}`` of kept groups.
        """
        kept = {}
        for g in self.layers:
            keep = top_groups(g.norms(), self.k[g.name])
            self.rescale_groups(g, keep.to(torch.float64))
            kept[g.name] = keep
        return kept

    def penalty(self) -> float:
        """``sum_l lam_l * WGSEF_{k_l}(W_l)`` at the current weights (float)."""
        total = 0.0
        for g in self.layers:
            flat = torch.cat([p.detach().reshape(-1) for p in g.params])
            labels = torch.cat([lab.reshape(-1) for lab in g.labels])
            total += self.lam[g.name] * _wgsef_value(flat, self.k[g.name], groups=labels, weights=self.weights[g.name])
        return total

    def report(self) -> List[GroupReport]:
        """Group sparsity reached, per regularized layer."""
        return [_report(g, self.k[g.name]) for g in self.layers]

    @staticmethod
    def rescale_groups(g: LayerGroups, scale: torch.Tensor) -> None:
        """Multiply every group of ``g`` in place by ``scale[i]`` (float64 ``(n_groups,)``); 0 gives +0.0.

        The building block of :meth:`step` and :meth:`project_`, public for custom proximal maps
        (e.g. a group-lasso baseline).
        """
        for p, lab in zip(g.params, g.labels):
            p.copy_(apply_scale(p.reshape(-1), scale.to(p.device), lab.reshape(-1)).reshape(p.shape))


def _report(g: LayerGroups, k: Optional[int]) -> GroupReport:
    nonzero = int((g.norms() > 0).sum())
    w = g.params[0]
    return GroupReport(g.name, g.kind, g.n_groups, nonzero, k, float((w == 0).sum()) / w.numel())


def group_sparsity(model: nn.Module, groups="rows", layers=None) -> List[GroupReport]:
    """Group sparsity of a model without a regularizer: which groups are entirely zero, per layer.

    Examples
    --------
    >>> from nmsparse.examples import mlp
    >>> [r.nonzero_groups for r in group_sparsity(mlp(hidden=(8,)), "rows")]
    [8, 10]
    """
    return [_report(g, None) for g in model_groups(model, groups, layers)]
