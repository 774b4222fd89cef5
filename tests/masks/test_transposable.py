"""Transposable n:mT through the public API: validity, optimality against independent oracles,
ragged edges, conv layouts, dtypes, determinism, and the CUDA path against the CPU path."""

import numpy as np
import pytest
import torch

import nmsparse as nms
from nmsparse.testing import lp_transposable_objective, transposable_tile_patterns

METHODS = ["exact", "refine", "greedy"]


def tiles_of(a: np.ndarray, m: int) -> np.ndarray:
    r, c = a.shape
    return a.reshape(r // m, m, c // m, m).transpose(0, 2, 1, 3).reshape(-1, m, m)


@pytest.mark.parametrize("pattern", ["1:2T", "2:4T", "3:4T", "2:8T", "4:8T", "3:8T", "8:16T", "5:16T", "2:3T"])
def test_methods_are_valid_and_ordered_against_the_lp_optimum(pattern):
    p = nms.NMPattern.parse(pattern)
    w = torch.randn(2 * p.m, 3 * p.m, generator=torch.Generator().manual_seed(p.m * 10 + p.n), dtype=torch.float64)
    optimum = sum(lp_transposable_objective(t, p.n) for t in tiles_of(w.abs().numpy(), p.m))
    results = {m: nms.solve_mask(w, pattern, method=m) for m in METHODS}
    exact, refine, greedy = results["exact"], results["refine"], results["greedy"]
    assert exact.optimal and not refine.optimal and not greedy.optimal
    assert exact.objective == pytest.approx(optimum, rel=1e-9)
    nms.check_mask(exact.mask, pattern, exact=True)
    nms.check_mask(refine.mask, pattern, exact=True)
    nms.check_mask(greedy.mask, pattern)  # greedy may leave rows short: at most n
    assert exact.info["short_tiles"] == 0 and refine.info["short_tiles"] == 0
    assert refine.objective <= exact.objective * (1 + 1e-12)
    assert 0.5 * exact.objective <= greedy.objective <= exact.objective * (1 + 1e-12)
    for r in results.values():
        assert r.mask.shape == w.shape and r.mask.dtype == torch.bool and r.info["tiles"] == 6


def test_exact_matches_brute_force_over_all_tile_patterns():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, size=(16, 16)).astype(np.float32)  # ties everywhere
    for n in range(1, 5):
        patterns = transposable_tile_patterns(n, 4).astype(np.float64)
        best = sum(np.max(np.einsum("kij,ij->k", patterns, t)) for t in tiles_of(a.astype(np.float64), 4))
        assert nms.solve_mask(torch.from_numpy(a), f"{n}:4T").objective == pytest.approx(best)


def padded_tile_oracle(tile: np.ndarray, real: np.ndarray, n: int) -> float:
    """Best real objective among valid patterns of a padded 4x4 tile that keep the most real entries."""
    pats = transposable_tile_patterns(n, 4)
    real_count = np.einsum("kij,ij->k", pats.astype(np.int64), real.astype(np.int64))
    best = pats[real_count == real_count.max()].astype(np.float64)
    return float(np.max(np.einsum("kij,ij->k", best, np.where(real, tile, 0.0))))


@pytest.mark.parametrize("shape", [(10, 13), (3, 7), (4, 6), (6, 4), (1, 1)])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_ragged_edges_keep_at_most_n_and_the_most_real_entries(shape, n):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape) + n), dtype=torch.float64)
    pattern = f"{n}:4T"
    with pytest.raises(nms.ShapeError, match="pad=True"):
        nms.find_mask(w, pattern)
    res = nms.solve_mask(w, pattern, pad=True)
    assert res.mask.shape == w.shape
    nms.check_mask(res.mask, pattern)  # real rows/columns of partial tiles keep at most n
    rows, cols = -(-shape[0] // 4) * 4, -(-shape[1] // 4) * 4
    a = np.zeros((rows, cols))
    real = np.zeros((rows, cols), dtype=bool)
    a[: shape[0], : shape[1]] = w.abs().numpy()
    real[: shape[0], : shape[1]] = True
    oracle = sum(padded_tile_oracle(t, r, n) for t, r in zip(tiles_of(a, 4), tiles_of(real, 4)))
    assert res.objective == pytest.approx(oracle, rel=1e-9)
    for method in ("greedy", "refine"):
        nms.check_mask(nms.find_mask(w, pattern, method=method, pad=True), pattern)


def test_conv_weight_tiles_the_implicit_gemm_matrix():
    w = torch.randn(8, 4, 3, 3)
    mask = nms.find_mask(w, "2:4T")
    nms.check_mask(mask, "2:4T", exact=True)
    gemm = mask.permute(0, 2, 3, 1).reshape(8, 36)
    for r0 in range(0, 8, 4):
        for c0 in range(0, 36, 4):
            tile = gemm[r0 : r0 + 4, c0 : c0 + 4]
            assert (tile.sum(0) == 2).all() and (tile.sum(1) == 2).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", METHODS)
def test_half_precision_inputs_give_the_fp32_mask(dtype, method):
    w = torch.randn(32, 64).to(dtype)
    mask = nms.find_mask(w, "4:8T", method=method)
    assert torch.equal(mask, nms.find_mask(w.float(), "4:8T", method=method))


@pytest.mark.parametrize("method", METHODS)
def test_deterministic_across_thread_counts(method):
    import numba

    w = torch.randint(0, 3, (64, 128)).float()  # heavy ties
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = nms.find_mask(w, "4:8T", method=method)
        numba.set_num_threads(max(2, before))
        many = nms.find_mask(w, "4:8T", method=method)
    finally:
        numba.set_num_threads(before)
    assert torch.equal(one, many)
    assert torch.equal(many, nms.find_mask(w, "4:8T", method=method))


def test_scale_and_sign_invariance():
    w = torch.randn(32, 32, dtype=torch.float64)
    for method in METHODS:
        base = nms.find_mask(w, "4:8T", method=method)
        assert torch.equal(base, nms.find_mask(-w * 1e6, "4:8T", method=method))


def test_dense_and_extreme_patterns():
    w = torch.randn(8, 8)
    assert nms.find_mask(w, "8:8T").all()
    one = nms.find_mask(w, "1:8T")
    assert (one.sum(0) == 1).all() and (one.sum(1) == 1).all()  # a permutation matrix


def test_large_tile_exact_equals_lp():
    w = torch.rand(32, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    res = nms.solve_mask(w, "16:32T")
    optimum = sum(lp_transposable_objective(t, 16) for t in tiles_of(w.numpy(), 32))
    assert res.objective == pytest.approx(optimum, rel=1e-9)
    nms.check_mask(res.mask, "16:32T", exact=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", METHODS)
def test_cuda_matches_cpu(method):
    w = torch.randn(256, 512)
    cpu = nms.solve_mask(w, "8:16T", method=method)
    gpu = nms.solve_mask(w.cuda(), "8:16T", method=method)
    assert gpu.mask.device.type == "cuda"
    nms.check_mask(gpu.mask.cpu(), "8:16T", exact=method != "greedy")
    if method == "greedy":
        assert torch.equal(gpu.mask.cpu(), cpu.mask)
    else:
        assert gpu.objective >= 0.999 * cpu.objective
