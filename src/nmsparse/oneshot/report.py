"""What :func:`nmsparse.prune_` did, per layer: pass a :class:`PruneReport` as ``report=`` to get it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import List, Optional, Tuple

__all__ = ["LayerPrune", "PruneReport", "PipelineInfo"]


@dataclass
class PipelineInfo:
    """How the calibration statistics were gathered (:mod:`nmsparse.oneshot.pipeline`): ``mode``
    ("block-wise", "truncated", or "none" without calibration), the block lists used
    (``"model.layers (30 blocks)"``), lists not used and why, and ``block_forwards``: the real block
    calls made, all batches together (stand-ins for finished blocks do not count)."""

    mode: str = "none"
    block_lists: List[str] = field(default_factory=list)
    fallbacks: List[Tuple[str, str]] = field(default_factory=list)
    block_forwards: int = 0

    def to_dict(self) -> dict:
        return {"mode": self.mode, "block_lists": list(self.block_lists),
                "fallbacks": [list(f) for f in self.fallbacks], "block_forwards": self.block_forwards}


@dataclass
class LayerPrune:
    """One pruned weight.

    Errors are relative reconstruction errors of the layer's output on the calibration rows it
    saw, ``||Y' - Y||² / ||Y||²`` with ``Y`` the dense layer's output on the same inputs (with
    ``sequential=True`` those inputs come from the already-pruned earlier layers). ``None``
    without calibration data.

    Attributes
    ----------
    name, module_name : str
        ``"blocks.0.attn.q.weight"`` and ``"blocks.0.attn.q"``.
    error_magnitude : float or None
        The magnitude mask applied to the dense weights (the baseline every algorithm should beat).
    error_before : float or None
        The algorithm's mask applied to the dense weights, before any weight update.
    error_after : float or None
        The final weights (after SparseGPT's / AdaPrune's / the least-squares updates), as stored.
    kept_fraction : float
        Share of ``sum |W|`` of the dense weights at the kept positions.
    density : float
        Share of entries that are non-zero afterwards.
    seconds : float
        Time spent on this layer (solving and updating; the forward passes are not included).
    """

    name: str
    module_name: str
    shape: tuple
    dtype: str
    pattern: str
    algorithm: str
    kept_fraction: float
    density: float
    error_magnitude: Optional[float]
    error_before: Optional[float]
    error_after: Optional[float]
    improved: bool
    seconds: float
    damp: Optional[float] = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


@dataclass
class PruneReport:
    """Filled in place by ``prune_(..., report=PruneReport())``.

    Examples
    --------
    >>> rep = PruneReport()                                               # doctest: +SKIP
    >>> nms.prune_(model, "2:4T", calibration=batches, algorithm="sparsegpt", report=rep)  # doctest: +SKIP
    >>> print("\\n".join(rep.format_table()))                             # doctest: +SKIP
    """

    pattern: str = ""
    algorithm: str = ""
    method: Optional[str] = None
    sequential: bool = True
    layers: List[LayerPrune] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    batchnorm: int = 0
    seconds: float = 0.0
    pipeline: PipelineInfo = field(default_factory=PipelineInfo)
    calibration: Optional[dict] = None  # what was used: {"batches", "windows", "tokens", ...}
    permute: Optional[object] = None  # a PermuteReport with permute=True
    permuted_tensors: set = field(default_factory=set)  # full names of the tensors the permutations reordered

    def format_table(self) -> List[str]:
        """Aligned text lines: one per pruned layer (errors with 4 significant digits in scientific
        notation, kept share and seconds fixed-point), then the layers left dense with the reason."""
        err = lambda v: "-" if v is None else f"{v:.3e}"  # noqa: E731
        headers = ["layer", "shape", "kept |W|", "err magn.", "err before", "err after", "seconds"]
        rows = [[r.name, "x".join(map(str, r.shape)), f"{r.kept_fraction:.4f}", err(r.error_magnitude),
                 err(r.error_before), err(r.error_after), f"{r.seconds:.2f}"] for r in self.layers]
        # Each column as wide as its widest cell (a long name, an hour of seconds): boundaries never move.
        widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(headers)]
        width = max([widths[0]] + [len(n) for n, _ in self.skipped])
        widths[0] = width
        line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                       for i, (c, w) in enumerate(zip(cells, widths)))
        lines = ["relative output errors ||Y'-Y||²/||Y||², measured on the calibration data"] if self.layers else []
        lines.append(line(headers))
        lines += [line(row) for row in rows]
        lines += [f"{name:<{width}}  dense: {reason}" for name, reason in self.skipped]
        return lines

    def to_dict(self) -> dict:
        return {
            "pattern": self.pattern, "algorithm": self.algorithm, "method": self.method, "sequential": self.sequential,
            "seconds": self.seconds, "batchnorm": self.batchnorm, "pipeline": self.pipeline.to_dict(),
            "calibration": self.calibration,
            "layers": [r.to_dict() for r in self.layers], "skipped": [list(s) for s in self.skipped],
            **({"permute": self.permute.to_dict()} if self.permute is not None else {}),
        }
