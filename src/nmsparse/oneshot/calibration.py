"""Calibration data for the one-shot pruners: checking batches, calling the model on a batch, and
re-estimating BatchNorm statistics.

A calibration batch is a tensor (``model(batch)``), a tuple or list (``model(*batch)``) or a dict
(``model(**batch)``, e.g. a tokenizer's output). A DataLoader that yields ``(inputs, labels)``
pairs would call ``model(inputs, labels)``: pass ``[x for x, _ in loader]`` instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Iterable, List

import torch
from torch import nn

from ..errors import ConvertError, NMSparseError, quote_error

__all__ = ["as_batches", "call_model", "run_batch", "reestimate_batchnorm"]


def as_batches(calibration: Iterable, where: str = "adaprune") -> List[object]:
    """Materialise the calibration iterable (it is used several times) and check each item's kind."""
    if isinstance(calibration, (torch.Tensor, Mapping)):
        raise ConvertError(
            f"{where}: calibration must be an iterable of batches, got a single {type(calibration).__name__}; "
            "wrap it in a list: [batch]."
        )
    try:
        batches = list(calibration)
    except TypeError:
        raise ConvertError(f"{where}: calibration must be an iterable of batches, got {type(calibration).__name__}.") from None
    if not batches:
        raise ConvertError(f"{where}: calibration is empty; pass at least one batch of model inputs.")
    for i, b in enumerate(batches):
        if not isinstance(b, (torch.Tensor, tuple, list, Mapping)):
            raise ConvertError(
                f"{where}: calibration batch {i} is a {type(b).__name__}; expected a tensor (model(x)), "
                "a tuple (model(*batch)) or a dict (model(**batch))."
            )
        for t in _tensors_of(b):
            if t.is_floating_point() and t.device.type != "meta" and not bool(torch.isfinite(t).all()):
                raise ConvertError(
                    f"{where}: calibration batch {i} contains NaN or Inf; the layers would be fitted to "
                    "non-finite outputs. Clean the data (e.g. torch.nan_to_num) or drop the batch."
                )
    return batches


def _tensors_of(batch) -> List[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        return [batch]
    values = batch.values() if isinstance(batch, Mapping) else batch
    return [v for v in values if isinstance(v, torch.Tensor)]


def call_model(model: nn.Module, batch) -> object:
    """Call ``model`` on one calibration batch (tensor, tuple/list or dict)."""
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, Mapping):
        return model(**batch)
    return model(*batch)


def run_batch(model: nn.Module, batch: object, i: int, where: str, passthrough: tuple = ()) -> object:
    """Call ``model`` on calibration batch ``i`` and return its output. One rule for the user's code: *any* exception it
    raises (shape, dtype, arguments, an AttributeError or a StopIteration in a custom forward)
    becomes a :class:`ConvertError` naming the batch, with the original as ``__cause__``.
    Exceptions in ``passthrough`` (e.g. a hook's early-stop signal) and library errors propagate
    unchanged."""
    try:
        return call_model(model, batch)
    except (NMSparseError,) + tuple(passthrough):
        raise
    except Exception as err:
        raise ConvertError(
            f"{where}: the model failed on calibration batch {i} ({quote_error(err)}); "
            "pass batches the model accepts, as model(x), model(*batch) or model(**batch)."
        ) from err


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, calibration: Iterable) -> int:
    """Recompute every BatchNorm's running mean/variance on the calibration data; returns how many.

    After pruning, the activations' statistics shift and the stored running statistics no longer
    match them; re-estimating them (a cumulative average over the calibration batches, with the
    rest of the model in eval mode) recovers much of the lost accuracy at no training cost.
    Modes and momenta are restored afterwards.

    Examples
    --------
    >>> from nmsparse.examples import small_cnn
    >>> reestimate_batchnorm(small_cnn(), [torch.randn(8, 1, 8, 8)])
    3
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    batches = as_batches(calibration, "reestimate_batchnorm")
    modes = {m: m.training for m in model.modules()}
    momenta = {bn: bn.momentum for bn in bns}
    try:
        model.eval()
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average: every calibration batch counts the same
            bn.train()
        for batch in batches:
            call_model(model, batch)
    finally:
        for m, mode in modes.items():
            m.train(mode)
        for bn, momentum in momenta.items():
            bn.momentum = momentum
    return len(bns)
