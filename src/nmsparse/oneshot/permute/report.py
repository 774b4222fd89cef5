"""What :func:`nmsparse.permute_` did: per group the search's outcome, per layer the kept score."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import List, Optional, Tuple

__all__ = ["GroupPermute", "LayerPermute", "PermuteReport"]


@dataclass
class GroupPermute:
    """One permutation group (:mod:`nmsparse.oneshot.permute.groups`).

    ``status``: ``"permuted"`` (folded in), ``"unchanged"`` (the search found nothing better than
    the current order), ``"no effect"`` (no counted layer's mask depends on this order under the
    pattern), ``"skipped"`` (not permutable, see ``reason``) or ``"unsafe"`` (folding it changed
    the model's outputs on the check batch, so it was undone) or ``"reverted"`` (``prune_``'s guard
    found that pruning the permuted model errs more, :mod:`nmsparse.oneshot.permute.guard`).
    ``kept_before`` / ``kept_after``: the score the optimal masks keep in the layers it touches,
    along its channels. ``error_plain`` / ``error_permuted`` (``prune_`` only): the pruned block's
    (residual stream: the blocks' summed) output error on the calibration data, relative to the
    dense output's energy, without and with the permutation.
    """

    name: str
    kind: str
    channels: int
    layers: List[str]
    status: str
    kept_before: Optional[float] = None
    kept_after: Optional[float] = None
    rounds: int = 0
    start: str = ""
    seconds: float = 0.0
    reason: str = ""
    error_plain: Optional[float] = None
    error_permuted: Optional[float] = None


@dataclass
class LayerPermute:
    """A counted layer's kept score (the optimal mask's objective for its scores) before and after."""

    name: str
    kept_before: float
    kept_after: float

    @property
    def gain(self) -> float:
        return self.kept_after / self.kept_before - 1.0 if self.kept_before else 0.0


@dataclass
class PermuteReport:
    """Returned by :func:`nmsparse.permute_`.

    ``verified``: True if the model's outputs on a check batch (the first calibration batch) were
    compared before and after and agree up to float rounding; None if there was no batch to check
    with (or its output holds no floating-point tensor). ``skipped``: structures left alone and why; ``notes``: what was not permuted by design.
    ``loss_plain`` / ``loss_permuted`` (``prune_`` on a language model): the calibration loss of
    the model pruned without and with the permutations; the lower one was kept
    (:mod:`nmsparse.oneshot.permute.loss_check`).
    """

    pattern: str = ""
    scores: str = ""
    groups: List[GroupPermute] = field(default_factory=list)
    layers: List[LayerPermute] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    verified: Optional[bool] = None
    seconds: float = 0.0
    loss_plain: Optional[float] = None
    loss_permuted: Optional[float] = None

    @property
    def kept_before(self) -> float:
        return sum(r.kept_before for r in self.layers)

    @property
    def kept_after(self) -> float:
        return sum(r.kept_after for r in self.layers)

    @property
    def permuted(self) -> int:
        return sum(g.status == "permuted" for g in self.groups)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["kept_before"], out["kept_after"], out["permuted"] = self.kept_before, self.kept_after, self.permuted
        return out

    def summary(self) -> str:
        """One line: groups permuted and the kept score before and after."""
        gain = (self.kept_after / self.kept_before - 1.0) * 100 if self.kept_before else 0.0
        check = {True: "outputs checked unchanged", False: "outputs NOT checked", None: "outputs not checked (no check batch or no floating-point output)"}
        loss = ""
        if self.loss_plain is not None and self.loss_permuted is not None:
            kept = "permuted" if self.permuted else "plain"
            loss = (f", calibration loss pruned {self.loss_plain:.5g} plain / {self.loss_permuted:.5g} permuted "
                    f"({kept} kept)")
        return (f"permuted {self.permuted} of {len(self.groups)} channel groups for {self.pattern} ({self.scores} scores): "
                f"kept score {self.kept_before:.6g} -> {self.kept_after:.6g} ({gain:+.2f} %), {check[self.verified]}"
                f"{loss}, {self.seconds:.1f} s")

    def table(self) -> str:
        """Per layer: kept score before, after, and the gain (aligned columns)."""
        rows = [("layer", "kept before", "kept after", "gain")]
        rows += [(r.name, f"{r.kept_before:.6g}", f"{r.kept_after:.6g}", f"{100 * r.gain:+.2f} %") for r in self.layers]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows]
        return "\n".join(lines)
