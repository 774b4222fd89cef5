"""AdaPrune: convert a trained model to N:M (or transposable N:M) with a small calibration set.

Hubara et al. (NeurIPS 2021, Sec. 5 "AdaPrune"): for each layer l with dense weight W and cached
calibration inputs X, fix an N:M mask M and solve

    min_{W', b'}  || (M ⊙ W') * X + b'  -  (W * X + b) ||²          (layer-wise reconstruction)

with Adam over the kept weights only; the layer then reproduces the dense layer's outputs as well
as the mask allows. ``sequential=True`` feeds layer l the outputs of the already-pruned layers
before it, the target still the dense model's output at that layer (a dense copy of the model is
kept for it), so later layers also compensate the errors of earlier ones. BatchNorm statistics
are re-estimated afterwards.

This is ``nmsparse.prune_(..., algorithm="adaprune", attach_masks=False)`` with AdaPrune's
defaults (non-sequential, BatchNorm re-estimation) and its report kept as ``model.adaprune_report``:
one implementation (:mod:`nmsparse.oneshot.adafit`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Tuple, Union

import torch
from torch import nn

from ..errors import ConvertError
from ..pattern import PatternLike
from ..selection import Patterns

__all__ = ["adaprune", "AdaPruneReport", "LayerFit"]

ScoresArg = Union[None, str, Dict[str, torch.Tensor], Callable[[str, nn.Module], torch.Tensor]]


@dataclass
class LayerFit:
    """One pruned layer. Errors are relative: ``||Y_sparse - Y_dense||² / ||Y_dense||²`` over the
    calibration set, with the magnitude-masked weights (``error_before``) and after fitting
    (``error_after``). ``kept_fraction`` is the share of ``sum |W|`` (or of the scores) the mask keeps."""

    name: str
    shape: tuple
    pattern: str
    kept_fraction: float
    error_before: float
    error_after: float
    improved: bool
    seconds: float


@dataclass
class AdaPruneReport:
    """What :func:`adaprune` did; stored on the model as ``model.adaprune_report``."""

    pattern: str
    method: str
    layers: List[LayerFit] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    batchnorm: int = 0
    seconds: float = 0.0

    def format_table(self) -> List[str]:
        """Aligned text lines: one per layer, then the skipped layers with reasons."""
        lines = [f"{'layer':<24} {'shape':>14} {'kept |W|':>8} {'err before':>10} {'err after':>10}"]
        for f in self.layers:
            shape = "x".join(map(str, f.shape))
            lines.append(f"{f.name:<24} {shape:>14} {f.kept_fraction:8.4f} {f.error_before:10.4g} {f.error_after:10.4g}")
        lines += [f"{name:<24} dense: {reason}" for name, reason in self.skipped]
        return lines


def adaprune(
    model: nn.Module,
    calibration: Iterable,
    pattern: PatternLike,
    *,
    method: str = "exact",
    include: Patterns = None,
    exclude: Patterns = None,
    iterations: int = 1000,
    lr: float = 1e-3,
    batch_size: int = 50,
    sequential: bool = False,
    scores: ScoresArg = None,
    ragged: str = "error",
    batchnorm: bool = True,
    seed: int = 0,
    progress: bool = False,
) -> nn.Module:
    """Prune every eligible ``nn.Linear`` / ``nn.Conv{1,2,3}d`` of ``model`` to ``pattern`` in place,
    re-fitting the kept weights and bias to the dense layer's outputs (AdaPrune).

    Parameters
    ----------
    model : nn.Module
        A trained model; changed in place and returned. Its pruned weights hold +0.0 in pruned
        places (masks baked in; no hooks remain).
    calibration : iterable
        Batches of model inputs: tensors (``model(x)``), tuples (``model(*batch)``) or dicts
        (``model(**batch)``). A few hundred samples suffice; a layer's inputs are kept in memory
        while it is fitted (every layer's at once with ``sequential=False``).
    pattern : str or NMPattern
        ``"n:m"`` or ``"n:mT"`` (n entries KEPT per group of m).
    method : str
        Mask method (``"exact"`` is optimal; see :func:`nmsparse.available_methods`).
    include, exclude : str or list of str, optional
        Regexes matched in full against the module name (``"features.3"``) or the weight's full
        name (``"features.3.weight"``): ``exclude="fc2"`` spares ``fc2`` but not ``fc20``. See
        :mod:`nmsparse.selection`.
    iterations : int
        Adam steps per layer, ``0 <= iterations <= 10**6`` (0: mask only, i.e. one-shot pruning).
    lr : float
        Adam learning rate, ``0 < lr <= 1`` (Adam moves a weight by about lr per step).
    batch_size : int
        Samples per Adam step, ``>= 1``: rows of the flattened input for ``nn.Linear`` (tokens, for a
        sequence model), images/sequences for convolutions.
    sequential : bool
        Feed each layer the outputs of the already-pruned layers before it (targets stay the dense
        model's outputs; costs a dense copy of the model in memory).
    scores : None, "magnitude", "support", dict or callable
        How the mask is chosen: ``|W|`` (default, ``"magnitude"``); ``"support"`` keeps as many of
        the weight's current non-zeros as the pattern allows, largest first (converting an
        unstructured-sparse model to N:M); a dict ``{weight name: scores}`` or a callable
        ``(name, module) -> scores`` gives non-negative scores of the weight's shape.
    ragged : {"error", "skip", "pad"}
        A layer whose shape does not fit the pattern: raise (naming it), leave it dense, or pad.
    batchnorm : bool
        Re-estimate BatchNorm running statistics on the calibration data afterwards.
    seed : int
        Seed of the mini-batch sampling, ``0 <= seed < 2**64``.
    progress : bool
        Progress bar on stderr.

    Returns
    -------
    nn.Module
        ``model``, with ``model.adaprune_report`` (:class:`AdaPruneReport`): per layer the
        relative reconstruction error before and after fitting, and the skipped layers.

    Examples
    --------
    >>> from nmsparse.examples import mlp
    >>> net = mlp(hidden=(32,))
    >>> calib = [torch.randn(64, 64) for _ in range(4)]
    >>> net = adaprune(net, calib, "2:4T", exclude="fc2", iterations=50)
    >>> fit = net.adaprune_report.layers[0]
    >>> fit.name, fit.error_after < fit.error_before
    ('fc1', True)
    """
    from .driver import prune_  # lazily: driver imports this module's report types
    from .report import PruneReport

    if calibration is None:
        raise ConvertError("adaprune: calibration must be an iterable of batches of model inputs, got None; pass [x, ...].")
    rep = PruneReport()
    prune_(
        model, pattern, calibration=calibration, algorithm="adaprune", method=method, include=include,
        exclude=exclude, sequential=sequential, iterations=iterations, lr=lr, batch_size=batch_size, seed=seed,
        scores=scores, ragged=ragged, attach_masks=False, batchnorm=batchnorm, report=rep, progress=progress,
        adaprune_target="model", where="adaprune",
    )
    out = AdaPruneReport(rep.pattern, rep.method or "", batchnorm=rep.batchnorm, seconds=rep.seconds)
    for r in rep.layers:
        out.layers.append(LayerFit(
            r.module_name, r.shape, r.pattern, r.kept_fraction, r.error_before, r.error_after, r.improved, r.seconds,
        ))
    out.skipped = [(_module_name(name), reason) for name, reason in rep.skipped]
    model.adaprune_report = out
    return model


def _module_name(weight_name: str) -> str:
    return weight_name[: -len(".weight")] if weight_name.endswith(".weight") else weight_name
