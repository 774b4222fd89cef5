"""Campaign: check_mask, is_valid_mask, count_masks, log10_count_masks, unstructured_mask,
available_methods and NMPattern.parse on good and bad input.

Oracles: validity by explicit loops over groups and tiles, counts by closed forms (C(m, n)^groups,
the number of transposable tiles by brute-force enumeration), unstructured masks by sorting.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import torch
from torch import nn

import nmsparse as nms
from _harness import Case, parametrize, run_case
from nmsparse.testing.oracles import transposable_tile_patterns

G = torch.Generator().manual_seed(7)


def _loops_valid(mask: torch.Tensor, n: int, m: int, transposable: bool) -> bool:
    """Validity of a 2-D mask by explicit loops (at most n per group / per tile row and column)."""
    a = mask.to(torch.int64)
    rows, cols = a.shape
    if not transposable:
        return all(int(a[r, c : c + m].sum()) <= n for r in range(rows) for c in range(0, cols, m))
    for r0 in range(0, rows, m):
        for c0 in range(0, cols, m):
            t = a[r0 : r0 + m, c0 : c0 + m]
            if int(t.sum(0).max()) > n or int(t.sum(1).max()) > n:
                return False
    return True


def _random_mask(shape, density) -> torch.Tensor:
    return torch.rand(*shape, generator=G) < density


CASES = []

# is_valid_mask / check_mask against loops on random masks of several densities and shapes.
for shape in ((4, 4), (8, 8), (4, 8), (8, 12), (6, 6), (5, 7)):
    for density in (0.2, 0.5, 0.8):
        for pattern in ("1:4", "2:4", "2:4T", "3:4T", "2:3T"):
            p = nms.NMPattern.parse(pattern)
            mask = _random_mask(shape, density)
            expected = _loops_valid(mask, p.n, p.m, p.transposable)
            CASES.append(
                Case(
                    f"is_valid_mask {shape} density {density} {pattern}",
                    lambda mask=mask, pattern=pattern: nms.is_valid_mask(mask, pattern),
                    check=lambda got, expected=expected: _assert(got is expected, f"expected {expected}, got {got}"),
                )
            )


def _assert(cond, message=""):
    assert cond, message


# check_mask on the masks the solvers produce, in every view users hold.
M = nms.find_mask(torch.randn(8, 8, generator=G), "2:4T")
for vid, view in {
    "contiguous": M,
    "transposed (2:4T is symmetric)": M.t(),
    "numpy bool": M.numpy(),
    "channels_last conv mask": nms.find_mask(torch.randn(8, 8, 3, 3, generator=G), "2:4T").contiguous(memory_format=torch.channels_last),
    "conv1d mask": nms.find_mask(torch.randn(8, 8, 3, generator=G), "2:4"),
}.items():
    CASES.append(Case(f"check_mask valid: {vid}", lambda v=view: nms.check_mask(v, "2:4"), check=lambda r: _assert(r is None)))
CASES.append(Case("check_mask exact=True on an exact mask", lambda: nms.check_mask(M, "2:4T", exact=True), check=lambda r: _assert(r is None)))

BAD_CHECKS = [
    ("too many kept", lambda: nms.check_mask(torch.ones(4, 4, dtype=torch.bool), "2:4"), nms.MaskError, "keep 4"),
    ("too many in a tile column", lambda: nms.check_mask(torch.tensor([[1, 1, 0, 0]] * 4, dtype=torch.bool), "2:4T"), nms.MaskError, "column 0 keeps 4"),
    ("exact: a short row", lambda: nms.check_mask(torch.zeros(4, 4, dtype=torch.bool), "2:4", exact=True), nms.MaskError, "exactly 2"),
    ("float mask", lambda: nms.check_mask(torch.ones(4, 4), "2:4"), nms.ShapeError, "bool tensor"),
    ("int mask", lambda: nms.check_mask(torch.ones(4, 4, dtype=torch.int32), "2:4"), nms.ShapeError, "weight != 0"),
    ("is_valid float mask", lambda: nms.is_valid_mask(torch.ones(4, 4), "2:4"), nms.ShapeError, "bool tensor"),
    ("list mask", lambda: nms.check_mask([[True, False]], "1:2"), nms.ShapeError, "torch.Tensor"),
    ("None mask", lambda: nms.is_valid_mask(None, "1:2"), nms.ShapeError, "NoneType"),
    ("0-d mask", lambda: nms.check_mask(torch.tensor(True), "1:2"), nms.ShapeError, "0-d"),
    ("empty mask", lambda: nms.check_mask(torch.zeros(0, 4, dtype=torch.bool), "2:4"), nms.ShapeError, "empty"),
    ("meta mask", lambda: nms.check_mask(torch.empty(4, 4, dtype=torch.bool, device="meta"), "2:4"), nms.ScoreError, "meta"),
    ("is_valid meta mask", lambda: nms.is_valid_mask(torch.empty(4, 4, dtype=torch.bool, device="meta"), "2:4"), nms.ScoreError, "meta"),
    ("sparse mask", lambda: nms.check_mask(M.to_sparse(), "2:4"), nms.ShapeError, "to_dense"),
    ("bad pattern", lambda: nms.check_mask(M, "4:2"), nms.PatternError, "1 <= n <= m"),
    ("pattern None", lambda: nms.is_valid_mask(M, None), nms.PatternError, "string or NMPattern"),
    ("dim out of range", lambda: nms.check_mask(M, "2:4", dim=5), nms.ShapeError, "out of range"),
    ("dim float", lambda: nms.check_mask(M, "2:4", dim=0.0), nms.ShapeError, "dim must be an int"),
    ("exact a string", lambda: nms.check_mask(M, "2:4", exact="yes"), nms.ArgumentError, "exact must be True or False"),
    ("exact None", lambda: nms.is_valid_mask(M, "2:4", exact=None), nms.ArgumentError, "exact must be True or False"),
    ("huge tile padding", lambda: nms.check_mask(M, "1:100000T"), nms.ShapeError, "m <= 8"),
    ("is_valid huge tile padding", lambda: nms.is_valid_mask(M, "1:1000000T"), nms.ShapeError, "padding"),
]
CASES += [Case(f"check: {cid}", call, err, match) for cid, call, err, match in BAD_CHECKS]

# count_masks: closed forms and brute force.
for n, m in ((1, 2), (1, 4), (2, 4), (3, 4), (4, 8), (2, 3)):
    for rows, groups in ((1, 1), (2, 3), (4, 2)):
        shape = (rows, groups * m)
        expected = math.comb(m, n) ** (rows * groups)
        CASES.append(Case(f"count_masks {n}:{m} {shape}", lambda n=n, m=m, shape=shape: nms.count_masks(f"{n}:{m}", shape),
                          check=lambda got, e=expected: _assert(got == e, f"{got} != {e}")))
        CASES.append(Case(f"log10_count_masks {n}:{m} {shape}", lambda n=n, m=m, shape=shape: nms.log10_count_masks(f"{n}:{m}", shape),
                          check=lambda got, e=expected: _assert(abs(got - math.log10(e)) < 1e-9)))
for n, m in ((1, 2), (1, 3), (2, 4), (1, 4), (3, 4), (2, 5)):
    tile = len(transposable_tile_patterns(n, m))  # brute-force enumeration
    for tiles_r, tiles_c in ((1, 1), (2, 1), (2, 3)):
        shape = (tiles_r * m, tiles_c * m)
        CASES.append(Case(f"count_masks {n}:{m}T {shape}", lambda n=n, m=m, shape=shape: nms.count_masks(f"{n}:{m}T", shape),
                          check=lambda got, e=tile ** (tiles_r * tiles_c): _assert(got == e, f"{got} != {e}")))
for cid, call, err, match in [
    ("shape with 0", lambda: nms.count_masks("2:4", (0, 4)), nms.ShapeError, ">= 1"),
    ("negative shape", lambda: nms.count_masks("2:4", (-4, 4)), nms.ShapeError, ">= 1"),
    ("shape string", lambda: nms.count_masks("2:4", "4x4"), nms.ShapeError, "parse_shape"),
    ("shape float", lambda: nms.count_masks("2:4", (4.0, 4)), nms.ShapeError, "ints"),
    ("shape None", lambda: nms.count_masks("2:4", None), nms.ShapeError, "tuple"),
    ("shape ragged", lambda: nms.count_masks("2:4", (4, 6)), nms.ShapeError, "multiple of 4"),
    ("shape ragged rows T", lambda: nms.count_masks("2:4T", (6, 4)), nms.ShapeError, "4"),
    ("pattern bad", lambda: nms.count_masks("2:x", (4, 4)), nms.PatternError, "accepted forms"),
    ("structure unknown", lambda: nms.count_masks("2:4", (4, 4), structure="weird"), nms.PatternError, "known structures"),
    ("huge transposable count", lambda: nms.count_masks("2:4T", (10**6, 10**6)), nms.ShapeError, "log10_count_masks"),
    ("huge row-wise count", lambda: nms.count_masks("2:4", (10**5, 10**5)), nms.ShapeError, "digits"),
    ("huge unstructured count", lambda: nms.count_masks("2:4", (4096, 4096), structure="unstructured"), nms.ShapeError, "log10_count_masks"),
    ("log10 shape 0", lambda: nms.log10_count_masks("2:4", (0, 4)), nms.ShapeError, ">= 1"),
    ("log10 pattern None", lambda: nms.log10_count_masks(None, (4, 4)), nms.PatternError, "string or NMPattern"),
]:
    CASES.append(Case(f"count: {cid}", call, err, match))
CASES.append(Case("log10_count_masks of a huge shape is cheap and right",
                  lambda: nms.log10_count_masks("2:4", (10**6, 10**6)),
                  check=lambda got: _assert(abs(got - 10**12 / 4 * math.log10(6)) < 1e-3 * got)))

# unstructured_mask: k = floor(d * numel + 1/2) largest, by a sorting oracle.
W = torch.randn(8, 8, generator=G)
for density in (0.0, 0.1, 0.25, 0.5, 0.9, 1.0):
    for wid, w in {"plain": W, "Parameter": nn.Parameter(W.clone()), "fp16": W.half(), "transposed": W.t(), "requires_grad": W.clone().requires_grad_()}.items():
        def check(mask, w=w, density=density):
            flat = w.detach().float().abs().reshape(-1)
            # The stated rule, in exact arithmetic on the float's binary value (not float maths).
            k = math.floor(Fraction(density) * flat.numel() + Fraction(1, 2))
            assert mask.dtype == torch.bool and mask.shape == w.shape and int(mask.sum()) == k and not mask.requires_grad
            # Sorting oracle: the k largest, ties to the lower flat index.
            order = sorted(range(flat.numel()), key=lambda i: (-float(flat[i]), i))[:k]
            want = torch.zeros(flat.numel(), dtype=torch.bool)
            want[order] = True
            assert torch.equal(mask.reshape(-1), want), "not the k largest with ties to the lower index"
        CASES.append(Case(f"unstructured_mask {wid} density {density}", lambda w=w, d=density: nms.unstructured_mask(w, d), check=check))
for cid, call, err, match in [
    ("density > 1", lambda: nms.unstructured_mask(W, 1.5), nms.PatternError, r"\[0, 1\]"),
    ("density < 0", lambda: nms.unstructured_mask(W, -0.1), nms.PatternError, r"\[0, 1\]"),
    ("density NaN", lambda: nms.unstructured_mask(W, float("nan")), nms.PatternError, "nan"),
    ("density string", lambda: nms.unstructured_mask(W, "0.5x"), nms.PatternError, "'0.5x'"),
    ("density bool", lambda: nms.unstructured_mask(W, True), nms.PatternError, "True"),
    ("density None", lambda: nms.unstructured_mask(W, None), nms.PatternError, "None"),
    ("NaN weight", lambda: nms.unstructured_mask(torch.full((4, 4), float("nan")), 0.5), nms.ScoreError, "NaN"),
    ("int weight", lambda: nms.unstructured_mask(torch.ones(4, 4, dtype=torch.int32), 0.5), nms.ScoreError, "floating"),
    ("complex weight", lambda: nms.unstructured_mask(torch.ones(4, 4, dtype=torch.complex64), 0.5), nms.ScoreError, "floating"),
    ("empty weight", lambda: nms.unstructured_mask(torch.empty(0), 0.5), nms.ShapeError, "empty"),
    ("0-d weight", lambda: nms.unstructured_mask(torch.tensor(2.0), 0.5), nms.ShapeError, "0-d"),
    ("meta weight", lambda: nms.unstructured_mask(torch.empty(4, 4, device="meta"), 0.5), nms.ScoreError, "meta"),
    ("scores wrong shape", lambda: nms.unstructured_mask(W, 0.5, scores=torch.ones(3)), nms.ShapeError, r"\(3,\)"),
    ("negative scores", lambda: nms.unstructured_mask(W, 0.5, scores=-W.abs() - 1), nms.ScoreError, "non-negative"),
]:
    CASES.append(Case(f"unstructured_mask: {cid}", call, err, match))

# available_methods and NMPattern.parse: a table of good and bad patterns.
for text, expected in [("2:4", ("topn",)), ("2:4T", ("exact", "greedy", "refine")), ("4:8T", ("exact", "greedy", "refine")),
                       ("1:1", ("topn",)), ("16:32T", ("exact", "greedy", "refine")), (nms.NMPattern(2, 4, True), ("exact", "greedy", "refine"))]:
    CASES.append(Case(f"available_methods {text!r}", lambda t=text: nms.available_methods(t),
                      check=lambda got, e=expected: _assert(tuple(got) == e, f"{got}")))
for text, (n, m, t) in [("2:4", (2, 4, False)), ("2:4T", (2, 4, True)), ("4:8T", (4, 8, True)), ("1:1", (1, 1, False)),
                        ("8:8T", (8, 8, True)), ("1:128", (1, 128, False)), (" 2:4 ", (2, 4, False)), ("2:4t", (2, 4, True))]:
    def check(p, n=n, m=m, t=t):
        assert (p.n, p.m, p.transposable) == (n, m, t)
        assert nms.NMPattern.parse(str(p)) == p  # str round-trips
    CASES.append(Case(f"NMPattern.parse {text!r}", lambda s=text: nms.NMPattern.parse(s), check=check))
for text in ("", "2", "2:", ":4", "2-4", "2/4", "0:4", "5:4", "2:0", "-1:4", "2:4TT", "2:4X", "T2:4", "2.5:4", "two:four", "2:4 T x", "2::4"):
    CASES.append(Case(f"NMPattern.parse bad {text!r}", lambda s=text: nms.NMPattern.parse(s), nms.PatternError, "accepted forms|1 <= n <= m"))
for value in (None, 24, 2.5, (2, 4), [2, 4], b"2:4", {"n": 2}):
    CASES.append(Case(f"NMPattern.parse {type(value).__name__}", lambda v=value: nms.NMPattern.parse(v), nms.PatternError, "string or NMPattern"))
    CASES.append(Case(f"available_methods {type(value).__name__}", lambda v=value: nms.available_methods(v), nms.PatternError, "string or NMPattern"))
for args in ((2.0, 4), (True, 4), ("2", 4), (2, None), (0, 4), (5, 4), (2, -4)):
    CASES.append(Case(f"NMPattern{args}", lambda a=args: nms.NMPattern(*a), nms.PatternError, "int|1 <= n <= m"))


@parametrize(CASES)
def test_checks_counts_patterns(case):
    run_case(case)
