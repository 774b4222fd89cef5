"""prune_: SparseGPT, Wanda, least-squares refit and AdaPrune against independent oracles."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

import nmsparse as nms
from nmsparse.oneshot import PruneReport
from nmsparse.oneshot import inverse_cholesky, lsq_refit, sparsegpt, wanda_scores
from nmsparse.diversity import kept_count
from nmsparse.errors import ConvertError, MethodError, ShapeError

from _oneshot_refs import damped, lstsq_rows, output_error, sparsegpt_fixed_mask


def correlated(n, d, seed, rank=None):
    """Inputs with correlated features (as real activations have): Z A plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(rank or d, d, generator=g, dtype=torch.float64)
    return torch.randn(n, rank or d, generator=g, dtype=torch.float64) @ a + 0.1 * torch.randn(n, d, generator=g, dtype=torch.float64)


def mlp(d_in=16, hidden=32, d_out=8, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))


def batches(d_in=16, n=64, count=4, seed=1):
    x = correlated(n * count, d_in, seed).float()
    return list(x.split(n))


# --- the matrix algorithms against references ----------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sparsegpt_fixed_mask_equals_obvious_reference(seed):
    x = correlated(200, 12, seed)
    h = x.T @ x
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, 12, generator=g, dtype=torch.float64)
    mask = torch.rand(6, 12, generator=g) < 0.5
    ours, keep = sparsegpt(w, h, nms.NMPattern(2, 4), mask=mask, damp=0.01, blocksize=4)
    ref = sparsegpt_fixed_mask(w.numpy(), damped(h.numpy(), 0.01), mask.numpy())
    assert torch.equal(keep, mask)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-8, atol=1e-10)


def test_sparsegpt_bias_tail_is_an_always_kept_constant_input():
    x = correlated(200, 8, 7)
    xa = torch.cat([x, torch.ones(200, 1, dtype=torch.float64)], 1)
    g = torch.Generator().manual_seed(7)
    w = torch.randn(4, 9, generator=g, dtype=torch.float64)
    mask = torch.cat([torch.rand(4, 8, generator=g) < 0.5, torch.ones(4, 1, dtype=torch.bool)], 1)
    ours, keep = sparsegpt(w, xa.T @ xa, 0.5, mask=mask, damp=0.01, tail=1)
    ref = sparsegpt_fixed_mask(w.numpy(), damped((xa.T @ xa).numpy(), 0.01), mask.numpy())
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-8, atol=1e-10)
    # Choosing the mask: the tail column is never pruned, the rest keeps exactly n of m.
    ours, keep = sparsegpt(torch.cat([w[:, :8], w[:, 8:]], 1), xa.T @ xa, nms.NMPattern(2, 4), tail=1)
    assert keep[:, 8].all()
    nms.check_mask(keep[:, :8], "2:4", exact=True)


def test_sparsegpt_pruned_first_is_the_least_squares_optimum():
    # With every pruned column left of every kept one, the column-by-column OBS updates add up to
    # the least-squares optimum of the kept weights (no damping, H well conditioned).
    x = correlated(300, 8, 3)
    w = torch.randn(5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(5, 8, dtype=torch.bool)
    mask[:, 5:] = True
    ours, _ = sparsegpt(w, x.T @ x, 0.375, mask=mask, damp=0.0)
    ref, _ = lstsq_rows(x.numpy(), w.numpy(), None, mask.numpy())
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-7, atol=1e-9)


def test_lsq_refit_matches_numpy_lstsq_with_bias():
    x = correlated(400, 10, 4)
    g = torch.Generator().manual_seed(4)
    w0, b0 = torch.randn(7, 10, generator=g, dtype=torch.float64), torch.randn(7, generator=g, dtype=torch.float64)
    mask = torch.rand(7, 10, generator=g) < 0.5
    xa = torch.cat([x, torch.ones(400, 1, dtype=torch.float64)], 1)
    w, b = lsq_refit(w0, b0, xa.T @ xa, mask, damp=0.0)
    rw, rb = lstsq_rows(x.numpy(), w0.numpy(), b0.numpy(), mask.numpy())
    np.testing.assert_allclose(w.numpy(), rw, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(b.numpy(), rb, rtol=1e-7, atol=1e-9)
    assert not torch.any(w[~mask] != 0)


def test_wanda_scores_closed_form():
    x = torch.tensor([[3.0, 0.0, 1.0], [4.0, 2.0, 0.0]], dtype=torch.float64)
    w = torch.tensor([[1.0, -1.0, 2.0], [-0.5, 3.0, 0.0]], dtype=torch.float64)
    expected = torch.tensor([[5.0, 2.0, 2.0], [2.5, 6.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(wanda_scores(w, x.T @ x), expected)


@pytest.mark.parametrize("pattern", ["2:4", "2:4T", "4:8T", "1:4"])
def test_sparsegpt_beats_magnitude_on_correlated_data(pattern):
    # SparseGPT is a greedy heuristic, so it can lose on a single draw (hypothesis found seed 1 at
    # 1:4); what must hold is that it wins clearly over a fixed set of draws.
    p = nms.NMPattern.parse(pattern)
    ratios = []
    for seed in range(16):
        x = correlated(256, 16, seed, rank=6)
        w = torch.randn(16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        ours, keep = sparsegpt(w, x.T @ x, p, damp=0.01)
        nms.check_mask(keep, p, exact=True)
        mag = torch.where(nms.find_mask(w, p), w, 0.0)
        ratios.append(
            output_error(x.numpy(), w.numpy(), None, ours.numpy(), None)
            / output_error(x.numpy(), w.numpy(), None, mag.numpy(), None)
        )
    wins = sum(r <= 1.0 for r in ratios)
    assert wins >= 12, f"SparseGPT beat magnitude on {wins}/16 draws: {[round(r, 3) for r in ratios]}"
    assert float(np.mean(ratios)) < 0.8, ratios


def test_inverse_cholesky_errors_name_the_layer():
    h = torch.diag(torch.tensor([1.0, -50.0, 1.0], dtype=torch.float64))
    with pytest.raises(ConvertError, match="layer blocks.3.fc.weight: .*indefinite"):
        inverse_cholesky(h, 0.01, "blocks.3.fc.weight")
    with pytest.raises(ConvertError, match="layer q.weight: .*NaN/Inf"):
        inverse_cholesky(torch.full((2, 2), float("nan"), dtype=torch.float64), 0.01, "q.weight")
    # A semidefinite H (fewer samples than features) factorises thanks to the dampening.
    x = correlated(3, 8, 0)
    u, used = inverse_cholesky(x.T @ x, 0.01, "x")
    assert used == 0.01 and torch.isfinite(u).all()


# --- prune_ on models ----------------------------------------------------------------------------


def _mask_of(layer):
    return layer.parametrizations.weight[0].mask


@pytest.mark.parametrize("algorithm", ["wanda", "sparsegpt", "sparsegpt+lsq", "adaprune"])
@pytest.mark.parametrize("pattern", ["2:4", "2:4T", "4:8T", "8:16T", "1:4T", "3:4T"])
def test_masks_are_valid_and_pruned_weights_are_positive_zero(algorithm, pattern):
    model = mlp(d_out=16)
    rep = PruneReport()
    nms.prune_(model, pattern, calibration=batches(), algorithm=algorithm, report=rep, iterations=20, attach_masks=True)
    assert [r.name for r in rep.layers] == ["0.weight", "2.weight"]
    for i in (0, 2):
        mask = _mask_of(model[i])
        nms.check_mask(mask, pattern, exact=True)
        w = model[i].parametrizations.weight.original
        assert not torch.any(w[~mask] != 0)
        assert not torch.any(torch.signbit(w[~mask]))  # +0.0, never -0.0
        assert torch.equal(model[i].weight, torch.where(mask, w, 0.0))


@pytest.mark.parametrize("algorithm", ["magnitude", "wanda", "sparsegpt", "sparsegpt+adaprune"])
@pytest.mark.parametrize("density", [0.5, 0.3, 0.13])
def test_unstructured_densities_keep_exact_counts(algorithm, density):
    model = mlp()
    nms.prune_(model, density, calibration=batches(), algorithm=algorithm, iterations=10, blocksize=8, attach_masks=True)
    for i in (0, 2):
        mask = _mask_of(model[i])
        assert int(mask.sum()) == kept_count(mask.numel(), density)


@pytest.mark.parametrize("pattern", ["2:4", "2:4T", 0.5])
def test_every_layer_beats_magnitude_and_reports_true_errors(pattern):
    model, dense = mlp(), mlp()
    calib = batches()
    rep = PruneReport()
    nms.prune_(model, pattern, calibration=calib, algorithm="sparsegpt+lsq", report=rep, attach_masks=False)
    for r in rep.layers:
        assert r.error_after <= r.error_magnitude
    # Oracle for the reported error of the first layer: recompute it from its outputs.
    x = torch.cat(calib).double()
    err = output_error(x.numpy(), dense[0].weight.double().detach().numpy(), dense[0].bias.double().detach().numpy(),
                       model[0].weight.double().detach().numpy(), model[0].bias.double().detach().numpy())
    assert err == pytest.approx(rep.layers[0].error_after, rel=1e-6)


def test_wanda_mask_is_the_pattern_mask_of_hand_computed_scores():
    model, dense = mlp(), mlp()
    calib = batches()
    nms.prune_(model, "2:4T", calibration=calib, algorithm="wanda", sequential=False, attach_masks=True)
    norms = torch.cat(calib).double().pow(2).sum(0).sqrt()
    w = dense[0].weight.detach()
    expected = nms.find_mask(w, "2:4T", scores=w.double().abs() * norms)
    assert torch.equal(_mask_of(model[0]), expected)
    assert torch.equal(model[0].weight, torch.where(expected, w, 0.0))  # Wanda does not update weights


def test_magnitude_needs_no_calibration_and_others_do():
    model, dense = mlp(), mlp()
    nms.prune_(model, "2:4T", attach_masks=True)
    assert torch.equal(_mask_of(model[0]), nms.find_mask(dense[0].weight.detach(), "2:4T"))
    for algorithm in ("wanda", "sparsegpt", "adaprune", "magnitude+lsq"):
        with pytest.raises(ConvertError, match="needs calibration data"):
            nms.prune_(mlp(), "2:4", algorithm=algorithm, attach_masks=True)
    with pytest.raises(MethodError, match="known: magnitude, wanda, sparsegpt, adaprune"):
        nms.prune_(mlp(), "2:4", calibration=batches(), algorithm="obs", attach_masks=True)
    with pytest.raises(MethodError, match="cannot refine"):
        nms.prune_(mlp(), "2:4", calibration=batches(), algorithm="sparsegpt+wanda", attach_masks=True)


def test_update_bias_moves_the_bias():
    calib = batches()
    plain, moved = mlp(), mlp()
    rp, rm = PruneReport(), PruneReport()
    nms.prune_(plain, "2:4", calibration=calib, algorithm="sparsegpt", report=rp, sequential=False, attach_masks=True)
    nms.prune_(moved, "2:4", calibration=calib, algorithm="sparsegpt", report=rm, sequential=False, update_bias=True, attach_masks=True)
    assert torch.equal(plain[0].bias, mlp()[0].bias) and not torch.equal(moved[0].bias, mlp()[0].bias)
    nms.check_mask(_mask_of(moved[2]), "2:4", exact=True)


def test_sequential_feeds_pruned_outputs_forward():
    calib = batches()
    seq, par = PruneReport(), PruneReport()
    nms.prune_(mlp(), "2:4", calibration=calib, algorithm="sparsegpt", sequential=True, report=seq)
    nms.prune_(mlp(), "2:4", calibration=calib, algorithm="sparsegpt", sequential=False, report=par)
    assert seq.layers[0].error_after == pytest.approx(par.layers[0].error_after, rel=1e-12)  # same inputs
    assert seq.layers[1].error_magnitude != pytest.approx(par.layers[1].error_magnitude, rel=1e-6)
    # Non-sequential: the second layer saw the dense first layer's outputs.
    dense = mlp()
    h = dense[1](dense[0](torch.cat(calib))).double()
    w = dense[2].weight.double().detach()
    mag = torch.where(nms.find_mask(w, "2:4"), w, 0.0)
    err = output_error(h.detach().numpy(), w.numpy(), dense[2].bias.double().detach().numpy(), mag.numpy(), dense[2].bias.double().detach().numpy())
    assert par.layers[1].error_magnitude == pytest.approx(err, rel=1e-6)


def test_dead_inputs_get_zero_weights_and_no_error():
    calib = [b.clone() for b in batches()]
    for b in calib:
        b[:, 3] = 0.0
    model = mlp()
    nms.prune_(model, "2:4T", calibration=calib, algorithm="sparsegpt", attach_masks=False)
    assert torch.all(model[0].weight[:, 3] == 0)
    assert torch.isfinite(model[0].weight).all()


class _Poison(nn.Module):
    def forward(self, x):
        return x * float("nan")


def test_nan_activations_name_the_layer_and_restore_the_model():
    model = nn.Sequential(nn.Linear(16, 32), _Poison(), nn.Linear(32, 8))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConvertError, match="layer 2.weight: .*NaN/Inf"):
        nms.prune_(model, "2:4", calibration=batches(), algorithm="sparsegpt")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # the first layer, already pruned, was restored
    assert not hasattr(model[0], "parametrizations")


class TupleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = mlp()

    def forward(self, x, scale=1.0, attention_mask=None):
        return self.body(x * scale)


@pytest.mark.parametrize("kind", ["tensor", "tuple", "dict"])
def test_tensor_tuple_and_dict_calibration_agree(kind):
    calib = batches()
    if kind == "tuple":
        calib = [(b, 1.0) for b in calib]
    elif kind == "dict":
        calib = [{"x": b, "scale": 1.0} for b in calib]
    ref, model = TupleNet(), TupleNet()
    nms.prune_(ref.body, "2:4T", calibration=batches(), algorithm="sparsegpt", attach_masks=False)
    nms.prune_(model, "2:4T", calibration=calib, algorithm="sparsegpt", attach_masks=False)
    assert torch.allclose(model.body[0].weight, ref.body[0].weight, atol=1e-6)


def test_attention_mask_padding_rows_are_ignored():
    g = torch.Generator().manual_seed(5)
    real = [torch.randn(2, 6, 16, generator=g) for _ in range(3)]
    padded, masks = [], []
    for x in real:
        garbage = 100 * torch.randn(2, 3, 16, generator=g)
        padded.append(torch.cat([x, garbage], 1))
        masks.append(torch.cat([torch.ones(2, 6), torch.zeros(2, 3)], 1).long())
    ref, model = TupleNet(), TupleNet()
    nms.prune_(ref, "2:4", calibration=[{"x": x} for x in real], algorithm="sparsegpt", attach_masks=False)
    nms.prune_(model, "2:4", calibration=[{"x": x, "attention_mask": m} for x, m in zip(padded, masks)],
               algorithm="sparsegpt", attach_masks=False)
    assert torch.allclose(model.body[0].weight, ref.body[0].weight, atol=1e-5)


def test_include_exclude_full_match_and_tied_weights():
    model = mlp()
    rep = PruneReport()
    nms.prune_(model, "2:4", calibration=batches(), algorithm="wanda", exclude="2", report=rep)
    assert [r.name for r in rep.layers] == ["0.weight"] and ("2.weight", "excluded by include=/exclude=") in rep.skipped
    assert not hasattr(model[2], "parametrizations")
    tied = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    tied[1].weight = tied[0].weight
    rep = PruneReport()
    with pytest.raises(ShapeError, match="no layer to prune .*tied weights: shared with 1.weight .*untie it"):
        nms.prune_(tied, "2:4", report=rep)


def test_requires_grad_parameters_get_masked_gradients_and_squash():
    model = mlp()
    assert all(p.requires_grad for p in model.parameters())
    nms.prune_(model, "2:4T", calibration=batches(), algorithm="sparsegpt", attach_masks=True)
    model(torch.randn(4, 16)).sum().backward()
    orig = model[0].parametrizations.weight.original
    assert torch.all(orig.grad[~_mask_of(model[0])] == 0)
    mask = _mask_of(model[0]).clone()
    nms.squash_(model)
    assert not hasattr(model[0], "parametrizations") and torch.all(model[0].weight[~mask] == 0)


def test_chain_refines_with_the_mask_fixed():
    calib = batches()
    a, b = mlp(), mlp()
    ra, rb = PruneReport(), PruneReport()
    nms.prune_(a, "2:4T", calibration=calib, algorithm="sparsegpt", report=ra, attach_masks=True)
    nms.prune_(b, "2:4T", calibration=calib, algorithm="sparsegpt+adaprune", report=rb, iterations=50, lr=1e-2, attach_masks=True)
    assert torch.equal(_mask_of(a[0]), _mask_of(b[0]))
    assert rb.layers[0].error_after <= ra.layers[0].error_after + 1e-12


CONVS = [
    (lambda: nn.Conv2d(3, 8, 3, padding=1), (4, 3, 6, 6)),  # in=3: padded groups per kernel position
    (lambda: nn.Conv2d(8, 8, (3, 2), stride=2, dilation=(1, 2)), (4, 8, 9, 9)),
    (lambda: nn.Conv2d(4, 8, 3, padding="same", padding_mode="reflect"), (4, 4, 5, 5)),
    (lambda: nn.Conv1d(8, 8, 3, padding=2, dilation=2), (4, 8, 10)),
    (lambda: nn.Conv3d(4, 8, 2, stride=(1, 2, 1)), (2, 4, 3, 4, 3)),
]


@pytest.mark.parametrize("case", range(len(CONVS)))
def test_conv_layers_unfold_like_the_layout(case):
    make, shape = CONVS[case]
    torch.manual_seed(case)
    model = nn.Sequential(make())
    dense = copy.deepcopy(model)
    calib = [torch.randn(*shape) for _ in range(3)]
    rep = PruneReport()
    nms.prune_(model, "2:4T", calibration=calib, algorithm="sparsegpt", ragged="pad", report=rep, attach_masks=False)
    nms.check_mask(model[0].weight != 0, "2:4T")
    x = torch.cat(calib)
    with torch.no_grad():
        y0, y = dense[0](x).double(), model[0](x).double()
    err = float((y - y0).pow(2).sum() / y0.pow(2).sum())
    assert err == pytest.approx(rep.layers[0].error_after, rel=1e-5)
    assert rep.layers[0].error_after <= rep.layers[0].error_magnitude

