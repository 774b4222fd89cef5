"""``prune_(permute=True)`` on a language model: both prunes compared by the calibration loss.

The guard's trials (:mod:`.guard`) judge by the pruned blocks' output error, a proxy: on the
benchmark's claims LM they fell with the permutation (by 2-13 %) while the perplexity rose, and
the calibration data's perplexity tracked the held-out one where the two prunes differed clearly
(``benchmarks/bench_permute.py``). So where the model scores itself — a Hugging Face model that
generates (causal LMs, encoder-decoders) fed batches with ``input_ids`` — ``prune_`` prunes it
twice, permuted and not, and measures each prune's next-token loss on the calibration batches
(labels = the inputs, padding left out), sequence by sequence.

The permuted prune is reverted only if it is **significantly** worse: its mean loss per sequence
exceeds the plain prune's by more than two standard errors of the paired per-sequence
differences (:func:`clearly_worse`). A plain "lower wins" rule decides near-ties by the
calibration set's noise: on the benchmark's Llama at 4:8 with Wanda the two losses differed by
0.02 % (plain lower) while the permuted prune's held-out perplexity was 1.1 % better. The
search's objective rose; the loss is asked only whether it contradicts that.

With ``permute_tries`` (default 3 here) the search runs with several seeds first, each try is
pruned, and the try with the lowest calibration loss is the one compared (:func:`_best_try`):
nearly equal permutations prune differently, and the loss tells them apart. A user's
``permute_loss(model, batch)`` stands in for the next-token loss on any model (:func:`user_loss`).

It costs one more pruning pass and two more forward passes per batch (and a search and a pruning
pass per further try), and in memory, beyond the dense weights ``prune_`` keeps anyway for
undoing an error, one copy of the pruned layers (two with tries) and one batch row's logits at a
time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConvertError, NMSparseError, quote_error
from ..calibration import run_batch
from ..layer_state import restore, snapshot
from ..report import PipelineInfo
from .api import undo_
from .fold import fold_

__all__ = ["loss_applies", "calibration_loss", "user_loss", "clearly_worse", "choose_by_loss", "LossSample", "SIGNIFICANCE"]

SIGNIFICANCE = 2.0  # standard errors of the paired per-sequence loss differences


@dataclass
class LossSample:
    """A pruned model's calibration loss: ``mean`` per predicted token, and ``sequences``, each
    sequence's mean (in batch order; sequences without a predicted token left out)."""

    mean: float
    sequences: List[float]


LossFn = Callable[[nn.Module, object], torch.Tensor]


def loss_applies(model: nn.Module, batches: Optional[Sequence], loss: Optional[LossFn] = None) -> bool:
    """True with calibration data and a user's ``loss``, or for a Hugging Face model that
    generates, with dict batches holding ``input_ids``."""
    if loss is not None:
        return bool(batches)
    can = getattr(model, "can_generate", None)
    try:
        generates = bool(callable(can) and can())
    except Exception:  # a user's model with its own can_generate: no judgement
        generates = False
    return (generates and bool(batches)
            and all(isinstance(b, Mapping) and isinstance(b.get("input_ids"), torch.Tensor) for b in batches))


@torch.no_grad()
def calibration_loss(model: nn.Module, batches: Sequence, where: str, loss: Optional[LossFn] = None) -> Optional[LossSample]:
    """The next-token loss on ``batches`` (``labels`` = ``input_ids``, padding as -100), from the
    model's logits; None if the model returns no logits of the labels' shape. With ``loss``, the
    user's ``loss(model, batch)`` instead (:func:`user_loss`)."""
    if loss is not None:
        return user_loss(model, batches, loss, where)
    seq2seq = bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))
    total, count, sequences = 0.0, 0, []
    for i, batch in enumerate(batches):
        decoded = batch.get("decoder_input_ids") if seq2seq else None
        if isinstance(decoded, torch.Tensor):
            # The batch says what the decoder reads: score its next-token predictions, as a causal LM's.
            labels, mask, call, shift = decoded.clone(), batch.get("decoder_attention_mask"), dict(batch), True
        else:
            # A causal LM reads input_ids; an encoder-decoder given labels = input_ids decodes them (shifted).
            labels, mask = batch["input_ids"].clone(), batch.get("attention_mask")
            call, shift = {**batch, "labels": labels}, not seq2seq
        if isinstance(mask, torch.Tensor) and mask.shape == labels.shape:
            labels[mask == 0] = -100
        out = run_batch(model, call, i, where)
        logits = out.get("logits") if isinstance(out, Mapping) else getattr(out, "logits", None)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(labels.shape):
            return None
        if shift:  # token t + 1 predicted from the tokens up to t
            logits, labels = logits[:, :-1], labels[:, 1:]
        for row in range(labels.shape[0]):  # one row's log-softmax at a time
            keep = labels[row] != -100
            n = int(keep.sum())
            if n == 0:
                continue
            lo = F.cross_entropy(logits[row][keep].double(), labels[row][keep].to(logits.device), reduction="sum")
            value = float(lo)
            if not math.isfinite(value):
                return None
            total += value
            count += n
            sequences.append(value / n)
    return LossSample(total / count, sequences) if count else None


def user_loss(model: nn.Module, batches: Sequence, loss: LossFn, where: str) -> LossSample:
    """``loss(model, batch)`` on every batch: a 1-D tensor of per-sample losses (each sample one
    pair in :func:`clearly_worse`) or a scalar (the batch is one sample). Exceptions from ``loss``
    become a :class:`ConvertError` naming the batch; the values must be finite."""
    samples: List[float] = []
    for i, batch in enumerate(batches):
        try:
            value = loss(model, batch)
        except NMSparseError:
            raise
        except Exception as err:
            raise ConvertError(f"{where}: permute_loss failed on calibration batch {i} ({quote_error(err)}); "
                               "it is called as permute_loss(model, batch).") from err
        if not isinstance(value, torch.Tensor) or value.dim() > 1 or value.numel() == 0:
            got = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
            raise ConvertError(f"{where}: permute_loss must return a scalar tensor or a 1-D tensor of per-sample "
                               f"losses, got {got} on calibration batch {i}.")
        if value.device.type == "meta" or value.dtype == torch.bool or value.is_complex():
            # A meta tensor holds no number; a bool or complex one no loss (float64 of a complex
            # drops its imaginary part silently).
            got = "a meta tensor" if value.device.type == "meta" else f"dtype {value.dtype}"
            raise ConvertError(f"{where}: permute_loss must return real-valued losses (a floating-point or integer "
                               f"tensor with values), got {got} on calibration batch {i}.")
        value = value.detach().double().reshape(-1).cpu()
        if not bool(torch.isfinite(value).all()):
            raise ConvertError(f"{where}: permute_loss returned NaN or Inf on calibration batch {i}; the two prunes "
                               "cannot be compared.")
        samples += value.tolist()
    return LossSample(sum(samples) / len(samples), samples)


def clearly_worse(permuted: LossSample, plain: LossSample) -> bool:
    """True if ``permuted``'s per-sequence losses exceed ``plain``'s by more than
    :data:`SIGNIFICANCE` standard errors of their paired differences (a mean above zero with a
    single sequence)."""
    d = torch.tensor(permuted.sequences, dtype=torch.float64) - torch.tensor(plain.sequences, dtype=torch.float64)
    if d.numel() == 0:
        return False
    mean = float(d.mean())
    if d.numel() < 2:
        return mean > 0
    se = float(d.std(unbiased=True)) / math.sqrt(d.numel())
    return mean > SIGNIFICANCE * se


def choose_by_loss(model: nn.Module, rep, permuted: list, originals: dict, by_name, run_pass: Callable, first,
                   batches: Sequence, where: str, loss: Optional[LossFn] = None,
                   repermute: Optional[Callable[[int], list]] = None, tries: int = 1):
    """For :func:`nmsparse.prune_`, after its permuted pass: prune ``model`` again without its
    permutations (``run_pass(None)``) and keep the permuted prune unless its calibration loss is
    significantly higher. ``rep`` is the PruneReport; ``originals`` the dense copies of the pruned
    layers (by name, ``by_name`` their targets). With ``tries > 1``, ``repermute(seed)`` (search
    and fold with that seed, returning the folds) gives further permuted prunes first, and the one
    with the lowest calibration loss is the one compared (:func:`_best_try`).
    ``permuted`` and ``originals`` are updated in place so that the caller's undo on an error
    stays exact; returns the chosen pass's ``(masks, seen)``."""
    loss_perm = calibration_loss(model, batches, where, loss)
    if loss_perm is None:
        rep.permute.notes.append("calibration loss: the model returned none; the permuted prune is kept unchecked")
        return first
    if tries > 1 and repermute is not None:
        loss_perm, first = _best_try(model, rep, permuted, originals, by_name, run_pass, first, loss_perm, batches,
                                     where, loss, repermute, tries)
    pruned = {name: snapshot(by_name[name].module) for name in originals}
    kept_rows, kept_pipeline, kept_originals, folded = rep.layers, rep.pipeline, dict(originals), list(permuted)
    for name, snap in originals.items():
        restore(by_name[name].module, snap)
    undo_(folded)  # dense and in its original order again
    permuted.clear()
    originals.clear()
    rep.layers, rep.pipeline = [], PipelineInfo()
    second = run_pass(None)
    loss_plain = calibration_loss(model, batches, where, loss)
    rep.permute.loss_permuted = loss_perm.mean
    rep.permute.loss_plain = None if loss_plain is None else loss_plain.mean
    if loss_plain is not None and len(loss_plain.sequences) == len(loss_perm.sequences) \
            and clearly_worse(loss_perm, loss_plain):
        for _, _, row in folded:
            row.status = "reverted"
            row.reason = (f"reverted: the pruned model's calibration loss is significantly higher permuted "
                          f"({loss_plain.mean:.5g} -> {loss_perm.mean:.5g}, paired per sample, over "
                          f"{SIGNIFICANCE:g} standard errors)")
            row.kept_after = row.kept_before
        for layer in rep.permute.layers:
            layer.kept_after = layer.kept_before
        rep.permuted_tensors.clear()
        return second
    for g, perm, _ in folded:  # the permuted prune comes back: its order, then its pruned layers
        fold_(g, perm)
    for name, snap in pruned.items():
        restore(by_name[name].module, snap)
    originals.clear()
    originals.update(kept_originals)
    permuted.extend(folded)
    rep.layers, rep.pipeline = kept_rows, kept_pipeline
    return first


def _best_try(model, rep, permuted, originals, by_name, run_pass, first, loss_first, batches, where, loss, repermute,
              tries):
    """Prune with the permutations of search seeds ``1 .. tries - 1`` too and leave the model as the
    try with the lowest calibration loss; returns ``(its LossSample, its (masks, seen))``.

    Many permutations keep nearly the same score, yet their prunes differ on held-out data by
    more than the search's gain (on the benchmark's Llama at 2:4T with SparseGPT, seeds 0 / 1 / 2
    closed +1.6 / -0.3 / +10.3 % of the perplexity gap), and the calibration loss ranked them the
    same way. So the loss chooses among the tries; the significance rule then only guards the
    choice against the plain prune. Holds one more copy of the pruned layers (the best so far)."""

    def state():
        return dict(loss=None, pruned={name: snapshot(by_name[name].module) for name in originals},
                    folded=list(permuted), originals=dict(originals), layers=rep.layers, pipeline=rep.pipeline,
                    permute=rep.permute, tensors=set(rep.permuted_tensors), result=None)

    def back_to_dense():
        for name, snap in originals.items():
            restore(by_name[name].module, snap)
        undo_(list(permuted))
        permuted.clear()
        originals.clear()

    best = state()
    best["loss"], best["result"] = loss_first, first
    losses = [loss_first.mean]
    for seed in range(1, tries):
        back_to_dense()
        rep.layers, rep.pipeline = [], PipelineInfo()
        permuted.extend(repermute(seed))
        result = run_pass(None)
        got = calibration_loss(model, batches, where, loss)
        losses.append(float("nan") if got is None else got.mean)
        if got is not None and got.mean < best["loss"].mean:
            best = state()
            best["loss"], best["result"] = got, result
    back_to_dense()  # then the best try comes back: its order, then its pruned layers
    for g, perm, _ in best["folded"]:
        fold_(g, perm)
    for name, snap in best["pruned"].items():
        restore(by_name[name].module, snap)
    permuted.extend(best["folded"])
    originals.update(best["originals"])
    rep.layers, rep.pipeline, rep.permute = best["layers"], best["pipeline"], best["permute"]
    rep.permuted_tensors = best["tensors"]
    chosen = losses.index(best["loss"].mean)
    rep.permute.notes.append(f"searched with seeds 0..{tries - 1}: calibration losses "
                             + ", ".join(f"{v:.5g}" for v in losses) + f"; seed {chosen} kept")
    return best["loss"], best["result"]
