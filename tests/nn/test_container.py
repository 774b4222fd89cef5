"""The one mask container: no stacking, any entry point seen everywhere, SET/RigL through sparsify_
for every pattern, tied weights, deepcopy + squash, attach_mask_."""

import copy

import pytest
import torch
from torch import nn

import nmsparse as nms
from nmsparse.nn import (attach_mask_, kept_and_density, sparsified_parameters, sparsify_, squash_, summary,
                         update_masks_)
from nmsparse.examples import mlp
from nmsparse.sift import transform


def _masks(model):
    return {n: m.parametrizations[p][0].mask.clone() for n, (m, p) in sparsified_parameters(model).items()}


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 8))


def _step(model, opt, x):
    opt.zero_grad()
    model(x).square().mean().backward()
    opt.step()


def test_sparsify_on_a_sparse_ift_model_replaces_its_masks():
    model = transform(mlp((32, 32, 32)), "parallel", 0.5, seed=0)
    assert len(sparsified_parameters(model)) == 4  # 2 branches x fc2, fc3
    sparsify_(model, "2:4T", include=r"fc\d.branches.\d")
    for name, (module, pname) in sparsified_parameters(model).items():
        assert len(module.parametrizations[pname]) == 1  # one parametrization per weight
        mask = module.parametrizations[pname][0].mask
        nms.check_mask(mask, "2:4T", exact=True)
        # The effective weight is exactly the dense weight under the one new mask.
        dense = module.parametrizations[pname].original
        assert torch.equal(module.weight, torch.where(mask, dense, torch.zeros(())))
    rows = {r["name"]: r for r in summary(model).rows}
    assert all(r["pattern"] == "2:4T" and r["density"] == 0.5 for r in rows.values())
    assert kept_and_density(model)[1] == 0.5


def test_every_entry_point_is_seen_by_summary_update_squash_and_density():
    model = _mlp()
    attach_mask_(model, "2.weight", nms.find_mask(model[2].weight.detach(), "2:4"), "2:4", update="refresh")
    sparsify_(model, 0.25, include="4")
    names = [r["name"] for r in summary(model).rows if r["status"] == "sparse"]
    assert sorted(names) == ["2.weight", "4.weight"]
    assert kept_and_density(model)[1] == pytest.approx((16 * 32 * 0.5 + 8 * 16 * 0.25) / (16 * 32 + 8 * 16))
    update_masks_(model)
    x = torch.randn(4, 16)
    expect = model(x)
    squash_(model)
    assert not any(hasattr(m, "parametrizations") for m in model.modules())
    assert torch.equal(model(x), expect)


def test_resolved_method_is_stored_and_shown():
    model = sparsify_(_mlp(), "2:4", method="exact")
    assert {r["solver"] for r in summary(model).rows if r["status"] == "sparse"} == {"topn"}
    model = sparsify_(_mlp(), "4:8T")
    assert {r["solver"] for r in summary(model).rows if r["status"] == "sparse"} == {"exact"}
    assert "exact" in str(summary(model))


@pytest.mark.parametrize("update", ["set", "rigl"])
@pytest.mark.parametrize("pattern", ["2:4", "2:4T", "4:8T", 0.3])
def test_set_and_rigl_through_sparsify_keep_every_mask_valid(update, pattern):
    model = _mlp(1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sparsify_(model, pattern, update=update, update_every=2, total_steps=20, exclude="4", optimizer=opt, seed=3)
    start = _masks(model)
    for _ in range(20):
        _step(model, opt, torch.randn(8, 16))
    changed = False
    for name, (module, pname) in sparsified_parameters(model).items():
        nm = module.parametrizations[pname][0]
        assert nm.gradient == "masked" and nm.update == update
        assert int(nm.mask.sum()) == int(start[name].sum())  # exact active count
        if isinstance(pattern, str):
            nms.check_mask(nm.mask, pattern, exact=True)
        changed |= not torch.equal(nm.mask, start[name])
        assert [h["step"] for h in nm.history] == [2, 4, 6, 8, 10, 12, 14]  # every 2 until 75 % of 20
        pruned = module.parametrizations[pname].original[~nm.mask]
        assert not pruned.any()  # masked gradients: pruned weights stay +0.0 (regrown start at 0)
    assert changed


def test_deepcopy_then_squash_leaves_the_original_training():
    model = sparsify_(_mlp(), "2:4T", update_every=1, exclude="4")
    export = squash_(copy.deepcopy(model))
    assert not any(hasattr(m, "parametrizations") for m in export.modules())
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    before = _masks(model)
    _step(model, opt, torch.randn(4, 16))
    _step(model, opt, torch.randn(4, 16))  # refreshes (update_every=1) on the original
    assert type(model[0]).__name__ == "ParametrizedLinear" and hasattr(model[0], "weight")
    assert any(not torch.equal(before[k], v) for k, v in _masks(model).items())
    assert summary(model).forward_count == 2


def test_squash_original_leaves_the_copy_working():
    model = sparsify_(_mlp(), "2:4", update_every=1, exclude="4")
    clone = copy.deepcopy(model)
    x = torch.randn(4, 16)
    with torch.no_grad():  # not a training pass: nothing counted, nothing refreshed
        expect = clone(x)
        squash_(model)
        assert torch.equal(clone(x), expect)
    clone(x)
    assert summary(clone).forward_count == 1 and summary(model).rows == []
    assert type(clone[0]) is not type(model[0])


class _Tied(nn.Module):
    """An embedding and a head sharing one Parameter (weight tying)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(16, 8)
        self.head = nn.Linear(8, 16, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, idx):
        return self.head(torch.relu(self.emb(idx)))


def test_tied_to_an_embedding_stays_dense_by_default_as_in_prune_():
    model = sparsify_(nn.ModuleDict({"a": _Tied(), "b": nn.Linear(8, 8)}), "2:4")
    rows = {r["name"]: r["status"] for r in summary(model).rows}
    assert rows["a.head.weight"].startswith("skipped: tied to the embedding a.emb.weight, which stays dense by default")
    assert not hasattr(model["a"].head, "parametrizations") and hasattr(model["b"], "parametrizations")
    pruned = nms.prune_(nn.ModuleDict({"a": _Tied(), "b": nn.Linear(8, 8)}), "2:4")  # the same choice
    assert (pruned["a"].head.weight != 0).all() and not (pruned["b"].weight != 0).all()


def test_tied_weight_one_mask_one_view():
    model = sparsify_(_Tied(), "2:4", include="head")
    assert model.emb.parametrizations.weight[0] is model.head.parametrizations.weight[0]  # one mask
    assert model.emb.parametrizations.weight.original is model.head.parametrizations.weight.original
    assert torch.equal(model.emb.weight, model.head.weight)  # one view: both read the masked weight
    assert (model.emb.weight == 0).sum() == 16 * 8 // 2
    rows = {r["name"]: r["status"] for r in summary(model).rows}
    assert rows == {"emb.weight": "sparse", "head.weight": "tied: same weight and mask as emb.weight"}
    idx = torch.arange(16)
    expect = model(idx)
    assert torch.equal(squash_(model)(idx), expect)  # squash_ does not change the outputs
    assert model.emb.weight is model.head.weight


def test_tied_weight_with_one_holder_excluded_is_skipped_with_the_reason():
    model = sparsify_(nn.ModuleDict({"a": _Tied(), "b": nn.Linear(8, 8)}), "2:4", include=["a.head", "b"], exclude="a.emb")
    rows = {r["name"]: r["status"] for r in summary(model).rows}
    assert rows["a.head.weight"].startswith("skipped: tied to a.emb.weight, which exclude= keeps dense")
    assert not hasattr(model["a"].head, "parametrizations")


def test_tied_gpt2_lm_head():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=2,
                                     tie_word_embeddings=True)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    assert model.lm_head.weight is model.transformer.wte.weight
    sparsify_(model, "2:4", include="lm_head")
    wte, head = model.transformer.wte, model.lm_head
    assert wte.parametrizations.weight[0] is head.parametrizations.weight[0]
    assert torch.equal(wte.weight, head.weight)
    assert "tied: same weight and mask as" in str(summary(model))
    ids = torch.arange(12).reshape(1, 12)
    with torch.no_grad():
        expect = model(ids).logits
        squash_(model)
        assert torch.equal(model(ids).logits, expect)


def test_attach_mask_validates_replaces_and_takes_any_conv():
    conv = nn.Conv3d(8, 4, 2)
    mask = nms.find_mask(conv.weight.detach(), "2:4")
    nm = attach_mask_(conv, "weight", mask, "2:4")
    assert nm.gradient == "masked" and nm.update == "static" and nm.layer_name == "weight"
    assert torch.equal(conv.weight != 0, mask)
    nm2 = attach_mask_(conv, "weight", nms.find_mask(conv.parametrizations.weight.original.detach(), "1:4"), "1:4", name="c")
    assert len(conv.parametrizations.weight) == 1 and conv.parametrizations.weight[0] is nm2
    with pytest.raises(nms.MaskError, match=r"attach_mask_: 'weight':.*pattern 1:8 allows at most 1"):
        attach_mask_(conv, "weight", mask, "1:8")
    with pytest.raises(nms.ShapeError, match="bool tensor of the weight's shape"):
        attach_mask_(conv, "weight", mask.float(), "2:4")
    with pytest.raises(nms.ArgumentError, match="has no parameter 'wieght'"):
        attach_mask_(conv, "wieght", mask, "2:4")
    conv1d = nn.Conv1d(8, 4, 3)
    sparsify_(nn.Sequential(conv1d), "2:4T", include="0")  # Conv1d weight (4, 8, 3) -> 4 x 24 matrix
    nms.check_mask(conv1d.parametrizations.weight[0].mask, "2:4")


def test_attach_mask_with_a_changing_policy_counts_once_under_any_driver():
    model = _mlp()
    mask = nms.find_mask(model[0].weight.detach(), "2:4")
    nm = attach_mask_(model[0], "weight", mask, "2:4", update="refresh", update_every=2)
    model(torch.randn(2, 16))
    assert nm.steps == 1  # the layer's own driver counts its training passes
    sparsify_(model, "2:4", include="2")  # a driver on the parent takes over every mask below it
    model(torch.randn(2, 16))
    assert nm.steps == 2 and nm.refreshes == 1  # counted once, not by both drivers


def test_every_mask_change_goes_through_refresh_(monkeypatch):
    # The seam for distributed / compiled variants: refresh, SET, RigL and update_masks_ all call it.
    from nmsparse.nn import NMMask

    calls = []
    original = NMMask.refresh_

    def spy(self, *args, **kwargs):
        calls.append(self.update)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(NMMask, "refresh_", spy)
    for update in ("refresh", "set", "rigl"):
        model = sparsify_(_mlp(), "2:4T", update=update, update_every=1, total_steps=8, exclude="4")
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            _step(model, opt, torch.randn(4, 16))
        update_masks_(model, force=True)
    assert {"refresh", "set", "rigl"} <= set(calls)


def test_attach_mask_on_a_tied_weight_masks_every_holder():
    model = _Tied()
    mask = nms.find_mask(model.head.weight.detach(), "2:4")
    nm = attach_mask_(model, "head.weight", mask, "2:4", name="head.weight")
    assert model.emb.parametrizations.weight[0] is nm is model.head.parametrizations.weight[0]
    assert torch.equal(model.emb.weight, model.head.weight) and torch.equal(model.emb.weight != 0, mask)
    assert [r["status"] for r in summary(model).rows] == ["sparse", "tied: same weight and mask as emb.weight"]
