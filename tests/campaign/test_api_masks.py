"""Campaign: find_mask / solve_mask on the inputs users really pass.

Right results are checked against oracles that do not use the solver: brute force over every
transposable mask of each 4x4 tile (and top-n by sorting per group) for the optimum, check_mask
for validity, and the mask of a plain contiguous fp32/fp64 copy for "views and dtypes change
nothing". Every case also checks the input was left untouched (values, requires_grad, no .grad).
Errors must be the right NMSparseError subclass with a message naming the rule or value.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import nmsparse as nms
from _harness import Case, parametrize, run_case
from nmsparse.testing.oracles import brute_force_rowwise, brute_force_transposable

G = torch.Generator().manual_seed(20261130)


def rnd(*shape, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=G).to(dtype)


def _plain(x) -> torch.Tensor:
    """The weight as a plain contiguous tensor holding exactly the same values (fp16/bf16 -> fp32)."""
    t = torch.as_tensor(x).detach().clone().contiguous()
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _optimum(w2d: torch.Tensor, p: nms.NMPattern) -> float:
    """Best objective for a 2-D weight whose dims are multiples of m, by brute force per group/tile."""
    a = w2d.double().abs().numpy()
    m = p.m
    if not p.transposable:
        return sum(brute_force_rowwise(a[r, c : c + m], p.n) for r in range(a.shape[0]) for c in range(0, a.shape[1], m))
    return sum(
        brute_force_transposable(a[r : r + m, c : c + m], p.n) for r in range(0, a.shape[0], m) for c in range(0, a.shape[1], m)
    )


def _solved(fn, weight, pattern, method, kw):
    before = _plain(weight)
    grad_before = weight.requires_grad if isinstance(weight, torch.Tensor) else False
    out = fn(weight, pattern, method=method, **kw)
    return out, weight, before, grad_before


def _check_right(fn_name, pattern, method, kw):
    """The check of a right result: valid, weight's shape, bool, no grad, input untouched, optimal."""

    def check(result):
        out, weight, before, grad_before = result
        mask = out if fn_name == "find_mask" else out.mask
        assert mask.dtype == torch.bool and tuple(mask.shape) == tuple(np.shape(weight)) and not mask.requires_grad
        assert mask.device.type == "cpu"
        if isinstance(weight, torch.Tensor):
            assert weight.requires_grad == grad_before and (not weight.is_leaf or weight.grad is None)
        assert torch.equal(_plain(weight), before), "the input was modified"
        if before.dtype in (torch.int32, torch.bool, torch.complex64):
            before = torch.zeros(before.shape)  # only the scores matter for a non-float weight
        p = nms.NMPattern.parse(pattern)
        exact = method in (None, "exact", "refine") and not kw.get("pad", False)
        nms.check_mask(mask, p, dim=kw.get("dim"), exact=exact)
        # Views, dtypes and wrappers change nothing: same mask as the plain contiguous copy.
        plain_kw = dict(kw)
        if "scores" in plain_kw and plain_kw["scores"] is not None:
            plain_kw["scores"] = _plain(plain_kw["scores"])
        assert torch.equal(mask, nms.find_mask(before, p, method=method, **plain_kw))
        if fn_name == "solve_mask" and before.dim() == 2 and "scores" not in kw and "dim" not in kw and not kw.get("pad"):
            best = _optimum(before, p)
            kept = float(torch.where(mask, before.double().abs(), 0.0).sum())
            assert abs(out.objective - kept) <= 1e-9 * max(1.0, kept)
            if method in (None, "exact"):
                assert abs(kept - best) <= 1e-9 * max(1.0, best)
                assert out.optimal
            else:
                assert kept <= best * (1 + 1e-12) and kept >= best / 2 - 1e-12

    return check


CONV = rnd(8, 8, 3, 3)
WEIGHTS = {
    "parameter": nn.Parameter(rnd(8, 8)),
    "requires_grad leaf": rnd(8, 8).requires_grad_(),
    "requires_grad non-leaf": rnd(8, 8).requires_grad_() * 2,
    "transposed view": rnd(8, 8).t(),
    "strided slice view": rnd(8, 16)[:, ::2],
    "narrowed rows": rnd(12, 8)[2:10],
    "expanded stride-0": rnd(1, 8).expand(8, 8),
    "fp16": rnd(8, 8, dtype=torch.float16),
    "bf16": rnd(8, 8, dtype=torch.bfloat16),
    "fp64": rnd(8, 8, dtype=torch.float64),
    "numpy fp32": rnd(8, 8).numpy(),
    "numpy fp16": rnd(8, 8).numpy().astype(np.float16),
    "all zeros (ties)": torch.zeros(8, 8),
    "negative zeros": -torch.zeros(8, 8),
    "all equal (ties)": torch.full((8, 8), -3.0),
    "subnormals": rnd(8, 8) * 1e-42,
    "near fp32 max": rnd(8, 8).clamp(-1, 1) * 3e38,
    "fp16 extremes": (rnd(8, 8).sign() * 65504).half(),
    "conv channels_last": CONV.contiguous(memory_format=torch.channels_last),
    "conv parameter channels_last": nn.Parameter(rnd(8, 8, 3, 3).contiguous(memory_format=torch.channels_last)),
    "conv3d channels_last_3d": rnd(8, 8, 2, 2, 2).contiguous(memory_format=torch.channels_last_3d),
    "conv1d": rnd(8, 8, 3),
    "conv bf16 parameter": nn.Parameter(rnd(8, 4, 3, 3, dtype=torch.bfloat16)),
}
PATTERNS = [("2:4", None), ("2:4T", "exact"), ("2:4T", "greedy"), ("2:4T", "refine"), ("1:4T", "exact")]

CASES = []
for fn in (nms.find_mask, nms.solve_mask):
    for wname, w in WEIGHTS.items():
        for pattern, method in PATTERNS:
            if pattern == "1:4T" and "conv" in wname:
                continue
            CASES.append(
                Case(
                    f"{fn.__name__}: {wname} @ {pattern}{'/' + method if method else ''}",
                    lambda fn=fn, w=w, pattern=pattern, method=method: _solved(fn, w, pattern, method, {}),
                    check=_check_right(fn.__name__, pattern, method, {}),
                )
            )

# Scores as users pass them: Parameters, requires_grad, other dtypes and views; all valid.
SCORE_INPUTS = {
    "scores Parameter": nn.Parameter(rnd(8, 8).abs()),
    "scores requires_grad": rnd(8, 8).abs().requires_grad_(),
    "scores fp16": rnd(8, 8).abs().half(),
    "scores bf16": rnd(8, 8).abs().bfloat16(),
    "scores fp64": rnd(8, 8).abs().double(),
    "scores int": torch.randint(0, 5, (8, 8), generator=G),
    "scores transposed view": rnd(8, 8).abs().t(),
    "scores numpy": rnd(8, 8).abs().numpy(),
}
for fn in (nms.find_mask, nms.solve_mask):
    for sname, s in SCORE_INPUTS.items():
        for pattern, method in (("2:4", None), ("2:4T", "exact")):
            kw = {"scores": s}
            CASES.append(
                Case(
                    f"{fn.__name__}: {sname} @ {pattern}",
                    lambda fn=fn, kw=kw, pattern=pattern, method=method: _solved(fn, rnd(8, 8), pattern, method, kw),
                    check=_check_right(fn.__name__, pattern, method, kw),
                )
            )

# Non-float weights are fine once scores are given (the weight then only gives the shape).
for dtype in (torch.int32, torch.bool, torch.complex64):
    w = torch.ones(8, 8, dtype=dtype)
    kw = {"scores": rnd(8, 8).abs()}
    CASES.append(
        Case(
            f"find_mask: {dtype} weight with float scores",
            lambda w=w, kw=kw: _solved(nms.find_mask, w, "2:4T", None, kw),
            check=_check_right("find_mask", "2:4T", None, kw),
        )
    )

# Padding: ragged shapes are solved padded, the result valid and cropped to the weight's shape.
for shape, pattern in (((8, 6), "2:4"), ((6, 8), "2:4T"), ((5, 7), "2:4T"), ((16,), "2:4T"), ((3, 3), "2:8T"), ((8, 3, 3, 3), "2:4T")):
    w = rnd(*shape)
    kw = {"pad": True}
    CASES.append(
        Case(
            f"find_mask: ragged {shape} @ {pattern} pad=True",
            lambda w=w, pattern=pattern, kw=kw: _solved(nms.find_mask, w, pattern, None, kw),
            check=_check_right("find_mask", pattern, None, kw),
        )
    )

# A pattern much larger than the weight: small weights may pad freely, large padding is refused.
CASES.append(
    Case("find_mask: 1:100000 row-wise on 8x8 (pads to 800k entries)",
         lambda: _solved(nms.find_mask, rnd(8, 8), "1:100000", None, {"pad": True}),
         check=_check_right("find_mask", "1:100000", None, {"pad": True}))
)
for call_id, call in {
    "1:100000T pad on 8x8": lambda: nms.find_mask(rnd(8, 8), "1:100000T", pad=True),
    "1:100000T pad solve_mask": lambda: nms.solve_mask(rnd(8, 8), "1:100000T", pad=True),
    "1:10000000 pad on 8x8": lambda: nms.find_mask(rnd(8, 8), "1:10000000", pad=True),
    "1:8192T pad on 8x8": lambda: nms.find_mask(rnd(8, 8), "1:8192T", pad=True),
    "1:100000T pad on 1-D": lambda: nms.find_mask(rnd(16), "1:100000T", pad=True),
}.items():
    CASES.append(Case(f"huge padding: {call_id}", call, nms.ShapeError, r"m <= \d+ here"))


def _bad(fn, args, kwargs=None):
    return lambda: fn(*args, **(kwargs or {}))


W = rnd(8, 8)
NAN_W = {dt: W.to(dt).clone().index_put_((torch.tensor([3]), torch.tensor([5])), torch.tensor(float("nan"), dtype=dt))
         for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64)}
ERRORS = []
for dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64, torch.complex128):
    ERRORS.append((f"{dtype} weight", (torch.ones(8, 8, dtype=dtype), "2:4"), {}, nms.ScoreError, "floating dtype"))
for dt, w in NAN_W.items():
    ERRORS.append((f"NaN in {dt} weight", (w, "2:4T"), {}, nms.ScoreError, r"weight\[3, 5\]"))
    ERRORS.append((f"+Inf in {dt} weight", (w.nan_to_num(nan=float("inf")), "2:4"), {}, nms.ScoreError, "NaN or Inf"))
    ERRORS.append((f"-Inf in {dt} weight", (w.nan_to_num(nan=float("-inf")), "1:4T"), {}, nms.ScoreError, "NaN or Inf"))
ERRORS += [
    ("NaN in a Parameter", (nn.Parameter(NAN_W[torch.float32]), "2:4"), {}, nms.ScoreError, "NaN"),
    ("NaN in a ragged weight with pad", (torch.full((6, 6), float("nan")), "2:4T"), {"pad": True}, nms.ScoreError, "NaN"),
    ("NaN scores", (W, "2:4"), {"scores": NAN_W[torch.float32].abs()}, nms.ScoreError, "scores"),
    ("Inf scores", (W, "2:4T"), {"scores": torch.full((8, 8), float("inf"))}, nms.ScoreError, "scores"),
    ("negative scores", (W, "2:4"), {"scores": -W.abs() - 1}, nms.ScoreError, "non-negative"),
    ("negative int scores", (W, "2:4"), {"scores": torch.full((8, 8), -1)}, nms.ScoreError, "non-negative"),
    ("bool scores", (W, "2:4"), {"scores": W > 0}, nms.ScoreError, "real"),
    ("complex scores", (W, "2:4T"), {"scores": W.to(torch.complex64)}, nms.ScoreError, "real"),
    ("scores of the wrong shape", (W, "2:4"), {"scores": torch.ones(8, 4)}, nms.ShapeError, r"\(8, 4\)"),
    ("scores transposed shape", (rnd(8, 4), "2:4"), {"scores": torch.ones(4, 8)}, nms.ShapeError, "shape"),
    ("scores a list", (W, "2:4"), {"scores": W.tolist()}, nms.ShapeError, "torch.Tensor"),
    ("scores meta", (W, "2:4"), {"scores": torch.empty(8, 8, device="meta")}, nms.ScoreError, "meta"),
    ("scores requires_grad NaN", (W, "2:4"), {"scores": NAN_W[torch.float32].abs().requires_grad_()}, nms.ScoreError, "NaN"),
    ("0-d weight", (torch.tensor(1.0), "2:4"), {}, nms.ShapeError, "0-d"),
    ("0-d Parameter", (nn.Parameter(torch.tensor(1.0)), "2:4T"), {}, nms.ShapeError, "0-d"),
    ("empty 1-D", (torch.empty(0), "2:4"), {}, nms.ShapeError, "empty"),
    ("empty rows", (torch.empty(0, 4), "2:4"), {}, nms.ShapeError, "empty"),
    ("empty cols", (torch.empty(4, 0), "2:4T"), {}, nms.ShapeError, "empty"),
    ("empty conv", (torch.empty(8, 0, 3, 3), "2:4"), {}, nms.ShapeError, "empty"),
    ("meta weight", (torch.empty(8, 8, device="meta"), "2:4"), {}, nms.ScoreError, "meta tensor"),
    ("meta conv", (torch.empty(8, 8, 3, 3, device="meta"), "2:4T"), {}, nms.ScoreError, "meta tensor"),
    ("meta Parameter", (nn.Linear(8, 8, device="meta").weight, "2:4"), {}, nms.ScoreError, "materialise"),
    ("sparse COO weight", (W.to_sparse(), "2:4"), {}, nms.ShapeError, "to_dense"),
    ("numpy object array", (np.array([[1, "a"]], dtype=object), "1:2"), {}, nms.ScoreError, "dtype object"),
    ("list weight", ([[1.0, 2.0, 3.0, 4.0]], "2:4"), {}, nms.ShapeError, "torch.Tensor"),
    ("None weight", (None, "2:4"), {}, nms.ShapeError, "NoneType"),
    ("string weight", ("weight", "2:4"), {}, nms.ShapeError, "str"),
    ("ragged without pad", (rnd(8, 6), "2:4"), {}, nms.ShapeError, "pass pad=True"),
    ("ragged rows for tiles", (rnd(6, 8), "2:4T"), {}, nms.ShapeError, "pass pad=True"),
    ("conv in=3 for 2:4", (rnd(8, 3, 3, 3), "2:4"), {}, nms.ShapeError, "input channels"),
    ("1-D transposable without pad", (rnd(16), "2:4T"), {}, nms.ShapeError, "pass pad=True"),
    ("huge m without pad", (W, "1:100000T"), {}, nms.ShapeError, "pad"),
    ("pad is a string", (rnd(8, 6), "2:4"), {"pad": "no"}, nms.ArgumentError, "pad must be True or False"),
    ("pad is 1", (rnd(8, 6), "2:4"), {"pad": 1}, nms.ArgumentError, "pad must be True or False"),
    ("pad is None", (W, "2:4"), {"pad": None}, nms.ArgumentError, "pad must be True or False"),
    ("dim out of range", (W, "2:4"), {"dim": 2}, nms.ShapeError, "out of range"),
    ("dim negative out of range", (W, "2:4"), {"dim": -3}, nms.ShapeError, "out of range"),
    ("dim float", (W, "2:4"), {"dim": 1.0}, nms.ShapeError, "dim must be an int"),
    ("dim string", (W, "2:4"), {"dim": "1"}, nms.ShapeError, "dim must be an int"),
    ("dim bool", (W, "2:4"), {"dim": True}, nms.ShapeError, "dim must be an int"),
    ("method unknown", (W, "2:4T"), {"method": "magic"}, nms.MethodError, "exact, greedy, refine"),
    ("method empty", (W, "2:4T"), {"method": ""}, nms.MethodError, "known methods"),
    ("method int", (W, "2:4T"), {"method": 3}, nms.MethodError, "string"),
    ("method case", (W, "2:4T"), {"method": "Exact"}, nms.MethodError, "known methods"),
    ("transposable method on row-wise", (W, "2:4"), {"method": "greedy"}, nms.MethodError, "2:4T"),
]
for text in ("2-4", "", "0:4", "5:4", "2:0", "2:4TT", "-2:4", "2.0:4", "2:4:8", "a:b", "4", ":4", "2:", "2 : 4 x"):
    ERRORS.append((f"pattern {text!r}", (W, text), {}, nms.PatternError, "accepted forms|1 <= n <= m"))
for value in (24, None, (2, 4), b"2:4", 0.5, [2, 4]):
    ERRORS.append((f"pattern {type(value).__name__} {value!r}", (W, value), {}, nms.PatternError, "string or NMPattern"))
ERRORS.append(("unexpected keyword", (W, "2:4"), {"sparsity": 0.5}, TypeError, None))

for fn in (nms.find_mask, nms.solve_mask):
    for cid, args, kw, error, match in ERRORS:
        if error is TypeError:
            continue  # Python's own TypeError for a wrong keyword is tested below, not a library case
        CASES.append(Case(f"{fn.__name__}: {cid}", _bad(fn, args, kw), error, match))


@parametrize(CASES)
def test_mask_functions(case):
    run_case(case)


def test_unknown_keyword_is_pythons_type_error():
    with pytest.raises(TypeError):
        nms.find_mask(W, "2:4", sparsity=0.5)
