"""Campaign: prune_'s option combinations, crossed in full (issue 20, kind 4).

pattern family {row-wise "2:4", transposable "2:4T" and "4:8T", unstructured density 0.5}
x ragged {"error", "skip", "pad"} x algorithm {magnitude, wanda, sparsegpt, adaprune, magnitude+lsq,
wanda+lsq, sparsegpt+lsq, magnitude+sparsegpt, magnitude+adaprune} x layer kind {Linear with ragged
rows, Linear with ragged columns, Conv2d, Hugging Face Conv1D, aligned Linear}.

Each model holds the layer under test next to an aligned anchor layer (so ``ragged="skip"`` still leaves
something to prune). The expected outcome follows the library's stated rules only (DESIGN.md,
"Ragged edges"; :func:`nmsparse.check_mask`):

* a layer whose shape does not fit the pattern (the grouped axis, or for a transposable pattern the
  rows, not a multiple of m) under ``ragged="error"``: a one-line ShapeError naming the layer and the
  fix, and the model unchanged;
* under ``"skip"``: that layer stays dense (bit for bit) and the report says so; the anchor is pruned;
* otherwise (``"pad"``, or a shape that fits): every pruned weight's non-zeros obey the pattern with
  every full group/tile keeping exactly n and a partial one at most n (``is_valid_mask(exact=True)``),
  a density keeps exactly ``kept_count(numel, density)``, pruned entries are +0.0 (never -0.0), and
  the weights, bias and model outputs are finite.

Models are built once at collection (under a forked RNG) and deep-copied in each case.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import nmsparse as nms
from _harness import Case, parametrize, run_case
from nmsparse.diversity import kept_count
from nmsparse.oneshot.report import PruneReport

PATTERNS = ("2:4", "2:4T", "4:8T", 0.5)
RAGGED = ("error", "skip", "pad")
ALGORITHMS = ("magnitude", "wanda", "sparsegpt", "adaprune", "magnitude+lsq", "wanda+lsq", "sparsegpt+lsq",
              "magnitude+sparsegpt", "magnitude+adaprune")
FEW = dict(iterations=3, batch_size=16)  # AdaPrune: a few Adam steps are enough to exercise the path

# Tiny matmuls: one torch thread (restored after each case). With the second OpenMP runtime that the
# campaign's conftest loads (scikit-learn's), two threads make these cases several times slower.
pytestmark = pytest.mark.usefixtures("one_thread")


class Pair(nn.Module):
    """The layer under test and an aligned 8x8 anchor, each fed its own input."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer
        self.anchor = nn.Linear(8, 8)

    def forward(self, x, z):
        return self.layer(x), self.anchor(z)


G = torch.Generator().manual_seed(20)
with torch.random.fork_rng(devices=[]):
    torch.manual_seed(20)
    # (template, input of the layer under test, (rows, grouped axis length) of its matrix view)
    KINDS = {
        "linear ragged rows 6x16": (Pair(nn.Linear(16, 6)), torch.randn(32, 16, generator=G), (6, 16)),
        "linear ragged cols 8x10": (Pair(nn.Linear(10, 8)), torch.randn(32, 10, generator=G), (8, 10)),
        "conv2d 6x3x3x3": (Pair(nn.Conv2d(3, 6, 3)), torch.randn(4, 3, 6, 6, generator=G), (6, 3)),
        "hf conv1d 12->6": (Pair(Conv1D(6, 12)), torch.randn(32, 12, generator=G), (6, 12)),
        "linear aligned 8x16": (Pair(nn.Linear(16, 8)), torch.randn(32, 16, generator=G), (8, 16)),
    }
Z = torch.randn(32, 8, generator=G)


def _fits(pattern, view) -> bool:
    if isinstance(pattern, float):
        return True
    p = nms.NMPattern.parse(pattern)
    rows, group = view
    return group % p.m == 0 and not (p.transposable and rows % p.m)


def _oriented(module: nn.Module) -> torch.Tensor:
    w = module.weight.detach()
    return w.t() if isinstance(module, Conv1D) else w  # HF Conv1D stores (in, out)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _obeys(module: nn.Module, pattern, what: str) -> None:
    w = _oriented(module)
    assert bool(torch.isfinite(w).all()), f"{what}: non-finite weights"
    bias = getattr(module, "bias", None)
    assert bias is None or bool(torch.isfinite(bias).all()), f"{what}: non-finite bias"
    negzero = (w == 0) & torch.signbit(w)
    assert not bool(negzero.any()), f"{what}: {int(negzero.sum())} pruned entries are -0.0"
    kept = w != 0
    if isinstance(pattern, float):
        expected = kept_count(w.numel(), pattern)
        assert int(kept.sum()) == expected, f"{what}: keeps {int(kept.sum())} of {w.numel()}, density {pattern} keeps {expected}"
    else:
        problem = None
        try:
            nms.check_mask(kept, pattern, exact=True)
        except nms.MaskError as err:
            problem = str(err)
        assert nms.is_valid_mask(kept, pattern), f"{what}: breaks {pattern}"
        assert problem is None, f"{what}: {problem}"


def _run(kind: str, pattern, ragged: str, algorithm: str):
    template, x, _ = KINDS[kind]
    model = copy.deepcopy(template)
    before = _state(model)
    rep = PruneReport()
    calib = [(x, Z)]
    kw = FEW if "adaprune" in algorithm else {}
    try:
        nms.prune_(model, pattern, calibration=calib, algorithm=algorithm, ragged=ragged, report=rep, **kw)
    except nms.NMSparseError:
        assert _same(before, _state(model)), "the model changed although prune_ raised"
        raise
    return model, before, rep


def _check(kind: str, pattern, ragged: str):
    def check(result):
        model, before, rep = result
        x = KINDS[kind][1]
        skipped = {name for name, _ in rep.skipped}
        if not _fits(pattern, KINDS[kind][2]):
            assert ragged != "error", "ragged='error' pruned a layer whose shape does not fit"
            if ragged == "skip":
                assert "layer.weight" in skipped, f"ragged='skip' did not report layer.weight as skipped: {rep.skipped}"
                for k in ("layer.weight", "layer.bias"):
                    assert torch.equal(model.state_dict()[k], before[k]), f"ragged='skip' changed {k}"
            else:
                assert "layer.weight" not in skipped
                _obeys(model.layer, pattern, "layer (padded)")
        else:
            assert "layer.weight" not in skipped, f"a fitting layer was skipped: {rep.skipped}"
            _obeys(model.layer, pattern, "layer")
        _obeys(model.anchor, pattern, "anchor")
        with torch.no_grad():
            outs = model(x, Z)
        assert all(bool(torch.isfinite(o).all()) for o in outs), "non-finite model outputs"
    return check


CASES = []
for kind, (_, _, view) in KINDS.items():
    for pattern in PATTERNS:
        for ragged in RAGGED:
            for algorithm in ALGORITHMS:
                cid = f"{kind} | {pattern} | ragged={ragged} | {algorithm}"
                call = lambda k=kind, p=pattern, r=ragged, a=algorithm: _run(k, p, r, a)  # noqa: E731
                if not _fits(pattern, view) and ragged == "error":
                    CASES.append(Case(cid, call, nms.ShapeError, r"layer\.weight.*ragged='skip'.*pad"))
                else:
                    CASES.append(Case(cid, call, check=_check(kind, pattern, ragged)))


@parametrize(CASES)
def test_ragged_matrix(case):
    run_case(case)
