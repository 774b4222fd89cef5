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


# --- Regression tests for issue 12 (inputs): each names the defect it pins down.


def test_find_mask_on_parameters_and_requires_grad_tensors():
    """`find_mask(layer.weight, "2:4")` failed with "Can't call numpy() on Tensor that requires grad"."""
    layer = torch.nn.Linear(16, 8)
    for pattern in ("2:4", "2:4T"):
        mask = nms.find_mask(layer.weight, pattern)
        assert mask.dtype == torch.bool and not mask.requires_grad and mask.shape == layer.weight.shape
        assert torch.equal(mask, nms.find_mask(layer.weight.detach().clone(), pattern))
        scores = layer.weight.abs() * 2  # non-leaf, requires grad
        assert torch.equal(nms.find_mask(layer.weight, pattern, scores=scores), mask)
    assert layer.weight.grad is None and layer.weight.requires_grad


@pytest.mark.parametrize("pattern", ["2:4", "2:4T"])
def test_library_restores_torch_thread_count(pattern):
    """`torch.set_num_threads(1); find_mask(randn(1024, 1024), "2:4")` left torch at 2 threads."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        nms.find_mask(torch.randn(1024, 1024, generator=torch.Generator().manual_seed(0)), pattern)
        assert torch.get_num_threads() == 1
        model = torch.nn.Sequential(torch.nn.Linear(512, 512))
        nms.sparsify_(model, pattern)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_numba_thread_count_restored():
    import numba

    before = numba.get_num_threads()
    nms.find_mask(torch.randn(64, 64), "2:4T")  # small: runs on one numba thread, then restores
    nms.find_mask(torch.randn(512, 512), "2:4T")
    assert numba.get_num_threads() == before


def test_meta_tensors_are_refused_clearly():
    """`Tensor.item() cannot be called on meta tensors` became a ScoreError that says what to do."""
    with pytest.raises(nms.ScoreError, match="meta tensor.*materialise"):
        nms.find_mask(torch.empty(8, 8, device="meta"), "2:4")


def test_huge_tile_padding_is_refused_before_allocating():
    """`find_mask(W, "1:100000T", pad=True)` tried to allocate 80 GB."""
    with pytest.raises(nms.ShapeError, match=r"m <= 8 here"):
        nms.find_mask(torch.randn(8, 8), "1:100000T", pad=True)


def test_padding_rule_boundaries():
    from nmsparse.layout import MAX_PAD_FACTOR, PAD_BUDGET, matrix_layout

    small = matrix_layout((8, 8))
    assert small.padding_problem(4096, tiles=True) is None  # 4096^2 = PAD_BUDGET entries: allowed
    assert 4096 * 4096 == PAD_BUDGET
    assert small.padding_problem(4097, tiles=True) is not None
    big = matrix_layout((4096, 4097))  # padding to 4100 columns: a factor ~1, always allowed
    assert big.padding_problem(4, tiles=True) is None
    wide = matrix_layout((2**20, 3))  # in=3 padded to 3 * MAX_PAD_FACTOR... factor 8/3 < 8: allowed
    assert wide.padding_problem(8, tiles=False) is None
    assert wide.padding_problem(8 * MAX_PAD_FACTOR, tiles=False) is not None


def test_state_dict_with_a_non_tensor_value_names_the_key():
    """prune_state_dict raised AttributeError on a non-tensor value."""
    with pytest.raises(nms.ConvertError, match="'epoch'"):
        nms.convert.prune_state_dict({"fc.weight": torch.randn(8, 8), "epoch": 3}, "2:4")
