"""Campaign: channel permutations (``permute_``, ``prune_(permute=True, permute_loss=...)`` and
``nmsparse prune --permute``) on the patterns, scores, calibration data, options and models users pass.

A right result: the dense model's outputs on a *fresh* input unchanged (a permutation is exact),
the kept score never lower (``kept_after >= kept_before``, overall and per layer), the report
consistent with itself and with the model (magnitude scores: each layer's ``kept_after`` is the
optimal mask's objective of its final weight), and the caller's world restored: each module's
own train/eval mode, every ``requires_grad``, every forward hook. A clear error: the library's
exception with a one-line message and the model bit-for-bit unchanged (state_dict, modes,
requires_grad). Models are built once at collection under a forked RNG and deep-copied per case.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

import nmsparse as nms
from _harness import Case, CliCase, parametrize, run_case, run_cli_case
from nmsparse.oneshot.report import PruneReport

G = torch.Generator().manual_seed(11)
with torch.random.fork_rng(devices=[]):  # building the templates must not shift the caller's RNG
    torch.manual_seed(11)
    MLP = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    # Train mode with Dropout and BatchNorm: permute_ runs in eval and must give each module its mode back.
    BN = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 8)).train()
    TIED = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16))
    TIED[2].weight = TIED[0].weight  # deep copies keep the tie
    BN[1].eval()  # a frozen BatchNorm inside a training model: its own mode, not the parent's, comes back
    with torch.no_grad():
        BN[1].running_mean.uniform_(-1, 1)
        BN[1].running_var.uniform_(0.5, 2)
    try:
        import transformers

        GPT2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            n_layer=1, n_embd=16, n_head=2, vocab_size=32, n_positions=16))
    except ImportError:  # pragma: no cover - transformers is a test dependency
        GPT2 = None
X = torch.randn(8, 16, generator=G)
FRESH = torch.randn(8, 16, generator=G)  # never seen by permute_: the function, not one batch, is kept
IDS = torch.randint(0, 32, (2, 8), generator=G)
FRESH_IDS = torch.randint(0, 32, (2, 8), generator=G)
E = nms.NMSparseError
STATUSES = {"permuted", "unchanged", "no effect", "skipped", "unsafe", "reverted"}


class Wrapper(nn.Module):
    """A DataParallel-free wrapper (``.module``) around the MLP, as accelerate/DDP-style code holds one."""

    def __init__(self, inner):
        super().__init__()
        self.module = inner

    def forward(self, x):
        return self.module(x)


class Raises(nn.Module):
    """A model whose forward raises ``exc`` (after touching its layers, as a real bug would)."""

    def __init__(self, exc):
        super().__init__()
        self.net, self.exc = copy.deepcopy(MLP), exc

    def forward(self, x):
        self.net(x)
        raise self.exc


class FailsLater(nn.Module):
    """Runs once, then fails: the check pass after folding raises, and every channel must go back."""

    def __init__(self):
        super().__init__()
        self.net, self.calls = copy.deepcopy(MLP), 0

    def forward(self, x):
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("device lost")
        return self.net(x)


def _hook_raises():
    m = copy.deepcopy(MLP)
    m[2].register_forward_hook(lambda mod, args, out: (_ for _ in ()).throw(ValueError("hook failed")))
    return m


class DictOut(nn.Module):
    def __init__(self, integer=False):
        super().__init__()
        self.net, self.integer = copy.deepcopy(MLP), integer

    def forward(self, x):
        y = self.net(x)
        return {"labels": y.argmax(-1)} if self.integer else {"y": y, "step": 3}


def _count_hook(module, args, out):
    module.calls = getattr(module, "calls", 0) + 1


def _make(kind="mlp", dtype=None, frozen=False, hook=False, nan=None):
    def make():
        m = {"mlp": lambda: copy.deepcopy(MLP), "bn": lambda: copy.deepcopy(BN), "wrapper": lambda: Wrapper(copy.deepcopy(MLP)),
             "gpt2": lambda: copy.deepcopy(GPT2), "dict": lambda: DictOut(), "int out": lambda: DictOut(integer=True)}[kind]()
        if dtype is not None:
            m = m.to(dtype)
        if frozen:
            m.requires_grad_(False)
            first = next(p for p in m.parameters())
            first.requires_grad_(True)  # a mixed model: one trainable parameter among frozen ones
        if hook:
            for mod in m.modules():
                if isinstance(mod, nn.Linear):
                    mod.register_forward_hook(_count_hook)
        if nan is not None:
            with torch.no_grad():
                dict(m.named_parameters())[nan].view(-1)[0] = float("nan")
        return m
    return make


def _world(model):
    """What the caller owns: every tensor's bits, each module's mode, each parameter's requires_grad,
    the forward hooks."""
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            {n: m.training for n, m in model.named_modules()},
            {n: p.requires_grad for n, p in model.named_parameters()},
            {n: list(m._forward_hooks) for n, m in model.named_modules()})


def _assert_world(model, before, tensors=True):
    sd, modes, grads, hooks = before
    now = _world(model)
    if tensors:
        assert sd.keys() == now[0].keys(), "state_dict keys changed"
        for k, v in sd.items():
            if v.device.type == "meta":  # no values to compare: shape and dtype
                assert (v.shape, v.dtype, now[0][k].device.type) == (now[0][k].shape, now[0][k].dtype, "meta"), f"{k} changed"
                continue
            assert torch.equal(v, now[0][k]) or (v.is_floating_point() and torch.equal(v.isnan(), now[0][k].isnan())
                                                  and torch.equal(v.nan_to_num(), now[0][k].nan_to_num())), f"{k} changed"
    assert modes == now[1], f"modes not restored: {[n for n in modes if modes[n] != now[1][n]]}"
    assert grads == now[2], "requires_grad changed"
    assert hooks == now[3], "forward hooks changed"


def _outputs(model, x):
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            out = model(**x) if isinstance(x, dict) else model(x)
    finally:
        for m, mode in modes.items():
            m.training = mode
    out = getattr(out, "logits", out)
    return out["y"] if isinstance(out, dict) and "y" in out else (out["labels"] if isinstance(out, dict) else out)


def _guarded(make, fn):
    """``fn(model)`` on a fresh model; on a library error the model must be unchanged."""
    model = make()
    before = _world(model)
    try:
        return fn(model)
    except E:
        _assert_world(model, before)
        raise


def _permuted(make, pattern, fresh=FRESH, **kw):
    model = make()
    before, ref = _world(model), _outputs(model, fresh)
    rep = nms.permute_(model, pattern, **kw)
    return model, rep, before, ref, fresh, kw


def _permute_ok(result):
    model, rep, before, ref, fresh, kw = result
    _assert_world(model, before, tensors=not rep.permuted)  # nothing folded: not a bit moved
    out = _outputs(model, fresh)
    tol = {torch.float16: 2e-2, torch.bfloat16: 5e-2}.get(out.dtype, 1e-5)
    assert out.shape == ref.shape and torch.equal(out.isnan(), ref.isnan()), "outputs changed shape or NaN positions"
    ok = ~ref.isnan()
    scale = float(ref[ok].abs().max()) if ok.any() else 0.0
    assert torch.allclose(out[ok].double(), ref[ok].double(), rtol=tol, atol=tol * scale), "the dense outputs on a fresh input changed"
    assert rep.kept_after >= rep.kept_before * (1 - 1e-9), f"kept score fell: {rep.kept_before} -> {rep.kept_after}"
    for row in rep.layers:
        assert row.kept_after >= row.kept_before * (1 - 1e-9), f"{row.name}: kept score fell"
    assert rep.permuted == sum(g.status == "permuted" for g in rep.groups)
    assert all(g.status in STATUSES for g in rep.groups), [g.status for g in rep.groups]
    assert "\n" not in rep.summary() and json.dumps(rep.to_dict(), default=str)
    if kw.get("scores", "magnitude") == "magnitude":  # the report's kept score is the model's
        linears = {f"{n}.weight": m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        for row in rep.layers:
            if row.name in linears:  # nn.Linear: groups along the input dimension, the weight's last
                w = linears[row.name].weight.detach().double().abs()
                want = float(nms.solve_mask(w, rep.pattern, scores=w).objective)
                assert abs(want - row.kept_after) <= 1e-6 * max(1.0, want), f"{row.name}: report {row.kept_after}, model {want}"

CASES = []
PATTERNS = ["2:4", "2:4T", "4:8", "4:8T", "1:4", "3:4T", nms.NMPattern(2, 4), nms.NMPattern(4, 8, transposable=True)]
for p in PATTERNS:
    CASES.append(Case(f"permute_ mlp {p!r} calibration", lambda p=p: _permuted(_make(), p, calibration=[X], iterations=2),
                      check=_permute_ok))
CASES += [
    Case("permute_ mlp no calibration (probe)", lambda: _permuted(_make(), "2:4", iterations=2), check=_permute_ok),
    Case("permute_ mlp check=False", lambda: _permuted(_make(), "2:4T", calibration=[X], check=False, iterations=2), check=_permute_ok),
    Case("permute_ mlp default search", lambda: _permuted(_make(), "2:4", calibration=[X]), check=_permute_ok),
    Case("permute_ mlp iterations=0", lambda: _permuted(_make(), "2:4", iterations=0), check=_permute_ok),
    Case("permute_ mlp patience=1 seed=2**63-1", lambda: _permuted(_make(), "2:4", iterations=3, patience=1, seed=2 ** 63 - 1), check=_permute_ok),
    Case("permute_ mlp time_budget tiny", lambda: _permuted(_make(), "2:4", calibration=[X], time_budget=1e-9), check=_permute_ok),
    Case("permute_ mlp time_budget 1e308", lambda: _permuted(_make(), "2:4", time_budget=1e308, iterations=2), check=_permute_ok),
    Case("permute_ mlp time_budget int 5", lambda: _permuted(_make(), "2:4", time_budget=5, iterations=2), check=_permute_ok),
    Case("permute_ mlp progress=True", lambda: _permuted(_make(), "2:4", progress=True, iterations=2), check=_permute_ok),
    Case("permute_ mlp wanda", lambda: _permuted(_make(), "2:4", calibration=[X, X * 2], scores="wanda", iterations=2), check=_permute_ok),
    Case("permute_ mlp calibration a generator", lambda: _permuted(_make(), "2:4", calibration=(b for b in [X, X]), iterations=2),
         check=_permute_ok),
    Case("permute_ mlp calibration tuples", lambda: _permuted(_make(), "2:4", calibration=[(X,)], iterations=2), check=_permute_ok),
    Case("permute_ mlp int scores", lambda: _permuted(_make(), "2:4", iterations=2, scores={
        "0.weight": (MLP[0].weight.abs() * 100).long(), "2.weight": (MLP[2].weight.abs() * 100).long()}), check=_permute_ok),
    Case("permute_ mlp callable scores", lambda: _permuted(_make(), "2:4", iterations=2, scores=lambda n, m: m.weight.abs() ** 2),
         check=_permute_ok),
    Case("permute_ mlp dict scores with an extra key", lambda: _permuted(_make(), "2:4", iterations=2, scores={
        "0.weight": MLP[0].weight.abs(), "2.weight": MLP[2].weight.abs(), "nope": torch.ones(1)}), check=_permute_ok),
    Case("permute_ include a list", lambda: _permuted(_make(), "2:4", include=["0", "2"], iterations=2), check=_permute_ok),
    Case("permute_ include only the reader", lambda: _permuted(_make(), "2:4", include="2", iterations=2), check=_permute_ok),
    Case("permute_ exclude the reader (row-wise: no effect)", lambda: _permuted(_make(), "2:4", exclude="2", iterations=2),
         check=_permute_ok),
    Case("permute_ fp16", lambda: _permuted(_make(dtype=torch.float16), "2:4", fresh=FRESH.half(), calibration=[X.half()], iterations=2),
         check=_permute_ok),
    Case("permute_ bf16 2:4T", lambda: _permuted(_make(dtype=torch.bfloat16), "2:4T", fresh=FRESH.bfloat16(), iterations=2),
         check=_permute_ok),
    Case("permute_ fp64", lambda: _permuted(_make(dtype=torch.float64), "2:4T", fresh=FRESH.double(), calibration=[X.double()],
                                            iterations=2), check=_permute_ok),
    Case("permute_ frozen params (one trainable)", lambda: _permuted(_make(frozen=True), "2:4", calibration=[X], iterations=2),
         check=_permute_ok),
    Case("permute_ forward hooks kept", lambda: _permuted(_make(hook=True), "2:4", calibration=[X], iterations=2), check=_permute_ok),
    Case("permute_ train mode, Dropout and a frozen BatchNorm", lambda: _permuted(_make("bn"), "2:4", calibration=[X], iterations=2),
         check=_permute_ok),
    Case("permute_ wrapper .module", lambda: _permuted(_make("wrapper"), "2:4", calibration=[X], iterations=2), check=_permute_ok),
    Case("permute_ dict output", lambda: _permuted(_make("dict"), "2:4", calibration=[X], iterations=2), check=_permute_ok),
    Case("permute_ integer output (not checked, said)", lambda: _permuted(_make("int out"), "2:4", calibration=[X], iterations=2),
         check=lambda r: (_permute_ok(r), _notes(r[1], "no floating-point"))),
    # A NaN bias is part of the dense function: it moves with its channel, and the check compares NaNs by position.
    Case("permute_ NaN output bias", lambda: _permuted(_make(nan="2.bias"), "2:4", calibration=[X], iterations=2),
         check=lambda r: (_permute_ok(r), _assert(r[1].permuted, "a NaN the dense model gives undid every group"))),
    Case("permute_ NaN hidden bias", lambda: _permuted(_make(nan="0.bias"), "2:4", calibration=[X], iterations=2), check=_permute_ok),
]


def _assert(cond, message):
    assert cond, message


def _notes(rep, text):
    assert any(text in n for n in rep.notes), rep.notes


if GPT2 is not None:
    for p, res in (("2:4", True), ("2:4T", True), ("4:8", False)):
        CASES.append(Case(f"permute_ gpt2 {p} residual={res}", lambda p=p, r=res: _permuted(
            _make("gpt2"), p, fresh={"input_ids": FRESH_IDS}, calibration=[{"input_ids": IDS}], residual=r, iterations=2),
            check=_permute_ok))
    CASES.append(Case("permute_ gpt2 no calibration (token probe)", lambda: _permuted(
        _make("gpt2"), "2:4", fresh={"input_ids": FRESH_IDS}, iterations=2), check=_permute_ok))


def _perm(make, pattern="2:4", **kw):
    kw.setdefault("iterations", 2)
    return lambda: _guarded(make, lambda m: nms.permute_(m, pattern, **kw))


def _sparsified(model):
    nms.sparsify_(model, "2:4")
    return model


def _meta_mlp():
    return nn.Sequential(nn.Linear(16, 32, device="meta"), nn.ReLU(), nn.Linear(32, 8, device="meta"))


def _boom(name, module):
    raise RuntimeError("scores backend is down")


M, A, P, S, C, SH = _make(), nms.ArgumentError, nms.PatternError, nms.ScoreError, nms.ConvertError, nms.ShapeError
W0, W2 = MLP[0].weight.detach().abs(), MLP[2].weight.detach().abs()
BAD = [
    # patterns
    ("pattern density 0.5", _perm(M, 0.5), P, "N:M pattern"),
    ("pattern '50%'", _perm(M, "50%"), P, "N:M pattern"),
    ("pattern n > m", _perm(M, "5:4"), P, "1 <= n <= m"),
    ("pattern 0:4", _perm(M, "0:4"), P, "1 <= n <= m"),
    ("pattern 2:4X", _perm(M, "2:4X"), P, "accepted forms"),
    ("pattern 1:9...9 (5002 chars)", _perm(M, "1:" + "9" * 5000), P, "5002 characters"),
    ("pattern None", _perm(M, None), P, "None"),
    ("pattern a list", _perm(M, [2, 4]), P, "list"),
    ("pattern n = m dense", _perm(M, "4:4"), SH, "dense"),
    ("pattern NMPattern dense", _perm(M, nms.NMPattern(8, 8)), SH, "dense"),
    ("pattern m larger than every layer", _perm(M, "1:64"), SH, "multiple of m=64"),
    # scores
    ("scores negative", _perm(M, scores={"0.weight": -W0, "2.weight": W2}), S, "non-negative"),
    ("scores NaN", _perm(M, scores={"0.weight": W0 * float("nan"), "2.weight": W2}), S, "NaN"),
    ("scores Inf", _perm(M, scores={"0.weight": W0 / 0, "2.weight": W2}), S, "NaN or Inf"),
    ("scores wrong shape", _perm(M, scores={"0.weight": torch.ones(3, 3), "2.weight": W2}), S, r"\(32, 16\)"),
    ("scores transposed", _perm(M, scores={"0.weight": W0.t(), "2.weight": W2}), S, r"\(16, 32\)"),
    ("scores bool dtype", _perm(M, scores={"0.weight": W0 > 0, "2.weight": W2}), S, "bool"),
    ("scores complex dtype", _perm(M, scores={"0.weight": W0.to(torch.complex64), "2.weight": W2}), S, "complex"),
    ("scores a meta tensor", _perm(M, scores={"0.weight": torch.empty(32, 16, device="meta"), "2.weight": W2}), S, "meta"),
    ("scores a list", _perm(M, scores={"0.weight": W0.tolist(), "2.weight": W2}), S, "got list"),
    ("scores dict missing a layer", _perm(M, scores={"0.weight": W0}), S, "no entry for 2.weight"),
    ("scores dict keyed by module name", _perm(M, scores={"0": W0, "2": W2}), S, "no entry for 0.weight"),
    ("scores callable raises", _perm(M, scores=_boom), S, "scores callable failed.*RuntimeError"),
    ("scores callable wrong signature", _perm(M, scores=lambda: None), S, "scores\\(module_name, module\\)"),
    ("scores callable returns None", _perm(M, scores=lambda n, m: None), S, "no entry"),
    ("scores callable returns a list", _perm(M, scores=lambda n, m: [1.0]), S, "got list"),
    ("scores unknown name", _perm(M, scores="best"), A, "'best'"),
    ("scores None", _perm(M, scores=None), A, "scores must be"),
    ("scores wanda without calibration", _perm(M, scores="wanda"), A, "calibration"),
    # calibration
    ("calibration empty list", _perm(M, calibration=[]), C, "empty"),
    ("calibration a single tensor", _perm(M, calibration=X), C, "wrap it in a list"),
    ("calibration NaN inputs", _perm(M, calibration=[X * float("nan")]), C, "NaN"),
    ("calibration Inf in batch 1 (wanda)", _perm(M, calibration=[X, X / 0], scores="wanda"), C, "batch 1"),
    ("calibration strings", _perm(M, calibration=["some text"]), C, "batch 0 is a str"),
    ("calibration None items", _perm(M, calibration=[None]), C, "batch 0"),
    ("calibration an int", _perm(M, calibration=5), C, "iterable"),
    ("calibration rejected shape", _perm(M, calibration=[torch.ones(4, 5)]), C, "failed on calibration batch 0"),
    ("calibration wrong dtype", _perm(M, calibration=[X.double()]), C, "failed on calibration batch 0"),
    ("calibration dict for a Sequential", _perm(M, calibration=[{"x": X}]), C, "failed on calibration batch 0"),
    ("calibration an empty generator", _perm(M, calibration=(b for b in [])), C, "empty"),
    # models
    ("model None", lambda: nms.permute_(None, "2:4"), A, "nn.Module"),
    ("model a state dict", lambda: nms.permute_(MLP.state_dict(), "2:4"), A, "nn.Module"),
    ("model a tensor", lambda: nms.permute_(torch.ones(4, 4), "2:4"), A, "nn.Module"),
    ("model on meta", _perm(_meta_mlp), S, "meta"),
    ("model already sparsified", _perm(lambda: _sparsified(_make()())), SH, "already carries an nmsparse mask"),
    ("model tied weights", _perm(lambda: copy.deepcopy(TIED), calibration=[torch.ones(2, 16)]), SH, "tied"),
    ("model NaN weight", _perm(_make(nan="0.weight")), S, "NaN"),
    ("model Inf weight (with calibration)", _perm(_make(nan="2.weight"), calibration=[X]), S, "NaN"),
    ("model without layers", _perm(lambda: nn.Sequential(nn.ReLU())), SH, "no nn.Linear"),
    ("forward raises AttributeError", _perm(lambda: Raises(AttributeError("no attribute 'foo'")), calibration=[X]), C, "AttributeError"),
    ("forward raises StopIteration", _perm(lambda: Raises(StopIteration()), calibration=[X]), C, "StopIteration"),
    ("forward raises RecursionError", _perm(lambda: Raises(RecursionError("deep")), calibration=[X]), C, "RecursionError"),
    ("forward fails on the check pass after folding", _perm(FailsLater, calibration=[X]), C, "device lost"),
    ("a forward hook raises", _perm(_hook_raises, calibration=[X]), C, "hook failed"),
    ("train mode model, bad batch: modes restored", _perm(_make("bn"), calibration=[torch.ones(4, 3)]), C, "batch 0"),
    # include / exclude
    ("include invalid regex", _perm(M, include="("), P, "regular expression"),
    ("exclude invalid regex", _perm(M, exclude="[a-"), P, "regular expression"),
    ("include matches nothing", _perm(M, include="nothing"), SH, "matches no layer"),
    ("exclude everything", _perm(M, exclude=".*"), SH, "excluded"),
    ("include an int", _perm(M, include=5), P, "regular expressions"),
    ("include a list holding an int", _perm(M, include=["0", 5]), P, "regular expressions"),
]
# options out of range
for name, values in {"iterations": [True, 1.5, -1, 10 ** 9, float("nan"), "3", None],
                     "patience": [True, 0.5, -1, 0, 10 ** 9, float("nan")],
                     "seed": [True, 1.5, -1, 2 ** 64, float("nan"), "0", None],
                     "time_budget": [0, -1, float("nan"), float("inf"), "1", True, -0.0],
                     "check": [1, None, "yes"], "residual": [0, "no"], "progress": [1, None]}.items():
    for v in values:
        BAD.append((f"{name}={v!r}", _perm(M, **{name: v}), A, name))
CASES += [Case(f"permute_ {cid}", call, err, match) for cid, call, err, match in BAD]


@parametrize(CASES)
def test_permute_api(case):
    run_case(case)


# prune_(permute=True, permute_loss=...): the permuted prune kept unless its loss is significantly higher.
Y = torch.randn(8, 8, generator=G)
MSE = lambda m, b: (m(b) - Y).pow(2).mean()  # noqa: E731
PER_SAMPLE = lambda m, b: (m(b) - Y).pow(2).mean(1)  # noqa: E731


def _pruned(make, pattern="2:4", loss=MSE, calibration=(X, X * 0.5), algorithm="wanda", **kw):
    model = make()
    before, rep = _world(model), PruneReport()
    batches = list(calibration) if calibration is not None else None
    nms.prune_(model, pattern, calibration=batches, algorithm=algorithm, permute=True, permute_loss=loss, report=rep, **kw)
    return model, rep, before, pattern


def _prune_ok(result):
    model, rep, before, pattern = result
    _assert_world(model, before, tensors=False)
    for row in rep.layers:  # every pruned layer obeys the pattern
        w = dict(model.named_parameters())[row.name].detach()
        nms.check_mask(w != 0, pattern)
    p = rep.permute
    assert p is not None and p.loss_plain is not None and p.loss_permuted is not None, "the losses are not reported"
    reverted = [g for g in p.groups if g.status == "reverted"]
    assert not reverted or p.loss_permuted > p.loss_plain, "reverted although the permuted loss is not higher"
    assert p.kept_after >= p.kept_before * (1 - 1e-9) and "\n" not in p.summary()
    assert bool(rep.permuted_tensors) == bool(p.permuted), "permuted_tensors disagrees with the groups kept"


def _prune(make=M, **kw):
    return lambda: _guarded(make, lambda m: nms.prune_(m, "2:4", **{"calibration": [X, X], "algorithm": "wanda",
                                                                       "permute": True, **kw}))


PRUNE = [
    Case("prune_ permute_loss scalar", lambda: _pruned(M), check=_prune_ok),
    Case("prune_ permute_loss per sample", lambda: _pruned(M, loss=PER_SAMPLE), check=_prune_ok),
    Case("prune_ permute_loss magnitude 2:4T", lambda: _pruned(M, "2:4T", algorithm="magnitude"), check=_prune_ok),
    Case("prune_ permute_loss sparsegpt 4:8T", lambda: _pruned(M, "4:8T", algorithm="sparsegpt"), check=_prune_ok),
    Case("prune_ permute_loss integer tensor", lambda: _pruned(M, loss=lambda m, b: torch.tensor(3)), check=_prune_ok),
    Case("prune_ permute_loss frozen + hooks", lambda: _pruned(_make(frozen=True, hook=True)), check=_prune_ok),
    Case("prune_ permute_loss train-mode BN model", lambda: _pruned(_make("bn")), check=_prune_ok),
]
for cid, kw, err, match in [
    ("permute_loss not callable", dict(permute_loss=3), A, "callable"),
    ("permute_loss a string", dict(permute_loss="mse"), A, "callable"),
    ("permute_loss without permute=True", dict(permute=False, permute_loss=MSE), A, "permute=True"),
    ("permute_loss without calibration", dict(calibration=None, algorithm="magnitude", permute_loss=MSE), A, "calibration"),
    ("permute_loss raises", dict(permute_loss=lambda m, b: 1 / 0), C, "ZeroDivisionError"),
    ("permute_loss raises StopIteration", dict(permute_loss=lambda m, b: next(iter([]))), C, "StopIteration"),
    ("permute_loss wrong signature", dict(permute_loss=lambda m: 0), C, "permute_loss\\(model, batch\\)"),
    ("permute_loss 2-D", dict(permute_loss=lambda m, b: (m(b) - Y).pow(2)), C, r"shape \(8, 8\)"),
    ("permute_loss empty", dict(permute_loss=lambda m, b: torch.empty(0)), C, r"shape \(0,\)"),
    ("permute_loss a float", dict(permute_loss=lambda m, b: 1.0), C, "got float"),
    ("permute_loss None", dict(permute_loss=lambda m, b: None), C, "NoneType"),
    ("permute_loss NaN", dict(permute_loss=lambda m, b: torch.tensor(float("nan"))), C, "NaN"),
    ("permute_loss Inf per sample", dict(permute_loss=lambda m, b: torch.tensor([1.0, float("inf")])), C, "NaN or Inf"),
    ("permute_loss complex", dict(permute_loss=lambda m, b: torch.tensor(1 + 2j)), C, "complex"),
    ("permute_loss bool", dict(permute_loss=lambda m, b: torch.tensor(True)), C, "bool"),
    ("permute_loss meta", dict(permute_loss=lambda m, b: torch.empty((), device="meta")), C, "meta"),
    ("permute not bool", dict(permute=1), A, "permute must be"),
    ("permute with a density", dict(pattern=0.5), P, "N:M pattern"),
    ("permute scores callable raises", dict(algorithm="magnitude", scores=_boom), S, "RuntimeError"),
    ("permute scores dict missing", dict(algorithm="magnitude", scores={"0.weight": W0}), S, "no entry for 2.weight"),
    ("permute scores complex", dict(algorithm="magnitude", scores=lambda n, m: m.weight.to(torch.complex64)), S, "complex"),
]:
    pattern = kw.pop("pattern", "2:4")
    call = _prune(**kw) if pattern == "2:4" else (lambda kw=kw, p=pattern: _guarded(M, lambda m: nms.prune_(
        m, p, calibration=[X], algorithm="wanda", permute=True, **kw)))
    PRUNE.append(Case(f"prune_ {cid}", call, err, match))


@parametrize(PRUNE)
def test_prune_permute(case):
    run_case(case)


# The CLI on a tiny Hugging Face folder (streamed: the blocks' own groups, no residual stream).
ROOT = Path(tempfile.mkdtemp(prefix="nmsparse-permute-campaign-"))
WORDS = "the cat sat on a mat while dogs ran over green hills and birds sang in tall old trees".split()


@pytest.fixture(scope="module", autouse=True)
def _cleanup():
    yield
    shutil.rmtree(ROOT, ignore_errors=True)


def _folder() -> str:
    folder = ROOT / "gpt2"
    if folder.exists() or GPT2 is None:
        return str(folder)
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "[PAD]": 1, **{w: i + 2 for i, w in enumerate(sorted(set(WORDS)))}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=len(vocab), n_embd=16, n_layer=1, n_head=2,
                                                                     n_positions=32))
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    text = " ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (300,), generator=torch.Generator().manual_seed(4)))
    (ROOT / "calib.txt").write_text(text, encoding="utf-8")
    return str(folder)


def _cli(out, *extra):
    return lambda: ["prune", _folder(), "-o", str(ROOT / out), "--quiet", *extra]


CAL = ("--calibration", str(ROOT / "calib.txt"), "--samples", "2", "--seq-len", "8")


def _cli_ok(out):
    def check():
        rep = json.loads((ROOT / f"{out}.prune.json").read_text())["permute"]
        assert rep["pattern"] == "2:4T" and rep["kept_after"] >= rep["kept_before"] and rep["groups"]
        # One block: loaded whole, so the residual stream (the tied embeddings / LM head) may be reordered;
        # the folder must hold it under the checkpoint's own name and load with the tie intact.
        model = transformers.AutoModelForCausalLM.from_pretrained(str(ROOT / out))
        assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr(), "the tie was broken"
        for name, mod in model.named_modules():
            if type(mod).__name__ == "Conv1D":  # (in, out): groups along dim 0
                nms.check_mask(mod.weight.detach().t() != 0, "2:4T")
        with torch.no_grad():
            assert torch.isfinite(model(input_ids=IDS % model.config.vocab_size).logits).all()
    return check


CLI = [
    CliCase("cli --permute ok", _cli("ok", "--pattern", "2:4T", "--permute", "--algorithm", "wanda", *CAL), 0, check=_cli_ok("ok")),
    CliCase("cli --permute without --calibration", _cli("a", "--pattern", "2:4", "--permute"), 2, "--calibration"),
    CliCase("cli --permute with a density", _cli("b", "--pattern", "50%", "--permute", "--algorithm", "wanda", *CAL), 1, "N:M pattern"),
    CliCase("cli --permute pattern 0:4", _cli("c", "--pattern", "0:4", "--permute", *CAL), 1, "1 <= n <= m"),
    CliCase("cli --permute pattern 2:4X", _cli("d", "--pattern", "2:4X", "--permute", *CAL), 1, "accepted forms"),
]


@pytest.mark.skipif(GPT2 is None, reason="transformers is not installed")
@parametrize(CLI)
def test_cli_permute(case):
    run_cli_case(case)
