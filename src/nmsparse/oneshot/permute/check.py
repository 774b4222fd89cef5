"""Checking that folding kept the model's function: its outputs on one batch before and after.

Folding is exact by construction, but groups are recognised by names and shapes, and a model may
break a rule they rely on (a module that looks like an MLP but mixes its hidden channels). So
:func:`nmsparse.permute_` compares the outputs on the first calibration batch, or, without
calibration data, on a probe input built from what the model says it takes
(:func:`probe_batches`), and undoes every group whose folding moves them (:func:`verify_`).
"""

from __future__ import annotations

import math
from typing import List, Optional

import torch
from torch import nn

from ...errors import quote_error
from ..calibration import call_model
from .fold import fold_, inverse
from .report import PermuteReport

__all__ = ["probe_batches", "verify_", "float_outputs", "TOLERANCE"]


def probe_batches(model: nn.Module, rep: PermuteReport) -> Optional[list]:
    """A check input for a model given no calibration data, or None (then nothing is checked).

    Folding is exact by construction, but the structure is recognised by names and shapes; a
    model that breaks a rule the search relies on must not go unnoticed. Where the input is known
    from the model itself — a Hugging Face model fed token ids (``main_input_name``, the config's
    ``vocab_size``), or an ``nn.Sequential`` starting with a Linear — a deterministic random probe
    checks the outputs as a calibration batch would. A probe the model rejects is reported, and
    the outputs are then not checked."""
    probe = _probe_of(model)
    if probe is None:
        return None
    try:
        with torch.no_grad():
            call_model(model, probe[0])
    except Exception as err:  # the probe is our guess at the model's input; the model may want more
        rep.notes.append(f"outputs not checked: the model rejected a random probe input ({quote_error(err, 160)}); "
                         "pass calibration= to check them")
        return None
    rep.notes.append(f"outputs checked on {probe[1]} (no calibration data)")
    return [probe[0]]


def _probe_of(model: nn.Module) -> Optional[tuple]:
    param = next((p for p in model.parameters() if p.device.type != "meta"), None)
    if param is None:
        return None
    gen = torch.Generator().manual_seed(0)
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None)
    if getattr(model, "main_input_name", None) == "input_ids" and isinstance(vocab, int) and vocab > 0:
        limits = [getattr(config, k, None) for k in ("max_position_embeddings", "n_positions", "max_seq_len")]
        length = min([16] + [v for v in limits if isinstance(v, int) and v > 0])
        ids = torch.randint(0, vocab, (2, length), generator=gen).to(param.device)
        batch = {"input_ids": ids}
        if getattr(config, "is_encoder_decoder", False):
            batch["decoder_input_ids"] = ids
        return batch, f"a random probe of 2 x {length} token ids"
    first = next(iter(model.children()), None) if isinstance(model, nn.Sequential) else None
    if isinstance(first, nn.Linear) and first.weight.device.type != "meta":
        x = torch.randn(8, first.in_features, generator=gen, dtype=torch.float64).to(first.weight)
        return x, f"a random probe of 8 x {first.in_features} inputs"
    return None


def verify_(run, reference, done, score) -> None:
    """Compare the outputs on batch 0 with the reference; undo the groups whose folding moved them."""
    if not done or _close(float_outputs(run(0)), reference):
        return
    for g, perm, _ in reversed(done):  # undo everything, then fold the groups back one by one
        fold_(g, inverse(perm), score)
    for g, perm, row in done:
        fold_(g, perm, score)
        if not _close(float_outputs(run(0)), reference):
            fold_(g, inverse(perm), score)
            row.status = "unsafe"
            row.reason = "folding it changed the outputs on the first calibration batch; undone"
            if g.kind == "residual":
                row.reason += " (a model that returns the stream itself, such as a base encoder without a head, cannot reorder it)"
            row.kept_after = row.kept_before


def float_outputs(out) -> List[torch.Tensor]:
    found: List[torch.Tensor] = []

    def walk(o):
        if isinstance(o, torch.Tensor):
            if o.is_floating_point():
                found.append(o.detach().clone())
        elif isinstance(o, dict):
            for v in o.values():
                walk(v)
        elif isinstance(o, (tuple, list)):
            for v in o:
                walk(v)
        elif hasattr(o, "to_tuple"):
            walk(o.to_tuple())

    walk(out)
    return found


TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 5e-2, torch.bfloat16: 5e-2}


def _close(a: List[torch.Tensor], b: List[torch.Tensor]) -> bool:
    """Equal up to float rounding (a permutation reorders sums): the largest difference, relative to
    the largest reference value, within the dtype's tolerance."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x.shape != y.shape:
            return False
        tol = TOLERANCE.get(y.dtype, 1e-4)
        x, y = x.double(), y.double()
        # A NaN or Inf the dense model already gives (a NaN bias, a -inf mask value) is part of its
        # function: it must come back in the same place with the same value, and the finite entries
        # are compared as usual. Otherwise every group of such a model would be undone as "unsafe".
        finite = torch.isfinite(y)
        if not torch.equal(finite, torch.isfinite(x)):
            return False
        if not bool(finite.all()):
            if not torch.equal(x[~finite].nan_to_num(nan=0.0), y[~finite].nan_to_num(nan=0.0)) or \
                    not torch.equal(torch.isnan(x[~finite]), torch.isnan(y[~finite])):
                return False
            x, y = x[finite], y[finite]
        ref = float(y.abs().max()) if y.numel() else 0.0
        err = float((x - y).abs().max()) if y.numel() else 0.0
        if not math.isfinite(err) or err > tol * max(ref, 1e-12):
            return False
    return True
