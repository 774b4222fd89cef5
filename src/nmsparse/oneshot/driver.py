"""``prune_``: calibrated one-shot pruning of a model to N:M, transposable N:M or a density.

See :func:`prune_`. Algorithms: ``"magnitude"`` (|W|), ``"wanda"`` (|W|·‖x‖), ``"sparsegpt"``
(saliency masks + OBS updates), ``"adaprune"`` (magnitude mask + Adam fit of kept weights and
bias) and ``+``-chains: the first names the mask (and its weight update), each next step refines
the weights with that mask fixed: ``"adaprune"`` (Adam, from the current weights), ``"sparsegpt"``
(OBS updates from the dense weights) or ``"lsq"`` (the exact least-squares optimum of the kept
weights and bias, from the dense weights).
"""

from __future__ import annotations

import copy
import time
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from .._progress import Progress
from ..errors import ArgumentError, ConvertError, NMSparseError, PatternError, ScoreError
from ..masks import find_mask, unstructured_mask
from ..masks.methods import resolve_method
from ..nn.attach import attach_mask_
from ..nn.entries import guard_loads
from ..pattern import NMPattern, PatternLike
from .calibration import as_batches, reestimate_batchnorm
from ..convert.rules import check_ragged_choice
from .adafit import check_adaprune_options, fit_layer, stack_samples
from .capture import dense_outputs
from .hessian import InputStats, MatrixView
from .layer_state import restore, snapshot
from .lsq import lsq_refit
from .pipeline import iterate_pipeline
from .permute.api import undo_
from .permute.loss_check import choose_by_loss, loss_applies
from .permute.in_prune import Trial, start_permutations
from .hessian import token_mask_of
from .options import check_options, check_step_result, check_topk, parse_algorithm, parse_spec
from .report import LayerPrune, PipelineInfo, PruneReport
from .select import Target, select_targets
from .sparsegpt import sparsegpt, zero_dead_inputs
from .user_scores import call_scores, score_tensor
from .wanda import wanda_scores

MAX_TRIES = 16  # permute_tries: each try is a search and a pruning pass
JUDGED_TRIES = 3  # permute_tries' default where a loss judges the prunes

__all__ = ["prune_"]

ScoresArg = Union[None, str, Dict[str, torch.Tensor], Callable[[str, nn.Module], torch.Tensor]]


def prune_(
    model: nn.Module,
    pattern: Union[PatternLike, float],
    *,
    calibration=None,
    algorithm: str = "magnitude",
    method: Optional[str] = "exact",
    include=None,
    exclude=None,
    sequential: bool = True,
    damp: float = 0.01,
    blocksize: int = 128,
    iterations: int = 1000,
    lr: float = 1e-3,
    batch_size: int = 50,
    seed: int = 0,
    scores: ScoresArg = None,
    update_bias: bool = False,
    adaprune_target: str = "layer",
    ragged: str = "error",
    attach_masks: bool = False,
    batchnorm: bool = False,
    report: Optional[PruneReport] = None,
    progress: bool = False,
    blocks=None,
    device=None,
    permute: bool = False,
    permute_loss=None,
    permute_tries: Optional[int] = None,
    where: str = "prune_",
    _on_block=None,
) -> nn.Module:
    """Prune ``model``'s ``nn.Linear`` / ``nn.Conv`` / HF ``Conv1D`` weights in one shot, in place.

    Parameters
    ----------
    model : nn.Module
        Held in memory whole; changed in place and returned.
    pattern : str, NMPattern or float
        ``"2:4"`` (row-wise), ``"2:4T"`` (transposable), any n:m the solvers take (n entries KEPT per
        group of m, groups along the input dimension), or a density in [0, 1] (unstructured).
    calibration : iterable, optional
        Batches of model inputs: tensors (``model(x)``), tuples (``model(*batch)``) or dicts
        (``model(**batch)``, e.g. a tokenizer's output; rows at padding positions of a 2-D
        ``attention_mask`` are ignored). Required by every algorithm but ``"magnitude"``.
    algorithm : str
        ``"magnitude"``, ``"wanda"``, ``"sparsegpt"``, ``"adaprune"`` or a chain such as
        ``"sparsegpt+adaprune"``, ``"wanda+lsq"`` (see the module docstring).
    method : str
        Transposable mask solver (``"exact"``, optimal, by default); see :func:`nmsparse.available_methods`.
    include, exclude : str or list of str, optional
        Full-match regexes on module names / full parameter names (:mod:`nmsparse.selection`).
    sequential : bool
        Prune layers in forward order, each fed by the already-pruned layers before it (one
        truncated pass per layer group); ``False``: every layer sees the dense model's activations.
    damp : float
        Dampening λ as a fraction of mean(diag H) (SparseGPT, ``lsq``), ``0 <= damp <= 1``; grows
        tenfold on a failed Cholesky factorisation, up to 1. Beyond 1, λI drowns H (the updates tend
        to zero) and huge values overflow (:mod:`nmsparse.oneshot.options`).
    blocksize : int
        SparseGPT's lazy-update block (columns), ``>= 1``; rounded down to a multiple of m (at least m).
    iterations, lr, batch_size, seed : AdaPrune's Adam steps per layer (``0 <= iterations <= 10**6``;
        0 = mask only), learning rate (``0 < lr <= 1``: Adam moves a weight by about lr per step),
        rows per step (``>= 1``) and sampling seed (``0 <= seed < 2**64``).
    adaprune_target : {"layer", "model"}
        What AdaPrune fits a layer to when ``sequential``: ``"layer"``, the dense layer's output on
        the (pruned-model) inputs, as SparseGPT; ``"model"``, the dense *model's* output at that
        layer (Hubara et al.'s sequential AdaPrune: later layers also absorb earlier layers'
        errors; costs a dense copy of the model in memory and one more truncated pass per layer).
    scores : None, "magnitude", "support", dict or callable
        The scores of the magnitude-type mask (``"magnitude"`` and ``"adaprune"`` first steps);
        see :func:`nmsparse.oneshot.adaprune`.
    update_bias : bool
        SparseGPT: treat the bias as the weight of a constant-1 input, processed last and never
        pruned, so the OBS updates also correct the output's mean. Default ``False``: the
        reference algorithm, bias unchanged (on the benchmark LM neither was better throughout).
    ragged : {"error", "skip", "pad"}
        A weight whose shape does not fit the pattern: raise naming it, leave it dense, or pad
        (partial groups keep at most n).
    attach_masks : bool
        Default ``False``: plain weights with +0.0 where pruned, so the model saves and loads as the
        plain model it is (``save_pretrained`` / ``from_pretrained``, ``torch.save(model.state_dict())``).
        ``True``: also attach each mask as a static :class:`~nmsparse.nn.NMMask` with a masked
        gradient, for fine-tuning (``squash_`` bakes it in); :func:`nmsparse.nn.reattach_masks_`
        does the same later, from the zeros of a pruned model or checkpoint.
    batchnorm : bool
        Re-estimate BatchNorm statistics on the calibration data afterwards.
    report : PruneReport, optional
        Filled in place with one :class:`LayerPrune` per pruned weight and the skipped layers.
    progress : bool
        A progress bar on stderr (and one for the permutation search with ``permute=True``).
    blocks : str, list of str or (), optional
        The stacks of repeated blocks for the block-wise pipeline (``"model.layers"``); default:
        detected (:mod:`nmsparse.oneshot.blocks`); ``()``: truncated passes from the model's input only.
    device : str or torch.device, optional
        Block-wise only: each block moves to ``device`` (e.g. ``"cuda"``) for its turn and back after
        it, while the cached activations stay where the model is (CPU), so a model larger than the
        GPU's memory is pruned one block at a time there. Default: where the model is.
    permute : bool
        First fold channel permutations into the model (:func:`nmsparse.permute_`, its default
        search) so that the masks keep more: same dense function, reordered weights, a plain
        checkpoint. Scores: Wanda's ``|W|·‖x‖`` for ``wanda`` and ``sparsegpt``, ``|W|`` (or
        ``scores=``) otherwise. With calibration data each permutation is then tried with the
        algorithm itself and reverted where the pruned block (or, for the residual stream, all
        blocks) would err more than 5 % above the original order
        (:mod:`nmsparse.oneshot.permute.guard`); on a language model (in memory) the model is
        instead pruned both ways, and the permuted prune kept unless its calibration loss is
        significantly higher (:mod:`nmsparse.oneshot.permute.loss_check`). N:M patterns only; ``report.permute`` says
        what moved and what was reverted.
    permute_loss : callable, optional
        With ``permute=True`` and calibration data, in memory: ``permute_loss(model, batch)`` returns
        the model's loss on one batch (a scalar, or a 1-D tensor of per-sample losses), and the
        model is pruned both ways and judged by it as a language model is by its next-token loss
        (instead of the block trials). For any model that is not a Hugging Face language model.
    permute_tries : int, optional
        Searches with seeds ``0 .. permute_tries - 1`` where a loss judges the prunes (a Hugging Face
        language model, or ``permute_loss=``; in memory): the permuted prune with the lowest
        calibration loss is the one compared with the plain prune. Each try costs a search and a
        pruning pass; 1 to 16. Default: 3 where a loss judges, else 1 (``docs/permute.md``: which of
        many nearly equal permutations the search ends in moves the held-out loss more than the
        search gains).

    Returns
    -------
    nn.Module
        ``model``. On an error the layers already pruned are restored (their dense weights are
        kept until ``prune_`` returns), so the model is unchanged.

    Raises
    ------
    ConvertError
        An option outside the ranges above (checked before any work; nothing is clamped), or a
        step whose weights or bias come out NaN/Inf (or beyond the model's dtype): checked before
        they are written, naming the layer, the step and the option that drove its update.
    ShapeError
        No layer can take the pattern (as in :func:`nmsparse.sparsify_`); the skipped layers and
        why are in the message. Layer eligibility is :mod:`nmsparse.nn.eligibility`'s, shared
        with ``sparsify_``: a tied weight (an LM head tied to its embeddings) stays dense with
        the reason, since its fit would be written into every holder.

    Notes
    -----
    Pipeline (:mod:`nmsparse.oneshot.pipeline`): a model with a stack of repeated blocks (HF
    ``model.layers``, GPT-2's ``h``, BERT's ``encoder.layer``) is calibrated block by block from cached
    block inputs, about ``(groups + 1)·B`` block forwards per batch for B blocks (5·B for a Llama
    block with ``sequential=True``, 2·B without); other models by truncated passes from the input.
    ``report.pipeline`` says which was used and counts the block forwards.

    Memory: the model, the cached hidden states of every calibration batch at one block boundary,
    and per layer the fp64 Gram matrix ``(in+1)²`` of its inputs (a block's layers at once with
    ``sequential=False``) and, for AdaPrune, that layer's calibration inputs and outputs.

    Examples
    --------
    >>> model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    >>> batches = [torch.randn(64, 16) for _ in range(4)]
    >>> rep = PruneReport()
    >>> _ = prune_(model, "2:4T", calibration=batches, algorithm="sparsegpt", report=rep)
    >>> [r.name for r in rep.layers], rep.layers[0].error_after <= rep.layers[0].error_magnitude
    (['0.weight', '2.weight'], True)
    """
    start = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise ConvertError(f"{where}: model must be a torch.nn.Module, got {type(model).__name__}.")
    spec, method_name, steps = check_prune_arguments(pattern, algorithm, method, ragged, where)
    check_options(damp, blocksize, sequential, where)
    device = _check_device(device, where)
    check_adaprune_options(iterations, lr, batch_size, where, seed)
    check_permute(permute, spec, where, permute_loss, permute_tries)
    calibrated = steps != ["magnitude"]
    if scores is not None and steps[0] not in ("magnitude", "adaprune"):
        raise ConvertError(
            f"{where}: scores= chooses the mask of 'magnitude' and 'adaprune'; {steps[0]!r} computes its own "
            "scores. Drop scores=, or use algorithm='magnitude+lsq' (or '+sparsegpt') to refine a mask from your scores."
        )
    if report is not None and not isinstance(report, PruneReport):
        raise ConvertError(f"{where}: report must be a nmsparse.convert.PruneReport to fill in, got {type(report).__name__}.")
    batches = as_batches(calibration, where) if calibration is not None else None
    if calibrated and batches is None:
        raise ConvertError(
            f"{where}: algorithm {algorithm!r} needs calibration data; pass calibration= an iterable of batches "
            "([x, ...]: tensors, tuples or dicts of model inputs), or use algorithm='magnitude'."
        )
    if permute_loss is not None and batches is None:
        raise ArgumentError(f"{where}: permute_loss= compares two prunes on the calibration data; pass calibration=.")
    targets, skipped = select_targets(model, spec, include, exclude, ragged, where, allow_meta=_on_block is not None)
    rep = report if report is not None else PruneReport()
    rep.pattern = str(spec) if isinstance(spec, NMPattern) else f"{spec:g}"
    rep.algorithm, rep.method, rep.sequential = "+".join(steps), method_name, bool(sequential)
    rep.layers, rep.skipped, rep.batchnorm = [], list(skipped), 0
    rep.pipeline = PipelineInfo()
    if adaprune_target not in ("layer", "model"):
        raise ConvertError(f"{where}: adaprune_target must be 'layer' or 'model', got {adaprune_target!r}.")
    opts = dict(method=method_name, damp=float(damp), blocksize=blocksize, update_bias=bool(update_bias), iterations=iterations, lr=lr,
                batch_size=batch_size, scores=scores, where=where, gen=torch.Generator().manual_seed(seed))
    m, tiles = (spec.m, spec.transposable) if isinstance(spec, NMPattern) else (1, False)
    by_name = {t.name: t for t in targets}
    views = {t.name: MatrixView(t.module, m, tiles) for t in targets}
    originals: Dict[str, Tuple[torch.Tensor, Optional[torch.Tensor]]] = {}
    want_dense = "adaprune" in steps and sequential and adaprune_target == "model" and batches is not None
    opts["dense"], opts["batches"] = None, batches
    modes = {m: m.training for m in model.modules()}  # each module's own mode (a frozen BatchNorm stays eval)
    threads = opts["threads"] = torch.get_num_threads()  # the transposable solvers' numba start-up can change it
    model.eval()
    permuted, permuter = [], None

    def run_pass(permuter) -> Tuple[List[Tuple[Target, torch.Tensor]], set]:
        """Prune every target once (the pipeline feeding the statistics): ``(masks, names seen)``."""
        opts["gen"] = torch.Generator().manual_seed(seed)
        if want_dense:  # AdaPrune's targets: the dense model's activations, in the model's current order
            opts["dense"] = copy.deepcopy(model).eval()
        found: List[Tuple[Target, torch.Tensor]] = []
        seen = set()
        with Progress(len(targets), f"{where} {rep.algorithm} {rep.pattern}", enabled=progress) as bar:
            if batches is None:
                layer_stats = ((t.name, None) for t in targets)
            else:
                layer_stats = iterate_pipeline(
                    model, views, batches, sequential=sequential, keep_samples="adaprune" in steps, where=where,
                    blocks=blocks, on_block=_on_block, info=rep.pipeline, device=device, permuter=permuter,
                )
            for name, stats in layer_stats:
                t = by_name[name]
                seen.add(name)
                if _on_block is None:  # streamed blocks are never restored: nothing is written on an error
                    originals[name] = snapshot(t.module)
                row, mask = _prune_layer(t, views[name], stats, steps, spec, opts)
                rep.layers.append(row)
                if attach_masks:
                    found.append((t, mask))
                bar.advance()
        opts["dense"] = None
        return found, seen

    try:
        loss_check, tries = False, 1
        if permute:
            token_masks = [token_mask_of(b) for b in batches or []]
            loss_check = _on_block is None and loss_applies(model, batches, permute_loss)
            tries = permute_tries if permute_tries is not None else (JUDGED_TRIES if loss_check else 1)
            if tries > 1 and not loss_check:
                raise ArgumentError(
                    f"{where}: permute_tries={permute_tries} chooses among searches by the calibration loss, which "
                    "needs calibration data and a loss: a Hugging Face language model fed batches with input_ids, "
                    "or permute_loss=; pass permute_tries=1 otherwise.")
            trial = None if batches is None or loss_check else Trial(
                targets, views, _trial_pruner(views, steps, spec, opts), batches, token_masks, blocks, where)
            rep.permute, permuter, permuted, rep.permuted_tensors = start_permutations(
                model, spec, targets, batches, token_masks, _permute_scores(steps, batches, scores),
                streamed=_on_block is not None, where=where, trial=trial, progress=progress)

            def repermute(seed: int) -> list:  # another search (in memory, judged by the loss)
                rep.permute, _, folded, rep.permuted_tensors = start_permutations(
                    model, spec, targets, batches, token_masks, _permute_scores(steps, batches, scores),
                    streamed=False, where=where, progress=progress, seed=seed)
                return folded
        masks, seen = run_pass(permuter)
        if loss_check and (permuted or tries > 1):
            masks, seen = choose_by_loss(model, rep, permuted, originals, by_name, run_pass, (masks, seen), batches,
                                         where, permute_loss, repermute, tries)
        for t in targets:
            if t.name not in seen:
                rep.skipped.append((t.name, "not called by the model on the calibration data"))
        if batchnorm and batches is not None:
            rep.batchnorm = reestimate_batchnorm(model, batches)
    except BaseException:
        for name, snap in originals.items():
            restore(by_name[name].module, snap)
        if _on_block is None:
            undo_(permuted)
        raise
    finally:
        for module, mode in modes.items():
            module.training = mode
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    if attach_masks:
        for t, mask in masks:
            attach_mask_(t.module, "weight", mask, spec, gradient="masked", update="static", name=t.name)
        if masks:
            guard_loads(model)  # model.load_state_dict checks every mask before copying any tensor
    rep.seconds = time.perf_counter() - start
    return model


def check_permute(permute, spec, where: str, loss=None, tries=None) -> None:
    if not isinstance(permute, bool):
        raise ArgumentError(f"{where}: permute must be True or False, got {permute!r}.")
    if tries is not None and (isinstance(tries, bool) or not isinstance(tries, int) or not 1 <= tries <= MAX_TRIES):
        raise ArgumentError(f"{where}: permute_tries must be an integer in [1, {MAX_TRIES}] (or None), got {tries!r}.")
    if tries is not None and tries > 1 and not permute:
        raise ArgumentError(f"{where}: permute_tries={tries} tries several channel permutations; it needs permute=True.")
    if loss is not None and not callable(loss):
        raise ArgumentError(f"{where}: permute_loss must be a callable loss(model, batch) -> tensor, got "
                            f"{type(loss).__name__}.")
    if loss is not None and not permute:
        raise ArgumentError(f"{where}: permute_loss= judges the channel permutations; it needs permute=True.")
    if permute and not isinstance(spec, NMPattern):
        raise PatternError(f"{where}: permute=True needs an N:M pattern such as '2:4' or '2:4T', got density {spec:g} "
                           "(an unstructured mask has no groups to rearrange); drop permute=True.")


def _trial_pruner(views, steps, spec, o) -> Callable:
    """``prune_layer(target, stats)`` for the permutation guard's trials: the algorithm's steps on one
    layer in place, AdaPrune's fit left out (its mask decides; the fit is the costly part)."""
    trial_steps = [s for s in steps if s != "adaprune"] or ["magnitude"]

    def prune_layer(t: Target, stats: InputStats) -> None:
        _prune_layer(t, views[t.name], stats, trial_steps, spec, o)

    return prune_layer


def _permute_scores(steps, batches, scores):
    """The scores the permutation search serves: what the first step's mask is chosen by."""
    if batches is not None and steps[0] in ("wanda", "sparsegpt"):
        return "wanda"
    return scores if isinstance(scores, dict) or callable(scores) else "magnitude"


def check_prune_arguments(pattern, algorithm, method, ragged, where: str = "prune_"):
    """``(spec, method, steps)`` of :func:`prune_`'s pattern, method and algorithm, checked before any
    work (the command line calls it before it loads a model)."""
    spec = parse_spec(pattern, where)
    method_name = resolve_method(spec, method, where) if isinstance(spec, NMPattern) else check_topk(method, where)
    steps = parse_algorithm(algorithm, where)
    check_ragged_choice(ragged, where)
    return spec, method_name, steps


def _check_device(device, where: str):
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ArgumentError(f"{where}: device must name a torch device such as 'cuda' or 'cpu', got {device!r}.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ArgumentError(f"{where}: device {device!r} was asked for, but CUDA is not available here; prune on the CPU (no device, the default).")
    if dev.type == "meta":
        raise ArgumentError(f"{where}: device 'meta' holds no values; pass a device that computes ('cuda', 'cpu').")
    return dev


@torch.no_grad()
def _prune_layer(t: Target, view: MatrixView, stats: Optional[InputStats], steps, spec, o) -> Tuple[LayerPrune, torch.Tensor]:
    start = time.perf_counter()
    module, name = t.module, t.name
    stored = module.weight.detach()
    if not bool(torch.isfinite(stored).all()):
        raise ScoreError(f"{o['where']}: layer {name}: the weight has NaN/Inf; fix or exclude the layer.")
    w0 = view.weight_matrix()
    bias = getattr(module, "bias", None)
    b0 = view.bias_vector()  # padded like w0's rows (a transposable pattern pads ragged rows)
    real = view.real(w0.device)
    gram = None if stats is None else stats.gram
    if gram is not None and not bool(torch.isfinite(gram).all()):
        raise ConvertError(
            f"{o['where']}: layer {name}: the Gram matrix XᵀX of its calibration inputs has NaN/Inf even in float64; the "
            "calibration data (or an earlier layer's output on it) is not finite or too large. Check the inputs, or exclude the layer."
        )
    algorithm = "+".join(steps)
    b_dtype = None if bias is None else bias.dtype
    scale = float(w0.abs().max())

    def check(step, ww, bb):  # every step's result, before anything is written into the model
        check_step_result(ww, bb, stored.dtype, b_dtype, step=step, layer=name, algorithm=algorithm, o=o, scale=scale)

    samples = _adaprune_samples(t, module, stats, o) if "adaprune" in steps else None
    first, refine = steps[0], steps[1:]
    if first == "adaprune":
        first, refine = "magnitude", ["adaprune"] + refine
    mag_mask = _pattern_mask(view, t, spec, o, None, magnitude_scores=True)
    if first == "sparsegpt":
        w, b_sg, mask = _sparsegpt(w0, b0, gram, spec, o, real, None, name)
    else:
        scores = None if first == "magnitude" else _wanda(view, w0, gram, name, o)
        mask = mag_mask if first == "magnitude" and o["scores"] in (None, "magnitude") else _pattern_mask(view, t, spec, o, scores)
        w = _masked(w0, mask)
    if torch.get_num_threads() != o["threads"]:  # a first transposable solve may bump it (numba/OpenMP start-up)
        torch.set_num_threads(o["threads"])
    b = b_sg if first == "sparsegpt" else b0
    check(first, w, b)
    for step in refine:
        if step == "sparsegpt":
            w, b, _ = _sparsegpt(w0, b0, gram, spec, o, real, mask, name)
        elif step == "lsq":
            w0_live, h = zero_dead_inputs(w0, gram[:-1, :-1])
            g = gram.clone()
            g[:-1, :-1] = h
            w, b = lsq_refit(w0_live, b0, g, mask, o["damp"])
            w = _masked(w, mask)
        else:  # adaprune: Adam from the current weights
            _write(module, view, w, b, mask)
            fit_layer(module, view.stored_from_matrix(mask), samples[0], samples[1], iterations=o["iterations"],
                      lr=o["lr"], batch_size=o["batch_size"], gen=o["gen"], check=lambda ww, bb: check("adaprune", ww, bb))
            w = view.weight_matrix()
            b = view.bias_vector()
        check(step, w, b)
    _write(module, view, w, b, mask)
    w_final = view.weight_matrix()
    b_final = view.bias_vector()
    err = _error_meter(w0, b0, gram) if gram is not None else (lambda ww, bb: None)
    after = err(w_final, b_final)
    before = err(_masked(w0, mask), b0)
    abs0 = w0.abs()
    total = float(abs0.sum())
    row = LayerPrune(
        name=name, module_name=t.module_name, shape=tuple(stored.shape), dtype=str(stored.dtype).replace("torch.", ""),
        pattern=(str(spec) if isinstance(spec, NMPattern) else f"{spec:g}") + (" (padded)" if t.pad else ""),
        algorithm="+".join(steps), kept_fraction=float(abs0[mask].sum()) / total if total else 1.0,
        density=int(torch.count_nonzero(module.weight)) / max(module.weight.numel(), 1),
        error_magnitude=err(_masked(w0, mag_mask), b0), error_before=before, error_after=after,
        improved=(after is not None and before is not None and after < before), seconds=time.perf_counter() - start,
        damp=o["damp"] if gram is not None else None,
    )
    return row, view.stored_from_matrix(mask)


def _wanda(view: MatrixView, w0, gram, name, o) -> torch.Tensor:
    """Wanda's scores ``|W|·‖x‖`` in the weight's oriented shape; an overflow is an error, not a mask."""
    scores = wanda_scores(w0, gram[:-1, :-1])
    if not bool(torch.isfinite(scores).all()):
        raise ConvertError(
            f"{o['where']}: layer {name}: step 'wanda': the scores |W|·‖x‖ overflow float64 (weights up to "
            f"{float(w0.abs().max()):.3g}, input norms up to {float(torch.diagonal(gram).max()) ** 0.5:.3g}); "
            "rescale the layer's inputs or weights, or use algorithm='magnitude' for it."
        )
    return view.from_matrix(scores)


def _sparsegpt(w0, b0, gram, spec, o, real, mask, name):
    """SparseGPT on the layer; with ``update_bias`` the bias is the weight of a constant-1 input,
    processed last and never pruned, so the OBS updates also shift it (the output's mean error)."""
    try:
        return _sparsegpt_run(w0, b0, gram, spec, o, real, mask, name)
    except ConvertError as err:  # inverse_cholesky names the layer, not the entry point
        text = str(err)
        raise ConvertError(text if text.startswith(o["where"]) else f"{o['where']}: {text}") from None


def _sparsegpt_run(w0, b0, gram, spec, o, real, mask, name):
    if b0 is None or not o["update_bias"]:
        w, keep = sparsegpt(w0, gram[:-1, :-1], spec, method=o["method"], damp=o["damp"], blocksize=o["blocksize"],
                            mask=mask, real=real, name=name)
        return w, b0, keep
    cols = w0.shape[1]
    ones = torch.ones(w0.shape[0], 1, dtype=torch.bool, device=w0.device)
    w, keep = sparsegpt(
        torch.cat([w0, b0[:, None]], 1), gram, spec, method=o["method"], damp=o["damp"], blocksize=o["blocksize"],
        mask=None if mask is None else torch.cat([mask, ones], 1), real=torch.cat([real, ones], 1), tail=1, name=name,
    )
    return w[:, :cols], w[:, cols], keep[:, :cols]


def _masked(w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, w, torch.zeros((), dtype=w.dtype, device=w.device))


def _pattern_mask(view: MatrixView, t: Target, spec, o, scores, magnitude_scores: bool = False) -> torch.Tensor:
    """The pattern's optimal mask for ``scores`` (oriented weight shape; None: |W| or o['scores']),
    as a padded matrix."""
    w = view.oriented(t.module.weight.detach())
    w = w.float() if w.dtype in (torch.float16, torch.bfloat16) else w
    if scores is None and not magnitude_scores:
        scores = _user_scores(t, view, w, spec, o)
    try:
        if isinstance(spec, NMPattern):
            mask = find_mask(w, spec, method=o["method"], scores=scores, pad=t.pad)
        else:
            mask = unstructured_mask(w, spec, scores=scores)
    except NMSparseError as err:
        raise type(err)(f"{o['where']}: layer {t.name}: {err}") from None
    return view.to_matrix(mask, fill=False)


def _user_scores(t: Target, view: MatrixView, w: torch.Tensor, spec, o):
    s = o["scores"]
    if s is None or s == "magnitude":
        return None
    if s == "support":
        # Lexicographic: first the number of current non-zeros kept, then their magnitude. A group or
        # tile keeps at most m*m entries, each adding < 1/(m*m+1), so magnitudes never outweigh one more
        # non-zero (the objective is a sum over independent groups/tiles).
        m = spec.m if isinstance(spec, NMPattern) else 1
        top = float(w.abs().max())
        bonus = w.double().abs() / (top * (m * m + 1)) if top > 0 else 0.0
        return (w != 0).double() + bonus
    if isinstance(s, dict):
        if t.name not in s:
            raise ConvertError(f"{o['where']}: scores has no entry for {t.name}; give one per pruned weight, or scores=None.")
        return view.oriented(score_tensor(s[t.name], t.module, t.name, o["where"]))
    if callable(s):
        return view.oriented(score_tensor(call_scores(s, t.module_name, t.module, t.name, o["where"]), t.module, t.name,
                                          o["where"]))
    raise ConvertError(f"{o['where']}: scores must be None, 'magnitude', 'support', a dict or a callable, got {s!r}.")


def _adaprune_samples(t: Target, module: nn.Module, stats: InputStats, o):
    """(inputs, targets) for AdaPrune's fit: the dense layer's outputs on the inputs (computed
    before the layer changes), or the dense model's outputs at this layer."""
    xs = stats.samples
    if o["dense"] is not None:
        flatten = not isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
        ys = dense_outputs(o["dense"], t.module_name, o["batches"], flatten)
        if [tuple(y.shape[:1]) for y in ys] != [tuple(x.shape[:1]) for x in xs]:
            raise ConvertError(
                f"{o['where']}: layer {t.name}: its inputs and the dense model's outputs do not pair up (is it called "
                "more than once per forward pass?); use adaprune_target='layer' or sequential=False."
            )
    else:
        ys = [module(x.to(module.weight.dtype)) for x in xs]
    return stack_samples(xs, ys)


@torch.no_grad()
def _write(module: nn.Module, view: MatrixView, w: torch.Tensor, b: Optional[torch.Tensor], mask: torch.Tensor) -> None:
    dtype = module.weight.dtype
    new = view.stored_from_matrix(w).to(dtype)
    keep = view.stored_from_matrix(mask) & (new != 0)
    module.weight.copy_(torch.where(keep, new, torch.zeros((), dtype=dtype, device=new.device)))
    if b is not None:
        module.bias.copy_(view.stored_bias(b).to(module.bias.dtype))


def _error_meter(w0, b0, gram) -> Callable:
    """``err(w, b) = tr(ΔΘ G ΔΘᵀ) / tr(Θ₀ G Θ₀ᵀ)`` with ``Θ = [W b]``: the relative output error on the
    calibration rows. float32 products (a diagnostic; ΔΘ is a difference, so nothing cancels),
    summed in float64; the reference term is computed once."""
    cols = w0.shape[1]
    g = (gram[:cols, :cols] if b0 is None else gram).float()
    theta = lambda w, b: w if b0 is None else torch.cat([w, (b if b is not None else b0)[:, None]], 1)  # noqa: E731
    t0 = theta(w0, b0).float()
    ref = float(((t0 @ g) * t0).sum(dtype=torch.float64))

    def err(w, b) -> float:
        d = theta(w, b).float() - t0
        e = max(float(((d @ g) * d).sum(dtype=torch.float64)), 0.0)
        return e / ref if ref > 0 else e

    return err
