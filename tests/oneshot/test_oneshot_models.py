"""prune_ on models: dtypes, option checks, AdaPrune's targets, uncalled layers, embedding stems."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nmsparse as nms
from nmsparse.oneshot import PruneReport
from nmsparse.errors import ConvertError

from test_oneshot import TupleNet, batches, mlp


def test_bfloat16_model_and_bad_options():
    model = mlp().to(torch.bfloat16)
    calib = [b.to(torch.bfloat16) for b in batches()]
    rep = PruneReport()
    nms.prune_(model, "4:8T", calibration=calib, algorithm="sparsegpt", report=rep, attach_masks=False)
    assert model[0].weight.dtype == torch.bfloat16
    nms.check_mask(model[0].weight != 0, "4:8T")
    assert not torch.any(torch.signbit(model[0].weight[model[0].weight == 0]))
    assert all(r.error_after <= r.error_magnitude for r in rep.layers)
    with pytest.raises(ConvertError, match="scores= chooses the mask"):
        nms.prune_(mlp(), "2:4", calibration=batches(), algorithm="sparsegpt", scores="support")
    with pytest.raises(ConvertError, match="report must be"):
        nms.prune_(mlp(), "2:4", report=[])
    with pytest.raises(ConvertError, match="damp"):
        nms.prune_(mlp(), "2:4", calibration=batches(), algorithm="sparsegpt", damp=-1)


def test_adaprune_model_targets_are_the_dense_models_activations():
    from nmsparse.oneshot.capture import dense_outputs

    model = TupleNet()
    g = torch.Generator().manual_seed(2)
    calib = [{"x": torch.randn(2, 5, 16, generator=g), "attention_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])}]
    ys = dense_outputs(model, "body.2", calib, flatten=True)
    with torch.no_grad():
        full = model.body(calib[0]["x"])
    assert torch.equal(ys[0], full[calib[0]["attention_mask"].bool()])
    seq_model, seq_layer = PruneReport(), PruneReport()
    nms.prune_(mlp(), "2:4", calibration=batches(), algorithm="adaprune", iterations=30, report=seq_model,
               adaprune_target="model")
    nms.prune_(mlp(), "2:4", calibration=batches(), algorithm="adaprune", iterations=30, report=seq_layer)
    assert seq_model.layers[0].error_after == pytest.approx(seq_layer.layers[0].error_after)  # first layer: same targets
    assert seq_model.layers[1].error_after != pytest.approx(seq_layer.layers[1].error_after)


class _WithUnused(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = mlp()
        self.unused = nn.Linear(16, 16)

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize("sequential", [True, False])
def test_layers_the_model_never_calls_stay_dense_with_a_reason(sequential):
    model, rep = _WithUnused(), PruneReport()
    before = model.unused.weight.detach().clone()
    nms.prune_(model, "2:4", calibration=batches(), algorithm="wanda", sequential=sequential, report=rep)
    assert [r.name for r in rep.layers] == ["body.0.weight", "body.2.weight"]
    assert ("unused.weight", "not called by the model on the calibration data") in rep.skipped
    assert torch.equal(model.unused.weight, before)


class _Stem(nn.Module):
    def __init__(self):
        super().__init__()
        self.patch_embed = nn.Sequential(nn.Conv2d(4, 16, 2, stride=2))
        self.fc = nn.Linear(16, 16)

    def forward(self, x):
        return self.fc(self.patch_embed(x).mean((2, 3)))


def test_patch_embedding_stems_stay_dense_unless_included():
    rep = PruneReport()
    nms.prune_(_Stem(), "2:4", calibration=[torch.randn(2, 4, 4, 4)], algorithm="sparsegpt", report=rep)
    assert [r.name for r in rep.layers] == ["fc.weight"] and "patch_embed.0.weight" in dict(rep.skipped)
    rep = PruneReport()
    nms.prune_(_Stem(), "2:4", calibration=[torch.randn(2, 4, 4, 4)], algorithm="sparsegpt", include=["patch_embed.0", "fc"], report=rep)
    assert [r.name for r in rep.layers] == ["patch_embed.0.weight", "fc.weight"]
