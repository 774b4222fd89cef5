"""Table-driven bad input for every public mask function: a library error that is a ValueError,
whose message names the problem."""

import pytest
import torch

import nmsparse as nms

W = torch.randn(8, 8)
NAN = W.clone()
NAN[3, 5] = float("nan")
INF = W.clone()
INF[0, 1] = float("-inf")

CASES = [
    # (id, call, error class, text the message must contain)
    ("bad pattern", lambda f: f(W, "2-4"), nms.PatternError, "accepted forms"),
    ("n > m", lambda f: f(W, "5:4"), nms.PatternError, "1 <= n <= m"),
    ("n = 0", lambda f: f(W, "0:4T"), nms.PatternError, "1 <= n <= m"),
    ("0-d weight", lambda f: f(torch.tensor(1.0), "2:4"), nms.ShapeError, "0-d"),
    ("empty weight", lambda f: f(torch.empty(0, 4), "2:4"), nms.ShapeError, "empty"),
    ("ragged", lambda f: f(torch.randn(8, 6), "2:4"), nms.ShapeError, "pass pad=True"),
    ("ragged rows for tiles", lambda f: f(torch.randn(6, 8), "2:4T"), nms.ShapeError, "pass pad=True"),
    ("NaN weight", lambda f: f(NAN, "2:4"), nms.ScoreError, "weight[3, 5]"),
    ("Inf weight", lambda f: f(INF, "2:4T"), nms.ScoreError, "NaN or Inf"),
    ("NaN scores", lambda f: f(W, "2:4", scores=NAN.abs()), nms.ScoreError, "scores"),
    ("negative scores", lambda f: f(W, "2:4", scores=-W.abs() - 1), nms.ScoreError, "non-negative"),
    ("scores of the wrong shape", lambda f: f(W, "2:4", scores=torch.ones(8, 4)), nms.ShapeError, "(8, 4)"),
    ("int weight", lambda f: f(torch.ones(4, 4, dtype=torch.int64), "2:4"), nms.ScoreError, "floating"),
    ("not a tensor", lambda f: f([[1.0, 2.0]], "1:2"), nms.ShapeError, "torch.Tensor"),
    ("unknown method", lambda f: f(W, "2:4T", method="magic"), nms.MethodError, "exact, greedy, refine"),
    ("transposable method on row-wise", lambda f: f(W, "2:4", method="greedy"), nms.MethodError, "2:4T"),
    ("dim out of range", lambda f: f(W, "2:4", dim=2), nms.ShapeError, "out of range"),
]


@pytest.mark.parametrize("call, error, text", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
@pytest.mark.parametrize("fn", [nms.find_mask, nms.solve_mask], ids=["find_mask", "solve_mask"])
def test_mask_functions_reject_bad_input(fn, call, error, text):
    with pytest.raises(error) as err:
        call(fn)
    assert isinstance(err.value, ValueError) and isinstance(err.value, nms.NMSparseError)
    assert text in str(err.value)
    assert fn.__name__ in str(err.value) or error is nms.PatternError


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda: nms.unstructured_mask(NAN, 0.5), nms.ScoreError),
        (lambda: nms.unstructured_mask(torch.empty(0), 0.5), nms.ShapeError),
        (lambda: nms.unstructured_mask(W, 0.5, scores=torch.ones(3)), nms.ShapeError),
        (lambda: nms.available_methods("9:4"), nms.PatternError),
        (lambda: nms.check_mask(torch.ones(4, 4, dtype=torch.bool), "2:4", dim=5), nms.ShapeError),
        (lambda: nms.check_mask(torch.ones(4, 4, dtype=torch.bool), "2:4"), nms.MaskError),
    ],
)
def test_other_functions_reject_bad_input(call, error):
    with pytest.raises(error):
        call()
