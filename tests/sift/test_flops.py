"""count_flops against hand counts and torch's FlopCounterMode (an independent counter)."""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nmsparse.errors import ShapeError
from nmsparse.examples import mlp, small_cnn
from nmsparse.nn import attach_mask_
from nmsparse.sift import FAMILIES, count_flops, transform


def _torch_macs(model, shape):
    # FlopCounterMode counts 2 FLOPs per multiply-add of mm/conv, and every weight as non-zero.
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(shape))
    return counter.get_total_flops() // 2


def test_hand_count_tiny_model():
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1)  # 5x5 -> 3x3 outputs
    lin = nn.Linear(27, 4)
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), lin)
    report = count_flops(model, (2, 2, 5, 5))
    assert report.layers["0"].macs == 2 * 3 * 3 * (3 * 2 * 3 * 3)  # batch x positions x weights
    assert report.layers["3"].macs == 2 * 27 * 4
    assert report.total == 2 * 9 * 54 + 2 * 108


def test_masked_layers_count_nonzeros_at_their_positions():
    conv = nn.Conv2d(4, 2, 3, padding=1)
    keep = torch.ones(2, 4, 3, 3, dtype=torch.bool)
    keep[:, :3] = False  # keeps 2 * 1 * 3 * 3 = 18 weights
    attach_mask_(conv, "weight", keep, 0.25)
    lin = nn.Linear(2 * 16, 5)
    keep = torch.ones(5, 32, dtype=torch.bool)
    keep[:, ::2] = False  # keeps 5 * 16 = 80
    attach_mask_(lin, "weight", keep, 0.5)
    model = nn.Sequential(conv, nn.Flatten(), lin)
    report = count_flops(model, (3, 4, 4, 4))
    assert report.layers["0"].macs == 3 * 16 * 18
    assert report.layers["0"].dense_macs == 3 * 16 * 72
    assert report.layers["2"].macs == 3 * 80
    assert report.layers["0"].density == pytest.approx(0.25)


@pytest.mark.parametrize("make, shape", [(small_cnn, (2, 1, 8, 8)), (lambda: mlp((32, 48)), (3, 64))])
def test_dense_models_match_flop_counter_mode(make, shape):
    model = make()
    assert count_flops(model, shape).total == _torch_macs(model, shape)


@pytest.mark.parametrize("family", FAMILIES)
def test_transformed_dense_equivalent_matches_flop_counter_mode(family):
    # FlopCounterMode sees every (masked) weight as dense: it checks positions and that no layer
    # of the nested Sparse-IFT modules is missed.
    model = transform(small_cnn(width=4), family, 0.75, input_shape=(1, 1, 8, 8))
    report = count_flops(model, (2, 1, 8, 8))
    assert report.dense_total == _torch_macs(model, (2, 1, 8, 8))
    by_hand = 0
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nnz = int((module.weight != 0).sum()) if hasattr(module, "parametrizations") else module.weight.numel()
            by_hand += nnz * report.layers[name].dense_macs // module.weight.numel()
    assert report.total == by_hand


def test_group_and_table():
    model = transform(small_cnn(width=4), "parallel", 0.5)
    report = count_flops(model, (1, 1, 8, 8))
    assert report.group("conv2") == report.layers["conv2.branches.0.0"].macs + report.layers["conv2.branches.1.0"].macs
    assert "conv2.branches.1.0" in report.table() and "total" in str(report)


@pytest.mark.parametrize("shape", [(), (0, 64), (-1, 64)])
def test_bad_input_shape(shape):
    with pytest.raises(ShapeError, match="input_shape"):
        count_flops(mlp(), shape)
