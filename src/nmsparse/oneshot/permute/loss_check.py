"""``prune_(permute=True)`` on a language model: both prunes compared by the calibration loss.

The guard's trials (:mod:`.guard`) judge by the pruned blocks' output error, a proxy: on the
benchmark's claims LM they fell with the permutation (by 2-13 %) while the perplexity rose, and
the calibration data's perplexity tracked the held-out one in every case measured
(``benchmarks/bench_permute.py``). So where the model scores itself — a Hugging Face model that
generates (causal LMs, encoder-decoders) fed batches with ``input_ids`` — ``prune_`` prunes it
twice, permuted and not, and keeps the one with the lower mean next-token loss on the calibration
batches (labels = the inputs, padding left out). It costs one more pruning pass and two more
forward passes per batch, and nothing more in memory than ``prune_`` holds anyway (the dense
weights it keeps for undoing an error, plus one copy of the pruned layers).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Optional, Sequence

import torch
from torch import nn

from ..calibration import run_batch

__all__ = ["loss_applies", "calibration_loss"]


def loss_applies(model: nn.Module, batches: Optional[Sequence]) -> bool:
    """True for a Hugging Face model that generates, with dict batches holding ``input_ids``."""
    can = getattr(model, "can_generate", None)
    try:
        generates = bool(callable(can) and can())
    except Exception:  # a user's model with its own can_generate: no judgement
        generates = False
    return (generates and bool(batches)
            and all(isinstance(b, Mapping) and isinstance(b.get("input_ids"), torch.Tensor) for b in batches))


@torch.no_grad()
def calibration_loss(model: nn.Module, batches: Sequence, where: str) -> Optional[float]:
    """Mean loss per predicted token over ``batches`` (``labels`` = ``input_ids``, padding as -100);
    None if the model returns no finite loss."""
    total, count = 0.0, 0
    for i, batch in enumerate(batches):
        labels = batch["input_ids"].clone()
        mask = batch.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.shape == labels.shape:
            labels[mask == 0] = -100
        out = run_batch(model, {**batch, "labels": labels}, i, where)
        loss = out.get("loss") if isinstance(out, Mapping) else getattr(out, "loss", None)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not math.isfinite(float(loss)):
            return None
        n = max(int((labels[..., 1:] != -100).sum()), 1)
        total += float(loss) * n
        count += n
    return total / count if count else None
