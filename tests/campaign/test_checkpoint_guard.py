"""Campaign: checkpoints loaded into a masked model (issue 20, kinds 6 and 10).

Every nmsparse entry of a state dict (the dense ``original``, ``mask``, ``pattern_code``,
``last_refresh``, ``step_count``) is checked - tensor, shape, dtype, values - before any tensor is
copied: a tampered or foreign checkpoint ends in one line naming the key and the fix, and every
tensor of the model is unchanged afterwards (torch itself copies what fits and reports the rest
at the end). A sound checkpoint loads exactly. ``torch.save(model)`` / ``pickle`` of a masked
model is one line saying what to save instead.
"""

from __future__ import annotations

import copy
import io
import pickle

import torch
from torch import nn

import nmsparse as nms
from _harness import Case, parametrize, run_case
from nmsparse.errors import CheckpointError

K0 = "0.parametrizations.weight."
M0 = K0 + "0."


def _model(pattern="2:4T", seed=0):
    with torch.random.fork_rng():  # the campaign checks global state: the caller's RNG stays as it was
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    return nms.sparsify_(model, pattern)


def _tensors(model):
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}


def _load(edit, pattern="2:4T", strict=True, source_pattern=None):
    """Load a checkpoint of another model (seed 1) edited by ``edit(sd)``; on a refusal, every tensor of
    the target must be what it was (the checkpoint differs in every weight, so a partial load shows)."""

    def call():
        model = _model(pattern)
        sd = _model(source_pattern or pattern, seed=1).state_dict()
        edit(sd)
        before = _tensors(model)
        try:
            return model.load_state_dict(sd, strict=strict), model, sd
        except BaseException:
            after = _tensors(model)
            changed = [k for k in before if not torch.equal(before[k], after[k])]
            assert not changed, f"a refused load changed {changed}"
            raise

    return call


def _set(key, value):
    return lambda sd: sd.__setitem__(key, value)


def _drop(*keys):
    def edit(sd):
        for k in keys:
            del sd[k]
    return edit


def _loaded_exactly(result):
    _, model, sd = result
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in sd.items() if k in own)


def _same_model_loaded(result):
    _, model, sd = result
    own = model.state_dict()
    for k, v in sd.items():
        if k in own:
            assert torch.equal(own[k], v), k


def _nothing(_sd):
    pass


_mask = lambda: _model(seed=1).state_dict()[M0 + "mask"]  # noqa: E731

CODES = [
    ("[1,0,2]", [1, 0, 2], "not an unstructured density"),
    ("[nan]*3", [float("nan")] * 3, "must hold integers"),
    ("[2.,4.,1.] float", [2.0, 4.0, 1.0], "must hold integers"),
    ("[2,4,7] unknown kind", [2, 4, 7], "kind 7 is not 0"),
    ("[2,4,-1] negative kind", [2, 4, -1], "kind -1 is not 0"),
    ("[0,4,1] n=0", [0, 4, 1], "not an N:M pattern"),
    ("[5,4,1] n>m", [5, 4, 1], "not an N:M pattern"),
    ("[-2,-4,1] negative", [-2, -4, 1], "not an N:M pattern"),
    ("[2,0,0] m=0", [2, 0, 0], "not an N:M pattern"),
    ("[3,2,2] density 1.5", [3, 2, 2], "not an unstructured density"),
    ("[-1,2,2] negative density", [-1, 2, 2], "not an unstructured density"),
    ("[4,8,1] another pattern", [4, 8, 1], r"made for pattern 4:8T, but this model's mask is 2:4T"),
    ("[2,4,0] row-wise into transposable", [2, 4, 0], r"made for pattern 2:4, but this model's mask is 2:4T"),
    ("[1,2,2] density into N:M", [1, 2, 2], r"made for pattern unstructured 0.5, but this model's mask is 2:4T"),
]

CASES = [Case(f"pattern_code {label}", _load(_set(M0 + "pattern_code", torch.tensor(v))), CheckpointError,
              f"'{M0}pattern_code'.*{rx}|{rx}") for label, v, rx in CODES]

CASES += [
    # pattern_code of the wrong shape or kind of value
    Case("pattern_code 4 entries", _load(_set(M0 + "pattern_code", torch.tensor([2, 4, 1, 0]))), CheckpointError,
         r"pattern_code' has shape \(4,\), but this model's has shape \(3,\)"),
    Case("pattern_code 0-d", _load(_set(M0 + "pattern_code", torch.tensor(3))), CheckpointError, r"has shape \(\)"),
    Case("pattern_code 2x3", _load(_set(M0 + "pattern_code", torch.tensor([[2, 4, 1]] * 2))), CheckpointError, r"\(2, 3\)"),
    Case("pattern_code empty", _load(_set(M0 + "pattern_code", torch.tensor([], dtype=torch.long))), CheckpointError, r"\(0,\)"),
    Case("pattern_code bool", _load(_set(M0 + "pattern_code", torch.tensor([True, True, True]))), CheckpointError,
         "must hold integers"),
    Case("pattern_code a list", _load(_set(M0 + "pattern_code", [2, 4, 1])), CheckpointError, "must be a tensor, got list"),
    Case("pattern_code int32 (same pattern) loads", _load(_set(M0 + "pattern_code", torch.tensor([2, 4, 1], dtype=torch.int32))),
         check=lambda r: None),
    # the mask
    Case("mask of the wrong shape", _load(_set(M0 + "mask", torch.ones(4, 8, dtype=torch.bool))), CheckpointError,
         r"'0.parametrizations.weight.0.mask' has shape \(4, 8\), but this model's has shape \(8, 8\)"),
    Case("mask transposed shape of a 8x4 layer", _load(_set(M0 + "mask", torch.ones(8, 4, dtype=torch.bool))), CheckpointError,
         r"has shape \(8, 4\)"),
    Case("mask with an extra dim", _load(_set(M0 + "mask", torch.ones(8, 8, 1, dtype=torch.bool))), CheckpointError, "has shape"),
    Case("mask float of a valid mask", _load(lambda sd: sd.__setitem__(M0 + "mask", sd[M0 + "mask"].float())), CheckpointError,
         "must be a bool tensor, got dtype torch.float32"),
    Case("mask int64 x2", _load(lambda sd: sd.__setitem__(M0 + "mask", sd[M0 + "mask"].long() * 2)), CheckpointError,
         "must be a bool tensor"),
    Case("mask all kept breaks 2:4T", _load(_set(M0 + "mask", torch.ones(8, 8, dtype=torch.bool))), CheckpointError,
         "does not obey this model's pattern 2:4T"),
    Case("mask keeping none loads (the rule is at most n)", _load(_set(M0 + "mask", torch.zeros(8, 8, dtype=torch.bool))),
         check=_loaded_exactly),
    Case("mask a nested list", _load(_set(M0 + "mask", [[True] * 8] * 8)), CheckpointError, "must be a tensor, got list"),
    Case("mask on the meta device", _load(_set(M0 + "mask", torch.ones(8, 8, dtype=torch.bool, device="meta"))),
         CheckpointError, "meta tensor"),
    Case("unstructured mask of the wrong shape", _load(_set(M0 + "mask", torch.ones(8, 4, dtype=torch.bool)), pattern=0.5),
         CheckpointError, r"has shape \(8, 4\)"),
    Case("unstructured pattern_code [1,0,2]", _load(_set(M0 + "pattern_code", torch.tensor([1, 0, 2])), pattern=0.5),
         CheckpointError, "not an unstructured density"),
    Case("unstructured 0.25 checkpoint into 0.5", _load(_nothing, pattern=0.5, source_pattern=0.25), CheckpointError,
         r"made for pattern unstructured 0.25, but this model's mask is unstructured 0.5"),
    # the counters
    Case("last_refresh of shape (3,)", _load(_set(M0 + "last_refresh", torch.zeros(3, dtype=torch.long))), CheckpointError,
         r"last_refresh' has shape \(3,\)"),
    Case("last_refresh float", _load(_set(M0 + "last_refresh", torch.tensor(1.5))), CheckpointError, "integer tensor"),
    Case("last_refresh nan", _load(_set(M0 + "last_refresh", torch.tensor(float("nan")))), CheckpointError, "integer tensor"),
    Case("step_count -5", _load(_set(M0 + "step_count", torch.tensor(-5))), CheckpointError, r"\(>= 0\), got -5"),
    Case("step_count 3.7", _load(_set(M0 + "step_count", torch.tensor(3.7))), CheckpointError, "integer tensor"),
    Case("step_count of shape (2,)", _load(_set(M0 + "step_count", torch.zeros(2, dtype=torch.long))), CheckpointError,
         r"has shape \(2,\)"),
    Case("step_count a Python int", _load(_set(M0 + "step_count", 7)), CheckpointError, "must be a tensor, got int"),
    # the dense weight and the other tensors of the model
    Case("original of the wrong shape", _load(_set(K0 + "original", torch.zeros(4, 8))), CheckpointError,
         r"'0.parametrizations.weight.original' has shape \(4, 8\)"),
    Case("original a float", _load(_set(K0 + "original", 3.0)), CheckpointError, "must be a tensor, got float"),
    Case("bias of the wrong shape (2.bias)", _load(_set("2.bias", torch.zeros(3))), CheckpointError, r"'2.bias' has shape \(3,\)"),
    Case("second layer's mask of the wrong shape", _load(_set("2.parametrizations.weight.0.mask", torch.ones(2, 8, dtype=torch.bool))),
         CheckpointError, "'2.parametrizations.weight.0.mask' has shape"),
    # keys missing (strict) or a plain checkpoint
    Case("missing pattern_code (strict)", _load(_drop(M0 + "pattern_code")), CheckpointError, "has no '0.parametrizations.weight.0.pattern_code'"),
    Case("missing mask (strict)", _load(_drop(M0 + "mask")), CheckpointError, "has no '0.parametrizations.weight.0.mask'.*strict=False"),
    Case("missing every mask entry (strict)", _load(_drop(M0 + "mask", M0 + "step_count", M0 + "last_refresh")), CheckpointError,
         r"and 2 more of this mask"),
    Case("missing mask, strict=False keeps the model's", _load(_drop(M0 + "mask"), strict=False),
         check=lambda r: None),
    Case("a plain state dict (squashed) into a masked model",
         lambda: _model().load_state_dict(nms.nn.plain_state_dict(_model(seed=1))), CheckpointError,
         r"plain weight '0.weight'.*load_plain_state_dict_"),
    Case("a plain state dict, strict=False, is refused too",
         _load(lambda sd: sd.update(nms.nn.plain_state_dict(dict(sd))) or [sd.pop(k) for k in list(sd) if ".parametrizations." in k],
               strict=False), CheckpointError, "plain weight"),
    Case("load_plain_state_dict_ with a key missing",
         lambda: nms.nn.load_plain_state_dict_(_model(), {"0.weight": torch.zeros(8, 8)}), CheckpointError, "has no '0.bias'"),
    # sound checkpoints load exactly
    Case("another model's sound checkpoint loads exactly", _load(_nothing), check=_loaded_exactly),
    Case("the model's own checkpoint loads", lambda: (None, *(lambda m: (m, m.state_dict()))(_model())), check=_same_model_loaded),
    Case("an unstructured checkpoint loads", _load(_nothing, pattern=0.5), check=_loaded_exactly),
    Case("a 4:8 row-wise checkpoint loads", _load(_nothing, pattern="4:8"), check=_loaded_exactly),
]


@parametrize(CASES)
def test_checkpoint_guard(case):
    run_case(case)


def _fresh():
    return _model()


PICKLES = [
    Case("pickle.dumps of a sparsified model", lambda: pickle.dumps(_fresh()), CheckpointError,
         r"torch.save\(model.state_dict\(\), path\).*squash_"),
    Case("torch.save of a sparsified model", lambda: torch.save(_fresh(), io.BytesIO()), CheckpointError,
         r"layer '0.weight' carries an nmsparse mask"),
    Case("pickle of a deepcopy", lambda: pickle.dumps(copy.deepcopy(_fresh())), CheckpointError, "cannot be pickled"),
    Case("pickle of one masked layer", lambda: pickle.dumps(_fresh()[2]), CheckpointError, "layer '2.weight'"),
    Case("pickle of a prune_(attach_masks=True) model",
         lambda: pickle.dumps(nms.prune_(nms.squash_(_fresh()), "2:4", attach_masks=True)), CheckpointError,
         "cannot be pickled"),
    Case("pickle of a squashed deepcopy works", lambda: pickle.loads(pickle.dumps(nms.squash_(copy.deepcopy(_fresh())))),
         check=lambda m: nms.is_valid_mask(m[0].weight != 0, "2:4T") or (_ for _ in ()).throw(AssertionError("not 2:4T"))),
    Case("torch.save(model.state_dict()) round-trips",
         lambda: (lambda buf: (torch.save(_fresh().state_dict(), buf), buf.seek(0), _model(seed=1).load_state_dict(
             torch.load(buf, weights_only=True))))(io.BytesIO()), check=lambda r: None),
]


@parametrize(PICKLES)
def test_pickling_a_masked_model(case):
    run_case(case)
