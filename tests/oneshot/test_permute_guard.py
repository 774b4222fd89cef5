"""prune_(permute=True)'s checks: the trials of nmsparse.oneshot.permute.guard (a permutation stays
only where the pruning algorithm's trial does not err clearly more with it) and, on a language
model, nmsparse.oneshot.permute.loss_check (both prunes compared by the calibration loss). Reverted
groups leave exactly the model that permute=False gives."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import nmsparse as nms
from nmsparse.oneshot import PruneReport, driver
from nmsparse.oneshot.permute import guard, loss_check
from nmsparse.oneshot.permute.loss_check import SIGNIFICANCE, LossSample, calibration_loss, clearly_worse

transformers = pytest.importorskip("transformers")


def _llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    model = transformers.LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # outlier channels, as trained LLMs have: the order matters
        for mod in model.modules():
            if isinstance(mod, torch.nn.Linear):
                mod.weight.mul_(1 + 4 * torch.rand(mod.weight.shape, generator=g) ** 8)
    return model


def _batches():
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(0, 64, (2, 12), generator=g)} for _ in range(2)]


@pytest.fixture
def no_loss(monkeypatch):
    """The trials' tests: a causal LM would be compared by its loss instead, so switch that off."""
    monkeypatch.setattr(driver, "loss_applies", lambda *a: False)


def _trials(monkeypatch, permuted: float, plain: float):
    """Make every trial report ``permuted`` for the permuted order and ``plain`` for the original
    (the guard tries the permuted order first, then the original)."""
    monkeypatch.setattr(driver, "loss_applies", lambda *a: False)
    state = {"block": 0, "walk": 0}

    def block_error(*a, **k):
        state["block"] += 1
        return permuted if state["block"] % 2 else plain

    def walk(*a, **k):
        state["walk"] += 1
        return (permuted, 1.0) if state["walk"] % 2 else (plain, 1.0)

    monkeypatch.setattr(guard, "_pruned_error", block_error)
    monkeypatch.setattr(guard, "_walk", walk)
    return state


def _assert_same(model, state: dict) -> None:
    """Every tensor of ``model`` equals ``state``'s, bit for bit (and no key is missing)."""
    got = model.state_dict()
    assert set(got) == set(state)
    for k, v in state.items():
        assert torch.equal(got[k], v), k


def _prune(model, algorithm, permute, **kw):
    rep = PruneReport()
    nms.prune_(model, "2:4T", calibration=_batches(), algorithm=algorithm, permute=permute, exclude="lm_head",
               report=rep, **kw)
    return rep


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("algorithm", ["wanda", "sparsegpt"])
def test_reverted_everywhere_gives_the_permute_false_model(monkeypatch, algorithm, streamed):
    dense = _llama()
    plain = copy.deepcopy(dense)
    _prune(plain, algorithm, False)
    state = _trials(monkeypatch, permuted=2.0, plain=1.0)
    model = copy.deepcopy(dense)
    kw = {"_on_block": lambda *a: None} if streamed else {}
    rep = _prune(model, algorithm, True, **kw)
    assert state["block"] > 0 and (streamed or state["walk"] > 0)  # the guard ran
    statuses = {g.status for g in rep.permute.groups}
    assert "reverted" in statuses and "permuted" not in statuses
    assert rep.permute.permuted == 0 and rep.permuted_tensors == set()
    assert rep.permute.kept_after == pytest.approx(rep.permute.kept_before)
    _assert_same(model, plain.state_dict())


@pytest.mark.parametrize("check", ["trials", "loss"])
@pytest.mark.parametrize("algorithm", ["wanda", "sparsegpt"])
def test_kept_everywhere_gives_the_permute_then_prune_model(monkeypatch, algorithm, check):
    """The trials (no loss check) or the loss check say the permuted prune is better: the result is
    exactly permute_ followed by prune_(permute=False)."""
    dense = _llama()
    ref = copy.deepcopy(dense)
    nms.permute_(ref, "2:4T", calibration=_batches(), scores="wanda", exclude="lm_head")
    _prune(ref, algorithm, False)
    (_trials if check == "trials" else _losses)(monkeypatch, permuted=1.0, plain=2.0)
    model = copy.deepcopy(dense)
    rep = _prune(model, algorithm, True)
    assert rep.permute.permuted > 0 and rep.permuted_tensors and "reverted" not in {g.status for g in rep.permute.groups}
    assert ("permuted kept" in rep.permute.summary()) is (check == "loss")
    _assert_same(model, ref.state_dict())


@pytest.mark.parametrize("permuted,plain,kept", [
    (1.0, 1.0, True),                          # a tie keeps the search's order
    (0.5, 1.0, True),                          # better
    (1.0 + guard.MARGIN / 2, 1.0, True),       # within the margin
    (1.0 + 2 * guard.MARGIN, 1.0, False),      # clearly worse: reverted
    (math.inf, 1.0, False),                    # a trial whose output broke
])
def test_margin_rule(monkeypatch, permuted, plain, kept):
    _trials(monkeypatch, permuted=permuted, plain=plain)
    rep = _prune(_llama(), "wanda", True)
    guarded = [g for g in rep.permute.groups if g.error_plain is not None]
    assert guarded and all((g.status == "permuted") == kept for g in guarded)
    assert all((g.status == "reverted") == (not kept) for g in guarded)
    assert all(g.reason.startswith("kept:" if kept else "reverted:") for g in guarded)


def test_real_trials_measure_and_restore(no_loss):
    """Unpatched: every guarded group carries both trial errors, the pruned model obeys the pattern,
    and the dense function check still passed."""
    model = _llama()
    rep = _prune(model, "sparsegpt", True)
    guarded = [g for g in rep.permute.groups if g.error_plain is not None]
    assert guarded and rep.permute.verified is True
    for g in guarded:
        assert math.isfinite(g.error_plain) and math.isfinite(g.error_permuted) and g.error_plain > 0
        assert (g.status == "reverted") == (g.error_permuted > g.error_plain * (1 + guard.MARGIN))
    for r in rep.layers:
        assert nms.is_valid_mask(model.get_submodule(r.module_name).weight != 0, "2:4T"), r.name


def test_magnitude_without_calibration_is_not_guarded(monkeypatch):
    state = _trials(monkeypatch, permuted=2.0, plain=1.0)
    model = _llama()
    rep = PruneReport()
    nms.prune_(model, "2:4T", algorithm="magnitude", permute=True, exclude="lm_head", report=rep)
    assert state == {"block": 0, "walk": 0} and rep.permute.permuted > 0


@pytest.mark.parametrize("where", ["walk", "block"])
def test_a_failing_trial_leaves_the_model_unchanged(monkeypatch, no_loss, where):
    """An exception in any trial (here the second, original-order one) undoes every permutation:
    prune_ leaves the caller's model as it was."""
    model = _llama()
    state = copy.deepcopy(model.state_dict())
    calls = {"n": 0}
    real = guard._walk if where == "walk" else guard._pruned_error

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("trial failed")
        return real(*a, **k)

    monkeypatch.setattr(guard, "_walk" if where == "walk" else "_pruned_error", flaky)
    with pytest.raises(RuntimeError, match="trial failed"):
        _prune(model, "wanda", True)
    assert calls["n"] == 2
    _assert_same(model, state)


def _losses(monkeypatch, permuted: float, plain: float):
    """The loss check measures the permuted prune first, then the plain one (every sequence alike)."""
    calls = {"n": 0}

    def loss(*a, **k):
        calls["n"] += 1
        value = permuted if calls["n"] % 2 else plain
        return LossSample(value, [value] * 4)

    monkeypatch.setattr(loss_check, "calibration_loss", loss)
    return calls


@pytest.mark.parametrize("attach", [False, True])
@pytest.mark.parametrize("algorithm", ["wanda", "sparsegpt"])
def test_loss_check_plain_wins_gives_the_permute_false_model(monkeypatch, algorithm, attach):
    dense = _llama()
    plain = copy.deepcopy(dense)
    _prune(plain, algorithm, False, attach_masks=attach)
    calls = _losses(monkeypatch, permuted=2.0, plain=1.0)
    model = copy.deepcopy(dense)
    rep = _prune(model, algorithm, True, attach_masks=attach, permute_tries=1)  # one search, then the plain prune
    assert calls["n"] == 2 and (rep.permute.loss_plain, rep.permute.loss_permuted) == (1.0, 2.0)
    assert rep.permute.permuted == 0 and "reverted" in {g.status for g in rep.permute.groups}
    assert rep.permuted_tensors == set() and "plain kept" in rep.permute.summary()
    assert [r.name for r in rep.layers] == [r.name for r in _rows(dense, algorithm)]
    _assert_same(model, plain.state_dict())


def _rows(dense, algorithm):
    return _prune(copy.deepcopy(dense), algorithm, False).layers


def test_loss_check_real_keeps_the_reported_prune():
    """Unpatched: the model returned is the prune whose calibration loss the report names, and no
    trial ran (the loss decides on a language model)."""
    model = _llama()
    rep = _prune(model, "sparsegpt", True)
    lp, lq = rep.permute.loss_plain, rep.permute.loss_permuted
    assert lp is not None and lq is not None and math.isfinite(lp) and math.isfinite(lq)
    chosen = lq if rep.permute.permuted else lp
    assert calibration_loss(model, _batches(), "test").mean == pytest.approx(chosen, rel=1e-9)
    assert all(g.error_plain is None for g in rep.permute.groups)
    for r in rep.layers:
        assert nms.is_valid_mask(model.get_submodule(r.module_name).weight != 0, "2:4T"), r.name


def test_loss_check_failing_second_prune_leaves_the_model_unchanged(monkeypatch):
    model = _llama()
    state = copy.deepcopy(model.state_dict())
    calls = {"n": 0}

    def loss(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("loss failed")
        return LossSample(1.0, [1.0])

    monkeypatch.setattr(loss_check, "calibration_loss", loss)
    with pytest.raises(RuntimeError, match="loss failed"):
        _prune(model, "wanda", True)
    _assert_same(model, state)


def test_loss_check_not_streamed_and_not_without_input_ids(monkeypatch):
    calls = _losses(monkeypatch, permuted=2.0, plain=1.0)
    _prune(_llama(), "wanda", True, _on_block=lambda *a: None)  # streamed: one block in memory, no second prune
    model = _llama()
    rep = PruneReport()
    ids = [b["input_ids"] for b in _batches()]  # plain tensors: no labels to score with
    nms.prune_(model, "2:4T", calibration=ids, algorithm="wanda", permute=True, exclude="lm_head", report=rep)
    assert calls["n"] == 0 and rep.permute.loss_plain is None


@pytest.mark.parametrize("name,permuted,plain,worse", [
    ("identical", [1.0, 2.0, 3.0], [1.0, 2.0, 3.0], False),
    ("permuted lower", [0.9, 1.9, 2.9], [1.0, 2.0, 3.0], False),
    ("noise around zero", [1.1, 1.9, 3.1, 3.95], [1.0, 2.0, 3.0, 4.0], False),
    ("consistently higher", [1.01, 2.012, 3.009, 4.011, 5.01], [1.0, 2.0, 3.0, 4.0, 5.0], True),
    ("higher but not significantly", [1.3, 2.0, 2.9, 4.0], [1.0, 2.0, 3.0, 4.0], False),
    ("one sequence, higher", [1.5], [1.0], True),
    ("one sequence, equal", [1.0], [1.0], False),
    ("no sequence", [], [], False),
])
def test_clearly_worse_table(name, permuted, plain, worse):
    assert clearly_worse(LossSample(0.0, permuted), LossSample(0.0, plain)) is worse, name


@settings(max_examples=60)
@given(st.lists(st.tuples(st.floats(0.5, 5.0), st.floats(-0.2, 0.3)), min_size=3, max_size=30))
def test_clearly_worse_is_a_paired_t_statistic_over_two(pairs):
    """Oracle: scipy's paired t-test statistic; worse exactly when it exceeds SIGNIFICANCE."""
    scipy_stats = pytest.importorskip("scipy.stats")
    plain = [p for p, _ in pairs]
    permuted = [p + d for p, d in pairs]
    diffs = [a - b for a, b in zip(permuted, plain)]
    assume(max(diffs) - min(diffs) > 1e-6)  # a constant difference has no standard error (the table covers it)
    t = float(scipy_stats.ttest_rel(permuted, plain).statistic)
    assume(abs(t - SIGNIFICANCE) > 1e-6)
    assert clearly_worse(LossSample(0.0, permuted), LossSample(0.0, plain)) is (t > SIGNIFICANCE)


def test_calibration_loss_matches_the_models_own_loss():
    """Oracle: Hugging Face's loss (mean over a batch's predicted tokens), token-weighted over
    the batches; padding (attention_mask 0) left out by both."""
    model = _llama()
    batches = _batches()
    batches[1]["attention_mask"] = torch.ones_like(batches[1]["input_ids"])
    batches[1]["attention_mask"][1, 8:] = 0
    total, count = 0.0, 0
    with torch.no_grad():
        for b in batches:
            labels = b["input_ids"].clone()
            if "attention_mask" in b:
                labels[b["attention_mask"] == 0] = -100
            n = int((labels[:, 1:] != -100).sum())
            total += float(model(**b, labels=labels).loss) * n
            count += n
    got = calibration_loss(model, batches, "test")
    assert got.mean == pytest.approx(total / count, rel=1e-5)
    assert len(got.sequences) == 4 and all(math.isfinite(v) for v in got.sequences)


def test_loss_check_tries_keep_the_lowest_loss_on_a_language_model():
    model = _llama()
    rep = _prune(model, "sparsegpt", True, permute_tries=2)
    note = rep.permute.notes[-1]
    losses = [float(v) for v in note.split("losses ")[1].split(";")[0].split(", ")]
    assert note.startswith("searched with seeds 0..1") and rep.permute.loss_permuted == pytest.approx(min(losses), rel=1e-4)
    chosen = rep.permute.loss_permuted if rep.permute.permuted else rep.permute.loss_plain
    assert calibration_loss(model, _batches(), "test").mean == pytest.approx(chosen, rel=1e-9)
