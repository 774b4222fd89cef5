"""The compiled exact tile solver against independent oracles (HiGHS LP, brute force)."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nmsparse.masks._exact_kernels import _ROUNDS, _flow_kernel, _selection_network, solve_tiles_exact
from nmsparse.testing.oracles import (
    brute_force_transposable,
    lp_transposable_objective,
    transposable_tile_patterns,
)

RTOL = 1e-9


def _objectives(tiles: np.ndarray, masks: np.ndarray) -> np.ndarray:
    return np.einsum("tij,tij->t", tiles.astype(np.float64), masks.astype(np.float64))


def _assert_valid(masks: np.ndarray, n: int) -> None:
    assert masks.dtype == np.bool_
    assert (masks.sum(axis=1) == n).all(), "a column keeps the wrong count"
    assert (masks.sum(axis=2) == n).all(), "a row keeps the wrong count"


def _assert_matches_lp(tiles: np.ndarray, n: int, masks: np.ndarray) -> None:
    _assert_valid(masks, n)
    got = _objectives(tiles, masks)
    for t, tile in enumerate(tiles.astype(np.float64)):
        scale = float(np.abs(tile).max()) or 1.0
        scale = scale if not 1e-10 <= scale <= 1e10 else 1.0  # HiGHS needs moderate magnitudes
        want = lp_transposable_objective(tile / scale, n) * scale
        assert got[t] == pytest.approx(want, rel=RTOL, abs=RTOL * scale), f"tile {t}"


def _assert_matches_brute_force(tiles: np.ndarray, n: int, masks: np.ndarray) -> None:
    _assert_valid(masks, n)
    got = _objectives(tiles, masks)
    for t, tile in enumerate(tiles):
        want = brute_force_transposable(tile, n)
        assert got[t] == pytest.approx(want, rel=1e-12, abs=0.0), f"tile {t}"


@pytest.fixture(scope="module")
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)


# --- optimality against the LP, every n for m in {2, 4, 8, 16} and odd shapes --------------------

ALL_NM = [(n, m) for m in (2, 4, 8, 16) for n in range(1, m + 1)] + [(3, 8), (5, 16), (2, 3), (3, 5)]


@pytest.mark.parametrize(("n", "m"), ALL_NM)
def test_matches_lp_on_random_tiles(rng, n, m):
    count = {2: 30, 3: 30, 4: 30, 5: 30, 8: 30, 16: 12}[m]
    tiles = np.abs(rng.standard_normal((count, m, m)))
    _assert_matches_lp(tiles, n, solve_tiles_exact(tiles, n))


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 8), (4, 8), (6, 8), (3, 5), (8, 16), (5, 16), (16, 32)])
@pytest.mark.parametrize("kind", ["ties", "zeros", "huge", "tiny", "padding", "heavy_tail", "signed"])
def test_matches_lp_on_hard_tiles(rng, n, m, kind):
    count = 6 if m == 32 else 25
    shape = (count, m, m)
    if kind == "ties":
        tiles = rng.integers(0, 4, shape).astype(np.float64)
    elif kind == "zeros":
        tiles = np.zeros(shape)
    elif kind == "huge":
        tiles = np.abs(rng.standard_normal(shape)) * 1e30
    elif kind == "tiny":
        tiles = np.abs(rng.standard_normal(shape)) * 1e-30
    elif kind == "padding":  # ragged edges are marked by large negative scores
        tiles = np.abs(rng.standard_normal(shape))
        tiles[:, m - max(1, m // 3) :, :] = -1e6
        tiles[::2, :, m - 1] = -1e6
    elif kind == "heavy_tail":
        tiles = np.abs(rng.standard_t(2, shape))
    else:
        tiles = rng.standard_normal(shape)
    _assert_matches_lp(tiles, n, solve_tiles_exact(tiles, n))


def test_many_tiles_in_one_call(rng):
    # Thousands of tiles through one kernel call, a sample of them against the LP.
    tiles = np.abs(rng.standard_normal((4000, 8, 8))).astype(np.float32)
    masks = solve_tiles_exact(tiles, 4)
    _assert_valid(masks, 4)
    pick = rng.choice(len(tiles), 150, replace=False)
    _assert_matches_lp(tiles[pick], 4, masks[pick])


# --- brute force over every valid tile ----------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("kind", ["normal", "ties", "mixed_magnitudes", "signed"])
def test_m4_matches_brute_force(rng, n, kind):
    shape = (300, 4, 4)
    if kind == "normal":
        tiles = np.abs(rng.standard_normal(shape))
    elif kind == "ties":
        tiles = rng.integers(0, 3, shape).astype(np.float64)
    elif kind == "mixed_magnitudes":
        tiles = np.abs(rng.standard_normal(shape)) * 10.0 ** rng.integers(-30, 31, shape)
    else:
        tiles = rng.standard_normal(shape)
    _assert_matches_brute_force(tiles, n, solve_tiles_exact(tiles, n))


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_m5_matches_brute_force(rng, n):
    # m = 5 runs the flow kernel for n = 2, 3 and enumerates for n = 1, 4; magnitudes spanning
    # 60 decades defeat an LP oracle, not brute force.
    shape = (120, 5, 5)
    tiles = np.abs(rng.standard_normal(shape)) * 10.0 ** rng.integers(-30, 31, shape)
    tiles[:40] = rng.integers(0, 3, (40, 5, 5))
    _assert_matches_brute_force(tiles, n, solve_tiles_exact(tiles, n))


@pytest.mark.parametrize(("n", "m"), [(1, 2), (1, 3), (2, 3), (1, 4), (2, 4), (3, 4), (1, 5), (4, 5)])
def test_flow_kernel_on_small_tiles_matches_brute_force(rng, n, m):
    # The min-cost-flow kernel is exact for every m, also where the dispatcher enumerates instead.
    tiles = np.abs(rng.standard_normal((150, m, m)))
    tiles[:50] = rng.integers(0, 3, (50, m, m))
    masks = np.empty(tiles.shape, dtype=np.bool_)
    _flow_kernel(tiles, n, _selection_network(n, m), _ROUNDS, masks)
    _assert_matches_brute_force(tiles, n, masks)


def test_m4_tie_break_is_first_pattern_in_lexicographic_order():
    # All patterns tie on a constant tile; the first in the oracle's lexicographic order wins.
    masks = solve_tiles_exact(np.ones((1, 4, 4)), 2)
    np.testing.assert_array_equal(masks[0], transposable_tile_patterns(2, 4)[0])


# --- dtype, layout, determinism -----------------------------------------------------------------


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8), (8, 16)])
def test_float32_and_float64_inputs_are_optimal(rng, n, m):
    tiles64 = np.abs(rng.standard_normal((40, m, m)))
    tiles32 = tiles64.astype(np.float32)
    masks32 = solve_tiles_exact(tiles32, n)
    masks64 = solve_tiles_exact(tiles32.astype(np.float64), n)
    # float32 scores are read exactly as float64, so both calls solve the same problem.
    np.testing.assert_array_equal(masks32, masks64)
    _assert_matches_lp(tiles32, n, masks32)
    _assert_matches_lp(tiles64, n, solve_tiles_exact(tiles64, n))


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8), (5, 16), (16, 32)])
def test_same_mask_for_any_thread_count_and_batch_position(rng, n, m):
    tiles = np.abs(rng.standard_t(2, (700, m, m)))
    tiles[::7] = rng.integers(0, 3, (100, m, m))  # ties too
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        single = solve_tiles_exact(tiles, n)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        multi = solve_tiles_exact(tiles, n)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(single, multi)
    # A tile's mask does not depend on its neighbours or on where block boundaries fall.
    np.testing.assert_array_equal(solve_tiles_exact(tiles[3:200], n), single[3:200])
    np.testing.assert_array_equal(solve_tiles_exact(tiles[::-1], n), single[::-1])
    np.testing.assert_array_equal(solve_tiles_exact(tiles, n), single)


def test_non_contiguous_and_integer_input(rng):
    tiles = rng.integers(0, 5, (20, 8, 8))
    expected = solve_tiles_exact(tiles.astype(np.float64), 4)
    np.testing.assert_array_equal(solve_tiles_exact(tiles, 4), expected)
    transposed = np.abs(rng.standard_normal((8, 8, 20))).transpose(2, 0, 1)
    np.testing.assert_array_equal(
        solve_tiles_exact(transposed, 3), solve_tiles_exact(np.ascontiguousarray(transposed), 3)
    )


def test_edge_cases():
    assert solve_tiles_exact(np.zeros((0, 8, 8)), 4).shape == (0, 8, 8)
    assert solve_tiles_exact(np.zeros((3, 5, 5)), 5).all()
    np.testing.assert_array_equal(solve_tiles_exact(np.array([[[2.0]]]), 1), [[[True]]])
    with pytest.raises(ValueError, match="1 <= n <= m"):
        solve_tiles_exact(np.zeros((1, 4, 4)), 0)
    with pytest.raises(ValueError, match="1 <= n <= m"):
        solve_tiles_exact(np.zeros((1, 4, 4)), 5)
    with pytest.raises(ValueError, match="shape"):
        solve_tiles_exact(np.zeros((4, 4)), 2)
    with pytest.raises(ValueError, match="shape"):
        solve_tiles_exact(np.zeros((1, 4, 8)), 2)


# --- properties ---------------------------------------------------------------------------------


@st.composite
def _tile_and_n(draw):
    m = draw(st.integers(2, 6))
    n = draw(st.integers(1, m))
    if draw(st.booleans()):
        values = st.integers(0, 3).map(float)  # many ties
    else:
        values = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)
    tile = np.array(draw(st.lists(values, min_size=m * m, max_size=m * m)), dtype=np.float64)
    return tile.reshape(1, m, m), n


@settings(max_examples=80, deadline=None)
@given(_tile_and_n(), st.integers(-40, 40))
def test_property_optimal_valid_and_scale_invariant(tile_n, exponent):
    tiles, n = tile_n
    m = tiles.shape[1]
    masks = solve_tiles_exact(tiles, n)
    if m <= 5:
        _assert_matches_brute_force(tiles, n, masks)
    else:
        _assert_matches_lp(tiles, n, masks)
    # Scaling by a power of two is exact in floating point, so the very same mask comes back,
    # ties included; any positive scale keeps the optimum up to rounding.
    np.testing.assert_array_equal(solve_tiles_exact(tiles * 2.0**exponent, n), masks)
    scaled = solve_tiles_exact(tiles * 3.7, n)
    assert _objectives(tiles * 3.7, scaled)[0] == pytest.approx(
        3.7 * _objectives(tiles, masks)[0], rel=1e-9, abs=1e-9
    )
    # Adding a constant adds n*m*c to every valid mask, so the optimum moves by exactly that.
    shifted = solve_tiles_exact(tiles + 5.0, n)
    assert _objectives(tiles, shifted)[0] == pytest.approx(_objectives(tiles, masks)[0], rel=1e-9, abs=1e-6)
