"""AdaPrune: masks valid and fixed, each layer's reconstruction error strictly lower, calibration kinds."""

import copy

import pytest
import torch
from torch import nn

import nmsparse as nms
from nmsparse.errors import ConvertError
from nmsparse.oneshot import adaprune, reestimate_batchnorm
from nmsparse.errors import ShapeError


class Net(nn.Module):
    """conv -> bn -> relu -> linear, with a keyword-only ``scale`` to exercise dict/tuple calls."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x, scale=1.0):
        h = torch.relu(self.bn(self.conv(x * scale)))
        return self.head(torch.relu(self.fc(h.flatten(1))))


def _calib(kind, batches=3, n=24):
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(n, 4, 4, 4, generator=g) for _ in range(batches)]
    if kind == "tensor":
        return xs
    if kind == "tuple":
        return [(x, 1.0) for x in xs]
    return [{"x": x, "scale": 1.0} for x in xs]


def _dense_outputs(model, calib):
    """Each layer's dense output on the calibration data, by direct hooks (the oracle's targets)."""
    outs = {}
    hooks = [m.register_forward_hook(lambda mod, a, o, n=n: outs.setdefault(n, []).append(o.detach().clone()))
             for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    with torch.no_grad():
        model.eval()
        for b in calib:
            model(b) if isinstance(b, torch.Tensor) else model(**b) if isinstance(b, dict) else model(*b)
    for h in hooks:
        h.remove()
    return outs


@pytest.mark.parametrize("kind", ["tensor", "tuple", "dict"])
@pytest.mark.parametrize("pattern", ["2:4", "2:4T"])
def test_adaprune_lowers_every_layer_error_and_keeps_masks(kind, pattern):
    dense = Net()
    model = copy.deepcopy(dense)
    calib = _calib(kind)
    targets = _dense_outputs(dense, calib)
    out = adaprune(model, calib, pattern, exclude="head", iterations=60, lr=1e-2, batch_size=16, batchnorm=False)
    assert out is model
    rep = model.adaprune_report
    assert [f.name for f in rep.layers] == ["conv", "fc"]
    assert [name for name, _ in rep.skipped] == ["head"]
    for fit in rep.layers:
        assert fit.improved and fit.error_after < fit.error_before
        module = model.get_submodule(fit.name)
        nms.check_mask(module.weight != 0, pattern, exact=False)
        # The mask is the magnitude mask of the dense weight, and it stayed fixed.
        mask = nms.find_mask(dense.get_submodule(fit.name).weight.detach(), pattern)
        assert not torch.any((module.weight != 0) & ~mask)
        zeros = module.weight[~mask]
        assert torch.all(torch.copysign(torch.ones_like(zeros), zeros) > 0)  # +0.0, not -0.0
    # Oracle for the reported error: rerun the fitted conv on the dense inputs (non-sequential).
    x = torch.cat([b if isinstance(b, torch.Tensor) else b["x"] if isinstance(b, dict) else b[0] for b in calib])
    with torch.no_grad():
        y = model.conv(x)
    ref = torch.cat(targets["conv"])
    err = float((y.double() - ref.double()).pow(2).sum() / ref.double().pow(2).sum())
    assert err == pytest.approx(rep.layers[0].error_after, rel=1e-4)


def test_masked_model_equals_plain_masked_forward_and_no_hooks_remain():
    model = adaprune(Net(), _calib("tensor"), "2:4T", exclude="head", iterations=5, batchnorm=False)
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
    x = torch.randn(5, 4, 4, 4)
    plain = copy.deepcopy(model)
    model.eval(), plain.eval()
    assert torch.equal(model(x), plain(x))


def test_sequential_uses_pruned_predecessors():
    calib = _calib("tensor")
    seq = adaprune(Net(), calib, "2:4", exclude="head", iterations=40, lr=1e-2, sequential=True, batchnorm=False)
    par = adaprune(Net(), calib, "2:4", exclude="head", iterations=40, lr=1e-2, sequential=False, batchnorm=False)
    s, p = seq.adaprune_report.layers, par.adaprune_report.layers
    assert s[0].error_before == pytest.approx(p[0].error_before)  # first layer: same inputs
    assert s[1].error_before != pytest.approx(p[1].error_before)  # fc sees the pruned conv's outputs
    assert all(f.error_after < f.error_before for f in s)


def test_support_scores_keep_unstructured_nonzeros():
    model = Net()
    with torch.no_grad():
        w = model.fc.weight
        keep = nms.unstructured_mask(w, 0.5)
        w.copy_(torch.where(keep, w, torch.zeros(())))
    support_before = model.fc.weight != 0
    out = adaprune(copy.deepcopy(model), _calib("tensor"), "2:4T", include="fc", scores="support", iterations=0, batchnorm=False)
    mag = adaprune(copy.deepcopy(model), _calib("tensor"), "2:4T", include="fc", iterations=0, batchnorm=False)
    kept_support = int((out.fc.weight != 0).sum())
    assert kept_support >= int((mag.fc.weight != 0).sum())
    assert not torch.any((out.fc.weight != 0) & ~support_before)
    # Optimal overlap: the number of non-zeros an exact 2:4T mask can keep, with 0/1 scores.
    best = nms.solve_mask(model.fc.weight, "2:4T", scores=support_before.float())
    assert kept_support == int(round(best.objective))


def test_batchnorm_is_reestimated():
    model = Net()
    calib = _calib("tensor")
    model = adaprune(model, calib, "2:4", exclude="head", iterations=0)
    assert model.adaprune_report.batchnorm == 1
    with torch.no_grad():
        hs = [model.conv(x) for x in calib]
    # A cumulative average over the batches: equal weight per batch of its mean and unbiased variance.
    mean = torch.stack([h.mean((0, 2, 3)) for h in hs]).mean(0)
    var = torch.stack([h.var((0, 2, 3), unbiased=True) for h in hs]).mean(0)
    assert torch.allclose(model.bn.running_mean, mean, atol=1e-5)
    assert torch.allclose(model.bn.running_var, var, rtol=1e-4, atol=1e-6)
    assert model.bn.momentum == 0.1 and reestimate_batchnorm(nn.Linear(2, 2), calib) == 0


def test_half_precision_model():
    model = nn.Sequential(nn.Linear(16, 8)).to(torch.bfloat16)
    calib = [torch.randn(32, 16).to(torch.bfloat16) for _ in range(2)]
    adaprune(model, calib, "2:4", iterations=30, lr=1e-2, batchnorm=False)
    assert model[0].weight.dtype == torch.bfloat16
    nms.check_mask(model[0].weight != 0, "2:4")
    assert model.adaprune_report.layers[0].error_after < model.adaprune_report.layers[0].error_before


def test_bad_arguments():
    with pytest.raises(ShapeError, match="layer conv1.weight"):
        adaprune(nn.Sequential().add_module("conv1", nn.Conv2d(1, 4, 3)) or _seq_conv1(), [torch.randn(2, 1, 5, 5)], "2:4")
    with pytest.raises(ConvertError, match="empty"):
        adaprune(Net(), [], "2:4")
    with pytest.raises(ConvertError, match="single Tensor"):
        adaprune(Net(), torch.randn(2, 4, 4, 4), "2:4")
    with pytest.raises(ConvertError, match="batch 0 is a int"):
        adaprune(Net(), [3], "2:4")
    with pytest.raises(ConvertError, match="iterations"):
        adaprune(Net(), _calib("tensor"), "2:4", iterations=-1)
    with pytest.raises(ConvertError, match="scores has no entry"):
        adaprune(Net(), _calib("tensor"), "2:4", exclude="head", scores={})


@pytest.mark.parametrize("name,scores,match", [
    ("callable raises", lambda n, m: 1 / 0, r"layer 0.weight: the scores callable failed \(ZeroDivisionError"),
    ("callable returns None", lambda n, m: None, r"layer 0.weight: scores must be a tensor .*got NoneType"),
    ("callable returns a list", lambda n, m: [1.0] * 64, "got list"),
    ("wrong shape", lambda n, m: torch.ones(3), r"got shape \(3,\)"),
    ("dict value not a tensor", {"0.weight": 1.0}, "got float"),
])
def test_bad_user_scores_are_score_errors_and_leave_the_model_unchanged(name, scores, match):
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(nms.ScoreError, match=match):
        nms.prune_(model, "2:4", algorithm="magnitude", scores=scores)
    for k, v in state.items():
        assert torch.equal(model.state_dict()[k], v), (name, k)


def _seq_conv1():
    m = nn.Sequential()
    m.add_module("conv1", nn.Conv2d(1, 4, 3))
    return m
