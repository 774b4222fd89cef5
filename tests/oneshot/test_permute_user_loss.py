"""prune_(permute=True, permute_loss=...): any model judged by its own loss, as a Hugging Face
language model is by its next-token loss (nmsparse.oneshot.permute.loss_check.user_loss): both
outcomes, the loss's contract, and clear errors that leave the model unchanged."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import nmsparse as nms
from nmsparse.errors import ArgumentError, ConvertError
from nmsparse.oneshot import PruneReport
from nmsparse.oneshot.permute.loss_check import user_loss


def _mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 8)).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # outlier channels: the order matters
        for mod in model.modules():
            if isinstance(mod, nn.Linear):
                mod.weight.mul_(1 + 4 * torch.rand(mod.weight.shape, generator=g) ** 8)
    return model


def _batches():
    g = torch.Generator().manual_seed(0)
    scale = 1 + 4 * torch.rand(32, generator=g) ** 8
    return [torch.randn(16, 32, generator=g) * scale for _ in range(2)]


def _rigged(permuted: float, plain: float):
    """The permuted prune is scored first, the plain one second (loss_check's order)."""
    calls = {"n": 0, "batches": 0}

    def loss(model, batch):
        calls["batches"] += 1
        first = calls["batches"] <= 2
        calls["n"] = 1 if first else 2
        value = permuted if first else plain
        return torch.full((batch.shape[0],), value) + 1e-3 * torch.arange(batch.shape[0])

    return loss, calls


def _prune(model, permute=True, **kw):
    rep = PruneReport()
    nms.prune_(model, "2:4T", calibration=_batches(), algorithm="sparsegpt", permute=permute, report=rep, **kw)
    return rep


def _assert_same(model, state):
    got = model.state_dict()
    assert set(got) == set(state)
    for k, v in state.items():
        assert torch.equal(got[k], v), k


def test_plain_wins_gives_the_permute_false_model():
    dense = _mlp()
    plain = copy.deepcopy(dense)
    _prune(plain, permute=False)
    loss, calls = _rigged(permuted=2.0, plain=1.0)
    model = copy.deepcopy(dense)
    rep = _prune(model, permute_loss=loss, permute_tries=1)  # one search, then the plain prune
    assert calls["n"] == 2 and rep.permute.loss_plain == pytest.approx(1.0075)
    assert rep.permute.permuted == 0 and "reverted" in {g.status for g in rep.permute.groups}
    assert all(g.error_plain is None for g in rep.permute.groups)  # no block trial ran
    _assert_same(model, plain.state_dict())


def test_permuted_wins_gives_the_permute_then_prune_model():
    dense = _mlp()
    loss, calls = _rigged(permuted=1.0, plain=2.0)
    model = copy.deepcopy(dense)
    rep = _prune(model, permute_loss=loss, permute_tries=1)
    assert calls["n"] == 2 and rep.permute.permuted > 0 and "permuted kept" in rep.permute.summary()
    expected = copy.deepcopy(dense)
    nms.permute_(expected, "2:4T", calibration=_batches(), scores="wanda")
    _prune(expected, permute=False)
    _assert_same(model, expected.state_dict())


def test_a_real_loss_keeps_the_prune_it_reports():
    dense = _mlp()
    batches = _batches()
    targets = [dense(b).detach() for b in batches]

    def loss(model, batch):
        i = next(k for k, b in enumerate(batches) if torch.equal(b, batch))
        return (model(batch) - targets[i]).pow(2).mean(dim=1)

    model = copy.deepcopy(dense)
    rep = _prune(model, permute_loss=loss)
    chosen = rep.permute.loss_permuted if rep.permute.permuted else rep.permute.loss_plain
    assert user_loss(model, batches, loss, "test").mean == pytest.approx(chosen, rel=1e-9)
    assert len(user_loss(model, batches, loss, "test").sequences) == 32  # one pair per sample


def test_a_scalar_loss_makes_each_batch_one_sample():
    model = _mlp()
    got = user_loss(model, _batches(), lambda m, b: m(b).pow(2).mean(), "test")
    assert len(got.sequences) == 2


@pytest.mark.parametrize("name,loss,error,match", [
    ("not callable", 3.0, ArgumentError, "permute_loss must be a callable"),
    ("raises", lambda m, b: 1 / 0, ConvertError, "permute_loss failed on calibration batch 0 .ZeroDivisionError"),
    ("returns a float", lambda m, b: 1.0, ConvertError, "scalar tensor or a 1-D tensor.*got float"),
    ("returns a matrix", lambda m, b: m(b), ConvertError, r"got a tensor of shape \(16, 8\)"),
    ("returns nothing", lambda m, b: torch.zeros(0), ConvertError, r"got a tensor of shape \(0,\)"),
    ("returns NaN", lambda m, b: torch.full((4,), float("nan")), ConvertError, "NaN or Inf on calibration batch 0"),
])
def test_bad_losses_are_clear_errors_and_leave_the_model_unchanged(name, loss, error, match):
    model = _mlp()
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(error, match=match):
        _prune(model, permute_loss=loss)
    _assert_same(model, state)


def test_permute_loss_needs_permute_and_calibration():
    model = _mlp()
    with pytest.raises(ArgumentError, match="needs permute=True"):
        _prune(model, permute=False, permute_loss=lambda m, b: m(b).sum())
    with pytest.raises(ArgumentError, match="pass calibration="):
        nms.prune_(model, "2:4", algorithm="magnitude", permute=True, permute_loss=lambda m, b: m(b).sum())


# -- permute_tries: several searches, the lowest calibration loss chosen --


def _by_call(values):
    """A loss whose every call on the two calibration batches returns the next of ``values`` (per
    sample): the tries are scored in seed order, then the plain prune."""
    calls = {"n": 0}

    def loss(model, batch):
        value = values[min(calls["n"] // 2, len(values) - 1)]
        calls["n"] += 1
        return torch.full((batch.shape[0],), float(value)) + 1e-3 * torch.arange(batch.shape[0])

    return loss, calls


@pytest.mark.parametrize("best", [0, 1, 2])
def test_tries_keep_the_seed_with_the_lowest_loss(best):
    dense = _mlp()
    losses = [2.0, 2.0, 2.0]
    losses[best] = 1.0
    loss, calls = _by_call(losses + [3.0])  # the plain prune last, clearly worse
    model = copy.deepcopy(dense)
    rep = _prune(model, permute_loss=loss, permute_tries=3)
    assert calls["n"] == 8 and rep.permute.loss_permuted == pytest.approx(1.0075)
    assert f"seed {best} kept" in rep.permute.notes[-1] and rep.permute.permuted > 0
    expected = copy.deepcopy(dense)
    nms.permute_(expected, "2:4T", calibration=_batches(), scores="wanda", seed=best)
    _prune(expected, permute=False)
    _assert_same(model, expected.state_dict())
    assert rep.permuted_tensors and all(name in expected.state_dict() for name in rep.permuted_tensors)


def test_tries_then_plain_wins_gives_the_permute_false_model():
    dense = _mlp()
    plain = copy.deepcopy(dense)
    _prune(plain, permute=False)
    loss, _ = _by_call([2.0, 3.0, 2.5, 1.0])
    model = copy.deepcopy(dense)
    rep = _prune(model, permute_loss=loss, permute_tries=3)
    assert rep.permute.permuted == 0 and "seed 0 kept" in rep.permute.notes[-1]
    _assert_same(model, plain.state_dict())


def test_a_failing_try_leaves_the_model_unchanged():
    model = _mlp()
    state = copy.deepcopy(model.state_dict())
    calls = {"n": 0}

    def loss(m, batch):
        calls["n"] += 1
        if calls["n"] == 4:  # the second try's second batch
            raise RuntimeError("loss failed")
        return m(batch).pow(2).mean(dim=1)

    with pytest.raises(ConvertError, match="permute_loss failed on calibration batch 1"):
        _prune(model, permute_loss=loss, permute_tries=3)
    _assert_same(model, state)


@pytest.mark.parametrize("tries,kw,match", [
    (0, {}, r"permute_tries must be an integer in \[1, 16\] \(or None\), got 0"),
    (17, {}, "got 17"),
    (True, {}, "got True"),
    (2.0, {}, "got 2.0"),
    (2, {"permute": False}, "needs permute=True"),
    (2, {}, "needs calibration data and a loss"),  # a Sequential without permute_loss: nothing to judge by
])
def test_bad_tries_are_clear_errors(tries, kw, match):
    model = _mlp()
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ArgumentError, match=match):
        _prune(model, permute_tries=tries, **kw)
    _assert_same(model, state)


def test_tries_default_three_where_a_loss_judges():
    loss, calls = _by_call([1.0, 2.0, 3.0, 4.0])
    rep = _prune(_mlp(), permute_loss=loss)
    assert calls["n"] == 8 and "seeds 0..2" in rep.permute.notes[-1]
    rep = PruneReport()  # no loss to judge by: one search, block trials
    nms.prune_(_mlp(), "2:4T", calibration=_batches(), algorithm="sparsegpt", permute=True, report=rep)
    assert not any("seeds" in n for n in rep.permute.notes)
