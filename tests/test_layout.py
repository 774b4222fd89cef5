"""Layouts: where groups run, tiles, padding and cropping, checked against hand-written index maps."""

import itertools

import pytest
import torch
from hypothesis import given, settings, strategies as st

from nmsparse.errors import ShapeError
from nmsparse.layout import from_tiles, matrix_layout, to_groups, to_tiles


def test_linear_groups_run_along_input_dim():
    w = torch.arange(2 * 8).reshape(2, 8)
    lay = matrix_layout(w.shape)
    g = to_groups(lay.to_matrix(w), 4)
    assert g[1, 1].tolist() == [12, 13, 14, 15]


def test_conv_is_implicit_gemm_with_input_channel_innermost():
    out, cin, kh, kw = 3, 4, 2, 3
    w = torch.randn(out, cin, kh, kw)
    mat = matrix_layout(w.shape).to_matrix(w)
    assert mat.shape == (out, kh * kw * cin)
    for o, c, i, j in itertools.product(range(out), range(cin), range(kh), range(kw)):
        assert mat[o, (i * kw + j) * cin + c] == w[o, c, i, j]


def test_conv_padding_is_per_kernel_position():
    # in = 3 with m = 4: every kernel position gets its own padded group; groups never straddle.
    w = torch.ones(2, 3, 2, 2)
    lay = matrix_layout(w.shape)
    mat = lay.to_matrix(w, 4, fill=-1.0)
    assert mat.shape == (2, 4 * 4)
    assert to_groups(mat, 4)[:, :, 3].eq(-1).all() and to_groups(mat, 4)[:, :, :3].eq(1).all()
    assert torch.equal(lay.from_matrix(mat, 4), w)


def test_explicit_dim_groups_along_that_dim():
    w = torch.randn(3, 8, 5)
    lay = matrix_layout(w.shape, dim=1)
    mat = lay.to_matrix(w)
    assert mat.shape == (15, 8)
    for a, c in itertools.product(range(3), range(5)):
        assert torch.equal(mat[a * 5 + c], w[a, :, c])
    assert torch.equal(lay.from_matrix(mat), w)


def test_one_dimensional_is_one_row():
    w = torch.arange(8.0)
    assert matrix_layout(w.shape).to_matrix(w).shape == (1, 8)


def test_tiles_are_true_sub_blocks():
    mat = torch.arange(8 * 12).reshape(8, 12)
    tiles = to_tiles(mat, 4)
    assert tiles.shape == (6, 4, 4)
    # tile 4 = tile row 1, tile col 1: rows 4..7, cols 4..7
    assert torch.equal(tiles[4], mat[4:8, 4:8])
    assert torch.equal(from_tiles(tiles, 8, 12), mat)


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(1, 7), min_size=1, max_size=4),
    m=st.integers(1, 5),
    tiles=st.booleans(),
    data=st.data(),
)
def test_pad_crop_round_trip_and_original_index(shape, m, tiles, data):
    dim = data.draw(st.one_of(st.none(), st.integers(-len(shape), len(shape) - 1)))
    w = torch.arange(1, 1 + torch.tensor(shape).prod().item()).reshape(shape)
    lay = matrix_layout(w.shape, dim)
    mat = lay.to_matrix(w, m, tiles, fill=0)
    assert mat.shape == lay.padded_shape(m, tiles)
    assert mat.shape[1] % m == 0 and (not tiles or mat.shape[0] % m == 0)
    assert torch.equal(lay.from_matrix(mat, m), w)
    # padding entries are exactly the fill, real entries all present once
    assert (mat == 0).sum() == mat.numel() - w.numel()
    for r, c in zip(*torch.nonzero(mat, as_tuple=True)):
        idx = lay.original_index(int(r), int(c), m)
        assert w[idx] == mat[r, c]


@pytest.mark.parametrize("shape, dim", [((), None), ((0, 4), None), ((4, 4), 2), ((4, 4), -3), ((4, 4), 1.0)])
def test_bad_layouts(shape, dim):
    with pytest.raises(ShapeError):
        matrix_layout(shape, dim)
