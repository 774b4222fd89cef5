"""Campaign: model-level entry points (sparsify_, update_masks_, squash_, summary, sift.transform,
adaprune, the WGSEF regularizer and its functions) on the models and values users pass.

Written against public behaviour only (errors are NMSparseError subclasses whose message names
the argument; sparsified weights obey the pattern by check_mask; the input model of a copying
function is unchanged), so the cases survive reworks of the internals. Models are built once at
collection and deep-copied inside each case: no case touches the global RNG.
"""

from __future__ import annotations

import copy
import math
from fractions import Fraction

import torch
from torch import nn

import nmsparse as nms
from nmsparse.layout import group_dim_of, is_hf_conv1d
from nmsparse.nn import sparsified_parameters
from _harness import Case, parametrize, run_case
from nmsparse import convert, oneshot, regularizers as R, sift

G = torch.Generator().manual_seed(5)
with torch.random.fork_rng(devices=[]):  # building the templates must not shift the caller's RNG either
    torch.manual_seed(5)
    MLP = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 8))
    CNN = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    LIN6 = nn.Linear(6, 6)
    LIN4 = nn.Linear(4, 4)
    NAN_LIN = nn.Linear(16, 16)
    with torch.no_grad():
        NAN_LIN.weight[2, 3] = float("nan")
    try:  # Hugging Face Conv1D (GPT-2) stores (in, out): its masks run along dim 0
        import transformers

        GPT2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            n_layer=1, n_embd=16, n_head=2, vocab_size=32, n_positions=16,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))  # no dropout: train-mode passes leave the RNG alone
    except ImportError:
        GPT2 = None
X = torch.randn(4, 16, generator=G)
XC = torch.randn(2, 8, 6, 6, generator=G)


def _assert(cond, message=""):
    assert cond, message


def _variant(template, dtype=None, frozen=False, channels_last=False):
    def make():
        m = copy.deepcopy(template)
        if dtype is not None:
            m = m.to(dtype)
        if frozen:
            m.requires_grad_(False)
        if channels_last:
            m = m.to(memory_format=torch.channels_last)
        return m
    return make


MODELS = {
    "mlp fp32": (_variant(MLP), X),
    "mlp fp64": (_variant(MLP, torch.float64), X.double()),
    "mlp bf16": (_variant(MLP, torch.bfloat16), X.bfloat16()),
    "mlp frozen (requires_grad False)": (_variant(MLP, frozen=True), X),
    "cnn channels_last": (_variant(CNN, channels_last=True), XC.contiguous(memory_format=torch.channels_last)),
}
if GPT2 is not None:
    MODELS["gpt2 (HF Conv1D)"] = (_variant(GPT2), torch.randint(0, 32, (2, 8), generator=G))


def _layers(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)) or is_hf_conv1d(m)]


def _dense_and_masks(model):
    """{parameter name: (dense weight, mask)} of every masked weight, by the public helper."""
    out = {}
    for name, (module, pname) in sparsified_parameters(model).items():
        plist = module.parametrizations[pname]
        out[name] = (plist.original.detach().clone(), plist[0].mask.clone())
    return out


def _sparsified(make, x, pattern, steps):
    """sparsify_ with a refresh every training pass, ``steps`` real training steps (forward,
    backward, SGD step; a frozen model gets forwards only), then update_masks_ and squash_."""
    model = make()
    nms.sparsify_(model, pattern, update_every=1)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.5) if params else None
    for _ in range(steps):
        out = model(x)
        loss = getattr(out, "logits", out).float().pow(2).mean()
        if opt is not None:
            opt.zero_grad()
            loss.backward()
            opt.step()
    rows = [dict(r) for r in nms.summary(model).rows]
    nms.update_masks_(model)
    masks = _dense_and_masks(model)
    if steps:
        nms.squash_(model)
    return model, rows, masks


def _rule_mask(dense, pattern, row):
    """The mask the refresh rule gives for ``dense``: top-k of |w| for a density, else the pattern's
    mask by the layer's solver along its group dimension."""
    if isinstance(pattern, float):
        return nms.unstructured_mask(dense, pattern)
    return nms.find_mask(dense, pattern, method=row["solver"], dim=row["group_dim"])


def _obeys(pattern, steps):
    def check(result):
        model, rows, masks = result
        by_name = {r["name"]: r for r in rows}
        layers = _layers(model)
        assert layers, "the model has no candidate layer"
        for name, layer in layers:  # every candidate layer, not any one
            pname = f"{name}.weight"
            row = by_name.get(pname)
            assert row is not None, f"{pname}: not in summary (sparsify_ left it out without a reason)"
            if row["status"].startswith("skipped: tied to the embedding"):
                # The library's stated default: a weight tied to an embedding (a tied LM head) stays dense.
                assert not hasattr(layer, "parametrizations"), f"{pname}: skipped but masked"
                continue
            assert row["status"] == "sparse" or row["status"].startswith("tied"), f"{pname}: {row['status']}"
            assert (row["steps"], row["refreshes"]) == (steps, steps) or row["status"].startswith("tied"), \
                f"{pname}: {row['steps']} training passes counted and {row['refreshes']} refreshes after {steps} steps"
            w = layer.weight.detach()
            if isinstance(pattern, float):
                k = math.floor(Fraction(pattern) * w.numel() + Fraction(1, 2))
                assert int((w != 0).sum()) <= k, f"{pname}: {int((w != 0).sum())} non-zeros, density {pattern} keeps {k}"
            else:
                assert nms.is_valid_mask(w != 0, pattern, dim=group_dim_of(layer)), f"{pname}: weight does not obey {pattern}"
            assert not torch.signbit(w[w == 0]).any(), f"{pname}: pruned entries must be +0.0"
        for pname, (dense, mask) in masks.items():
            row = by_name[pname]
            if isinstance(pattern, float):
                assert int(mask.sum()) == math.floor(Fraction(pattern) * mask.numel() + Fraction(1, 2)), pname
            else:
                nms.check_mask(mask, pattern, dim=row["group_dim"], exact=True)
            # update_masks_ refreshed from the trained dense weights: the mask is the rule's mask of them.
            assert torch.equal(mask, _rule_mask(dense, pattern, row)), f"{pname}: mask is not the refresh of the dense weights"
        if steps:  # squash_ baked the masks in and removed every parametrization
            assert not sparsified_parameters(model), "squash_ left masks attached"
            for name, layer in layers:
                dense, mask = masks.get(f"{name}.weight", (None, None))
                if dense is not None:
                    assert torch.equal(layer.weight.detach(), torch.where(mask, dense, torch.zeros((), dtype=dense.dtype))), name
    return check


CASES = []
for mid, (make, x) in MODELS.items():
    for pattern in ("2:4", "2:4T", "4:8T", 0.5):
        for steps in (0, 2):
            CASES.append(Case(f"sparsify_ {mid} {pattern} steps={steps}", lambda make=make, x=x, p=pattern, s=steps: _sparsified(make, x, p, s),
                              check=_obeys(pattern, steps)))

E = nms.NMSparseError
BAD_MODELS = [
    ("sparsify_ model None", lambda: nms.sparsify_(None, "2:4"), E, "nn.Module"),
    ("sparsify_ model tensor", lambda: nms.sparsify_(torch.ones(4, 4), "2:4"), E, "nn.Module"),
    ("sparsify_ model state dict", lambda: nms.sparsify_(MLP.state_dict(), "2:4"), E, "nn.Module"),
    ("sparsify_ bad pattern", lambda: nms.sparsify_(_variant(MLP)(), "5:4"), nms.PatternError, "1 <= n <= m"),
    ("sparsify_ pattern None", lambda: nms.sparsify_(_variant(MLP)(), None), E, "None"),
    ("sparsify_ bad method", lambda: nms.sparsify_(_variant(MLP)(), "2:4T", method="magic"), nms.MethodError, "magic"),
    ("sparsify_ update_every 0", lambda: nms.sparsify_(_variant(MLP)(), "2:4", update_every=0), E, "update_every"),
    ("sparsify_ update_every -5", lambda: nms.sparsify_(_variant(MLP)(), "2:4", update_every=-5), E, "update_every"),
    ("sparsify_ update_every str", lambda: nms.sparsify_(_variant(MLP)(), "2:4", update_every="10"), E, "update_every"),
    ("sparsify_ update_every float", lambda: nms.sparsify_(_variant(MLP)(), "2:4", update_every=1.5), E, "update_every"),
    ("sparsify_ gradient unknown", lambda: nms.sparsify_(_variant(MLP)(), "2:4", gradient="magic"), E, "gradient"),
    ("sparsify_ density 1.5", lambda: nms.sparsify_(_variant(MLP)(), 1.5), E, "1.5"),
    ("sparsify_ density 0", lambda: nms.sparsify_(_variant(MLP)(), 0.0), E, "density"),
    ("sparsify_ density NaN", lambda: nms.sparsify_(_variant(MLP)(), float("nan")), E, "nan"),
    ("sparsify_ include bad regex", lambda: nms.sparsify_(_variant(MLP)(), "2:4", include="("), E, "regular expression"),
    ("sparsify_ NaN weight", lambda: nms.sparsify_(_nan_model(), "2:4"), nms.ScoreError, "NaN"),
    ("sparsify_ meta model", lambda: nms.sparsify_(nn.Linear(16, 16, device="meta"), "2:4"), nms.ScoreError, "meta"),
    ("sparsify_ no layer fits", lambda: nms.sparsify_(copy.deepcopy(LIN6), "2:4"), E, "multiple of"),
    ("update_masks_ on a plain model", lambda: nms.update_masks_(_variant(MLP)()), E, "sparsify_"),
    ("update_masks_ None", lambda: nms.update_masks_(None), E, "sparsif"),
    ("squash_ on a plain model", lambda: nms.squash_(_variant(MLP)()), E, "sparsify_"),
    ("squash_ a tensor", lambda: nms.squash_(torch.ones(3)), E, "sparsif|Module"),
    ("summary None", lambda: nms.summary(None), E, "nn.Module"),
    ("summary a string", lambda: nms.summary("model"), E, "nn.Module"),
]


def _nan_model():
    return copy.deepcopy(NAN_LIN)


# sift.transform: a copy, the input untouched, same output shape; bad arguments clear.
def _transformed(family, sparsity, pattern=None):
    model = _variant(MLP)()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    new = sift.transform(model, family, sparsity, pattern=pattern, input_shape=(1, 16))
    return model, before, new


def _transform_ok(pattern):
    def check(result):
        model, before, new = result
        assert new is not model
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "transform changed its input"
        assert new(X).shape == (4, 8)
        masked = sparsified_parameters(new)
        assert masked, "the transformed model carries no mask"
        for name, (module, pname) in masked.items():  # every masked weight, not any one
            mask = module.parametrizations[pname][0].mask
            w = getattr(module, pname).detach()
            assert not (w[~mask] != 0).any() and not torch.signbit(w[w == 0]).any(), f"{name}: pruned entries must be +0.0"
            if pattern is not None:
                nms.check_mask(mask, pattern, exact=True)
    return check


for family in ("wide", "parallel", "factorized", "doped"):
    for sparsity, pattern in ((0.5, None), (0.25, None), (0.5, "2:4")):
        CASES.append(Case(f"sift.transform {family} s={sparsity} pattern={pattern}",
                          lambda f=family, s=sparsity, p=pattern: _transformed(f, s, p), check=_transform_ok(pattern)))
BAD_MODELS += [
    ("sift.transform None", lambda: sift.transform(None, "doped", 0.5), nms.ArgumentError, "nn.Module"),
    ("sift.transform a tensor", lambda: sift.transform(torch.ones(2), "doped", 0.5), nms.ArgumentError, "nn.Module"),
    ("sift.transform family unknown", lambda: sift.transform(_variant(MLP)(), "huge", 0.5), nms.MethodError, "known families"),
    ("sift.transform family None", lambda: sift.transform(_variant(MLP)(), None, 0.5), nms.MethodError, "known families"),
    ("sift.transform sparsity 1", lambda: sift.transform(_variant(MLP)(), "doped", 1.0), nms.PatternError, r"\[0, 1\)"),
    ("sift.transform sparsity -0.5", lambda: sift.transform(_variant(MLP)(), "doped", -0.5), nms.PatternError, r"\[0, 1\)"),
    ("sift.transform sparsity NaN", lambda: sift.transform(_variant(MLP)(), "doped", float("nan")), nms.PatternError, "nan"),
    ("sift.transform sparsity str", lambda: sift.transform(_variant(MLP)(), "doped", "0.5"), nms.PatternError, "'0.5'"),
    ("sift.transform pattern mismatch", lambda: sift.transform(_variant(MLP)(), "doped", 0.9, pattern="2:4"), nms.PatternError, "sparsity"),
    ("sift.transform wide too sparse for a small net", lambda: sift.transform(_variant(MLP)(), "wide", 0.75, input_shape=(1, 16)),
     nms.ShapeError, "lower sparsity"),
    ("sift.transform pattern bad", lambda: sift.transform(_variant(MLP)(), "doped", 0.5, pattern="9:4"), nms.PatternError, "1 <= n <= m"),
]

# Regularizer functions: closed forms on inputs as users hold them (k = 1: L1 norm, k = d: L2 norm).
V = torch.randn(12, generator=G)
for vid, v in {"plain": V, "Parameter": nn.Parameter(V.clone()), "requires_grad": V.clone().requires_grad_(),
               "fp16": V.half(), "fp64": V.double(), "strided view": torch.randn(24, generator=G)[::2], "2-D": V.reshape(3, 4)}.items():
    ref = v.detach().double().reshape(-1)
    CASES.append(Case(f"k_support_norm k=1 {vid}", lambda v=v: R.k_support_norm(v, 1),
                      check=lambda got, ref=ref: _assert(abs(got - float(ref.abs().sum())) < 1e-9 * max(1, float(ref.abs().sum())))))
    CASES.append(Case(f"k_support_norm k=d {vid}", lambda v=v: R.k_support_norm(v, v.numel()),
                      check=lambda got, ref=ref: _assert(abs(got - float(ref.norm())) < 1e-9 * max(1, float(ref.norm())))))
    CASES.append(Case(f"wgsef_project {vid} keeps the 3 largest", lambda v=v: R.wgsef_project(v, 3),
                      check=lambda out, v=v, ref=ref: _kept_three_largest(out, v, ref)))
def _kept_three_largest(out, v, ref):
    assert out.shape == v.shape and out.dtype == v.dtype
    flat = out.detach().double().reshape(-1)
    top = sorted(range(ref.numel()), key=lambda i: (-abs(float(ref[i])), i))[:3]
    want = torch.zeros_like(ref)
    want[top] = ref[top]
    assert torch.equal(flat, want), f"kept {torch.nonzero(flat).flatten().tolist()}, the 3 largest are {sorted(top)}"


for fid, fn in {"wgsef": lambda x, k: R.wgsef(x, k), "k_support_norm": R.k_support_norm,
                "wgsef_prox": lambda x, k: R.wgsef_prox(x, k, step=0.1), "wgsef_project": R.wgsef_project}.items():
    for cid, args, err, match in [
        ("k = 0", (V, 0), nms.ShapeError, "k must be"),
        ("k too large", (V, 13), nms.ShapeError, "k must be"),
        ("x a list", ([1.0, 2.0], 1), nms.ShapeError, "torch.Tensor"),
        ("x None", (None, 1), nms.ShapeError, "torch.Tensor"),
        ("x int", (torch.ones(4, dtype=torch.int32), 1), nms.ScoreError, "floating"),
        ("x complex", (torch.ones(4, dtype=torch.complex64), 1), nms.ScoreError, "floating"),
        ("x NaN", (torch.full((4,), float("nan")), 1), nms.ScoreError, "NaN"),
        ("x Inf", (torch.full((4,), float("inf")), 1), nms.ScoreError, "NaN or Inf"),
        ("x empty", (torch.empty(0), 1), nms.ShapeError, "empty"),
        ("x meta", (torch.empty(4, device="meta"), 1), nms.ScoreError, "meta"),
    ]:
        BAD_MODELS.append((f"{fid}: {cid}", lambda fn=fn, a=args: fn(*a), err, match))
for step in (-1.0, float("nan"), float("inf"), "0.1", None):
    BAD_MODELS.append((f"wgsef_prox step {step!r}", lambda s=step: R.wgsef_prox(V, 2, step=s), nms.ArgumentError, "step must be"))
BAD_MODELS += [
    ("WGSEFRegularizer model None", lambda: R.WGSEFRegularizer(None), nms.ArgumentError, "nn.Module"),
    ("WGSEFRegularizer groups unknown", lambda: R.WGSEFRegularizer(_variant(MLP)(), groups="weird"), nms.ShapeError, "weird"),
    ("WGSEFRegularizer k negative", lambda: R.WGSEFRegularizer(_variant(MLP)(), k=-1), nms.ShapeError, "k must be"),
    ("WGSEFRegularizer lam negative", lambda: R.WGSEFRegularizer(_variant(MLP)(), lam=-1), nms.ArgumentError, "lam must be"),
    ("WGSEFRegularizer lam NaN", lambda: R.WGSEFRegularizer(_variant(MLP)(), lam=float("nan")), nms.ArgumentError, "lam must be"),
    ("WGSEFRegularizer lam str", lambda: R.WGSEFRegularizer(_variant(MLP)(), lam="big"), nms.ArgumentError, "lam must be"),
    ("WGSEFRegularizer method unknown", lambda: R.WGSEFRegularizer(_variant(MLP)(), method="magic"), nms.MethodError, "magic"),
    ("WGSEFRegularizer.step lr negative", lambda: R.WGSEFRegularizer(_variant(MLP)()).step(-0.1), nms.ArgumentError, "lr must be"),
    ("WGSEFRegularizer.step lr None", lambda: R.WGSEFRegularizer(_variant(MLP)()).step(None), nms.ArgumentError, "lr must be"),
    ("shrink_model of a Linear", lambda: R.shrink_model(copy.deepcopy(LIN4)), nms.ShapeError, "Sequential"),
]


# AdaPrune: a small right result, and every bad argument clear.
def _adapruned(pattern):
    model = _variant(MLP)()
    oneshot.adaprune(model, [X, X * 0.5], pattern, iterations=2, batch_size=4, batchnorm=False)
    return model


def _adapruned_ok(model, pattern):
    layers = _layers(model)
    assert len(layers) == 3
    for name, layer in layers:  # every layer, each with exactly n kept per group (tile row and column)
        w = layer.weight.detach()
        assert torch.isfinite(w).all(), f"{name}: non-finite weights"
        nms.check_mask(w != 0, pattern, exact=True)
        assert not torch.signbit(w[w == 0]).any(), f"{name}: pruned entries must be +0.0"


for pattern in ("2:4", "2:4T"):
    CASES.append(Case(f"adaprune {pattern}", lambda p=pattern: _adapruned(p), check=lambda m, p=pattern: _adapruned_ok(m, p)))
C = nms.ConvertError
BAD_MODELS += [
    ("adaprune model None", lambda: oneshot.adaprune(None, [X], "2:4"), C, "nn.Module"),
    ("adaprune calibration None", lambda: oneshot.adaprune(_variant(MLP)(), None, "2:4"), C, "iterable"),
    ("adaprune calibration empty", lambda: oneshot.adaprune(_variant(MLP)(), [], "2:4"), C, "empty"),
    ("adaprune calibration a tensor", lambda: oneshot.adaprune(_variant(MLP)(), X, "2:4"), C, "wrap it in a list"),
    ("adaprune calibration strings", lambda: oneshot.adaprune(_variant(MLP)(), ["a"], "2:4"), C, "batch 0"),
    ("adaprune calibration wrong shape", lambda: oneshot.adaprune(_variant(MLP)(), [torch.ones(4, 5)], "2:4", iterations=1), C, "batch 0"),
    ("adaprune calibration wrong dtype", lambda: oneshot.adaprune(_variant(MLP)(), [torch.ones(4, 16, dtype=torch.long)], "2:4", iterations=1), C, "batch 0"),
    ("adaprune calibration NaN", lambda: oneshot.adaprune(_variant(MLP)(), [torch.full((4, 16), float("nan"))], "2:4"), C, "NaN"),
    ("adaprune calibration Inf in 2nd batch", lambda: oneshot.adaprune(_variant(MLP)(), [X, X / 0], "2:4"), C, "batch 1"),
    ("adaprune lr negative", lambda: oneshot.adaprune(_variant(MLP)(), [X], "2:4", lr=-1), C, "lr"),
    ("adaprune iterations -1", lambda: oneshot.adaprune(_variant(MLP)(), [X], "2:4", iterations=-1), C, "iterations"),
    ("adaprune batch_size 0", lambda: oneshot.adaprune(_variant(MLP)(), [X], "2:4", batch_size=0), C, "batch_size"),
    ("adaprune pattern bad", lambda: oneshot.adaprune(_variant(MLP)(), [X], "2:x"), nms.PatternError, "accepted forms"),
    ("adaprune method unknown", lambda: oneshot.adaprune(_variant(MLP)(), [X], "2:4T", method="magic"), nms.MethodError, "magic"),
    ("adaprune ragged unknown", lambda: oneshot.adaprune(_variant(MLP)(), [X], "2:4", ragged="maybe"), C, "ragged"),
    ("adaprune scores unknown", lambda: oneshot.adaprune(_variant(MLP)(), [X], "2:4", scores="best"), C, "scores"),
    ("adaprune ragged layer", lambda: oneshot.adaprune(nn.Sequential(copy.deepcopy(LIN6)), [torch.ones(2, 6)], "2:4"), nms.ShapeError, "--ragged"),
]
CASES += [Case(cid, call, err, match) for cid, call, err, match in BAD_MODELS]


@parametrize(CASES)
def test_model_entry_points(case):
    run_case(case)


def test_templates_are_finite():
    assert all(math.isfinite(float(p.abs().sum())) for p in MLP.parameters())
