"""check_mask / is_valid_mask against a brute-force definition, and the messages users read."""

import itertools

import pytest
import torch
from hypothesis import given, settings, strategies as st

import nmsparse as nms
from nmsparse.errors import MaskError, ShapeError


def brute_valid_rowwise(mask, n, m, exact):
    rows, cols = mask.shape
    for r in range(rows):
        for c0 in range(0, cols, m):
            group = mask[r, c0 : c0 + m]
            k = int(group.sum())
            if k > n or (exact and len(group) == m and k != n):
                return False
    return True


def brute_valid_transposable(mask, n, m, exact):
    rows, cols = mask.shape
    for r0, c0 in itertools.product(range(0, rows, m), range(0, cols, m)):
        tile = mask[r0 : r0 + m, c0 : c0 + m]
        full = tile.shape == (m, m)
        for counts in (tile.sum(1), tile.sum(0)):
            if (counts > n).any() or (exact and full and (counts != n).any()):
                return False
    return True


@settings(max_examples=200, deadline=None)
@given(
    rows=st.integers(1, 9),
    cols=st.integers(1, 9),
    m=st.integers(1, 4),
    transposable=st.booleans(),
    exact=st.booleans(),
    data=st.data(),
)
def test_validity_matches_brute_force(rows, cols, m, transposable, exact, data):
    n = data.draw(st.integers(1, m))
    bits = data.draw(st.lists(st.booleans(), min_size=rows * cols, max_size=rows * cols))
    mask = torch.tensor(bits).reshape(rows, cols)
    pattern = nms.NMPattern(n, m, transposable)
    expected = (brute_valid_transposable if transposable else brute_valid_rowwise)(mask, n, m, exact)
    assert nms.is_valid_mask(mask, pattern, exact=exact) == expected
    if expected:
        nms.check_mask(mask, pattern, exact=exact)
    else:
        with pytest.raises(MaskError):
            nms.check_mask(mask, pattern, exact=exact)


def test_message_names_the_first_bad_group_and_its_count():
    mask = torch.zeros(4, 8, dtype=torch.bool)
    mask[2, 4:7] = True
    with pytest.raises(MaskError) as err:
        nms.check_mask(mask, "2:4")
    msg = str(err.value)
    assert "row 2, columns 4..7" in msg and "keep 3" in msg and "1 of 8 groups" in msg


def test_message_names_the_first_bad_tile_row_or_column():
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[4:8, 5] = True  # column 5 of the tile at rows 4..7, cols 4..7 keeps 4
    with pytest.raises(MaskError) as err:
        nms.check_mask(mask, "2:4T")
    msg = str(err.value)
    assert "rows 4..7, columns 4..7" in msg and "column 5 keeps 4" in msg


def test_exact_requires_n_in_full_groups_only():
    mask = torch.tensor([[True, True, False, False, True]])  # partial last group keeps 1
    assert nms.is_valid_mask(mask, "2:4", exact=True)
    assert not nms.is_valid_mask(torch.tensor([[True, False, False, False]]), "2:4", exact=True)
    assert nms.is_valid_mask(torch.tensor([[True, False, False, False]]), "2:4")


def test_conv_mask_checked_per_kernel_position():
    mask = torch.zeros(2, 4, 3, 3, dtype=torch.bool)
    mask[:, :2] = True  # channels 0,1 at every position: 2 of 4
    nms.check_mask(mask, "2:4", exact=True)
    mask[1, 2, 2, 1] = True
    with pytest.raises(MaskError, match=r"starting at mask\[1, 0, 2, 1\]"):
        nms.check_mask(mask, "2:4")


def test_solver_output_always_checks():
    w = torch.randn(16, 32)
    for p in ["1:2", "2:4", "3:8", "4:4"]:
        nms.check_mask(nms.find_mask(w, p), p, exact=True)


@pytest.mark.parametrize(
    "mask, pattern, error",
    [
        (torch.ones(4, 4), "2:4", ShapeError),  # not bool
        (torch.ones(4, 4, dtype=torch.bool), "5:4", nms.PatternError),
        (torch.ones((), dtype=torch.bool), "2:4", ShapeError),
        (torch.ones(0, 4, dtype=torch.bool), "2:4", ShapeError),
        ([True, False], "1:2", ShapeError),
    ],
)
def test_bad_arguments_raise_for_both(mask, pattern, error):
    with pytest.raises(error):
        nms.check_mask(mask, pattern)
    with pytest.raises(error):
        nms.is_valid_mask(mask, pattern)
