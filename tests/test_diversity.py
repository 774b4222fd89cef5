"""Tests for nmsparse.diversity: brute force, closed forms, independent methods, bad input."""

from __future__ import annotations

import ast
import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nmsparse.diversity as diversity
from nmsparse.diversity import (
    EXACT_TILE_LIMIT,
    count_block_masks,
    count_masks,
    count_transposable_tile,
    count_unstructured,
    diversity_table,
    log10_count_masks,
    log10_count_transposable_tile_estimate,
    log10_int,
    log10_masks_per_64,
    parse_shape,
    transposable_tile_is_countable,
)
from nmsparse.errors import ArgumentError, NMSparseError, PatternError, ShapeError
from nmsparse.pattern import NMPattern

# ------------------------------------------------------------------------------------------------
# oracles written from the definitions, sharing nothing with the library


def all_masks(rows: int, cols: int) -> np.ndarray:
    """Every 0/1 matrix of the shape, as an int8 array (2**(rows*cols), rows, cols)."""
    size = rows * cols
    bits = (np.arange(2**size, dtype=np.int64)[:, None] >> np.arange(size)) & 1
    return bits.astype(np.int8).reshape(-1, rows, cols)


def valid_rowwise(masks: np.ndarray, n: int, m: int) -> np.ndarray:
    k, r, c = masks.shape
    return np.all(masks.reshape(k, r, c // m, m).sum(-1) == n, axis=(1, 2))


def valid_transposable(masks: np.ndarray, n: int, m: int) -> np.ndarray:
    k, r, c = masks.shape
    tiles = masks.reshape(k, r // m, m, c // m, m)
    rows_ok = np.all(tiles.sum(axis=4) == n, axis=(1, 2, 3))
    cols_ok = np.all(tiles.sum(axis=2) == n, axis=(1, 2, 3))
    return rows_ok & cols_ok


def brute_tile(n: int, m: int) -> int:
    """Count m x m 0/1 matrices with n ones per row and column by plain enumeration."""
    if m <= 4:
        masks = all_masks(m, m)
        return int(np.sum(np.all(masks.sum(1) == n, axis=1) & np.all(masks.sum(2) == n, axis=1)))
    choices = itertools.combinations(range(m), n)
    rows = np.array([[1 if j in c else 0 for j in range(m)] for c in choices], dtype=np.int8)
    idx = np.array(list(itertools.product(range(len(rows)), repeat=m)), dtype=np.int32)
    col_sums = rows[idx].sum(axis=1)  # every row has n ones by construction
    return int(np.sum(np.all(col_sums == n, axis=1)))


def vector_dp_tile(n: int, m: int) -> int:
    """Independent method: rows one by one over the full column-fill vector (no symmetry)."""
    layer = {(0,) * m: 1}
    for _ in range(m):
        nxt: dict = {}
        for fills, ways in layer.items():
            for cols in itertools.combinations(range(m), n):
                new = list(fills)
                for c in cols:
                    new[c] += 1
                if max(new) <= n:
                    key = tuple(new)
                    nxt[key] = nxt.get(key, 0) + ways
        layer = nxt
    return layer.get((n,) * m, 0)


def a001499(m: int) -> int:
    """m x m 0/1 matrices with two ones per row and column (OEIS A001499), by its recurrence."""
    a = [1, 0, 1]
    for k in range(3, m + 1):
        a.append(k * (k - 1) // 2 * (2 * a[k - 1] + (k - 1) * a[k - 2]))
    return a[m]


def a001499_sum(m: int) -> Fraction:
    """A001499 by its alternating-sum closed form (a second, independent formula)."""
    f = math.factorial
    return sum(
        Fraction((-1) ** k * f(m) ** 2 * f(2 * m - 2 * k), f(k) * f(m - k) ** 2 * 2 ** (2 * m - k))
        for k in range(m + 1)
    )


# ------------------------------------------------------------------------------------------------
# T(n, m)


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5])
def test_tile_matches_brute_force(m):
    for n in range(0, m + 1):
        assert count_transposable_tile(n, m) == brute_tile(n, m), (n, m)


@pytest.mark.parametrize("n,m", [(n, m) for m in range(1, 8) for n in range(0, m + 1)])
def test_tile_matches_vector_dp(n, m):
    assert count_transposable_tile(n, m) == vector_dp_tile(n, m)


def test_tile_known_values():
    assert count_transposable_tile(2, 4) == 90
    assert count_transposable_tile(4, 8) == 116963796250  # OEIS A058527, n = 8
    # OEIS A001501 (three ones per row and column), m = 3..7; m=5 is also brute-forced above
    assert [count_transposable_tile(3, m) for m in range(3, 8)] == [1, 24, 2040, 297200, 68938800]


@pytest.mark.parametrize("m", range(1, 11))
def test_tile_permutation_matrices(m):
    assert count_transposable_tile(1, m) == math.factorial(m)
    assert count_transposable_tile(m - 1, m) == math.factorial(m)
    assert count_transposable_tile(m, m) == 1
    assert count_transposable_tile(0, m) == 1


def test_tile_two_per_line_closed_forms():
    assert [count_transposable_tile(2, m) for m in range(2, 8)] == [1, 6, 90, 2040, 67950, 3110940]
    for m in range(2, 25):
        assert count_transposable_tile(2, m) == a001499(m) == a001499_sum(m), m


def test_tile_complement_symmetry():
    for m in range(1, 13):
        for n in range(0, m + 1):
            assert count_transposable_tile(n, m) == count_transposable_tile(m - n, m), (n, m)


def test_tile_limit():
    assert transposable_tile_is_countable(8, 16)
    assert not transposable_tile_is_countable(16, 32)
    with pytest.raises(PatternError, match="estimate"):
        count_transposable_tile(16, 32)
    with pytest.raises(PatternError):
        count_transposable_tile(3, 8, limit=10)
    assert count_transposable_tile(3, 8, limit=None) == count_transposable_tile(5, 8)
    assert math.comb(16 + 8, 8) <= EXACT_TILE_LIMIT


def test_estimate_close_to_exact():
    for n, m in [(2, 8), (4, 8), (4, 12), (6, 12), (8, 16), (4, 32)]:
        exact = log10_int(count_transposable_tile(n, m))
        assert abs(log10_count_transposable_tile_estimate(n, m) - exact) < 0.5 / m, (n, m)
    assert log10_count_transposable_tile_estimate(4, 4) == 0.0
    big = log10_count_transposable_tile_estimate(16, 32)
    assert log10_count_transposable_tile_estimate(8, 16) * 3 < big < 2 * 32 * math.log10(math.comb(32, 16))


# ------------------------------------------------------------------------------------------------
# count_masks against enumeration of whole matrices


@pytest.mark.parametrize(
    "pattern,rows,cols",
    [("2:4", 2, 4), ("2:4", 4, 4), ("1:4", 2, 8), ("1:3", 2, 6), ("3:4", 3, 4), ("2:2", 2, 4), ("2:4T", 4, 4),
     ("1:4T", 4, 4), ("3:4T", 4, 4), ("1:2T", 4, 4), ("1:2T", 2, 6), ("1:3T", 3, 6)],
)
def test_count_masks_brute_force(pattern, rows, cols):
    masks = all_masks(rows, cols)
    n, m = (int(x) for x in pattern.rstrip("T").split(":"))
    ok = valid_transposable(masks, n, m) if pattern.endswith("T") else valid_rowwise(masks, n, m)
    assert count_masks(pattern, (rows, cols)) == int(ok.sum())


def test_count_masks_two_tiles_by_row_choices():
    # 4 x 8, 2:4T: enumerate each row's row-wise-valid choice (36 per row), check tile columns
    choices = np.array([[int(j in c) for j in range(4)] for c in itertools.combinations(range(4), 2)], dtype=np.int8)
    rows = np.array([np.concatenate([a, b]) for a in choices for b in choices], dtype=np.int8)  # (36, 8)
    idx = np.stack(np.meshgrid(*[np.arange(36)] * 4, indexing="ij"), -1).reshape(-1, 4)
    col_sums = rows[idx].sum(axis=1)
    assert count_masks("2:4T", (4, 8)) == int(np.all(col_sums == 2, axis=1).sum()) == 90**2


def test_count_masks_closed_forms():
    for n, m in [(1, 4), (2, 4), (4, 8), (3, 8), (8, 8)]:
        assert count_masks(f"{n}:{m}", (6, 3 * m)) == math.comb(m, n) ** 18
        assert count_masks(f"{n}:{m}T", (2 * m, 3 * m)) == count_transposable_tile(n, m) ** 6
    assert count_masks("4:8T", (8, 8)) == 116963796250
    # N-D: rows = prod(shape[:-1])
    assert count_masks("2:4", (2, 3, 8)) == count_masks("2:4", (6, 8))
    # structure overrides the pattern's own flag
    assert count_masks("2:4", (4, 4), structure="transposable") == 90
    assert count_masks("2:4T", (4, 4), structure="rowwise") == 6**4


def test_unstructured_and_block():
    masks = all_masks(2, 4)
    assert count_unstructured((2, 4), 0.5) == int(np.sum(masks.sum(axis=(1, 2)) == 4)) == math.comb(8, 4)
    assert count_masks("2:4", (16, 16), structure="unstructured") == math.comb(256, 128)
    # rounding: half up, exactly
    assert count_unstructured((3,), Fraction(1, 2)) == math.comb(3, 2)
    assert count_unstructured((5,), Fraction(1, 2)) == math.comb(5, 3)
    assert count_unstructured((10,), 0.25) == math.comb(10, 3)  # 2.5 -> 3
    assert count_unstructured((4,), 1) == 1
    # block: brute force 4x4 masks constant on 2x2 blocks with half the blocks kept
    all4 = all_masks(4, 4)
    blocks = all4.reshape(-1, 2, 2, 2, 2).transpose(0, 1, 3, 2, 4).reshape(-1, 4, 4)
    constant = np.ptp(blocks, axis=2) == 0  # every 2x2 block all kept or all pruned
    block_ok = np.all(constant, axis=1) & (all4.sum(axis=(1, 2)) == 8)
    assert count_block_masks((4, 4), 2, 0.5) == int(block_ok.sum()) == 6
    assert count_block_masks((4, 8), (2, 4), 0.5) == math.comb(4, 2)
    assert count_masks("2:4", (8, 8), structure="block", block=2) == math.comb(16, 8)


# ------------------------------------------------------------------------------------------------
# log scale


@given(st.integers(min_value=1, max_value=2**1000))
def test_log10_int_matches_math(x):
    assert log10_int(x) == pytest.approx(math.log10(x), rel=1e-14, abs=1e-14)


@given(st.integers(min_value=1, max_value=10**6), st.integers(min_value=0, max_value=200_000))
@settings(max_examples=50)
def test_log10_int_huge(mantissa, exponent):
    x = mantissa * 10**exponent
    expected = math.log10(mantissa) + exponent
    assert log10_int(x) == pytest.approx(expected, rel=1e-12)


def test_log10_int_examples_and_errors():
    assert log10_int(10**5000 + 1) == pytest.approx(5000.0, rel=1e-15)
    assert log10_int(1) == 0.0
    for bad in (0, -5, 1.5, "10", True):  # bad arguments are ValueError subclasses (ArgumentError)
        with pytest.raises(ArgumentError, match="x must be a positive int"):
            log10_int(bad)


@pytest.mark.parametrize(
    "pattern,shape,structure",
    [("2:4", (8, 16), None), ("4:8T", (16, 24), None), ("2:4T", (4, 8), "rowwise"), ("2:4", (12, 8), "unstructured"),
     ("1:4", (8, 8), "block"), ("3:8T", (8, 8), None), ("7:16T", (16, 32), None)],
)
def test_log10_count_masks_matches_exact(pattern, shape, structure):
    block = 2 if structure == "block" else None
    exact = count_masks(pattern, shape, structure=structure, block=block)
    got = log10_count_masks(pattern, shape, structure=structure, block=block)
    assert got == pytest.approx(log10_int(exact), rel=1e-12)


def test_log10_count_masks_large():
    # unstructured on a big shape goes through lgamma; check against a mid-size exact value
    assert log10_count_masks("1:2", (300, 400), structure="unstructured") == pytest.approx(
        log10_int(math.comb(120_000, 60_000)), rel=1e-12
    )
    tiles = (4096 // 8) ** 2
    assert log10_count_masks("4:8T", (4096, 4096)) == pytest.approx(tiles * math.log10(116963796250), rel=1e-12)
    estimate = log10_count_masks("16:32T", (64, 64))
    assert estimate == pytest.approx(4 * log10_count_transposable_tile_estimate(16, 32))
    with pytest.raises(PatternError):
        log10_count_masks("16:32T", (64, 64), allow_estimate=False)


@given(st.sampled_from(["1:4", "2:4", "4:8", "3:8", "1:2"]), st.integers(1, 4), st.integers(1, 4))
@settings(max_examples=40, deadline=None)
def test_ordering_and_multiplicativity(text, a, b):
    n, m = (int(x) for x in text.split(":"))
    shape = (a * m, b * m)
    tile = count_masks(text + "T", (m, m))
    assert count_masks(text + "T", shape) == tile ** (a * b)
    # transposable <= row-wise <= unstructured: each structure is a subset of the next
    trans = log10_count_masks(text + "T", shape)
    row = log10_count_masks(text, shape)
    unstructured = log10_count_masks(text, shape, structure="unstructured")
    assert trans <= row + 1e-9 and row <= unstructured + 1e-9


# ------------------------------------------------------------------------------------------------
# table


def test_diversity_table():
    table = diversity_table("2:4T", (4, 4))
    assert [r["structure"] for r in table] == ["unstructured", "rowwise", "transposable"]
    assert [r["pattern"] for r in table] == ["density 1/2", "2:4", "2:4T"]
    assert [r["count"] for r in table] == [12870, 1296, 90]
    assert all(r["exact"] for r in table)
    assert table[0]["log10_vs_unstructured"] == 0.0
    assert table[2]["log10_vs_unstructured"] == pytest.approx(math.log10(90 / 12870))
    # same rows whichever flag the pattern has
    assert [r["log10_count"] for r in diversity_table("2:4", (4, 4))] == [r["log10_count"] for r in table]
    big = diversity_table("16:32T", (64, 64))
    assert big[2]["exact"] is False and big[2]["count"] is None and "estimate" in big[2]["note"]
    assert big[1]["count"] is None  # 128 groups of C(32,16): far beyond 1000 digits
    assert diversity_table("2:4T", (8, 8), max_count_digits=3)[2]["count"] is None
    ragged = diversity_table("2:4", (3, 8))
    assert ragged[1]["count"] == 6**6 and ragged[2]["log10_count"] is None and "multiple of 4" in ragged[2]["note"]


# ------------------------------------------------------------------------------------------------
# shapes and bad input


def test_parse_shape():
    assert parse_shape("64x64") == (64, 64)
    assert parse_shape(" 8 x 3 X 3x16 ") == (8, 3, 3, 16)
    assert parse_shape("768,3072") == (768, 3072)


@given(st.lists(st.integers(1, 10**6), min_size=1, max_size=5))
def test_parse_shape_round_trip(dims):
    assert parse_shape("x".join(map(str, dims))) == tuple(dims)


@pytest.mark.parametrize(
    "call,error",
    [
        (lambda: count_masks("5:4", (4, 4)), PatternError),
        (lambda: count_masks("0:4", (4, 4)), PatternError),
        (lambda: count_masks("2-4", (4, 4)), PatternError),
        (lambda: count_masks("2:4", (4, 6)), ShapeError),
        (lambda: count_masks("2:4T", (6, 8)), ShapeError),
        (lambda: count_masks("2:4T", (8,)), ShapeError),
        (lambda: count_masks("2:4", (0, 4)), ShapeError),
        (lambda: count_masks("2:4", (-4, 4)), ShapeError),
        (lambda: count_masks("2:4", (4.0, 4)), ShapeError),
        (lambda: count_masks("2:4", (True, 4)), ShapeError),
        (lambda: count_masks("2:4", ()), ShapeError),
        (lambda: count_masks("2:4", "4x4"), ShapeError),
        (lambda: count_masks("2:4", 16), ShapeError),
        (lambda: count_masks("2:4", (4, 4), structure="diagonal"), PatternError),
        (lambda: count_masks("2:4", (4, 4), structure="block"), ShapeError),
        (lambda: count_masks("2:4", (4, 4), block=2), ShapeError),
        (lambda: count_masks("2:4", (6, 6), structure="block", block=4), ShapeError),
        (lambda: count_unstructured((4, 4), 0), PatternError),
        (lambda: count_unstructured((4, 4), 1.5), PatternError),
        (lambda: count_unstructured((4, 4), -0.5), PatternError),
        (lambda: count_unstructured((4, 4), float("nan")), PatternError),
        (lambda: count_unstructured((4, 4), float("inf")), PatternError),
        (lambda: count_unstructured((4, 4), "0.5"), PatternError),
        (lambda: count_unstructured((4, 4), True), PatternError),
        (lambda: count_block_masks((4, 4), 3, 0.5), ShapeError),
        (lambda: count_block_masks((4, 4), (2, 2, 2), 0.5), ShapeError),
        (lambda: count_block_masks((4, 4), 0, 0.5), ShapeError),
        (lambda: count_block_masks((4, 4), 2, 2.0), PatternError),
        (lambda: count_transposable_tile(5, 4), PatternError),
        (lambda: count_transposable_tile(-1, 4), PatternError),
        (lambda: count_transposable_tile(2, 0), PatternError),
        (lambda: count_transposable_tile(2.0, 4), PatternError),
        (lambda: log10_count_masks("2:4", (4, 5)), ShapeError),
        (lambda: parse_shape("64x"), ShapeError),
        (lambda: parse_shape("64x0"), ShapeError),
        (lambda: parse_shape("axb"), ShapeError),
        (lambda: parse_shape(""), ShapeError),
        (lambda: parse_shape((64, 64)), ShapeError),
    ],
)
def test_bad_input(call, error):
    with pytest.raises(error) as info:
        call()
    assert isinstance(info.value, NMSparseError) and isinstance(info.value, ValueError)


def test_shape_error_message_states_rule_and_fix():
    with pytest.raises(ShapeError, match=r"chunks of 4.*\(4, 6\).*Pad"):
        count_masks("2:4", (4, 6))


def test_module_is_pure_python():
    """diversity must work without torch or numpy (DESIGN: pure Python, no torch needed)."""
    import nmsparse._diversity_args as args

    tree = ast.Module(body=[], type_ignores=[])
    for path in (diversity.__file__, args.__file__):  # diversity's argument checks live beside it
        tree.body += ast.parse(open(path, encoding="utf-8").read()).body
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & {"torch", "numpy", "scipy"}


# --- log10_masks_per_64: the one "log10 masks per 64 weights" of demo, masks tour and claims ---


@pytest.mark.parametrize("dense", [None, "dense", 1.0, 1, "4:4", "8:8T"])
def test_masks_per_64_dense_is_one_mask(dense):
    assert log10_masks_per_64(dense) == 0.0


@pytest.mark.parametrize("k", range(1, 65))
def test_masks_per_64_unstructured_is_binomial_of_an_8x8_block(k):
    # Closed form: C(64, k) masks of an 8x8 block keeping k entries; 50 % is log10 C(64, 32) = 18.26.
    want = math.log10(math.comb(64, k))
    assert log10_masks_per_64(k / 64) == pytest.approx(want, abs=1e-12)
    assert log10_masks_per_64(Fraction(k, 64)) == pytest.approx(want, abs=1e-12)


def test_masks_per_64_half_is_18_26_not_the_16x16_rate():
    assert round(log10_masks_per_64(0.5), 2) == 18.26
    assert round(math.log10(math.comb(256, 128)) / 4, 2) == 18.94  # what a 16x16 block would give


@pytest.mark.parametrize("m", [1, 2, 4, 8])
def test_masks_per_64_rowwise_closed_form(m):
    for n in range(1, m + 1):
        want = (64 // m) * math.log10(math.comb(m, n))  # 8 rows x 8/m groups of C(m, n) choices
        assert log10_masks_per_64(f"{n}:{m}") == pytest.approx(want, abs=1e-12)
        assert log10_masks_per_64(f"{n}:{m}") == pytest.approx(log10_int(count_masks(f"{n}:{m}", (8, 8))), abs=1e-12)


@pytest.mark.parametrize("text, want", [
    ("1:2T", 16 * math.log10(2)),  # 2x2 tiles: the two permutation matrices
    ("2:4T", 4 * math.log10(90)),  # 90 4x4 0/1 matrices with all line sums 2
    ("4:8T", math.log10(116963796250)),  # one 8x8 tile
    ("1:4T", 4 * math.log10(24)),  # 4! permutation matrices
])
def test_masks_per_64_transposable_closed_form(text, want):
    assert log10_masks_per_64(text) == pytest.approx(want, abs=1e-12)
    assert log10_masks_per_64(NMPattern.parse(text)) == pytest.approx(log10_int(count_masks(text, (8, 8))), abs=1e-12)


def test_masks_per_64_when_the_group_does_not_fit_8x8_uses_the_per_weight_rate():
    # Counts multiply over groups and tiles, so the rate is the same on any block they tile.
    assert log10_masks_per_64("3:6") == pytest.approx(64 / 6 * math.log10(20), abs=1e-12)
    assert log10_masks_per_64("3:6") == pytest.approx(log10_int(count_masks("3:6", (6, 6))) * 64 / 36, abs=1e-12)
    assert log10_masks_per_64("8:16T") == pytest.approx(log10_int(count_masks("8:16T", (16, 16))) / 4, abs=1e-12)
    assert log10_masks_per_64("8:16T") == pytest.approx(log10_count_masks("8:16T", (32, 32)) / 16, abs=1e-9)


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5, float("nan"), True, "50%"])
def test_masks_per_64_bad_density(bad):
    with pytest.raises(PatternError):
        log10_masks_per_64(bad)


def test_demo_masks_tour_and_claims_print_the_same_diversity():
    from nmsparse.apps.claims import STRUCTURES, log10_diversity_per_64
    from nmsparse.apps.demo import RunSpec, diversity_per_64
    from nmsparse.apps.mask_tour import demo_weight, run_demo

    for s in STRUCTURES:
        assert diversity_per_64(RunSpec.parse(s)) == log10_diversity_per_64(s)
    rows = {r["pattern"]: r["log10_masks_64"] for r in run_demo(demo_weight(16, 16), ["2:4", "4:8T"], ["exact"])}
    assert rows["unstructured 0.5"] == log10_diversity_per_64("50%") == diversity_per_64(RunSpec.parse("50%"))
    assert rows["4:8T"] == log10_diversity_per_64("4:8T@exact")
