"""Campaign: prune_'s numeric options at, inside and beyond their stated ranges, and options in range
that drive a pruning step to non-finite weights (issue 20, kind 1).

The stated ranges (``prune_``'s docstring, :mod:`nmsparse.oneshot.options`, :mod:`nmsparse.oneshot.adafit`):
``0 <= damp <= 1``, ``blocksize >= 1``, ``0 <= iterations <= 10**6``, ``0 < lr <= 1``,
``batch_size >= 1``, ``0 <= seed < 2**64``. Outside them: a one-line ConvertError naming the option and
the value, before any work, and the model unchanged. At the edges: a right result (the pattern holds,
pruned entries are +0.0, weights, bias and outputs finite).

Inside the ranges a step can still meet weights or inputs its arithmetic cannot hold (a least-squares
or OBS correction beyond float16, a float32 Gram product that overflows, weights whose squares
overflow float64, a float64 weight beyond AdaPrune's float32 fit). Every step checks its result
before it is written: a one-line ConvertError naming the layer, the step and the option (or the
layer's property) that caused it, with the fix, and the model unchanged (layers pruned earlier in
the same call are restored).

Models are built once at collection (under a forked RNG) and deep-copied in each case.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

import nmsparse as nms
from _harness import Case, parametrize, run_case

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls: see test_ragged_matrix.py

C = nms.ConvertError
G = torch.Generator().manual_seed(21)
with torch.random.fork_rng(devices=[]):
    torch.manual_seed(21)
    MLP = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 8))
    LIN8 = nn.Linear(8, 8)
    TWO = nn.ModuleDict({"a": nn.Linear(4, 4), "b": nn.Linear(4, 4)})
X = torch.randn(32, 16, generator=G)
X8 = torch.randn(32, 8, generator=G)

ALGS = ("magnitude", "wanda", "sparsegpt", "adaprune", "magnitude+lsq", "wanda+lsq", "sparsegpt+lsq",
        "magnitude+sparsegpt", "magnitude+adaprune", "sparsegpt+adaprune")
FEW = dict(iterations=3, batch_size=16)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _prune(make, calib, pattern="2:4", **kw):
    """prune_ on a fresh model; on a library error the model must be unchanged."""
    model = make()
    before = _state(model)
    try:
        nms.prune_(model, pattern, calibration=calib, **kw)
    except nms.NMSparseError:
        assert _same(before, _state(model)), "the model changed although prune_ raised"
        raise
    return model


def _pruned_ok(pattern="2:4", x=X):
    def check(model):
        for name, module in model.named_modules():
            if not isinstance(module, nn.Linear):
                continue
            w = module.weight.detach()
            assert bool(torch.isfinite(w).all()) and bool(torch.isfinite(module.bias).all()), f"{name}: not finite"
            assert not bool(((w == 0) & torch.signbit(w)).any()), f"{name}: -0.0 where pruned"
            assert nms.is_valid_mask(w != 0, pattern), f"{name}: breaks {pattern}"
        if x is not None:
            with torch.no_grad():
                assert bool(torch.isfinite(model(x)).all()), "non-finite outputs"
    return check


def _mlp():
    return copy.deepcopy(MLP)


CASES = []


def _add(cid, call, error=None, match=None, check=None):
    CASES.append(Case(cid, call, error, match, check))


# --- damp: the examples, then the range's edges, for every algorithm that reads it -------------
for alg in ALGS:
    kw = FEW if "adaprune" in alg else {}
    for damp in (1e308, 1e307, 1e20, 1.0000001, 2, -1e-300, -1.0, float("nan"), float("inf"), -float("inf"), True, "0.01", None):
        _add(f"damp={damp!r} {alg}", lambda a=alg, d=damp, k=kw: _prune(_mlp, [X], algorithm=a, damp=d, **k), C,
             r"damp must be a finite number with 0 <= damp <= 1.*got")
    for damp in (0.0, 0, 5e-324, 1e-12, 0.01, 1.0, 1):
        _add(f"damp={damp!r} {alg} (in range)", lambda a=alg, d=damp, k=kw: _prune(_mlp, [X], algorithm=a, damp=d, **k),
             check=_pruned_ok())
    for damp in (0.0, 1.0):
        for pattern in ("2:4T", 0.5):
            _add(f"damp={damp!r} {alg} {pattern}", lambda a=alg, d=damp, p=pattern, k=kw: _prune(_mlp, [X], p, algorithm=a, damp=d, **k),
                 check=None if isinstance(pattern, float) else _pruned_ok(pattern))

# --- blocksize ------------------------------------------------------------------------------------
for bs in (0, -1, 2.5, True, "128", None):
    _add(f"blocksize={bs!r}", lambda b=bs: _prune(_mlp, [X], algorithm="sparsegpt", blocksize=b), C, r"blocksize must be an int >= 1")
for bs in (1, 3, 4, 10**9):
    for pattern in ("2:4", "2:4T"):
        _add(f"blocksize={bs} {pattern} (in range)", lambda b=bs, p=pattern: _prune(_mlp, [X], p, algorithm="sparsegpt", blocksize=b),
             check=_pruned_ok(pattern))

# --- AdaPrune's options ---------------------------------------------------------------------------
for alg in ("adaprune", "magnitude+adaprune"):
    for it in (-1, 10**6 + 1, 10**100, 2.0, True, None):
        _add(f"iterations={it!r} {alg}", lambda a=alg, i=it: _prune(_mlp, [X], algorithm=a, iterations=i), C,
             r"iterations must be an int with 0 <= iterations <= 1000000")
    for lr in (0, 0.0, -1e-3, 1.0000001, 1e30, 1e300, float("nan"), float("inf"), True, "1e-3"):
        _add(f"lr={lr!r} {alg}", lambda a=alg, r=lr: _prune(_mlp, [X], algorithm=a, lr=r, iterations=2), C,
             r"lr must be a finite number with 0 < lr <= 1")
    for bs in (0, -5, 1.5, True):
        _add(f"batch_size={bs!r} {alg}", lambda a=alg, b=bs: _prune(_mlp, [X], algorithm=a, batch_size=b, iterations=2), C,
             r"batch_size must be an int >= 1")
    for seed in (-1, 2**64, 1.5, True, "0"):
        _add(f"seed={seed!r} {alg}", lambda a=alg, s=seed: _prune(_mlp, [X], algorithm=a, seed=s, iterations=2), C,
             r"seed must be an int with 0 <= seed < 2\*\*64")
    for opts in (dict(iterations=0), dict(iterations=1), dict(lr=1.0, iterations=20), dict(lr=1e-30, iterations=2),
                 dict(batch_size=1, iterations=2), dict(batch_size=10**9, iterations=2), dict(seed=0, iterations=2),
                 dict(seed=2**64 - 1, iterations=2)):
        _add(f"{opts} {alg} (in range)", lambda a=alg, o=opts: _prune(_mlp, [X], algorithm=a, **o), check=_pruned_ok())
# the range is checked up front even where AdaPrune does not run
_add("lr=1e300 with sparsegpt", lambda: _prune(_mlp, [X], algorithm="sparsegpt", lr=1e300), C, r"lr must be")


# --- options in range, results that are not ---------------------------------------------------------
def _collinear_fp16(bias_offset: bool):
    """A float16 layer whose pruned input 1 is 10^4 x a kept input (or, with ``bias_offset``, a
    constant 10^4): the exact refit moves its weight 30 onto the kept weight (or the bias) x 10^4,
    3e5, beyond float16's 65504."""
    lin = nn.Linear(4, 4)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 30.0, 0.5, 0.2]] * 4))
        lin.bias.zero_()
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
    x[:, 1] = 1e4 if bias_offset else x[:, 2] * 1e4
    return (lambda: nn.Sequential(copy.deepcopy(lin).half())), [x.half()]


KEEP_0_2 = {"0.weight": torch.tensor([[1.0, 0.0, 1.0, 0.0]] * 4)}  # scores: keep inputs 0 and 2
MAKE16, CAL16 = _collinear_fp16(False)
MAKE16B, CAL16B = _collinear_fp16(True)
for alg, step in (("magnitude+lsq", "lsq"), ("magnitude+sparsegpt", "sparsegpt")):
    for damp in (0.0, 1e-8):
        _add(f"fp16 {alg} damp={damp} refit beyond float16", lambda a=alg, d=damp: _prune(MAKE16, CAL16, algorithm=a, damp=d, scores=KEEP_0_2),
             C, rf"layer 0\.weight: step '{step}' of algorithm '{re.escape(alg)}' gave weights up to [0-9.]+e\+05, beyond float16's "
             rf"range.*damp={damp:g}\).*raise damp")
    _add(f"fp16 {alg} damp=0.01 (in range, fits)", lambda a=alg: _prune(MAKE16, CAL16, algorithm=a, damp=0.01, scores=KEEP_0_2),
         check=_pruned_ok(x=None))
_add("fp16 magnitude+lsq damp=0 bias beyond float16", lambda: _prune(MAKE16B, CAL16B, algorithm="magnitude+lsq", damp=0.0, scores=KEEP_0_2),
     C, r"step 'lsq' of algorithm 'magnitude\+lsq' gave bias up to 3e\+05, beyond float16's range.*damp=0")


def _two_layers_second_overflows():
    """Layer a prunes fine, then layer b's refit overflows: a must be restored too."""
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = copy.deepcopy(TWO["a"]), copy.deepcopy(TWO["b"])
            with torch.no_grad():
                self.b.weight.copy_(torch.tensor([[1.0, 30.0, 0.5, 0.2]] * 4))
                self.b.bias.zero_()

        def forward(self, u, v):
            return self.a(u), self.b(v)

    model = Two().half()
    u = torch.randn(64, 4, generator=torch.Generator().manual_seed(2)).half()
    scores = {"a.weight": torch.tensor([[1.0, 0.0, 1.0, 0.0]] * 4), "b.weight": KEEP_0_2["0.weight"]}
    before = _state(model)
    try:
        nms.prune_(model, "2:4", calibration=[(u, CAL16[0])], algorithm="magnitude+lsq", damp=0.0, scores=scores)
    except nms.NMSparseError:
        assert _same(before, _state(model)), "layer a stayed pruned after layer b's error"
        raise
    return model


_add("fp16 second layer's refit overflows: first layer restored", _two_layers_second_overflows, C, r"layer b\.weight: step 'lsq'")

# float32 inputs whose Gram products overflow float32 (1e19^2·32 > 3.4e38) while the layer's forward does
# not: the Gram is recomputed in float64, and every algorithm prunes.
XBIG = X8 * 1e19
for alg in ALGS:
    kw = FEW if "adaprune" in alg else {}
    _add(f"float32 inputs 1e19 {alg}", lambda a=alg, k=kw: _prune(lambda: nn.Sequential(copy.deepcopy(LIN8)), [XBIG], algorithm=a, **k),
         check=_pruned_ok(x=XBIG))

# float64 inputs whose Gram overflows even float64: a clear error naming the layer
XHUGE = X8.double() * 1e160
for alg in ALGS[1:]:
    kw = FEW if "adaprune" in alg else {}
    _add(f"float64 inputs 1e160 {alg}", lambda a=alg, k=kw: _prune(lambda: nn.Sequential(copy.deepcopy(LIN8).double()), [XHUGE], algorithm=a, **k),
         C, r"layer 0\.weight: the Gram matrix XᵀX of its calibration inputs has NaN/Inf even in float64")


# float64 weights of 1e299: their squares overflow float64 (and they exceed AdaPrune's float32 fit)
def _huge_weights():
    m = nn.Sequential(copy.deepcopy(LIN8).double())
    with torch.no_grad():
        m[0].weight.mul_(1e300)
    return m


X8D = X8.double() * 1e10
HUGE = {
    "wanda": r"step 'wanda': the scores \|W\|·‖x‖ overflow float64",
    "magnitude+lsq": r"step 'lsq' of algorithm 'magnitude\+lsq' gave non-finite weights.*too large for its float64 arithmetic",
    "sparsegpt": r"step 'sparsegpt' of algorithm 'sparsegpt' gave non-finite weights.*too large for its float64 arithmetic",
    "magnitude+sparsegpt": r"step 'sparsegpt' of algorithm 'magnitude\+sparsegpt' gave non-finite.*float64 arithmetic",
    "adaprune": r"step 'adaprune' of algorithm 'adaprune' gave non-finite weights.*fits in float32",
}
for alg, match in HUGE.items():
    kw = FEW if "adaprune" in alg else {}
    _add(f"float64 weights 1e299 {alg}", lambda a=alg, k=kw: _prune(_huge_weights, [X8D], algorithm=a, **k), C, match)
_add("float64 weights 1e299 magnitude (no arithmetic on them)", lambda: _prune(_huge_weights, [X8D], algorithm="magnitude"),
     check=_pruned_ok(x=None))


@parametrize(CASES)
def test_option_ranges(case):
    run_case(case)
