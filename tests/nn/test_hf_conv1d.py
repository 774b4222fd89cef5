"""Hugging Face ``Conv1D`` (GPT-2 family) stores its weight ``(in, out)``: every mask on it is
grouped along dim 0 (the input features), whichever entry point attached it.

The oracle is independent of the library's solvers: masks are checked by counting kept entries per
group of m consecutive rows (dim 0) in each column, and per m x m tile for transposable patterns.
"""

from __future__ import annotations

import pytest
import torch

import nmsparse as nms
from nmsparse.errors import CheckpointError, MaskError
from nmsparse.nn import attach_mask_, squash_, summary

transformers = pytest.importorskip("transformers")

CONV1D = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]


def tiny_gpt2(seed: int = 0, layers: int = 1):
    cfg = transformers.GPT2Config(n_layer=layers, n_embd=32, n_head=4, vocab_size=64, n_positions=32)
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(cfg)


def conv1d_names(model):
    return [f"transformer.h.{i}.{c}" for i in range(len(model.transformer.h)) for c in CONV1D]


def valid_along_dim0(mask: torch.Tensor, pattern) -> bool:
    """Brute-force check: at most n kept per m consecutive rows of every column (and per tile column
    and row for transposable patterns); ``mask`` is ``(in, out)``."""
    if isinstance(pattern, float):
        return True
    p = nms.NMPattern.parse(pattern)
    rows, cols = mask.shape
    for c in range(cols):
        for r in range(0, rows, p.m):
            if int(mask[r:r + p.m, c].sum()) > p.n:
                return False
    if p.transposable:  # every row of every m x m tile as well
        for r in range(rows):
            for c in range(0, cols, p.m):
                if int(mask[r, c:c + p.m].sum()) > p.n:
                    return False
    return True


def topn_dim0(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Oracle for row-wise N:M along dim 0: the n largest |w| of each m consecutive rows per column."""
    a = w.detach().abs().t().reshape(w.shape[1], -1, m)
    keep = torch.zeros_like(a, dtype=torch.bool)
    keep.scatter_(-1, a.topk(n, dim=-1).indices, True)
    return keep.reshape(w.shape[1], w.shape[0]).t()


def masks_of(model):
    return {name: model.get_submodule(name).parametrizations.weight[0] for name in conv1d_names(model)}


@pytest.mark.parametrize("pattern", ["2:4", "2:4T", "4:8T", 0.5])
def test_sparsify_takes_every_conv1d_grouped_along_dim0(pattern):
    model = tiny_gpt2()
    nms.sparsify_(model, pattern)
    masks = masks_of(model)  # KeyError/AttributeError if a Conv1D was left dense
    for name, nm in masks.items():
        assert nm.group_dim == 0
        assert valid_along_dim0(nm.mask, pattern), name
        if isinstance(pattern, float):
            assert abs(float(nm.mask.float().mean()) - pattern) < 1e-6
    if pattern == "2:4":
        w = model.transformer.h[0].attn.c_attn.parametrizations.weight.original
        assert torch.equal(masks["transformer.h.0.attn.c_attn"].mask, topn_dim0(w, 2, 4))
        # and it is NOT the last-axis mask: the two layouts differ on a random weight
        assert not nms.is_valid_mask(masks["transformer.h.0.attn.c_attn"].mask, "2:4")


def test_include_by_module_name_picks_conv1d():
    model = tiny_gpt2()
    nms.sparsify_(model, "2:4", include=r".*\.c_fc")
    assert [r["name"] for r in summary(model).rows] == ["transformer.h.0.mlp.c_fc.weight"]


def test_ineligible_conv1d_is_judged_by_nx():
    cfg = transformers.GPT2Config(n_layer=1, n_embd=30, n_head=3, vocab_size=64, n_positions=32)
    model = transformers.GPT2LMHeadModel(cfg)
    nms.sparsify_(model, "2:4", exclude=r"transformer\.wte")
    rows = {r["name"]: r["status"] for r in summary(model).rows}
    assert rows["transformer.h.0.mlp.c_proj.weight"] == "sparse"  # nx = 120 = 4 n_embd
    for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc"):  # nx = 30, although nf = 90 / 30 / 120
        assert rows[f"transformer.h.0.{name}.weight"].startswith("skipped: nx (input features, dim 0)=30")
    with pytest.raises(nms.errors.ShapeError, match="nx"):
        nms.sparsify_(transformers.GPT2LMHeadModel(cfg), "2:4", include=r".*\.c_attn")


@pytest.mark.parametrize("update", ["refresh", "set", "rigl"])
@pytest.mark.parametrize("pattern", ["2:4", "2:4T"])
def test_training_keeps_masks_valid_along_dim0(update, pattern):
    model = tiny_gpt2()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    kw = dict(total_steps=6) if update != "refresh" else {}
    nms.sparsify_(model, pattern, update=update, update_every=2, optimizer=opt, **kw)
    before = {k: v.mask.clone() for k, v in masks_of(model).items()}
    ids = torch.randint(0, 64, (2, 16))
    model.train()
    for _ in range(6):
        opt.zero_grad()
        model(ids, labels=ids).loss.backward()
        opt.step()
    masks = masks_of(model)
    assert any(not torch.equal(before[k], v.mask) for k, v in masks.items())  # masks did change
    for name, nm in masks.items():
        assert valid_along_dim0(nm.mask, pattern), name
        assert nm.refreshes > 0


def test_summary_says_where_groups_run():
    model = tiny_gpt2()
    nms.sparsify_(model, "2:4")
    rows = {r["name"]: r for r in summary(model).rows}
    assert rows["transformer.h.0.attn.c_attn.weight"]["group_dim"] == 0
    assert rows["transformer.h.0.attn.c_attn.weight"]["shape"] == (32, 96)
    assert "32x96 [groups dim 0]" in str(summary(model))


def test_squash_keeps_the_outputs():
    model = tiny_gpt2().eval()
    nms.sparsify_(model, "2:4T")
    ids = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        expect = model(ids).logits
        squash_(model)
        assert torch.equal(model(ids).logits, expect)
    w = model.transformer.h[0].mlp.c_fc.weight
    assert valid_along_dim0(w != 0, "2:4T")


def test_attach_mask_accepts_dim0_and_refuses_last_dim():
    model = tiny_gpt2()
    layer = model.transformer.h[0].attn.c_attn
    w = layer.weight.detach()
    good = nms.find_mask(w, "2:4", dim=0)
    nm = attach_mask_(layer, "weight", good, "2:4")
    assert nm.group_dim == 0 and torch.equal(nm.mask, good)
    fc = model.transformer.h[0].mlp.c_fc
    last = torch.zeros_like(fc.weight, dtype=torch.bool)
    last[:, 0::4] = True
    last[:, 1::4] = True  # 2:4 along the last axis, 4 of 4 along dim 0
    assert nms.is_valid_mask(last, "2:4")
    with pytest.raises(MaskError, match="attach_mask_"):
        attach_mask_(fc, "weight", last, "2:4")


@pytest.mark.parametrize("algorithm", ["wanda", "sparsegpt", "magnitude"])
@pytest.mark.parametrize("pattern", ["2:4", "2:4T"])
def test_prune_attaches_dim0_masks(algorithm, pattern):
    model = tiny_gpt2()
    calib = [torch.randint(0, 64, (2, 16))]
    nms.prune_(model, pattern, calibration=calib, algorithm=algorithm, attach_masks=True)
    for name, nm in masks_of(model).items():
        assert nm.group_dim == 0
        assert valid_along_dim0(nm.mask, pattern), name
        assert float(nm.mask.float().mean()) == 0.5
        assert bool((model.get_submodule(name).weight[~nm.mask] == 0).all())


def test_state_dict_round_trip_and_a_last_dim_mask_is_refused():
    model = tiny_gpt2()
    nms.sparsify_(model, "2:4")
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    other = tiny_gpt2(seed=1)
    nms.sparsify_(other, "2:4")
    other.load_state_dict(sd)
    for name, nm in masks_of(other).items():
        assert torch.equal(nm.mask, masks_of(model)[name].mask)
    key = "transformer.h.0.attn.c_attn.parametrizations.weight.0.mask"
    bad = torch.zeros_like(sd[key])
    bad[:, 0::2] = True  # 2:4 along the last axis only
    sd[key] = bad
    with pytest.raises(CheckpointError, match="does not obey"):
        other.load_state_dict(sd)


class Shard:  # stands in for torch's Shard(0) placement (plan_for reads only these)
    def is_replicate(self):
        return False

    def is_shard(self, dim=None):
        return dim in (None, 0)


class _Mesh:
    def size(self, dim):
        return 2


class _ShardedWeight:
    """What plan_for reads of an FSDP2 DTensor: shape, placements, mesh sizes."""

    def __init__(self, shape):
        self.shape, self.ndim, self.placements, self.device_mesh = torch.Size(shape), len(shape), (Shard(),), _Mesh()


@pytest.mark.parametrize("pattern, group_dim, mode", [
    ("2:4", None, "shard-local"),   # nn.Linear: groups within a row, rows sharded
    ("2:4", 0, "gathered"),         # HF Conv1D: groups run down the sharded axis
    ("2:4T", 0, "shard-local"),     # 4x4 tiles: 16 rows per rank hold whole tiles either way
    ("2:4T", None, "shard-local"),
])
def test_fsdp2_plan_gathers_row_wise_conv1d(monkeypatch, pattern, group_dim, mode):
    from nmsparse.nn import distributed

    monkeypatch.setattr(distributed, "is_dtensor", lambda t: True)
    plan = distributed.plan_for(_ShardedWeight((32, 96)), nms.NMPattern.parse(pattern), group_dim)
    assert plan.mode == mode, plan.reason
    if mode == "gathered":
        assert "dim 0" in plan.reason
