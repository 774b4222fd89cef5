"""What sparsity a checkpoint's weights have: per-layer zeros, a claimed pattern checked, or the
densest N:M pattern each weight obeys.

A weight obeys ``n:m`` when no group of m (along the grouped axis, :mod:`nmsparse.layout`) holds
more than n non-zeros, and ``n:mT`` when no row or column of any m x m tile does. Partial groups at
ragged edges are held to "at most n" (as in :func:`nmsparse.check_mask`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import torch

from ..errors import MaskError
from ..layout import matrix_layout, to_groups, to_tiles
from ..masks import check_mask
from ..pattern import NMPattern, PatternLike
from .formats import read_checkpoint
from .rules import Selector

__all__ = ["WeightReport", "CheckpointReport", "densest_patterns", "report_state_dict", "report_checkpoint"]

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
    ``"n:m, not T"`` when no transposable pattern short of dense holds, ``"dense"`` when n = m.

    Examples
    --------
    >>> densest_patterns(torch.tensor([[1.0, 0, 2.0, 0]]), ms=(4,))
    {4: '2:4T'}
    """
    nz = weight != 0
    layout = matrix_layout(nz.shape, where="densest_patterns")
    out = {}
    for m in ms:
        mat = layout.to_matrix(nz, m, tiles=True, fill=False).to(torch.int32)
        n_row = max(int(to_groups(mat, m).sum(-1).max()), 1)
        tiles = to_tiles(mat, m)
        n_t = max(int(tiles.sum(-1).max()), int(tiles.sum(-2).max()), 1)
        if n_row == m:
            out[m] = "dense"
        elif n_t == n_row:
            out[m] = f"{n_row}:{m}T"
        elif n_t == m:
            out[m] = f"{n_row}:{m}, not T"
        else:
            out[m] = f"{n_row}:{m}, {n_t}:{m}T"
    return out


def report_state_dict(
    tensors: Dict[str, torch.Tensor],
    pattern: Optional[PatternLike] = None,
    *,
    include: Union[str, Sequence[str], None] = None,
    exclude: Union[str, Sequence[str], None] = None,
    ms: Sequence[int] = DEFAULT_MS,
) -> CheckpointReport:
    """Report every tensor of a state dict; judge the eligible weights against ``pattern`` if given.

    Without ``pattern``, each eligible weight gets its densest patterns for ``ms`` instead.
    Weights that the pruning rules leave dense (1-D, embeddings, norms, ``exclude``) are listed
    with their sparsity but not judged.
    """
    p = NMPattern.parse(pattern) if pattern is not None else None
    selector = Selector(include, exclude, "report")
    rows = []
    for name, t in tensors.items():
        shape = tuple(t.shape)
        sparsity = 1.0 - int(torch.count_nonzero(t)) / t.numel() if t.numel() else 0.0
        row = WeightReport(name, shape, str(t.dtype).replace("torch.", ""), sparsity, False)
        row.reason = selector.skip_reason(name, shape, t.dtype)
        rows.append(row)
        if row.reason is not None:
            row.reason = row.reason.replace("dense: ", "not checked: ", 1)
            continue
        row.checked = True
        if p is None:
            row.densest = densest_patterns(t, ms)
            continue
        try:
            check_mask(t != 0, p)
            row.obeys = True
        except MaskError as err:
            row.obeys = False
            row.problem = str(err).replace("check_mask: ", "", 1)
    return CheckpointReport(str(p) if p is not None else None, rows)


def report_checkpoint(
    path: Union[str, Path],
    pattern: Optional[PatternLike] = None,
    *,
    include: Union[str, Sequence[str], None] = None,
    exclude: Union[str, Sequence[str], None] = None,
    ms: Sequence[int] = DEFAULT_MS,
) -> CheckpointReport:
    """Read a checkpoint (any format of :mod:`nmsparse.convert.formats`) and :func:`report_state_dict` it.

    Examples
    --------
    >>> rep = report_checkpoint("pruned.safetensors", "2:4T")   # doctest: +SKIP
    >>> [w.name for w in rep.broken]                             # doctest: +SKIP
    []
    """
    ckpt = read_checkpoint(path)
    rep = report_state_dict(ckpt.tensors, pattern, include=include, exclude=exclude, ms=ms)
    rep.source, rep.format = str(path), ckpt.format
    return rep
