"""sparsify_ / update_masks_ / squash_ / summary on real models: refresh schedule, validity,
regrowth, static masks, checkpoints and baking."""

import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrize

import nmsparse as nms
from nmsparse.examples import DigitsData, load_digits_split, small_cnn, train
from nmsparse.nn import sparsified_parameters, sparsify_, squash_, summary, update_masks_


def _masks(model):
    return {n: m.parametrizations[p][0].mask.clone() for n, (m, p) in sparsified_parameters(model).items()}


def _mlp(seed=0, width=32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 8))


def _step(model, opt, x):
    opt.zero_grad()
    model(x).square().mean().backward()
    opt.step()


@pytest.fixture(scope="module")
def digits():
    full = load_digits_split(seed=0)  # a slice keeps these tests quick: 10 steps of 64 per epoch
    return DigitsData(full.x_train[:640], full.y_train[:640], full.x_test, full.y_test)


@pytest.mark.parametrize("pattern,method", [("2:4T", "exact"), ("2:4T", "greedy"), ("4:8T", "refine"), ("2:4", None), ("1:4", None)])
def test_masks_valid_at_every_refresh(digits, pattern, method):
    model = sparsify_(small_cnn(width=8, seed=0), pattern, method=method, update_every=1, exclude=["conv1", "fc2"])
    seen = []

    def check(m, step):
        for name, mask in _masks(m).items():
            # The paper's greedy 2-approximation may leave a tile short (at most n); the others fill every tile.
            nms.check_mask(mask, pattern, exact=method != "greedy")
            seen.append(name)

    train(model, digits, epochs=1, after_step=check)
    assert len(seen) == 3 * 10
    assert all(r["last_refresh"] == 10 for r in summary(model).rows if r["status"] == "sparse")


def test_refresh_schedule_counts_training_forwards_only():
    model = sparsify_(_mlp(), "2:4T", update_every=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x = torch.randn(64, 16)
    before = _masks(model)
    _step(model, opt, x)
    _step(model, opt, x)
    assert all(torch.equal(before[k], v) for k, v in _masks(model).items())  # 2 < 3 passes
    model.eval()
    for _ in range(5):
        model(x)  # eval passes never refresh
    model.train()
    with torch.no_grad():
        model(x)  # nor do passes without gradients
    assert summary(model).forward_count == 2
    _step(model, opt, x)
    assert summary(model).forward_count == 3
    assert all(r["last_refresh"] == 3 for r in summary(model).rows)


def test_pruned_weights_regrow_and_masks_follow_dense_weights():
    model = sparsify_(_mlp(), "2:4T", update_every=1)
    module, pname = sparsified_parameters(model)["0.weight"]
    dense = module.parametrizations[pname].original
    mask = module.parametrizations[pname][0].mask
    pruned = (~mask).nonzero()[0]
    with torch.no_grad():
        dense[tuple(pruned)] = 100.0  # a pruned weight that grew large through STE updates
    model(torch.randn(2, 16))
    assert mask[tuple(pruned)]  # regrown at the refresh
    torch.testing.assert_close(mask, nms.find_mask(dense.detach(), "2:4T"), rtol=0, atol=0)


def test_dynamic_training_regrows_and_static_freezes(digits):
    dynamic = sparsify_(small_cnn(width=8, seed=0), "2:4T", update_every=5, exclude=["conv1", "fc2"])
    static = sparsify_(small_cnn(width=8, seed=0), "2:4T", update="static", exclude=["conv1", "fc2"])
    start_d, start_s = _masks(dynamic), _masks(static)
    train(dynamic, digits, epochs=1, lr=5e-3)
    train(static, digits, epochs=1, lr=5e-3)
    regrown = sum(int((~start_d[k] & v).sum()) for k, v in _masks(dynamic).items())
    assert regrown > 0
    assert all(torch.equal(start_s[k], v) for k, v in _masks(static).items())
    update_masks_(static)
    assert all(torch.equal(start_s[k], v) for k, v in _masks(static).items())
    update_masks_(static, force=True)
    assert any(not torch.equal(start_s[k], v) for k, v in _masks(static).items())


def test_state_dict_round_trip_gives_identical_outputs(digits):
    model = sparsify_(small_cnn(width=8, seed=0), "4:8T", update_every=2, exclude="conv1|fc2")
    train(model, digits, epochs=1)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    assert any(k.endswith("parametrizations.weight.0.mask") for k in model.state_dict())
    fresh = sparsify_(small_cnn(width=8, seed=123), "4:8T", update_every=2, exclude="conv1|fc2")
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    model.eval(), fresh.eval()
    x = digits.x_test[:64]
    assert torch.equal(model(x), fresh(x))
    assert all(torch.equal(_masks(model)[k], v) for k, v in _masks(fresh).items())
    assert [r["last_refresh"] for r in summary(fresh).rows] == [r["last_refresh"] for r in summary(model).rows]


def test_squash_bakes_positive_zeros_and_removes_everything(digits):
    model = sparsify_(small_cnn(width=8, seed=0), "2:4T", update_every=1, exclude=["conv1", "fc2"], gradient="srste")
    train(model, digits, epochs=1)
    model.eval()
    x = digits.x_test[:64]
    before = model(x)
    masks = _masks(model)
    dense_param = model.fc1.parametrizations.weight.original
    squash_(model)
    assert torch.equal(model(x), before)
    assert model.fc1.weight is dense_param  # the optimizer's Parameter object survives
    for name, mask in masks.items():
        module = model.get_submodule(name.rsplit(".", 1)[0])
        assert type(module) in (nn.Conv2d, nn.Linear) and not parametrize.is_parametrized(module)
        w = module.weight.detach()
        assert torch.equal(w != 0, mask & (w != 0)) and not torch.signbit(w[~mask]).any()
        nms.check_mask(w != 0, "2:4T")
    assert not model._forward_pre_hooks and not hasattr(model, "_nmsparse_state")
    assert not any("mask" in k for k in model.state_dict())
    assert summary(model).rows == []


def test_conv1d_conv3d_and_named_parameter():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Parameter(torch.randn(8, 16))
            self.conv1d = nn.Conv1d(8, 8, 3)
            self.conv3d = nn.Conv3d(4, 8, 2)

        def forward(self, x):
            return self.table

    model = sparsify_(Custom(), "2:4", include=["conv1d", "conv3d", "table"])
    entries = sparsified_parameters(model)
    assert set(entries) == {"table", "conv1d.weight", "conv3d.weight"}
    for name, mask in _masks(model).items():
        nms.check_mask(mask, "2:4", exact=True)
    assert torch.count_nonzero(model.table) == 8 * 8


def test_summary_lists_skipped_layers_with_reasons():
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 16, 3, groups=4), nn.Conv2d(16, 8, 1), nn.Linear(8, 6), nn.Linear(8, 8))
    sparsify_(model, "2:4T", exclude="2")
    rows = {r["name"]: r for r in summary(model).rows}
    assert rows["0.weight"]["status"].startswith("skipped: in_channels=3 is not a multiple of m=4")
    assert "grouped convolution" in rows["1.weight"]["status"]
    assert rows["2.weight"]["status"] == "skipped: excluded by exclude="
    assert "matrix rows" in rows["3.weight"]["status"]
    assert rows["4.weight"]["status"] == "sparse"
    assert list(rows) == ["0.weight", "1.weight", "2.weight", "3.weight", "4.weight"]  # module order
    with pytest.raises(nms.NMSparseError, match="no layer can take"):
        sparsify_(nn.Sequential(nn.Conv2d(3, 16, 3)), "2:4")
    text = str(summary(model))
    assert "grouped convolution" in text


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 4), cols=st.integers(1, 4), nm=st.sampled_from([(1, 2), (2, 4), (3, 4), (4, 8)]),
    transposable=st.booleans(), seed=st.integers(0, 2**16),
)
def test_property_masks_valid_and_weights_obey_pattern(rows, cols, nm, transposable, seed):
    n, m = nm
    pattern = nms.NMPattern(n, m, transposable)
    torch.manual_seed(seed)
    layer = nn.Linear(cols * m, rows * m)
    model = sparsify_(nn.Sequential(layer), pattern, method="exact" if transposable else None)
    w = layer.weight.detach()
    nms.check_mask(w != 0, pattern)
    nms.check_mask(layer.parametrizations.weight[0].mask, pattern, exact=True)
    assert not torch.signbit(w[w == 0]).any()
    assert torch.equal(model(torch.zeros(1, cols * m)), layer.bias.detach()[None])
