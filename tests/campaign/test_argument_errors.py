"""Campaign: errors that say what to do (issue 20, kind 9).

One parser (:func:`nmsparse.pattern.parse_spec`) and one error class (:class:`PatternError`) for a
bad pattern or density at every entry point: ``sparsify_``, ``prune_``, ``prune_state_dict``,
``unstructured_mask``, ``attach_mask_``, ``find_mask``, ``sift.transform`` and the ``prune`` CLI; the
same forms are accepted everywhere (``0.5``, ``"50%"``, ``"0.5"``, numpy floats). An ``include=``
that selects nothing says which entry and how to name a parameter.
"""

from __future__ import annotations

import math
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

import nmsparse as nms
from _harness import Case, CliCase, parametrize, run_case, run_cli_case
from nmsparse import sift
from nmsparse.convert import prune_state_dict
from nmsparse.errors import ConvertError, MethodError, PatternError, ShapeError


def _built(factory):
    """A layer built without touching the caller's RNG (the campaign checks global state)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return factory()


def _mlp():
    return _built(lambda: nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)))


W = torch.arange(64, dtype=torch.float32).reshape(8, 8) - 31.5

ENTRY_POINTS = {
    "sparsify_": lambda d: nms.sparsify_(_mlp(), d),
    "prune_": lambda d: nms.prune_(_mlp(), d),
    "prune_state_dict": lambda d: prune_state_dict(_mlp().state_dict(), d),
    "unstructured_mask": lambda d: nms.unstructured_mask(W, d),
    "attach_mask_": lambda d: nms.nn.attach_mask_(_built(lambda: nn.Linear(8, 8)), "weight", torch.ones(8, 8, dtype=torch.bool), d),
}

BAD_DENSITIES = [
    ("1.5", 1.5, r"got 1\.5"),
    ("-0.1", -0.1, r"got -0\.1"),
    ("nan", math.nan, "got nan"),
    ("inf", math.inf, "got inf"),
    ("'150%'", "150%", "got '150%'"),
    ("'1.5' text", "1.5", "got '1.5'"),
    ("int 2", 2, "got 2"),
    ("numpy 1.5", np.float64(1.5), r"got (np\.float64\()?1\.5"),
    ("Fraction 3/2", Fraction(3, 2), r"got Fraction\(3, 2\)"),
]

CASES = [
    Case(f"{where} density {label}", (lambda f, v: lambda: f(v))(f, value), PatternError,
         rf"^{where if where != 'prune_state_dict' else 'prune'}: an unstructured density is the fraction of entries KEPT, "
         rf"a number in [\[(]0, 1\], {rx}.*pass e.g. 0.5")
    for where, f in ENTRY_POINTS.items() for label, value, rx in BAD_DENSITIES
]

NOT_A_SPEC = [("None", None), ("bool True", True), ("list [2, 4]", [2, 4]), ("0-d tensor", torch.tensor(0.5)), ("'abc'", "abc")]
CASES += [
    Case(f"{where} pattern {label}", (lambda f, v: lambda: f(v))(f, value), PatternError,
         r"(pattern must be a string|cannot parse pattern).*n:m.*density" if where != "unstructured_mask" else
         r"^unstructured_mask: an unstructured density is the fraction of entries KEPT, a number in \[0, 1\], got ")
    for where, f in ENTRY_POINTS.items() for label, value in NOT_A_SPEC
]

GOOD = [("0.5", 0.5), ("'50%'", "50%"), ("'0.5' text", "0.5"), ("numpy 0.5", np.float64(0.5)), ("Fraction 1/2", Fraction(1, 2))]


def _half_kept(result):
    if isinstance(result, torch.Tensor):
        assert int(result.sum()) == result.numel() // 2, int(result.sum())
        return
    if isinstance(result, nn.Module):
        for m in result.modules():
            w = getattr(m, "weight", None)
            if isinstance(m, nn.Linear) and w is not None and w.shape == (8, 8) and isinstance(result, nn.Sequential):
                assert int(torch.count_nonzero(w)) == 32, int(torch.count_nonzero(w))
        return
    if hasattr(result, "mask"):  # NMMask from attach_mask_ (the given mask is kept as it is)
        assert isinstance(result.pattern, float) and result.pattern == 0.5
        return
    out = result[0] if isinstance(result, tuple) else getattr(result, "state_dict", result)
    pruned = out if isinstance(out, dict) else None
    if pruned is not None:
        assert int(torch.count_nonzero(pruned["0.weight"])) == 32


CASES += [
    Case(f"{where} density {label} accepted", (lambda f, v: lambda: f(v))(f, value), check=_half_kept)
    for where, f in ENTRY_POINTS.items() if where != "attach_mask_" for label, value in GOOD
]

CASES += [
    # sparsify_ keeps densities in (0, 1]; the one-shot entry points may keep nothing
    Case("sparsify_ density 0", lambda: nms.sparsify_(_mlp(), 0.0), PatternError, r"in \(0, 1\], got 0\.0"),
    Case("sparsify_ density '0%'", lambda: nms.sparsify_(_mlp(), "0%"), PatternError, r"in \(0, 1\], got '0%'"),
    Case("prune_ density 0 keeps nothing", lambda: nms.prune_(_mlp(), 0.0),
         check=lambda m: None if int(torch.count_nonzero(m[0].weight)) == 0 else (_ for _ in ()).throw(AssertionError())),
    Case("sparsify_ int 1 is density 1", lambda: nms.sparsify_(_mlp(), 1), check=lambda m: None),
    # method= for densities: the same rule in sparsify_ as in prune_
    Case("sparsify_ density with method='exact' (as prune_)", lambda: nms.sparsify_(_mlp(), 0.5, method="exact"), check=lambda m: None),
    Case("sparsify_ density with method='greedy'", lambda: nms.sparsify_(_mlp(), 0.5, method="greedy"), MethodError,
         "None, 'exact' or 'topk'.*got 'greedy'"),
    Case("prune_ density with method='greedy'", lambda: nms.prune_(_mlp(), 0.5, method="greedy"), MethodError,
         "None, 'exact' or 'topk'"),
    # entry points that take N:M patterns only say what a number is
    Case("find_mask 0.5", lambda: nms.find_mask(W, 0.5), PatternError, "the number 0.5.*unstructured density.*unstructured_mask"),
    Case("find_mask numpy 0.5", lambda: nms.find_mask(W, np.float32(0.5)), PatternError, "unstructured density"),
    Case("find_mask '50%'", lambda: nms.find_mask(W, "50%"), PatternError, "cannot parse pattern '50%'"),
    Case("check_mask 0.5", lambda: nms.check_mask(W > 0, 0.5), PatternError, "unstructured density"),
    Case("sift pattern=0.5", lambda: sift.transform(_mlp(), "wide", 0.5, pattern=0.5), PatternError,
         "transform: pattern= takes an N:M pattern, got the number 0.5"),
    Case("sift pattern='50%'", lambda: sift.transform(_mlp(), "wide", 0.5, pattern="50%"), PatternError,
         "pattern= takes an N:M pattern, got '50%'"),
    Case("sift pattern='2:0'", lambda: sift.transform(_mlp(), "wide", 0.5, pattern="2:0"), PatternError, r"pattern '2:0'"),
    # sift.transform's sparsity (the fraction PRUNED): the same class and wording
    Case("sift sparsity 1.5", lambda: sift.transform(_mlp(), "wide", 1.5), PatternError,
         r"transform: sparsity is the fraction of weights PRUNED.*\[0, 1\), got 1\.5"),
    Case("sift sparsity 1.0", lambda: sift.transform(_mlp(), "wide", 1.0), PatternError, r"\[0, 1\), got 1\.0"),
    Case("sift sparsity nan", lambda: sift.transform(_mlp(), "wide", math.nan), PatternError, "got nan"),
    Case("sift sparsity '0.5'", lambda: sift.transform(_mlp(), "wide", "0.5"), PatternError, "got '0.5'"),
    Case("sift sparsity None", lambda: sift.transform(_mlp(), "wide", None), PatternError, "got NoneType None"),
    Case("sift sparsity numpy 0.5", lambda: sift.transform(_mlp(), "wide", np.float64(0.5)), check=lambda m: None),
    # n:m out of range names the entry point
    Case("sparsify_ '5:4'", lambda: nms.sparsify_(_mlp(), "5:4"), PatternError, r"^sparsify_: pattern '5:4': need 1 <= n <= m"),
    Case("prune_ '0:4'", lambda: nms.prune_(_mlp(), "0:4"), PatternError, r"^prune_: pattern '0:4'"),
    Case("prune_state_dict '2:4X'", lambda: prune_state_dict(_mlp().state_dict(), "2:4X"), PatternError,
         r"^prune: cannot parse pattern '2:4X'"),
    Case("sparsify_ a 5000-character pattern", lambda: nms.sparsify_(_mlp(), "1:" + "9" * 5000), PatternError,
         r"cannot parse pattern .*5002 characters"),
]


def _embedding():
    return _built(lambda: nn.Sequential(nn.Embedding(10, 8), nn.ReLU()))


CASES += [
    # include= that selects nothing names the entry and the fix
    Case("sparsify_ include='0' on an Embedding", lambda: nms.sparsify_(_embedding(), "2:4", include="0"), ShapeError,
         r"include='0' matches module '0' \(Embedding\).*include='0.weight'"),
    Case("sparsify_ include='0.weight' on an Embedding works", lambda: nms.sparsify_(_embedding(), "2:4", include="0.weight"),
         check=lambda m: None if nms.is_valid_mask(m[0].weight != 0, "2:4") else (_ for _ in ()).throw(AssertionError())),
    Case("sparsify_ include='1' names a ReLU", lambda: nms.sparsify_(_embedding(), "2:4", include="1"), ShapeError,
         r"include='1' matches module '1' \(ReLU\).*holds no parameter"),
    Case("sparsify_ include typo", lambda: nms.sparsify_(_mlp(), "2:4", include="fc9"), ShapeError,
         r"include='fc9' matches no module or parameter name"),
    Case("sparsify_ include list, both empty", lambda: nms.sparsify_(_embedding(), "2:4", include=["0", "nope"]), ShapeError,
         r"include='0'.*include='nope' matches no"),
    Case("sparsify_ Embedding only, no include", lambda: nms.sparsify_(_built(lambda: nn.Sequential(nn.Embedding(10, 8))), "2:4"), ShapeError,
         r"no nn.Linear.*include='0.weight'"),
    Case("prune_ include='0' on an Embedding", lambda: nms.prune_(_built(lambda: nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8))), "2:4", include="0"),
         ShapeError, r"include='0' matches '0' \(Embedding\), but prune_ prunes only .*sparsify_ takes any parameter"),
    Case("prune_ include typo", lambda: nms.prune_(_mlp(), "2:4", include="fc9"), ShapeError, r"include='fc9' matches no layer name"),
]


@parametrize(CASES)
def test_argument_errors(case):
    run_case(case)


_TMP = tempfile.TemporaryDirectory(prefix="nmsparse-args-")  # removed when the module is collected


def _cli(pattern):
    def argv():
        root = Path(tempfile.mkdtemp(dir=_TMP.name))
        save_file({"a.weight": torch.arange(64, dtype=torch.float32).reshape(8, 8)}, str(root / "in.safetensors"))
        return ["prune", str(root / "in.safetensors"), "-o", str(root / "out.safetensors"), "--pattern", pattern, "--quiet"]
    return argv


CLI = [
    CliCase("prune --pattern 150%", _cli("150%"), 1, r"density is the fraction of entries KEPT.*got '150%'"),
    CliCase("prune --pattern 1.5", _cli("1.5"), 1, r"density.*got '1\.5'"),
    CliCase("prune --pattern 0:4", _cli("0:4"), 1, r"pattern '0:4': need 1 <= n <= m"),
    CliCase("prune --pattern abc", _cli("abc"), 1, r"cannot parse pattern 'abc'.*density"),
    CliCase("prune --pattern 50%", _cli("50%"), 0),
]


@parametrize(CLI)
def test_argument_errors_cli(case):
    run_cli_case(case)
