r"""WGSEF: the weighted group sparse envelope function, its proximal operator and the projection to k groups.

Definitions (Refael, Arbel, Huleihel, *Learning k-Level Structured Sparse Neural Networks Using
Group Envelope Regularization*, arXiv 2212.12921, Sec. 3). Split ``x`` into disjoint groups
``G_1..G_m`` with weights ``d_i > 0`` and let

.. math:: f(x) = \tfrac12 \sum_i d_i \|x_{G_i}\|^2 \quad\text{if at most } k \text{ groups are non-zero, } +\infty \text{ otherwise.}

WGSEF is its convex envelope (biconjugate) ``f**``. **Where the weights enter:** on the squared
group norms, i.e. through ``v_i = sqrt(d_i) * ||x_{G_i}||``. Conjugating twice gives

.. math:: \mathrm{WGSEF}_{k,d}(x) = \tfrac12 \|v\|_{(k)}^2,

the half squared *k-support norm* (Argyriou, Foygel, Srebro, NeurIPS 2012) of the weighted
group-norm vector ``v``. With singleton groups and ``d = 1`` this is the sparse envelope function
``SEF_k``. Special cases: ``k = m`` gives ``1/2 sum d_i ||x_Gi||^2``; ``k = 1`` gives
``1/2 (sum_i sqrt(d_i) ||x_Gi||)^2``.

Both the value and the prox come from the variational form (McDonald, Pontil, Stamos, JMLR
2016, box-norm with a = 0): ``||v||_(k)^2 = min { sum_i v_i^2 / theta_i : theta in (0,1]^m,
sum theta <= k }``. Minimising ``1/2 ||z - x||^2 + step * WGSEF(z)`` jointly over ``z`` and
``theta`` (jointly convex) gives, with ``n_i = ||x_{G_i}||`` and ``a_i = sqrt(d_i) n_i``:

* ``theta_i(mu) = clip(a_i * mu - step * d_i, 0, 1)`` where ``mu >= 0`` solves ``sum_i theta_i(mu) = k``
  (if at most ``k`` groups are non-zero, ``theta_i = 1``);
* ``z_{G_i} = x_{G_i} * theta_i / (theta_i + step * d_i)``: groups with ``theta_i = 1`` get ridge
  shrinkage ``1/(1 + step d_i)``, groups with ``theta_i = 0`` are set to exactly zero, the rest are
  group-soft-thresholded, ``||z_{G_i}|| = n_i - step * sqrt(d_i) / mu``.

``sum_i theta_i(mu)`` is continuous, non-decreasing and piecewise linear in ``mu`` with ``2m``
breakpoints, so ``mu`` is found exactly by a breakpoint search: sorting (``method="sort"``,
O(m log m), the default) or median selection (``method="select"``, worst-case O(m): each round
takes the median of the breakpoints still inside the bracket with ``numpy.partition``, whose
introselect is worst-case linear, and halves them; the paper's Sec. 4 linear-time claim). Equal
group norms ("ties") need no tie-break: the equation treats them symmetrically, so tied groups
get identical shrinkage. Only :func:`wgsef_project` (keep exactly k) breaks ties, by group index.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import ArgumentError, MethodError
from ._group_index import GroupsLike, check_k, check_x, group_norms, resolve_groups, resolve_weights
from ._group_index import finite_number as _finite_number

__all__ = ["wgsef", "wgsef_prox", "wgsef_project", "k_support_norm", "PROX_METHODS"]

PROX_METHODS = ("sort", "select")


def _solve_sort(a: torch.Tensor, b: torch.Tensor, k: int) -> float:
    """Smallest ``mu`` with ``sum clip(a mu - b, 0, 1) = k``; a > 0, b >= 0 float64, more than k entries."""
    p, q = b / a, (1.0 + b) / a  # where theta_i starts rising, where it saturates
    vals = torch.cat([p, q])
    dslope = torch.cat([a, -a])
    dconst = torch.cat([-b, 1.0 + b])
    order = torch.sort(vals, stable=True).indices
    vals, slope, const = vals[order], torch.cumsum(dslope[order], 0), torch.cumsum(dconst[order], 0)
    phi = slope * vals + const  # exact at every breakpoint by continuity, whatever the order of ties
    hit = torch.nonzero(phi >= k).flatten()
    j = int(hit[0]) if hit.numel() else len(vals) - 1
    if j == 0 or float(phi[j]) == k:
        return float(vals[j])
    s, c = float(slope[j - 1]), float(const[j - 1])
    lo, hi = float(vals[j - 1]), float(vals[j])
    if s <= 0.0:
        return hi
    return min(max((k - c) / s, lo), hi)


def _solve_select(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Same root as :func:`_solve_sort` by median-of-breakpoints bracketing, worst-case O(m).

    Items whose breakpoints both lie outside the bracket ``(lo, hi)`` are folded into running
    aggregates (saturated count, linear slope and offset), so every round costs time linear in
    the breakpoints still inside, and that number halves each round (Kiwiel-style selection).
    """
    with np.errstate(over="ignore"):  # a subnormal a_i gives q_i = inf: that item never saturates
        p, q = b / a, (1.0 + b) / a
    lo, hi = 0.0, math.inf
    sat, slope, offset = 0.0, 0.0, 0.0
    live = np.arange(a.size)
    while live.size:
        bp = np.concatenate([p[live], q[live]])
        bp = bp[(bp > lo) & (bp < hi)]
        if bp.size:
            mid = bp.size // 2
            med = float(np.partition(bp, mid)[mid])
            theta = np.clip(a[live] * med - b[live], 0.0, 1.0)
            phi = sat + slope * med - offset + float(theta.sum())
            if phi >= k:
                hi = med
            else:
                lo = med
        pl, ql = p[live], q[live]
        saturated = ql <= lo
        linear = (pl <= lo) & (ql >= hi) & ~saturated
        zero = (pl >= hi) & ~saturated & ~linear
        sat += float(saturated.sum())
        slope += float(a[live][linear].sum())
        offset += float(b[live][linear].sum())
        live = live[~(saturated | linear | zero)]
    if slope <= 0.0:
        return lo if lo > 0.0 else hi
    return min(max((k - sat + offset) / slope, lo), hi)


def _theta(a: torch.Tensor, b: torch.Tensor, k: int, method: str) -> torch.Tensor:
    """theta_i in [0, 1] of the variational form for ``a >= 0`` (float64), ``b >= 0``."""
    pos = a > 0
    n_pos = int(pos.sum())
    if n_pos <= k:  # the budget sum(theta) <= k is slack: every non-zero group saturates
        return pos.to(a.dtype)
    ap, bp = a[pos], b[pos]
    if method == "sort":
        mu = _solve_sort(ap, bp, k)
    else:
        mu = _solve_select(ap.cpu().numpy(), bp.cpu().numpy(), k)
    theta = torch.zeros_like(a)
    theta[pos] = torch.clamp(ap * mu - bp, 0.0, 1.0)
    return theta


def _check_method(method: str, where: str) -> str:
    if method not in PROX_METHODS:
        raise MethodError(f"{where}: unknown method {method!r}; known methods are {', '.join(PROX_METHODS)}.")
    return method


def k_support_norm(v: torch.Tensor, k: int, *, method: str = "sort") -> float:
    r"""The k-support norm ``||v||_(k)`` of a vector (any shape, flattened), as a Python float.

    ``||v||_(k)^2 = sum_{i<k-r} (v_i^dn)^2 + (sum_{i>=k-r} v_i^dn)^2 / (r+1)`` (Argyriou et al. 2012,
    Prop. 2.1); computed here through the variational form (module docstring), float64.

    Examples
    --------
    >>> round(k_support_norm(torch.tensor([3.0, 4.0]), 2), 6)   # k = d: the Euclidean norm
    5.0
    """
    v = check_x(v, "k_support_norm")
    k = check_k(k, v.numel(), "k_support_norm")
    _check_method(method, "k_support_norm")
    a = v.detach().reshape(-1).to(torch.float64).abs()
    theta = _theta(a, torch.zeros_like(a), k, method)
    on = theta > 0
    return math.sqrt(float((a[on] ** 2 / theta[on]).sum()))


def wgsef(x: torch.Tensor, k: int, *, groups: GroupsLike = None, weights=None, method: str = "sort") -> float:
    r"""Value of ``WGSEF_{k,d}(x) = 1/2 ||(sqrt(d_i) ||x_{G_i}||)_i||_(k)^2`` (a Python float, float64 maths).

    Parameters
    ----------
    x : Tensor, any shape
        Flattened in row-major order; ``groups`` index that flat vector.
    k : int
        Number of groups allowed to be non-zero, ``1 <= k <= m`` (the number of groups).
    groups : None, int Tensor of labels (``x.numel()`` entries), or sequence of index lists
        Must partition the entries (see :mod:`nmsparse.regularizers._group_index`). ``None``:
        every entry is its own group (then this is ``SEF_k``).
    weights : None, float, or sequence of m positive floats
        ``d_i``, multiplying the squared group norms. ``None`` means all ones.

    Examples
    --------
    >>> wgsef(torch.tensor([1.0, -2.0, 0.0]), k=1)   # k = 1: 1/2 ||x||_1^2
    4.5
    """
    x = check_x(x, "wgsef")
    labels, m = resolve_groups(x.numel(), groups, "wgsef")
    k = check_k(k, m, "wgsef")
    d = resolve_weights(weights, m, "wgsef")
    _check_method(method, "wgsef")
    n = group_norms(x.reshape(-1), labels, m)
    a = n if d is None else n * d.to(n.device).sqrt()
    theta = _theta(a, torch.zeros_like(a), k, method)
    on = theta > 0
    return 0.5 * float((a[on] ** 2 / theta[on]).sum())


def wgsef_prox(
    x: torch.Tensor,
    k: int,
    step: float,
    *,
    groups: GroupsLike = None,
    weights=None,
    method: str = "sort",
) -> torch.Tensor:
    r"""Proximal operator ``argmin_z 1/2 ||z - x||^2 + step * WGSEF_{k,d}(z)``.

    Each group is rescaled along its own direction by ``theta_i / (theta_i + step d_i)`` (module
    docstring); groups with ``theta_i = 0`` become exactly ``+0.0``. Signs and in-group directions
    are kept. Exact up to floating-point rounding (float64 internally); O(m log m) with
    ``method="sort"``, worst-case O(m) in the number of groups with ``method="select"``, plus
    O(numel) to form the group norms and rescale.

    Parameters
    ----------
    x : Tensor, any shape, floating point
    k : int
        ``1 <= k <= m``.
    step : float
        ``>= 0``: the proximal step (learning rate times lambda in training). 0 returns a copy of x.
    groups, weights
        As in :func:`wgsef`.
    method : {"sort", "select"}

    Returns
    -------
    Tensor of x's shape, dtype and device.

    Examples
    --------
    >>> x = torch.tensor([3.0, -1.0, 0.5])
    >>> wgsef_prox(x, k=3, step=1.0)          # k = m: ridge shrinkage x / (1 + step)
    tensor([ 1.5000, -0.5000,  0.2500])
    """
    x = check_x(x, "wgsef_prox")
    labels, m = resolve_groups(x.numel(), groups, "wgsef_prox")
    k = check_k(k, m, "wgsef_prox")
    d = resolve_weights(weights, m, "wgsef_prox")
    _check_method(method, "wgsef_prox")
    value, step = step, _finite_number(step)
    if step is None or step < 0:
        raise ArgumentError(f"wgsef_prox: step must be a finite number >= 0, got {value!r}; pass lr * lam.")
    if step == 0.0:
        return x.clone()
    flat = x.reshape(-1)
    scale = prox_scale(group_norms(flat, labels, m), k, step, d, method)
    return apply_scale(flat, scale, labels).reshape(x.shape)


def prox_scale(norms: torch.Tensor, k: int, step: float, d, method: str = "sort") -> torch.Tensor:
    """Per-group factors ``theta/(theta + step d)`` for group norms ``norms`` (float64, validated input)."""
    if d is None:
        a, b = norms, torch.full_like(norms, step)
    else:
        d = d.to(norms.device)
        a, b = norms * d.sqrt(), step * d
    theta = _theta(a, b, k, method)
    return theta / (theta + b)


def apply_scale(flat: torch.Tensor, scale: torch.Tensor, labels) -> torch.Tensor:
    """Multiply every entry by its group's factor; a factor of 0 gives +0.0, never -0.0."""
    per_entry = scale if labels is None else scale[labels.to(scale.device)]
    out = (flat.to(torch.float64) * per_entry).to(flat.dtype)
    return torch.where(per_entry > 0, out, torch.zeros((), dtype=flat.dtype, device=flat.device))


def wgsef_project(x: torch.Tensor, k: int, *, groups: GroupsLike = None) -> torch.Tensor:
    """Euclidean projection onto "at most k non-zero groups": keep the k groups of largest norm.

    Ties in the group norm keep the lower group index (deterministic). Dropped groups become
    ``+0.0``. The result has exactly k non-zero groups when x has at least k, and the projection is
    idempotent. Weights do not enter: the Euclidean projection ranks by the plain group norm.

    Examples
    --------
    >>> wgsef_project(torch.tensor([1.0, -3.0, 2.0, 2.0]), k=2)
    tensor([ 0., -3.,  2.,  0.])
    """
    x = check_x(x, "wgsef_project")
    labels, m = resolve_groups(x.numel(), groups, "wgsef_project")
    k = check_k(k, m, "wgsef_project")
    keep = top_groups(group_norms(x.reshape(-1), labels, m), k)
    return apply_scale(x.reshape(-1), keep.to(torch.float64), labels).reshape(x.shape)


def top_groups(norms: torch.Tensor, k: int) -> torch.Tensor:
    """Bool ``(m,)``: the k largest norms, ties to the lower index (stable sort on -norm)."""
    order = torch.sort(-norms, stable=True).indices
    keep = torch.zeros(norms.numel(), dtype=torch.bool, device=norms.device)
    keep[order[:k]] = True
    return keep
