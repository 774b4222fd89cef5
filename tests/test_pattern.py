import pytest
from hypothesis import given, strategies as st

from nmsparse import NMPattern, NMSparseError, PatternError


@given(st.integers(1, 64).flatmap(lambda m: st.tuples(st.integers(1, m), st.just(m))), st.booleans())
def test_str_parse_round_trip(nm, transposable):
    n, m = nm
    p = NMPattern(n, m, transposable)
    assert NMPattern.parse(str(p)) == p
    assert str(NMPattern.parse(str(p))) == str(p)
    assert p.density == n / m
    assert p.is_dense == (n == m)


@pytest.mark.parametrize(
    "text, expected",
    [("2:4", (2, 4, False)), ("2:4T", (2, 4, True)), (" 4 : 8t ", (4, 8, True)), ("4:4", (4, 4, False)), ("1:1T", (1, 1, True))],
)
def test_parse_accepts(text, expected):
    p = NMPattern.parse(text)
    assert (p.n, p.m, p.transposable) == expected


def test_parse_passes_pattern_through():
    p = NMPattern(2, 4, True)
    assert NMPattern.parse(p) is p


@pytest.mark.parametrize("text", ["", "2", "2:", ":4", "5:4", "0:4", "2:0", "2/4", "2:4X", "-1:4", "2.0:4", "2:4TT", "n:m"])
def test_parse_rejects_with_accepted_forms(text):
    with pytest.raises(PatternError) as err:
        NMPattern.parse(text)
    assert isinstance(err.value, ValueError) and isinstance(err.value, NMSparseError)
    assert "accepted forms" in str(err.value)


@pytest.mark.parametrize("args", [(5, 4), (0, 4), (1, 0), (2.0, 4), (True, 4), (2, 4, "yes")])
def test_constructor_validates(args):
    with pytest.raises(PatternError):
        NMPattern(*args)


@pytest.mark.parametrize("bad", [None, 24, (2, 4), b"2:4"])
def test_parse_rejects_non_strings(bad):
    with pytest.raises(PatternError, match="accepted forms"):
        NMPattern.parse(bad)


def test_density_and_sparsity():
    p = NMPattern.parse("3:8")
    assert p.density == 0.375 and p.sparsity == 0.625
    assert str(p.density_fraction) == "3/8"
    assert NMPattern.parse("2:4T").rowwise() == NMPattern(2, 4)
