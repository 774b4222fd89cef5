"""WGSEFRegularizer against the functional prox, projection/report, and shrink_model against the original."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nmsparse.errors import ShapeError
from nmsparse.examples import mlp, small_cnn
from nmsparse.regularizers.envelope import wgsef, wgsef_prox
from nmsparse.regularizers.regularizer import WGSEFRegularizer, group_sparsity
from nmsparse.regularizers.shrink import shrink_model


def _flat(g):
    return torch.cat([p.detach().reshape(-1) for p in g.params]), torch.cat([lab.reshape(-1) for lab in g.labels])


@pytest.mark.parametrize("groups", ["rows", "columns", "kernel_shapes", "nm:4", "entries"])
def test_step_equals_functional_prox_per_layer(groups):
    model = small_cnn(width=4, seed=1)
    layers = ["conv2", "conv3"] if groups == "kernel_shapes" else None
    lam = {"conv2": 0.5, "conv3": 0.0} if layers else 0.3
    reg = WGSEFRegularizer(model, groups=groups, k=0.25, lam=lam, layers=layers, weights="sqrt_size")
    before = {g.name: _flat(g) for g in reg.layers}
    reg.step(lr=0.2)
    for g in reg.layers:
        x, labels = before[g.name]
        step = 0.2 * reg.lam[g.name]
        want = wgsef_prox(x, reg.k[g.name], step, groups=labels, weights=g.sizes.double().sqrt())
        torch.testing.assert_close(_flat(g)[0], want, rtol=1e-6, atol=1e-7)
        if step == 0:
            assert torch.equal(_flat(g)[0], x)


def test_k_resolution_penalty_and_errors():
    model = mlp(hidden=(20, 10), seed=0)
    reg = WGSEFRegularizer(model, "rows", k={"fc1": 0.5, "fc2": 3}, lam={"fc1": 1.0, "fc2": 2.0})
    assert reg.k == {"fc1": 10, "fc2": 3} and [g.name for g in reg.layers] == ["fc1", "fc2"]
    want = 0.0
    for g in reg.layers:
        x, labels = _flat(g)
        want += reg.lam[g.name] * wgsef(x, reg.k[g.name], groups=labels)
    assert reg.penalty() == pytest.approx(want, rel=1e-12)
    for kw, match in [
        (dict(k=0), r"k must be in \[1, 20\].*got 0"),
        (dict(k=21), r"got 21"),
        (dict(k=1.5), r"share of groups kept and must be in \(0, 1\]"),
        (dict(k=3, lam=-1.0), r"lam must be a finite number >= 0"),
        (dict(k={"fc1": 2}, groups={"fc1": "rows", "fc2": "rows"}), r"k has no entry for layer 'fc2'"),
        (dict(k=2, layers=["nope"]), r"no Linear/Conv layer named 'nope'"),
        (dict(k=2, weights="log"), r"weights must be None, 'size'"),
        (dict(k=2, method="fast"), r"unknown method 'fast'"),
    ]:
        kw = {"groups": "rows", **kw}
        with pytest.raises((ShapeError, ValueError), match=match):
            WGSEFRegularizer(model, **kw)
    with pytest.raises(ValueError, match="lr must be a finite number"):
        reg.step(float("nan"))


def test_training_reaches_k_groups_then_project_and_report():
    torch.manual_seed(0)
    model = mlp(hidden=(32,), seed=0)
    reg = WGSEFRegularizer(model, groups={"fc1": "rows"}, k=6, lam=5.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(64, 64), torch.randint(0, 10, (64,))
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        reg.step(0.05)
    nonzero = reg.report()[0].nonzero_groups
    assert 6 <= nonzero < 32  # the prox zeroes groups but never below k
    kept = reg.project_()["fc1"]
    rep = reg.report()[0]
    assert int(kept.sum()) == 6 and rep.nonzero_groups == 6 and rep.group_sparsity == pytest.approx(26 / 32)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    reg.project_()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # idempotent
    assert [r.nonzero_groups for r in group_sparsity(model, "rows")] == [6, 10]


def _kill(layer, units, bias_value=None):
    with torch.no_grad():
        layer.weight[units] = 0
        if layer.bias is not None and bias_value is not None:
            layer.bias[units] = bias_value


def _check_same(model, small, x):
    model.eval(), small.eval()
    torch.testing.assert_close(small(x), model(x), rtol=1e-5, atol=1e-5)


def test_shrink_mlp_folds_constant_units_and_drops_unused_ones():
    model = mlp(hidden=(16, 12), seed=3)
    _kill(model.fc1, [1, 4, 5], bias_value=0.7)  # constant relu(0.7) folded into fc2's bias
    with torch.no_grad():
        model.fc2.weight[:, 9] = 0  # fc1 unit 9 unused
        model.fc3.weight[:, [0, 11]] = 0  # fc2 units 0, 11 unused
    small, rep = shrink_model(model)
    assert (small.fc1.out_features, small.fc2.in_features, small.fc2.out_features, small.fc3.in_features) == (12, 12, 10, 10)
    assert rep.layers == [("fc1", 16, 12), ("fc2", 12, 10)] and rep.params_after < rep.params_before
    _check_same(model, small, torch.randn(32, 64))
    assert model.fc1.out_features == 16  # original untouched


def test_shrink_cnn_with_batchnorm_groups_and_flatten():
    model = small_cnn(width=4, seed=2)
    model.train()
    for _ in range(3):  # give BatchNorm non-trivial running statistics
        model(torch.randn(16, 1, 8, 8))
    reg = WGSEFRegularizer(model, groups={"conv1": "filters", "conv2": "filters", "conv3": "filters"}, k=1, lam=0)
    with torch.no_grad():
        for g, units in zip(reg.layers, ([0, 2], [1, 3, 4], [0, 7])):
            keep = torch.ones(g.n_groups, dtype=torch.float64)
            keep[units] = 0
            reg.rescale_groups(g, keep)  # whole group (weights, bias, BN affine) zero -> exact zero output
        model.conv3.weight[5] = 0  # conv3 filter 5 dead but its BN output is a non-zero constant
    small, rep = shrink_model(model)
    assert [r[2] for r in rep.layers] == [2, 5, 5, 64]
    assert small.bn2.num_features == 5 and small.fc1.in_features == 5 * 16
    _check_same(model, small, torch.randn(8, 1, 8, 8))


def test_shrink_keeps_constant_channel_before_padded_conv():
    model = small_cnn(width=4, seed=4, batch_norm=False)
    _kill(model.conv1, [3], bias_value=0.5)  # relu(0.5) != 0 and conv2 pads: not removable exactly
    _kill(model.conv2, [2], bias_value=-1.0)  # relu(-1) = 0: removable
    small, rep = shrink_model(model)
    assert rep.kept_constant == [("conv1", 3)]
    assert small.conv1.out_channels == 4 and small.conv2.out_channels == 7
    _check_same(model, small, torch.randn(8, 1, 8, 8))
    with pytest.raises(ShapeError, match="needs an nn.Sequential"):
        shrink_model(nn.ModuleList([nn.Linear(2, 2)]))


def test_shrink_keeps_one_unit_when_a_layer_is_all_dead():
    model = mlp(hidden=(6,), seed=5)
    _kill(model.fc1, list(range(6)), bias_value=0.3)
    small, rep = shrink_model(model)
    assert small.fc1.out_features == 1 and rep.layers == [("fc1", 6, 1)]
    _check_same(model, small, torch.randn(4, 64))
