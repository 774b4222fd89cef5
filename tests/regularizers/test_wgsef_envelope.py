"""WGSEF value, prox and projection against independent oracles (closed forms, scipy minimisation)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nmsparse.regularizers.envelope import k_support_norm, wgsef, wgsef_project, wgsef_prox

from _wgsef_oracles import ksupport_sq_closed_form, numerical_prox, prox_objective, wgsef_closed_form

f64 = torch.float64


def _vec(draw_list):
    return torch.tensor(draw_list, dtype=f64)


finite = st.floats(-10, 10, allow_nan=False, allow_infinity=False, width=64)


# ---------------------------------------------------------------- value
@settings(max_examples=150, deadline=None)
@given(st.lists(finite, min_size=1, max_size=12), st.data())
def test_ksupport_matches_argyriou_closed_form(values, data):
    k = data.draw(st.integers(1, len(values)))
    got = k_support_norm(_vec(values), k) ** 2
    want = ksupport_sq_closed_form(values, k)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-9)
    assert k_support_norm(_vec(values), k, method="select") ** 2 == pytest.approx(want, rel=1e-9, abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(st.lists(finite, min_size=1, max_size=10), st.data())
def test_sef_bounds_and_agreement_on_k_sparse(values, data):
    x = _vec(values)
    k = data.draw(st.integers(1, len(values)))
    value = wgsef(x, k)
    half_sq = 0.5 * float((x ** 2).sum())
    # ||x||_2 <= ||x||_(k) <= ||x||_1, and the envelope equals 1/2||x||^2 on k-sparse points.
    assert half_sq - 1e-9 <= value <= 0.5 * float(x.abs().sum()) ** 2 + 1e-9
    if int((x != 0).sum()) <= k:
        assert value == pytest.approx(half_sq, rel=1e-12, abs=1e-12)


def test_weighted_group_value_and_special_cases():
    x = torch.tensor([1.0, 2.0, -2.0, 0.5, 3.0, 0.0], dtype=f64)
    groups = [[0, 1], [2], [3, 4, 5]]
    w = [0.5, 2.0, 1.5]
    for k in (1, 2, 3):
        assert wgsef(x, k, groups=groups, weights=w) == pytest.approx(wgsef_closed_form(x, k, groups, w), rel=1e-12)
    norms = np.array([math.sqrt(5), 2.0, math.sqrt(9.25)])
    assert wgsef(x, 3, groups=groups, weights=w) == pytest.approx(0.5 * float(np.sum(np.array(w) * norms ** 2)))
    assert wgsef(x, 1, groups=groups, weights=w) == pytest.approx(0.5 * float(np.sum(np.sqrt(w) * norms)) ** 2)
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    assert wgsef(x, 2, groups=labels, weights=w) == wgsef(x, 2, groups=groups, weights=w)


# ---------------------------------------------------------------- prox vs numerical minimisation
CASES = [
    # (x, k, step, groups, weights)
    ([3.0, -1.0, 0.5, 2.0], 1, 0.3, None, None),
    ([3.0, -1.0, 0.5, 2.0], 2, 0.8, None, None),
    ([3.0, -1.0, 0.5, 2.0], 3, 2.0, None, None),
    ([1.0, 1.0, 1.0, 0.2], 2, 0.5, None, None),  # ties
    ([1.5, -0.5, 2.0, 1.0, -1.0, 0.3], 1, 0.4, [[0, 1], [2, 3], [4, 5]], None),
    ([1.5, -0.5, 2.0, 1.0, -1.0, 0.3], 2, 0.4, [[0, 1], [2, 3], [4, 5]], [1.0, 3.0, 0.5]),
    ([1.5, -0.5, 2.0, 1.0, -1.0, 0.3], 2, 1.5, [[0, 3, 5], [1], [2, 4]], [2.0, 0.7, 1.3]),
    ([0.9, -2.0, 0.1, 0.4, 1.2], 2, 0.6, [[0], [1, 2], [3, 4]], [0.3, 1.0, 4.0]),
    ([0.9, -2.0, 0.1, 0.4, 1.2], 1, 3.0, None, [1.0, 2.0, 0.5, 1.0, 3.0]),
]


@pytest.mark.parametrize("x, k, step, groups, weights", CASES)
@pytest.mark.parametrize("method", ["sort", "select"])
def test_prox_matches_numerical_minimisation(x, k, step, groups, weights, method):
    xs = np.array(x)
    z = wgsef_prox(torch.tensor(x, dtype=f64), k, step, groups=groups, weights=weights, method=method).numpy()
    fz = prox_objective(z, xs, k, step, groups, weights)
    z_num, f_num = numerical_prox(xs, k, step, groups, weights, starts=[z + 0.05])
    assert fz <= f_num + 1e-10  # nothing scipy finds beats the closed form
    # 1-strong convexity: F(z_num) - F(z*) >= 1/2 ||z_num - z*||^2.
    assert np.linalg.norm(z - z_num) <= math.sqrt(2 * max(f_num - fz, 0.0)) + 1e-4
    rng = np.random.default_rng(0)
    for _ in range(200):  # convex: no small move may decrease the objective
        u = rng.standard_normal(xs.size) * 10 ** rng.uniform(-6, -2)
        assert prox_objective(z + u, xs, k, step, groups, weights) >= fz - 1e-12


def test_prox_k_equals_m_is_ridge_shrinkage():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, generator=g, dtype=f64)
    assert torch.equal(wgsef_prox(x, 35, 0.7), x / 1.7) or torch.allclose(wgsef_prox(x, 35, 0.7), x / 1.7, rtol=0, atol=1e-15)
    labels = torch.arange(7).repeat_interleave(5)
    w = torch.linspace(0.5, 2.0, 7, dtype=f64)
    got = wgsef_prox(x, 7, 0.7, groups=labels, weights=w)
    torch.testing.assert_close(got, x / (1 + 0.7 * w[:, None]), rtol=1e-14, atol=1e-15)


@settings(max_examples=100, deadline=None)
@given(st.lists(finite, min_size=1, max_size=12), st.floats(0.01, 5.0))
def test_prox_k1_solves_l1_squared_fixed_point(values, step):
    # k = 1, d = 1: prox of step/2 ||.||_1^2 is soft-thresholding at step * ||z||_1 (z the output).
    x = _vec(values)
    z = wgsef_prox(x, 1, step)
    tau = step * float(z.abs().sum())
    want = torch.sign(x) * torch.clamp(x.abs() - tau, min=0.0)
    torch.testing.assert_close(z, want, rtol=0, atol=1e-9)


# ---------------------------------------------------------------- properties
groups_and_x = st.integers(1, 6).flatmap(
    lambda m: st.tuples(
        st.lists(st.integers(1, 3), min_size=m, max_size=m),
        st.lists(st.floats(0.2, 5.0), min_size=m, max_size=m),
        st.integers(1, m),
        st.floats(0.0, 4.0),
        st.randoms(use_true_random=False),
    )
)


def _labels(sizes):
    return torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))


@settings(max_examples=150, deadline=None)
@given(groups_and_x, st.integers(0, 2**31 - 1))
def test_prox_non_expansive_and_methods_agree(spec, seed):
    sizes, w, k, step, _ = spec
    labels = _labels(sizes)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(labels), generator=g, dtype=f64) * 3
    y = x + torch.randn(len(labels), generator=g, dtype=f64) * 10 ** float(torch.empty(1).uniform_(-3, 1, generator=g))
    px = wgsef_prox(x, k, step, groups=labels, weights=w)
    py = wgsef_prox(y, k, step, groups=labels, weights=w)
    assert float((px - py).norm()) <= float((x - y).norm()) * (1 + 1e-12) + 1e-12
    torch.testing.assert_close(wgsef_prox(x, k, step, groups=labels, weights=w, method="select"), px, rtol=1e-12, atol=1e-12)
    # Directions kept inside each group, norms never grow.
    assert bool((px * x >= 0).all())
    nx = torch.zeros(len(sizes), dtype=f64).index_add_(0, labels, x ** 2).sqrt()
    npx = torch.zeros(len(sizes), dtype=f64).index_add_(0, labels, px ** 2).sqrt()
    assert bool((npx <= nx + 1e-12).all())
    assert int((npx > 0).sum()) >= min(k, int((nx > 0).sum()))  # never fewer than k survive


def test_ties_get_identical_shrinkage_and_permutation_equivariance():
    x = torch.tensor([2.0, -2.0, 2.0, 1.0, 0.5], dtype=f64)
    z = wgsef_prox(x, 1, 0.3)
    assert z[0] == -z[1] == z[2] and z[0] > 0
    perm = torch.tensor([4, 2, 0, 3, 1])
    for k in (1, 2, 4):
        torch.testing.assert_close(wgsef_prox(x[perm], k, 0.3), wgsef_prox(x, k, 0.3)[perm], rtol=0, atol=1e-15)


def test_prox_zeros_are_positive_and_dtype_shape_kept():
    x = torch.tensor([[-0.01, -5.0], [-0.02, 4.0]], dtype=torch.float32)
    z = wgsef_prox(x, 1, 1.0)
    assert z.dtype == torch.float32 and z.shape == x.shape
    zeros = z == 0
    assert bool(zeros.any()) and not bool(torch.signbit(z[zeros]).any())
    assert torch.equal(wgsef_prox(x, 1, 0.0), x)


# ---------------------------------------------------------------- projection
@settings(max_examples=100, deadline=None)
@given(groups_and_x, st.integers(0, 2**31 - 1))
def test_projection_exactly_k_and_idempotent(spec, seed):
    sizes, _, k, _, _ = spec
    labels = _labels(sizes)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(labels), generator=g, dtype=f64)
    p = wgsef_project(x, k, groups=labels)
    norms = torch.zeros(len(sizes), dtype=f64).index_add_(0, labels, p ** 2)
    assert int((norms > 0).sum()) == k
    assert torch.equal(wgsef_project(p, k, groups=labels), p)
    kept = norms > 0
    full = torch.zeros(len(sizes), dtype=f64).index_add_(0, labels, x ** 2)
    assert float(full[kept].min()) >= float(full[~kept].max()) if (~kept).any() else True


def test_projection_ties_keep_lower_index():
    x = torch.tensor([1.0, 2.0, -2.0, 2.0])
    assert torch.equal(wgsef_project(x, 2), torch.tensor([0.0, 2.0, -2.0, 0.0]))
    x = torch.tensor([1.0, 1.0, -1.0, 1.0])
    assert torch.equal(wgsef_project(x, 1, groups=[[0, 1], [2, 3]]), torch.tensor([1.0, 1.0, 0.0, 0.0]))
