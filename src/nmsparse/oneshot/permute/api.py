"""``permute_``: fold channel permutations into a model so that N:M masks keep more of what matters.

See :func:`permute_`; the groups are found by :mod:`.groups`, searched by :mod:`.search` and
folded by :mod:`.fold`.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from ..._progress import Progress
from ...errors import ArgumentError, ConvertError, PatternError, ScoreError
from ...masks import solve_mask
from ...masks._inputs import score_source
from ...pattern import NMPattern, PatternLike
from ..calibration import as_batches, run_batch
from ..hessian import MatrixView, select_tokens, token_mask_of
from ..select import select_targets
from ..user_scores import call_scores, score_tensor
from .check import float_outputs, probe_batches, verify_
from .fold import fold_, inverse
from .groups import find_groups
from .residual import RESIDUAL_NOTE, find_residual
from .structure import Group
from .report import GroupPermute, LayerPermute, PermuteReport
from .search import group_matrix, search_permutation

__all__ = ["permute_", "PermuteReport", "SCORES", "ITERATIONS", "PATIENCE"]

SCORES = ("magnitude", "wanda")
ScoresArg = Union[str, Dict[str, torch.Tensor], Callable[[str, nn.Module], torch.Tensor]]
MAX_ROUNDS = 1_000_000
# Swap rounds per group and rounds without gain before stopping. 200 / 16 since the exchanges are
# ranked without re-solving (swaps.py): as long as 50 / 8 took before, for more kept score (on the
# benchmark's Llama, Wanda 2:4's share of the perplexity gap closed went from 1.6 % to 16 %).
ITERATIONS, PATIENCE = 200, 16


def permute_(
    model: nn.Module,
    pattern: PatternLike,
    *,
    calibration=None,
    scores: ScoresArg = "magnitude",
    include=None,
    exclude=None,
    iterations: int = ITERATIONS,
    patience: int = PATIENCE,
    time_budget: Optional[float] = None,
    seed: int = 0,
    check: bool = True,
    residual: bool = True,
    progress: bool = False,
    where: str = "permute_",
) -> PermuteReport:
    """Fold channel permutations into ``model`` (in place) so that the optimal masks of ``pattern``
    keep more score, with the dense model's function unchanged.

    An N:M mask competes inside groups of m inputs (and, transposable, inside m×m tiles). Which
    channels share a group is a choice wherever the model lets channels be reordered exactly: the
    hidden channels of an MLP (the rows and biases of the layers writing them and the columns of
    the layer reading them), an attention head's value/output channels (grouped-query aware),
    query/key channels where no rotary encoding is found, a transformer's residual stream, and
    chains of layers in ``nn.Sequential`` (through activations, BatchNorm, pooling). See
    :mod:`nmsparse.oneshot.permute.groups` for what is found and what is left alone, and
    :mod:`nmsparse.oneshot.permute.search` for the search.

    Parameters
    ----------
    model : nn.Module
        Changed in place: the weights are reordered, nothing is added (a plain checkpoint).
    pattern : str or NMPattern
        The N:M pattern the model will be pruned to (``"2:4"``, ``"2:4T"``, any n:m; n entries
        KEPT per group of m).
    calibration : iterable, optional
        Batches of model inputs (as for :func:`nmsparse.prune_`). Needed by ``scores="wanda"``;
        the first batch also checks that the outputs did not move.
    scores : "magnitude", "wanda", dict or callable
        What the masks should keep: ``|W|``; ``|W|·‖x‖`` with ``‖x‖`` each input channel's norm
        on the calibration data (Wanda); a dict ``{weight name: tensor of the weight's shape}``;
        or ``scores(module_name, module) -> tensor``. Non-negative and finite.
    include, exclude : str or list of str, optional
        Which layers count (the layers that will be pruned; full-match regexes as everywhere,
        :mod:`nmsparse.selection`). Layers that do not count are still reordered where a group
        touches them, so the function stays the same.
    iterations : int
        Swap rounds per group (0: only the balanced start). Deterministic for a given ``seed``.
    patience : int
        Stop a group's search after this many rounds without gain.
    time_budget : float, optional
        Seconds for the whole search, shared among the groups still to do; with a budget the
        result may depend on the machine's speed.
    seed : int
        Seeds the bin pairings of the swap rounds.
    check : bool
        Compare the model's outputs on the first calibration batch before and after; a group
        whose folding moves them is undone and reported ``"unsafe"``. Without calibration data
        the check runs on a deterministic random probe where the model's input is known (a
        Hugging Face model fed token ids, an ``nn.Sequential`` starting with a Linear; see
        :func:`probe_batches`); otherwise ``rep.verified`` is None.
    residual : bool
        Also permute a transformer's residual stream: one permutation shared by the embeddings,
        every norm of the stream's width, the columns of every layer reading the stream and the
        rows of every layer writing it, in all blocks (and a tied LM head). Left alone, with the
        reason, where a parameter of the stream's width is not understood.
    progress : bool
        A progress bar on stderr (one step per group).

    Returns
    -------
    PermuteReport
        Per group the outcome, per counted layer the kept score before and after.

    Notes
    -----
    Permute before creating an optimizer (its state is not reordered) and before attaching
    masks (layers with a parametrization are left alone). Masks found after permuting are masks
    of the permuted model; nothing changes at inference time.

    Examples
    --------
    >>> from torch import nn
    >>> torch.manual_seed(0) and None
    >>> model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    >>> x = torch.randn(64, 16)
    >>> y = model(x)
    >>> rep = permute_(model, "2:4", calibration=[x])
    >>> rep.kept_after >= rep.kept_before, torch.allclose(model(x), y, atol=1e-6)
    (True, True)
    """
    start = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise ArgumentError(f"{where}: model must be a torch.nn.Module, got {type(model).__name__}.")
    for flag, value in (("check", check), ("residual", residual), ("progress", progress)):
        if not isinstance(value, bool):
            raise ArgumentError(f"{where}: {flag} must be True or False, got {value!r}.")
    spec = _check_pattern(pattern, where)
    _check_options(scores, iterations, patience, time_budget, seed, where)
    batches = as_batches(calibration, where) if calibration is not None else None
    if scores == "wanda" and batches is None:
        raise ArgumentError(f"{where}: scores='wanda' needs calibration data (batches of model inputs); pass "
                            "calibration=, or use scores='magnitude'.")
    rep = PermuteReport(pattern=str(spec), scores=scores if isinstance(scores, str) else type(scores).__name__)
    targets, _ = select_targets(model, spec, include, exclude, "skip", where)
    groups = model_groups(model, getattr(model, "config", None), residual, rep)
    modes = {mod: mod.training for mod in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            if batches is None and check and groups:
                batches = probe_batches(model, rep)  # no data: still check the function on a probe input
            count = len(batches) if batches is not None else 0
            permute_groups_(
                groups, targets, spec, rep, run=lambda i: run_batch(model, batches[i], i, where), count=count,
                token_masks=[token_mask_of(b) for b in batches or []], scores=scores, check=check,
                iterations=iterations, patience=patience, time_budget=time_budget, seed=seed, progress=progress,
                where=where,
            )
    finally:
        for mod, mode in modes.items():
            mod.training = mode
    rep.seconds = time.perf_counter() - start
    return rep


def model_groups(model: nn.Module, config, residual: bool, rep: PermuteReport) -> List[Group]:
    """Every group of ``model``, the residual stream first (the blocks' groups then see its order);
    what is left alone goes to ``rep``."""
    groups, skipped = find_groups(model, config)
    rep.skipped += skipped
    if not residual:
        rep.notes.append(RESIDUAL_NOTE)
        return groups
    stream, why = find_residual(model, config)
    if why is not None:
        rep.skipped.append(("residual stream", why))
    return ([stream] if stream is not None else []) + list(groups)


def permute_groups_(groups: Sequence[Group], targets, spec: NMPattern, rep: PermuteReport, *, run: Callable[[int], object],
                    count: int, token_masks: Sequence, scores, check: bool, iterations: int, patience: int,
                    time_budget: Optional[float], seed: int, progress: bool, where: str,
                    changed: Optional[set] = None, keep: Optional[dict] = None) -> List[tuple]:
    """Search and fold ``groups`` (of a model or of one block), appending to ``rep``. ``run(i)``
    calls the model (or the block) on calibration batch i and returns its output; ``targets`` are
    the layers that count. ``changed`` collects the names of the tensors reordered; ``keep`` gets
    the layers' scores (``"score"``, moving with later folds) and ``"rows"`` (their report rows and
    targets) for :func:`refresh_kept`. Returns the folded ``(group, perm, row)`` (:func:`undo_`
    reverts them)."""
    counted = {t.module_name: t for t in targets}
    norms, reference = _calibration_pass(run, count, token_masks, counted, scores == "wanda", check)
    if reference == []:
        reference = None  # no floating-point output to compare: nothing can be checked
        note = ("outputs not checked: the model's output on the check batch holds no floating-point tensor "
                "(only floating-point outputs are compared)")
        if note not in rep.notes:  # said once, not once per block
            rep.notes.append(note)
    score = _layer_scores(counted, scores, norms, where)
    rows = [LayerPermute(t.name, _kept(t.module, score.get(t.module_name), spec), 0.0) for t in targets]
    done: List[tuple] = []
    try:
        _search_all(groups, score, spec, set(score), rep, done, iterations, patience, time_budget, seed, progress, where)
        if reference is not None:
            verify_(run, reference, done, score)
    except BaseException:  # an interrupted search or a failing forward: put every channel back
        undo_([d for d in done if d[2].status == "permuted"])
        raise
    # True: checked; False: data but check=False; None: no batch. Over several blocks, the weakest.
    state = True if reference is not None else (False if count and not check else None)
    if state is not None and rep.verified is not False:
        rep.verified = state
    for row, t in zip(rows, targets):
        row.kept_after = _kept(t.module, score.get(t.module_name), spec)
    rep.layers += rows
    done = [d for d in done if d[2].status == "permuted"]
    if changed is not None:
        changed.update(changed_tensors(done))
    if keep is not None:
        keep["score"], keep["rows"] = score, list(zip(rows, targets))
    return done


def changed_tensors(done: Sequence[tuple]) -> set:
    """Names of the tensors that the folded ``(group, perm, row)`` reorder."""
    return {f"{mb.module_name}.{mb.tensor}" if mb.module_name else mb.tensor for g, _, _ in done for mb in g.members}


def refresh_kept(keep: dict, spec: NMPattern) -> None:
    """Recompute the counted layers' kept score after groups were unfolded (``keep`` from
    :func:`permute_groups_`)."""
    for row, t in keep.get("rows", []):
        row.kept_after = _kept(t.module, keep["score"].get(t.module_name), spec)


def undo_(done: Sequence[tuple]) -> None:
    """Revert what :func:`permute_groups_` folded (newest first)."""
    for g, perm, _ in reversed(done):
        fold_(g, inverse(perm))


def _check_pattern(pattern, where: str) -> NMPattern:
    if isinstance(pattern, float) or (isinstance(pattern, str) and pattern.strip().endswith("%")):
        raise PatternError(f"{where}: channel permutations need an N:M pattern such as '2:4' or '2:4T', got {pattern!r} "
                           "(an unstructured density has no groups to rearrange).")
    try:
        return NMPattern.parse(pattern) if not isinstance(pattern, NMPattern) else pattern
    except PatternError as err:
        raise PatternError(f"{where}: {err}") from None


def _check_options(scores, iterations, patience, time_budget, seed, where: str) -> None:
    if not (scores in SCORES or isinstance(scores, dict) or callable(scores)):
        raise ArgumentError(f"{where}: scores must be 'magnitude', 'wanda', a dict of tensors or a callable, got {scores!r}.")
    for name, value, low in (("iterations", iterations, 0), ("patience", patience, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_ROUNDS:
            raise ArgumentError(f"{where}: {name} must be an integer in [{low}, {MAX_ROUNDS}], got {value!r}.")
    if time_budget is not None:
        ok = isinstance(time_budget, (int, float)) and not isinstance(time_budget, bool)
        if not ok or not math.isfinite(time_budget) or time_budget <= 0:
            raise ArgumentError(f"{where}: time_budget must be a positive number of seconds (or None), got {time_budget!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63:
        raise ArgumentError(f"{where}: seed must be an integer in [0, 2**63), got {seed!r}.")


def _calibration_pass(run, count: int, token_masks, counted, want_norms: bool, check: bool):
    """Input-channel norms of the counted layers (Wanda scores) and the reference output on batch 0."""
    if count == 0 or not (want_norms or check):
        return {}, None
    sums: Dict[str, torch.Tensor] = {}
    handles = []
    state = {"mask": None}
    if want_norms:
        for name, t in counted.items():
            def hook(mod, args, name=name):
                if args and isinstance(args[0], torch.Tensor):
                    s = _channel_sumsq(mod, args[0], state["mask"])
                    sums[name] = s if name not in sums else sums[name] + s
            handles.append(t.module.register_forward_pre_hook(hook))
    reference = None
    try:
        for i in range(count if want_norms else 1):
            state["mask"] = token_masks[i] if i < len(token_masks) else None
            out = run(i)
            if i == 0 and check:
                reference = float_outputs(out)
    finally:
        for h in handles:
            h.remove()
    return {k: v.sqrt() for k, v in sums.items()}, reference


def _channel_sumsq(mod, x: torch.Tensor, mask) -> torch.Tensor:
    if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        if x.dim() == len(mod.kernel_size) + 1:
            x = x.unsqueeze(0)
        dims = [d for d in range(x.dim()) if d != 1]
        return x.detach().double().pow(2).sum(dim=dims).cpu()
    rows = select_tokens(x.detach(), mask)
    return rows.reshape(-1, rows.shape[-1]).double().pow(2).sum(0).cpu()


def _layer_scores(counted, scores, norms, where: str) -> Dict[str, torch.Tensor]:
    """Oriented ``(out, in, k...)`` float64 CPU scores of every counted layer."""
    out: Dict[str, torch.Tensor] = {}
    for name, t in counted.items():
        view = MatrixView(t.module, 1, False)
        w = view.oriented(t.module.weight.detach()).double().cpu()
        if not bool(torch.isfinite(w).all()):
            raise ScoreError(f"{where}: layer {t.name}: the weight has NaN/Inf; fix or exclude the layer.")
        if scores == "magnitude":
            s = w.abs()
        elif scores == "wanda":
            if name not in norms:
                continue  # not called on the calibration data: it does not count
            shape = [1] * w.dim()
            shape[1] = -1
            s = w.abs() * norms[name].reshape(shape)
        else:
            given = scores.get(t.name) if isinstance(scores, dict) else call_scores(scores, name, t.module, t.name, where)
            if given is None:
                raise ScoreError(f"{where}: scores has no entry for {t.name}; give one per counted weight.")
            score_tensor(given, t.module, t.name, where)
            # The mask solvers' own rules (find_mask, prune_'s scores=): no meta tensor, no bool or
            # complex dtype (a complex tensor cast to float64 would silently drop its imaginary part),
            # finite and non-negative, the first bad entry named.
            score_source(t.module.weight.detach(), given, f"{where}: layer {t.name}")
            s = view.oriented(given.detach()).double().cpu()
        if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
            raise ScoreError(f"{where}: layer {t.name}: scores must be finite and non-negative; check the "
                             "calibration data (or the scores you passed).")
        out[name] = s.clone()
    return out


def _kept(module, score: Optional[torch.Tensor], spec: NMPattern) -> float:
    if score is None:
        return 0.0  # a layer not called on the calibration data (Wanda scores): it does not count
    view = MatrixView(module, spec.m, spec.transposable)
    mat = view.to_matrix(score, fill=0.0)
    return float(solve_mask(mat, spec, scores=mat).objective)


def _search_all(groups: Sequence[Group], score, spec, scored, rep, done: List[tuple], iterations, patience, time_budget,
                seed, progress, where) -> None:
    """Search and fold every group in turn, appending the folded ``(group, perm, row)`` to ``done``."""
    end = None if time_budget is None else time.perf_counter() + float(time_budget)
    with Progress(len(groups), f"{where} {spec}", enabled=progress) as bar:
        for gi, g in enumerate(groups):
            t0 = time.perf_counter()
            row = GroupPermute(g.name, g.kind, g.channels, g.layers(), "unchanged")
            rep.groups.append(row)
            bar.advance()
            why = _ragged(g, spec)
            if why is not None:
                row.status, row.reason = "skipped", why
                continue
            x = group_matrix(g, score, spec, scored)
            if x is None:
                row.status = "no effect"
                row.reason = ("no counted layer reads these channels (a row-wise mask groups along inputs)"
                              if not spec.transposable else "no counted layer reads or writes these channels")
                continue
            deadline = None if end is None else t0 + max(0.0, end - t0) / (len(groups) - gi)
            res = search_permutation(x, spec, rounds=iterations, seed=seed + gi, patience=patience, deadline=deadline)
            row.kept_before, row.kept_after, row.rounds, row.start = res.before, res.after, res.rounds, res.start
            if res.after > res.before:
                fold_(g, res.perm, score)
                done.append((g, res.perm, row))
                row.status = "permuted"
            row.seconds = time.perf_counter() - t0


def _ragged(g: Group, spec: NMPattern) -> Optional[str]:
    m = spec.m
    if g.channels % m:
        return f"{g.channels} channels are not a multiple of m = {m} (a partial group cannot be rearranged)"
    if any(mb.start % m for mb in g.members if mb.layer):
        return f"its channels start at an offset that is not a multiple of m = {m} in a layer"
    return None
