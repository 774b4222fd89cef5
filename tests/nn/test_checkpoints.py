"""Checkpoints of masked models: one key layout, pattern checks on load, schedule resume, plain <-> masked."""

import copy
import io

import pytest
import torch
from torch import nn

import nmsparse as nms
from nmsparse.errors import CheckpointError
from nmsparse.nn import (load_plain_state_dict_, plain_state_dict, sparsified_parameters, sparsify_, squash_,
                         summary)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 8))


def _train(model, passes, seed=0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(passes):
        opt.zero_grad()
        model(torch.randn(8, 16, generator=g)).square().mean().backward()
        opt.step()


def test_one_key_layout_of_tensors_only():
    model = sparsify_(_mlp(), "2:4T", exclude="4")
    sd = model.state_dict()
    assert sorted(k for k in sd if k.startswith("0.")) == [
        "0.bias", "0.parametrizations.weight.0.last_refresh", "0.parametrizations.weight.0.mask",
        "0.parametrizations.weight.0.pattern_code", "0.parametrizations.weight.0.step_count",
        "0.parametrizations.weight.original",
    ]
    assert all(torch.is_tensor(v) for v in sd.values())
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=True)
    other = sparsify_(_mlp(1), "2:4T", exclude="4")
    other.load_state_dict(back)
    x = torch.randn(3, 16)
    assert torch.equal(other(x), model(x))


def test_checkpoint_for_another_pattern_is_refused_naming_both():
    source = sparsify_(_mlp(), "4:8T", exclude="4")
    target = sparsify_(_mlp(1), "2:4T", exclude="4")
    before = copy.deepcopy(target.state_dict())
    with pytest.raises(CheckpointError, match=r"layer '0.weight'.*made for pattern 4:8T.*this model's mask is 2:4T"):
        target.load_state_dict(source.state_dict())
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in before.items())  # nothing loaded
    # Loading into the layer alone (no model-level check) still refuses before the mask is copied.
    layer_sd = {k[2:]: v for k, v in source.state_dict().items() if k.startswith("2.")}
    with pytest.raises(CheckpointError, match="made for pattern 4:8T"):
        target[2].load_state_dict(layer_sd)
    assert torch.equal(target[2].parametrizations.weight[0].mask, before["2.parametrizations.weight.0.mask"])
    dense = sparsify_(_mlp(1), 0.5, exclude="4")
    with pytest.raises(CheckpointError, match=r"made for pattern 4:8T.*unstructured 0.5"):
        dense.load_state_dict(source.state_dict())


def test_a_mask_that_breaks_the_pattern_is_refused():
    model = sparsify_(_mlp(), "2:4T", exclude="4")
    sd = model.state_dict()
    sd["0.parametrizations.weight.0.mask"][0, :4] = True  # 4 kept in a group of 4
    with pytest.raises(CheckpointError, match=r"does not obey this model's pattern 2:4T"):
        sparsify_(_mlp(1), "2:4T", exclude="4").load_state_dict(sd)


def test_schedule_resumes_where_it_stopped():
    run = sparsify_(_mlp(), "2:4T", update_every=3, exclude="4")
    _train(run, 5, seed=1)
    saved = copy.deepcopy(run.state_dict())
    assert summary(run).forward_count == 5
    _train(run, 4, seed=2)  # passes 6..9: refreshes at 6 and 9

    resumed = sparsify_(_mlp(7), "2:4T", update_every=3, exclude="4")
    resumed.load_state_dict(saved)
    assert summary(resumed).forward_count == 5
    _train(resumed, 4, seed=2)
    for k, v in run.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=0, atol=0, msg=k)
    assert {r["last_refresh"] for r in summary(resumed).rows if r["status"] == "sparse"} == {9}


def test_plain_state_dict_is_the_squashed_model():
    model = sparsify_(_mlp(), "2:4T", exclude="4")
    _train(model, 3)
    plain = plain_state_dict(model)
    assert plain.keys() == _mlp().state_dict().keys()
    squashed = squash_(copy.deepcopy(model)).state_dict()
    for k, v in plain.items():
        assert torch.equal(v, squashed[k]) and not torch.signbit(v[v == 0]).any()
    assert plain_state_dict(model.state_dict()).keys() == plain.keys()  # from a state dict too
    fresh = _mlp(3)
    fresh.load_state_dict(plain)
    x = torch.randn(2, 16)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


def test_load_plain_state_dict_into_a_masked_model():
    pretrained = _mlp(5)
    model = sparsify_(_mlp(), "2:4T", exclude="4", method="greedy")
    load_plain_state_dict_(model, pretrained.state_dict())
    reference = sparsify_(copy.deepcopy(pretrained), "2:4T", exclude="4", method="greedy")
    for name, (module, pname) in sparsified_parameters(model).items():
        ref_module, _ = sparsified_parameters(reference)[name]
        assert torch.equal(module.parametrizations[pname][0].mask, ref_module.parametrizations[pname][0].mask)
        assert torch.equal(module.parametrizations[pname].original, ref_module.parametrizations[pname].original)
    keep = sparsify_(_mlp(), "2:4T", exclude="4")
    masks = {n: m.parametrizations[p][0].mask.clone() for n, (m, p) in sparsified_parameters(keep).items()}
    load_plain_state_dict_(keep, pretrained.state_dict(), masks="keep")
    assert all(torch.equal(masks[n], m.parametrizations[p][0].mask) for n, (m, p) in sparsified_parameters(keep).items())
    target = sparsify_(_mlp(), "2:4T", exclude="4")
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"has no '0.bias' \(\d+ more keys differ\)"):
        load_plain_state_dict_(target, {"0.weight": pretrained[0].weight})
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())  # refused before anything loads
    with pytest.raises(nms.ArgumentError, match="masks must be"):
        load_plain_state_dict_(keep, pretrained.state_dict(), masks="magnitude")
