"""The parametrized (STE / SR-STE) model against the plain masked dense model."""

import copy

import pytest
import torch
from torch import nn

import nmsparse as nms
from nmsparse.nn import masked_weight_ste, sparsify_, sparsified_parameters


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Identity(), nn.Linear(32, 8))


def _plain_masked(model, masks):
    """A copy whose weights are the masked weights as ordinary leaves (no parametrization)."""
    plain = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Identity(), nn.Linear(32, 8))
    with torch.no_grad():
        for (name, (module, pname)), target in zip(sparsified_parameters(model).items(), (plain[0], plain[3])):
            dense = module.parametrizations[pname].original
            target.weight.copy_(torch.where(masks[name], dense, torch.zeros(())))
            target.bias.copy_(module.bias)
    return plain


@pytest.mark.parametrize("pattern", ["2:4", "2:4T", "4:8T", 0.3])
@pytest.mark.parametrize("ste", ["ste", "srste"])
def test_outputs_and_gradients_match_plain_masked_model(pattern, ste):
    model = sparsify_(_model(), pattern, gradient=ste, srste_decay=0.01, update_every=1000)
    entries = sparsified_parameters(model)
    masks = {n: m.parametrizations[p][0].mask.clone() for n, (m, p) in entries.items()}
    plain = _plain_masked(model, masks)
    x = torch.randn(5, 16)
    y, y_plain = model(x), plain(x)
    torch.testing.assert_close(y, y_plain, rtol=0, atol=0)
    y.square().sum().backward()
    y_plain.square().sum().backward()
    for (name, (module, pname)), target in zip(entries.items(), (plain[0], plain[3])):
        dense = module.parametrizations[pname].original
        expected = target.weight.grad.clone()  # gradient w.r.t. the masked weight, all entries
        if ste == "srste":
            expected += 0.01 * torch.where(masks[name], torch.zeros(()), dense.detach())
        torch.testing.assert_close(dense.grad, expected)
        torch.testing.assert_close(module.bias.grad, target.bias.grad)


def test_ste_passes_gradient_to_pruned_weights():
    w = torch.randn(4, 8, requires_grad=True)
    mask = nms.find_mask(w.detach(), "2:4")
    masked_weight_ste(w, mask).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))  # dense straight-through gradient


def test_srste_decay_closed_form():
    w = torch.tensor([[3.0, -2.0, 1.0, 0.5]], requires_grad=True)
    mask = torch.tensor([[True, True, False, False]])
    masked_weight_ste(w, mask, decay=0.1).sum().backward()
    torch.testing.assert_close(w.grad, torch.tensor([[1.0, 1.0, 1.1, 1.05]]))


def test_masked_weight_has_positive_zeros():
    w = -torch.rand(4, 8) - 0.1
    mask = nms.find_mask(w, "2:4")
    out = masked_weight_ste(w, mask)
    assert not torch.signbit(out[~mask]).any()
    assert torch.equal(out[mask], w[mask])


def test_model_copy_keeps_masks_and_schedule():
    model = sparsify_(_model(), "2:4T", update_every=1)
    clone = copy.deepcopy(model)
    x = torch.randn(3, 16)
    torch.testing.assert_close(model(x), clone(x))
    assert len(sparsified_parameters(clone)) == 2
