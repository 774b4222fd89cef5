"""One layer-eligibility rule (nmsparse.nn.eligibility): for every kind of layer that cannot take a pattern,
``sparsify_`` and ``prune_`` (magnitude, no calibration) leave it dense with the same reason, and each still
sparsifies / prunes the layer beside it."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import nmsparse as nms
from nmsparse.errors import ShapeError
from nmsparse.nn import summary
from nmsparse.oneshot import PruneReport


class _TiedHead(nn.Module):
    """An lm_head tied to the token embedding, and a plain layer that both entry points take."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(16, 8)
        self.body = nn.Linear(8, 8)
        self.head = nn.Linear(8, 16, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, idx):
        return self.head(self.body(self.emb(idx)))


def _with_first(edit):
    def build():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 8))
        edit(model)
        return model
    return build


def _int_weight(model):
    model[0].weight = nn.Parameter(torch.ones(8, 8, dtype=torch.int32), requires_grad=False)


def _grouped(model):
    model[0] = nn.Conv2d(8, 8, 1, groups=2)


def _ragged(model):
    model[0] = nn.Linear(6, 8)


def _ragged_rows(model):
    model[0] = nn.Linear(8, 6)


def _empty(model):
    model[0] = nn.Linear(0, 8)


def _weight_norm(model):
    nn.utils.parametrizations.weight_norm(model[0])


def _tied_excluded(model):
    model[0].weight = model[2].weight  # with exclude="0": the other holder stays dense


# (label, build, pattern, extra kwargs for both, layer left dense, reason regex)
CASES = [
    ("non-float dtype", _with_first(_int_weight), "2:4", {}, "0.weight", r"^dtype torch.int32 is not a floating-point type$"),
    ("grouped convolution", _with_first(_grouped), "2:4", {}, "0.weight", r"^grouped convolution \(groups=2\)"),
    ("group axis not a multiple of m", _with_first(_ragged), "2:4", {}, "0.weight", r"^in_features=6 is not a multiple of m=4"),
    ("rows not a multiple of m (T)", _with_first(_ragged_rows), "2:4T", {}, "0.weight", r"^6 matrix rows is not a multiple of m=4"),
    ("empty weight", _with_first(_empty), "2:4", {}, "0.weight", r"^empty tensor$"),
    ("foreign parametrization", _with_first(_weight_norm), "2:4", {}, "0.weight",
     r"^already carries the parametrization _WeightNorm .*remove_parametrizations"),
    ("old weight_norm hook", _with_first(lambda m: nn.utils.weight_norm(m[0])), "2:4", {}, "0.weight",
     r"^weight is not a parameter but recomputed before each forward"),
    ("tied to an embedding (lm_head)", _TiedHead, "2:4", {}, "head.weight",
     r"^tied to the embedding emb.weight, which stays dense by default .*include='head.weight'"),
    ("tied to an excluded holder", _with_first(_tied_excluded), "2:4", {"exclude": "0"}, "2.weight",
     r"^tied to 0.weight, which exclude= keeps dense"),
]


def _sparsify_reasons(model, pattern, **kw):
    nms.sparsify_(model, pattern, **kw)
    rows = summary(model).rows
    return {r["name"]: r["status"][len("skipped: "):] for r in rows if r["status"].startswith("skipped: ")}, \
        {r["name"] for r in rows if r["status"] == "sparse"}


def _prune_reasons(model, pattern, **kw):
    rep = PruneReport()
    nms.prune_(model, pattern, algorithm="magnitude", ragged="skip", report=rep, **kw)
    return dict(rep.skipped), {r.name for r in rep.layers}


@pytest.mark.parametrize("label,build,pattern,kw,name,reason", CASES, ids=[c[0] for c in CASES])
def test_sparsify_and_prune_give_the_same_reason(label, build, pattern, kw, name, reason):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecation of the old weight_norm, zero-element init
        sp_skipped, sp_taken = _sparsify_reasons(build(), pattern, **kw)
        pr_skipped, pr_taken = _prune_reasons(build(), pattern, **kw)
    assert name in sp_skipped and name in pr_skipped, (sp_skipped, pr_skipped)
    assert sp_skipped[name] == pr_skipped[name], f"{label}: sparsify_ {sp_skipped[name]!r} / prune_ {pr_skipped[name]!r}"
    assert re.search(reason, sp_skipped[name]), sp_skipped[name]
    assert sp_taken == pr_taken and sp_taken and name not in sp_taken  # the layer beside it is taken by both


def test_dense_pattern_is_the_same_reason_in_both():
    with pytest.raises(ShapeError) as sp:
        nms.sparsify_(nn.Sequential(nn.Linear(8, 8)), "4:4")
    with pytest.raises(ShapeError) as pr:
        nms.prune_(nn.Sequential(nn.Linear(8, 8)), "4:4")
    why = "0.weight: pattern 4:4 keeps every entry (n = m is dense)"
    assert why in str(sp.value) and why in str(pr.value)


def test_a_tied_lm_head_never_changes_the_embedding_by_default():
    for run in (lambda m: nms.sparsify_(m, "2:4"), lambda m: nms.prune_(m, "2:4")):
        model = _TiedHead()
        before = model.emb.weight.detach().clone()
        run(model)
        assert torch.equal(model.emb.weight, before) and model.head.weight is model.emb.weight


def test_every_holder_selected_sparsify_masks_all_prune_explains():
    """The policy's one fork: every holder selected. sparsify_ registers one mask on all holders (a view:
    reversible); prune_ would write one layer's fit into every holder, so it says so and leaves it dense."""
    def build():
        model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 8))
        model[2].weight = model[0].weight
        return model

    model = nms.sparsify_(build(), "2:4")
    rows = {r["name"]: r["status"] for r in summary(model).rows}
    assert rows["0.weight"] == "sparse" and rows["2.weight"] == "tied: same weight and mask as 0.weight"
    skipped, taken = _prune_reasons(build(), "2:4")
    assert taken == {"3.weight"}
    assert re.fullmatch(r"tied weights: shared with 2.weight \(.*untie it to prune it.*\)", skipped["0.weight"])
    with pytest.raises(ShapeError, match="no layer to prune .*tied weights: shared with 2.weight"):
        nms.prune_(build(), "2:4", include="0")  # naming it does not change that


@pytest.mark.parametrize("entry", ["sparsify_", "prune_"])
def test_no_layer_fits_is_one_error_class(entry):
    model = nn.Sequential(nn.Linear(6, 8))
    call = (lambda: nms.sparsify_(model, "2:4")) if entry == "sparsify_" else \
        (lambda: nms.prune_(model, "2:4", ragged="skip"))
    with pytest.raises(ShapeError, match=rf"^{entry}: no layer .*in_features=6 is not a multiple of m=4"):
        call()
