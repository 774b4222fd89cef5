"""One-shot N:M pruning of a state dict or a checkpoint file, with a per-layer table.

Each eligible weight (see :mod:`nmsparse.convert.rules`) gets the mask that keeps the most
``|W|`` for the pattern (:func:`nmsparse.solve_mask`, solved in fp32 — fp16/bf16 values are fp32
values, so nothing is rounded); the kept values are stored unchanged in the weight's own dtype and
every other entry becomes +0.0 (a kept ``-0.0`` also becomes +0.0).
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import torch

from .._progress import Progress
from .._version import __version__
from ..errors import MethodError, NMSparseError
from ..masks import solve_mask, unstructured_mask
from ..masks.methods import resolve_method
from ..pattern import NMPattern, PatternLike
from .rules import Selector, check_ragged_choice, check_state_dict, plan_weight, ragged_error

__all__ = ["LayerResult", "PruneResult", "PrunePlan", "plan_pruning", "prune_state_dict", "json_path_for"]


@dataclass
class LayerResult:
    """One row of the pruning table.

    ``kept_fraction`` is the share of ``sum |W|`` the mask keeps; ``density`` the share of entries
    that are non-zero afterwards; ``reason`` says why a tensor was left dense (``pruned`` False).
    """

    name: str
    shape: tuple
    dtype: str
    pruned: bool
    pattern: Optional[str] = None
    kept_fraction: Optional[float] = None
    density: Optional[float] = None
    seconds: Optional[float] = None
    reason: Optional[str] = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


@dataclass
class PruneResult:
    """What :func:`prune_state_dict` / :func:`nmsparse.convert.prune_checkpoint` return (the latter with
    empty ``tensors``: the pruned weights are in OUT)."""

    tensors: Dict[str, torch.Tensor]
    layers: List[LayerResult]
    pattern: str
    method: str
    seconds: float = 0.0
    notes: List[str] = field(default_factory=list)
    output: Optional[str] = None
    json_path: Optional[str] = None

    @property
    def pruned(self) -> List[LayerResult]:
        return [r for r in self.layers if r.pruned]

    def summary(self) -> str:
        """One line: how many tensors/parameters were pruned and why the others were left dense."""
        total = sum(_numel(r.shape) for r in self.layers)
        pruned = sum(_numel(r.shape) for r in self.pruned)
        reasons: Dict[str, int] = {}
        for r in self.layers:
            if not r.pruned:
                key = re.split(r": |, ", (r.reason or "dense").replace("dense: ", "", 1))[0]
                reasons[key] = reasons.get(key, 0) + 1
        dense = "; ".join(f"{n} {k}" for k, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
        return (
            f"pruned {len(self.pruned)} of {len(self.layers)} tensors ({pruned / max(total, 1):.1%} of the entries) "
            f"to {self.pattern} ({self.method}) in {self.seconds:.1f} s"
            + (f"; left dense: {dense}" if dense else "")
        )

    def to_json(self) -> dict:
        return {
            "nmsparse_version": __version__,
            "pattern": self.pattern,
            "method": self.method,
            "output": self.output,
            "seconds": self.seconds,
            "summary": self.summary(),
            "notes": list(self.notes),
            "layers": [r.to_dict() for r in self.layers],
        }


def prune_state_dict(
    tensors: Dict[str, torch.Tensor],
    pattern: PatternLike,
    *,
    method: Optional[str] = None,
    include: Union[str, Sequence[str], None] = None,
    exclude: Union[str, Sequence[str], None] = None,
    ragged: str = "error",
    tied: Optional[Dict[str, List[str]]] = None,
    progress: bool = False,
    where: str = "prune",
    dim0: Union[str, Sequence[str], None] = None,
) -> PruneResult:
    """Prune every eligible tensor of a state dict to ``pattern``; the input is not modified.

    Parameters
    ----------
    tensors : dict of str -> torch.Tensor
        A state dict (``name -> tensor``, e.g. ``model.state_dict()``; ``nn.Parameter`` values are
        fine); non-eligible entries are passed through unchanged. A value that is not a tensor (or
        a key that is not a string) is a :class:`ConvertError` naming the key: a checkpoint's
        tensors are written back as tensors, so anything else has no place in them.
    pattern : str or NMPattern
        ``"n:m"`` or ``"n:mT"``; n entries KEPT per group of m.
    method : str, optional
        Mask method (see :func:`nmsparse.available_methods`); default: the optimal one.
    include, exclude : str or list of str, optional
        Regexes matched in full against a tensor's name (``"fc1.weight"``) or its module name
        (``"fc1"``): ``exclude="fc2"`` spares ``fc2`` but not ``fc20``. See :mod:`nmsparse.selection`.
    ragged : {"error", "skip", "pad"}
        What to do with a weight whose shape does not fit the pattern. ``"error"`` raises before
        any solving, naming the layer.
    tied : dict, optional
        Names of tensors sharing storage with others; they are left dense (pruning one copy would
        untie them).
    progress : bool
        Show a progress bar on stderr.
    dim0 : str or list of str, optional
        Regexes (matched like ``include``) naming 2-D tensors grouped along dim 0 instead of the
        last axis: Hugging Face ``Conv1D`` weights, stored ``(in, out)`` (GPT-2:
        :data:`nmsparse.convert.rules.CONV1D_NAMES`).

    Returns
    -------
    PruneResult
        ``tensors`` (same keys and order, pruned ones replaced) and one :class:`LayerResult` per tensor.

    Examples
    --------
    >>> sd = {"fc.weight": torch.randn(8, 16), "fc.bias": torch.randn(8)}
    >>> res = prune_state_dict(sd, "2:4T")
    >>> [(r.name, r.pruned) for r in res.layers]
    [('fc.weight', True), ('fc.bias', False)]
    """
    start = time.perf_counter()
    check_state_dict(tensors, where)
    plan = plan_pruning(
        {name: (tuple(t.shape), t.dtype) for name, t in tensors.items()}, pattern, method=method, include=include,
        exclude=exclude, ragged=ragged, tied=tied, where=where, dim0=dim0,
    )
    out = dict(tensors)
    with Progress(len(plan.todo), f"pruning to {plan.pattern}", enabled=progress) as bar:
        for name in plan.todo:
            out[name] = plan.prune(name, tensors[name])
            bar.advance()
    return PruneResult(out, plan.layers(), str(plan.pattern), plan.method, time.perf_counter() - start)


@dataclass
class PrunePlan:
    """Which tensors get pruned and how, decided from names, shapes and dtypes alone (before any
    weight is read, so a checkpoint can be pruned one tensor at a time). ``todo`` maps each
    tensor to prune to whether it is padded; ``rows`` holds every tensor's table row."""

    pattern: Union[NMPattern, float]
    method: str
    rows: Dict[str, LayerResult]
    todo: Dict[str, bool]
    where: str = "prune"
    dims: Dict[str, Optional[int]] = field(default_factory=dict)  # grouped axis, when not the default

    def prune(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """The pruned copy of tensor ``name``; fills in its row."""
        return _prune_one(name, t, self.pattern, self.method, self.todo[name], self.rows[name], self.where,
                          self.dims.get(name))

    def layers(self) -> List[LayerResult]:
        return list(self.rows.values())


def plan_pruning(
    specs: Dict[str, tuple],
    pattern: PatternLike,
    *,
    method: Optional[str] = None,
    include: Union[str, Sequence[str], None] = None,
    exclude: Union[str, Sequence[str], None] = None,
    ragged: str = "error",
    tied: Optional[Dict[str, List[str]]] = None,
    where: str = "prune",
    dim0: Union[str, Sequence[str], None] = None,
) -> PrunePlan:
    """Decide what :func:`prune_state_dict` does from ``{name: (shape, dtype)}`` (one
    :func:`~nmsparse.convert.rules.plan_weight` per tensor); raises on a ragged weight
    (``ragged="error"``), a bad method, pattern or regex, before any solving."""
    p = _parse_spec(pattern, where)
    if isinstance(p, NMPattern):
        method_name = resolve_method(p, method, where)
    elif method not in (None, "exact", "topk"):
        raise MethodError(f"{where}: an unstructured density keeps the top-k of each tensor (method 'topk'), got method {method!r}.")
    else:
        method_name = "topk"
    check_ragged_choice(ragged, where)
    selector = Selector(include, exclude, where, dim0)
    tied = tied or {}
    dims: Dict[str, Optional[int]] = {}
    rows: Dict[str, LayerResult] = {}
    todo: Dict[str, bool] = {}  # name -> pad
    for name, (shape, dtype) in specs.items():
        shape = tuple(shape)
        row = LayerResult(name, shape, str(dtype).replace("torch.", ""), False)
        rows[name] = row
        plan = plan_weight(selector, name, shape, dtype, p, ragged, tied)
        if plan.reason is None and plan.problem is not None and ragged == "error":
            raise ragged_error(where, name, shape, plan.problem, p)
        if plan.reason is not None:
            row.reason = plan.reason
            continue
        todo[name] = plan.pad
        if plan.dim is not None:
            dims[name] = plan.dim
    return PrunePlan(p, method_name, rows, todo, where, dims)


def _prune_one(name: str, t: torch.Tensor, p: NMPattern, method: str, pad: bool, row: LayerResult, where: str,
               dim: Optional[int] = None) -> torch.Tensor:
    t = t.detach()  # an nn.Parameter in, a plain tensor out: the pruned copy is not part of a graph
    w = t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
    start = time.perf_counter()
    try:
        if isinstance(p, NMPattern):
            res = solve_mask(w, p, method=method, pad=pad, dim=dim)
            mask, kept, total = res.mask, res.objective, res.info.get("score_total", 0.0)
        else:
            mask = unstructured_mask(w, p)
            kept, total = float(w.abs()[mask].double().sum()), float(w.abs().double().sum())
    except NMSparseError as err:
        raise type(err)(f"layer {name}: {err}") from None
    # Keep the stored values bit for bit; +0.0 elsewhere (also where a kept value was -0.0).
    new = torch.where(mask & (t != 0), t, torch.zeros((), dtype=t.dtype))
    row.pruned = True
    label = str(p) if isinstance(p, NMPattern) else f"{p:g}"
    row.pattern = label + (" (padded)" if pad else "") + (f" (groups along dim {dim})" if dim is not None else "")
    row.kept_fraction = kept / total if total else 1.0
    row.density = int(torch.count_nonzero(new)) / max(new.numel(), 1)
    row.seconds = time.perf_counter() - start
    return new


def _parse_spec(pattern, where: str):
    """An NMPattern, or a float density in [0, 1] (the share of each tensor kept, unstructured): the
    library's one parser, :func:`nmsparse.pattern.parse_spec`."""
    from ..pattern import parse_spec

    return parse_spec(pattern, where)


def json_path_for(out: Union[str, Path]) -> Path:
    """Where the per-layer JSON goes: beside OUT, named ``OUT.prune.json``."""
    out = Path(out)
    return out.parent / (out.name + ".prune.json")


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n
