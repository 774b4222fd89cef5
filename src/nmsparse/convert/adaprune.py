"""AdaPrune: convert a trained model to N:M (or transposable N:M) with a small calibration set.

Hubara et al. (NeurIPS 2021, Sec. 5 "AdaPrune"): for each layer l with dense weight W and cached
calibration inputs X, fix an N:M mask M and solve

    min_{W', b'}  || (M ⊙ W') * X + b'  -  (W * X + b) ||²          (layer-wise reconstruction)

with Adam over the kept weights only; the layer then reproduces the dense layer's outputs as well
as the mask allows. ``sequential=True`` feeds layer l the outputs of the already-pruned layers
before it (X from the pruned model, the target still the dense model's output), so later layers
also compensate the errors of earlier ones. BatchNorm statistics are re-estimated afterwards.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Sequence, Tuple, Union

import torch
from torch import nn
from torch.func import functional_call

from .._progress import Progress
from ..errors import NMSparseError
from ..masks import solve_mask
from ..masks.methods import resolve_method
from ..pattern import NMPattern, PatternLike
from .calibration import as_batches, capture, reestimate_batchnorm
from ..errors import ConvertError
from .rules import Selector, check_ragged_choice, plan_weight, ragged_error

__all__ = ["adaprune", "AdaPruneReport", "LayerFit"]

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
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
    include: Union[str, Sequence[str], None] = None,
    exclude: Union[str, Sequence[str], None] = None,
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
        (``model(**batch)``). A few hundred samples suffice; they are all kept in memory.
    pattern : str or NMPattern
        ``"n:m"`` or ``"n:mT"`` (n entries KEPT per group of m).
    method : str
        Mask method (``"exact"`` is optimal; see :func:`nmsparse.available_methods`).
    include, exclude : str or list of str, optional
        Regexes matched in full against the module name (``"features.3"``) or the weight's full
        name (``"features.3.weight"``): ``exclude="fc2"`` spares ``fc2`` but not ``fc20``. See
        :mod:`nmsparse.selection`.
    iterations : int
        Adam steps per layer (0: mask only, i.e. one-shot pruning).
    lr : float
        Adam learning rate.
    batch_size : int
        Samples per Adam step: rows of the flattened input for ``nn.Linear`` (tokens, for a
        sequence model), images/sequences for convolutions.
    sequential : bool
        Feed each layer the outputs of the already-pruned layers before it (targets stay dense).
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
        Seed of the mini-batch sampling.
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
    if not isinstance(model, nn.Module):
        raise ConvertError(f"adaprune: model must be a torch.nn.Module, got {type(model).__name__}; pass the model itself.")
    start = time.perf_counter()
    p = NMPattern.parse(pattern)
    method_name = resolve_method(p, method, "adaprune")
    check_ragged_choice(ragged, "adaprune")
    _check_hyper(iterations, lr, batch_size)
    batches = as_batches(calibration)
    layers, pads, skipped = _select(model, p, include, exclude, ragged)
    report = AdaPruneReport(str(p), method_name, skipped=skipped)
    was_training = model.training
    model.eval()
    try:
        xs, ys, order = capture(model, layers, batches, inputs=not sequential, outputs=True)
        for name in [n for n in layers if n not in order]:
            report.skipped.append((name, "not called by the model on the calibration data"))
        gen = torch.Generator().manual_seed(seed)
        with Progress(len(order), f"adaprune {p}", enabled=progress) as bar:
            for name in order:
                module = layers[name]
                if sequential:
                    x_list = capture(model, {name: module}, batches, inputs=True, outputs=False, stop=True)[0][name]
                else:
                    x_list = xs.pop(name)
                mask, kept = _mask(name, module, p, method_name, pads[name], scores)
                x, y = _samples(module, x_list, ys.pop(name))
                report.layers.append(_fit(name, module, mask, kept, x, y, iterations, lr, batch_size, gen, str(p)))
                bar.advance()
        if batchnorm:
            report.batchnorm = reestimate_batchnorm(model, batches)
    finally:
        model.train(was_training)
    report.seconds = time.perf_counter() - start
    model.adaprune_report = report
    return model


def _check_hyper(iterations, lr, batch_size) -> None:
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ConvertError(f"adaprune: iterations must be an int >= 0 (0 = mask only), got {iterations!r}.")
    if not isinstance(lr, (int, float)) or not lr > 0:
        raise ConvertError(f"adaprune: lr must be a positive number, got {lr!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConvertError(f"adaprune: batch_size must be an int >= 1, got {batch_size!r}.")


def _select(model, p, include, exclude, ragged):
    selector = Selector(include, exclude, "adaprune")
    layers: Dict[str, nn.Module] = {}
    pads: Dict[str, bool] = {}
    skipped: List[Tuple[str, str]] = []
    for name, module in model.named_modules():
        if not isinstance(module, _LAYERS):
            continue
        wname = f"{name}.weight" if name else "weight"
        shape = tuple(module.weight.shape)
        plan = plan_weight(selector, wname, shape, module.weight.dtype, p, ragged)
        if plan.reason is None and plan.problem is not None and ragged == "error":
            raise ragged_error("adaprune", wname, shape, plan.problem, p)
        if plan.reason is not None:
            skipped.append((name, plan.reason.replace("dense: ", "", 1)))
            continue
        layers[name], pads[name] = module, plan.pad
    return layers, pads, skipped


def _mask(name, module, p, method, pad, scores) -> Tuple[torch.Tensor, float]:
    w = module.weight.detach().float()
    s = None
    if scores is None or scores == "magnitude":
        s = None
    elif scores == "support":
        # Lexicographic: first the number of current non-zeros kept, then their magnitude. A tile
        # keeps at most m*m entries, each adding < 1/(m*m+1), so magnitudes never outweigh one more
        # non-zero (the objective is a sum over independent groups/tiles).
        top = float(w.abs().max())
        s = (w != 0).double() + (w.double().abs() / (top * (p.m * p.m + 1)) if top > 0 else 0.0)
    elif isinstance(scores, dict):
        if f"{name}.weight" not in scores:
            raise ConvertError(f"adaprune: scores has no entry for {name}.weight; give one per pruned weight, or scores=None.")
        s = scores[f"{name}.weight"]
    elif callable(scores):
        s = scores(name, module)
    else:
        raise ConvertError(
            f"adaprune: scores must be None, 'magnitude', 'support', a dict or a callable, got {scores!r}."
        )
    try:
        res = solve_mask(w, p, method=method, scores=s, pad=pad)
    except NMSparseError as err:
        raise type(err)(f"adaprune: layer {name}: {err}") from None
    total = res.info.get("score_total", 0.0)
    return res.mask, (res.objective / total if total else 1.0)


def _samples(module, xs: List[torch.Tensor], ys: List[torch.Tensor]) -> Tuple[object, object]:
    """One tensor of samples along dim 0 (a Linear's input flattened to rows), or lists of batches
    when the shapes differ (e.g. conv inputs of several resolutions)."""
    if isinstance(module, nn.Linear):
        xs = [x.reshape(-1, x.shape[-1]) for x in xs]
        ys = [y.reshape(-1, y.shape[-1]) for y in ys]
    xs = [x.float() for x in xs]
    ys = [y.float() for y in ys]
    if len({tuple(x.shape[1:]) for x in xs}) == 1 and len({tuple(y.shape[1:]) for y in ys}) == 1:
        return torch.cat(xs), torch.cat(ys)
    return xs, ys


def _fit(name, module, mask, kept, x, y, iterations, lr, batch_size, gen, pattern) -> LayerFit:
    start = time.perf_counter()
    zero = torch.zeros((), dtype=torch.float32, device=mask.device)
    w = torch.where(mask, module.weight.detach().float(), zero).requires_grad_(True)
    b = module.bias.detach().float().clone().requires_grad_(True) if module.bias is not None else None
    params = {"weight": w} if b is None else {"weight": w, "bias": b}
    w0, b0 = w.detach().clone(), None if b is None else b.detach().clone()
    before = _relative_error(module, params, x, y)
    if iterations:
        opt = torch.optim.Adam(list(params.values()), lr=lr)
        for _ in range(iterations):
            xb, yb = _batch(x, y, batch_size, gen)
            loss = torch.nn.functional.mse_loss(functional_call(module, params, (xb,)), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            # The mask is fixed: pruned entries get no gradient, so Adam's moments for them stay 0
            # and the re-masking below only guards against rounding.
            w.grad.masked_fill_(~mask, 0.0)
            opt.step()
            with torch.no_grad():
                w.copy_(torch.where(mask, w, zero))
    after = _relative_error(module, params, x, y)
    improved = after < before
    if not improved:  # keep the better of the two: fitting never makes a layer worse
        with torch.no_grad():
            w.copy_(w0)
            if b is not None:
                b.copy_(b0)
        after = before
    with torch.no_grad():
        new = w.detach().to(module.weight.dtype)
        # +0.0 wherever the stored value is zero (a tiny kept value may round to -0.0 in fp16).
        module.weight.copy_(torch.where(mask & (new != 0), new, torch.zeros((), dtype=new.dtype, device=new.device)))
        if b is not None:
            module.bias.copy_(b.detach().to(module.bias.dtype))
    return LayerFit(name, tuple(module.weight.shape), pattern, kept, before, after, improved, time.perf_counter() - start)


def _batch(x, y, batch_size, gen):
    if isinstance(x, list):
        i = int(torch.randint(len(x), (1,), generator=gen))
        return x[i], y[i]
    idx = torch.randperm(x.shape[0], generator=gen)[:batch_size].to(x.device)
    return x[idx], y[idx]


@torch.no_grad()
def _relative_error(module, params, x, y, chunk: int = 4096) -> float:
    pairs = list(zip(x, y)) if isinstance(x, list) else [(x[i : i + chunk], y[i : i + chunk]) for i in range(0, x.shape[0], chunk)]
    err = ref = 0.0
    for xb, yb in pairs:
        out = functional_call(module, params, (xb,))
        err += float((out.double() - yb.double()).pow(2).sum())
        ref += float(yb.double().pow(2).sum())
    return err / ref if ref > 0 else err
