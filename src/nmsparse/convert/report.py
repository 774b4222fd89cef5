"""What sparsity a checkpoint's weights have: per-layer zeros, a claimed pattern checked, or the
densest N:M pattern each weight obeys.

A weight obeys ``n:m`` when no group of m (along the grouped axis, :mod:`nmsparse.layout`) holds
more than n non-zeros, and ``n:mT`` when no row or column of any m x m tile does
(:func:`obey_problem`, the one definition). Which weights are checked, and what a weight whose
shape does not fit the pattern means, is decided by :func:`nmsparse.convert.rules.plan_weight`,
the same function ``prune`` uses, with the same ``ragged`` choice: under ``"error"`` (default) a
weight that does not fit breaks the pattern (``prune`` would refuse it), under ``"skip"`` it is
not checked (``prune`` leaves it dense), under ``"pad"`` its partial groups are held to "at most
n" (what ``prune --ragged pad`` produces). So ``report --ragged R`` passes on every output of
``prune --ragged R``, and fails on a weight that ``prune --ragged R`` would refuse.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import torch

from ..errors import MaskError, ShapeError
from ..layout import matrix_layout, to_groups, to_tiles
from ..masks import check_mask
from ..pattern import NMPattern, PatternLike
from .formats import iter_tensors
from .rules import Selector, WeightPlan, check_ragged_choice, check_state_dict, plan_weight, ragged_problem

__all__ = ["WeightReport", "CheckpointReport", "densest_patterns", "obey_problem", "report_state_dict", "report_checkpoint"]

DEFAULT_MS = (4, 8, 16)


@dataclass
class WeightReport:
    """One tensor: ``sparsity`` is the share of zero entries; ``checked`` says whether it was judged
    (eligible weight, see :mod:`nmsparse.convert.rules`); ``obeys`` / ``problem`` give the verdict
    for the claimed pattern; ``densest`` maps m to the densest pattern it obeys (e.g. ``"2:4T"``)."""

    name: str
    shape: tuple
    dtype: str
    sparsity: float
    checked: bool
    obeys: Optional[bool] = None
    problem: Optional[str] = None
    densest: Dict[int, str] = field(default_factory=dict)
    reason: Optional[str] = None
    group_dim: Optional[int] = None  # 0: checked along dim 0 (HF Conv1D, stored (in, out))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["densest"] = {str(k): v for k, v in self.densest.items()}
        return d


@dataclass
class CheckpointReport:
    """All weights of a checkpoint; ``broken`` lists the checked weights that break the claimed pattern."""

    pattern: Optional[str]
    weights: List[WeightReport]
    source: Optional[str] = None
    format: Optional[str] = None

    @property
    def broken(self) -> List[WeightReport]:
        return [w for w in self.weights if w.obeys is False]

    @property
    def checked(self) -> List[WeightReport]:
        return [w for w in self.weights if w.checked]


def densest_patterns(weight: torch.Tensor, ms: Sequence[int] = DEFAULT_MS) -> Dict[int, str]:
    """For each m, the smallest n such that ``weight != 0`` obeys ``n:m``, and whether it is transposable.

    Returns e.g. ``{4: "2:4T", 8: "4:8T", 16: "8:16, 9:16T"}``: ``"n:mT"`` when the transposable
    pattern holds with the same n, ``"n:m, k:mT"`` when only a looser transposable one does,
    ``"n:m, not T"`` when no transposable pattern short of dense holds, ``"dense"`` when n = m,
    ``"n:m, T does not fit"`` when the row count is not a multiple of m, and ``"does not fit"``
    when the grouped axis is not (:func:`ragged_problem`: a partial group cannot show that the
    weight has the structure).

    Examples
    --------
    >>> densest_patterns(torch.tensor([[1.0, 0, 2.0, 0]]), ms=(4,))
    {4: '2:4T'}
    """
    nz = weight.detach() != 0
    layout = matrix_layout(nz.shape, where="densest_patterns")
    for m in ms:
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ShapeError(f"densest_patterns: ms must hold group sizes m >= 1, got {m!r}; pass e.g. ms=(4, 8, 16).")
    out = {}
    for m in ms:
        shape = tuple(nz.shape)
        if ragged_problem("densest_patterns", shape, NMPattern(1, m)) is not None:
            out[m] = "does not fit"
            continue
        tiles_fit = ragged_problem("densest_patterns", shape, NMPattern(1, m, True)) is None
        mat = layout.to_matrix(nz, m, tiles=tiles_fit, fill=False).to(torch.int32)
        n_row = max(int(to_groups(mat, m).sum(-1).max()), 1)
        if n_row == m:
            out[m] = "dense"
            continue
        if not tiles_fit:
            out[m] = f"{n_row}:{m}, T does not fit"
            continue
        tiles = to_tiles(mat, m)
        n_t = max(int(tiles.sum(-1).max()), int(tiles.sum(-2).max()), 1)
        if n_t == n_row:
            out[m] = f"{n_row}:{m}T"
        elif n_t == m:
            out[m] = f"{n_row}:{m}, not T"
        else:
            out[m] = f"{n_row}:{m}, {n_t}:{m}T"
    return out


def obey_problem(weight: torch.Tensor, pattern: NMPattern, plan: WeightPlan) -> Optional[str]:
    """Why ``weight`` does not obey ``pattern`` under ``plan`` (from :func:`plan_weight`), or ``None``.

    A weight that does not fit the pattern breaks it unless the plan pads it; then, like every
    weight that fits, its non-zeros must obey :func:`nmsparse.check_mask` (partial groups at most n).
    """
    if plan.problem is not None and not plan.pad:
        return f"shape does not fit {pattern}: {plan.problem} (prune would refuse it; see --ragged)"
    try:
        check_mask(weight.detach() != 0, pattern, dim=plan.dim)
    except MaskError as err:
        return str(err).replace("check_mask: ", "", 1)
    return None


def report_state_dict(
    tensors: Dict[str, torch.Tensor],
    pattern: Optional[PatternLike] = None,
    *,
    include: Union[str, Sequence[str], None] = None,
    exclude: Union[str, Sequence[str], None] = None,
    ms: Sequence[int] = DEFAULT_MS,
    ragged: str = "error",
    tied: Optional[Dict[str, List[str]]] = None,
    dim0: Union[str, Sequence[str], None] = None,
) -> CheckpointReport:
    """Report every tensor of a state dict; judge the eligible weights against ``pattern`` if given.

    Without ``pattern``, each eligible weight gets its densest patterns for ``ms`` instead.
    Weights that the pruning rules leave dense (1-D, embeddings, norms, ``exclude``, tied copies)
    are listed with their sparsity but not judged. ``ragged`` is ``prune``'s choice (one of
    ``"error"``, ``"skip"``, ``"pad"``) and means the same here (see the module docstring).
    A value that is not a tensor is a :class:`ConvertError` naming the key. ``dim0`` names 2-D
    tensors grouped along dim 0 (HF ``Conv1D``), as in :func:`nmsparse.convert.prune_state_dict`.
    """
    p = NMPattern.parse(pattern) if pattern is not None else None
    check_ragged_choice(ragged, "report")
    selector = Selector(include, exclude, "report", dim0)
    rows = []
    for name, t in check_state_dict(tensors, "report").items():
        shape = tuple(t.shape)
        sparsity = 1.0 - _count_nonzero(t) / t.numel() if t.numel() else 0.0
        row = WeightReport(name, shape, str(t.dtype).replace("torch.", ""), sparsity, False)
        rows.append(row)
        if p is None:
            row.reason = selector.skip_reason(name, shape, t.dtype)
            plan = WeightPlan(row.reason, dim=selector.group_dim(name, shape))
        else:
            plan = plan_weight(selector, name, shape, t.dtype, p, ragged, tied)
            row.reason = plan.reason
        if row.reason is not None:
            row.reason = row.reason.replace("dense: ", "not checked: ", 1)
            continue
        row.checked = True
        row.group_dim = plan.dim
        if p is None:
            # dim 0 of a 2-D weight is the last axis of its transpose, and m x m tiles map to tiles
            row.densest = densest_patterns(t.t() if plan.dim == 0 else t, ms)
            continue
        row.problem = obey_problem(t, p, plan)
        row.obeys = row.problem is None
    return CheckpointReport(str(p) if p is not None else None, rows)


def _count_nonzero(t: torch.Tensor) -> int:
    """``count_nonzero`` for every dtype a checkpoint may hold (torch lacks it for uint16/32/64, float8)."""
    try:
        return int(torch.count_nonzero(t))
    except (NotImplementedError, RuntimeError):
        if t.dtype.is_floating_point:
            return int(torch.count_nonzero(t.float()))
        same_size = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
        return int(torch.count_nonzero(t.view(same_size)))  # zero exactly when all bits are zero


def report_checkpoint(
    path: Union[str, Path],
    pattern: Optional[PatternLike] = None,
    *,
    include: Union[str, Sequence[str], None] = None,
    exclude: Union[str, Sequence[str], None] = None,
    ms: Sequence[int] = DEFAULT_MS,
    ragged: str = "error",
    dim0: Union[str, Sequence[str], None] = None,
) -> CheckpointReport:
    """Read a checkpoint (any format of :mod:`nmsparse.convert.formats`) one tensor at a time and
    :func:`report_state_dict` each, so memory does not grow with the checkpoint. ``dim0`` as in
    :func:`nmsparse.convert.prune_checkpoint` (same default for a Hugging Face Conv1D family).

    Examples
    --------
    >>> rep = report_checkpoint("pruned.safetensors", "2:4T")   # doctest: +SKIP
    >>> [w.name for w in rep.broken]                             # doctest: +SKIP
    []
    """
    from .stream import resolve_dim0  # the one default shared with prune_checkpoint

    stream = iter_tensors(path)
    dim0, _ = resolve_dim0(Path(path), stream.format, dim0)
    p = NMPattern.parse(pattern) if pattern is not None else None
    check_ragged_choice(ragged, "report")
    rep = CheckpointReport(str(p) if p is not None else None, [], str(path), stream.format)
    for name, t in stream.tensors:
        one = report_state_dict({name: t}, p, include=include, exclude=exclude, ms=ms, ragged=ragged, tied=stream.tied,
                                dim0=dim0)
        rep.weights += one.weights
        del t, one  # let it go before the next one is read
    return rep
