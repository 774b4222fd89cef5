"""``permute_`` on every supported architecture family: the permuted dense model computes the same
function, the kept score never drops, results are deterministic, unsafe groups are undone and
reported; ``prune_(permute=True)`` in memory and streamed."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import nmsparse as nms
from nmsparse.examples.digits import small_cnn
from nmsparse.examples.lm import CharTransformer
from nmsparse.oneshot import PruneReport

transformers = pytest.importorskip("transformers")


def _llama():
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(cfg)


def _qwen2():  # q/k/v biases, GQA, rotary
    cfg = transformers.Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    return transformers.Qwen2ForCausalLM(cfg)


def _gpt2():
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32))


def _bert():
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, max_position_embeddings=32)
    return transformers.BertModel(cfg)


def _ids(batch=2, length=12, seed=0):
    return torch.randint(0, 64, (batch, length), generator=torch.Generator().manual_seed(seed))


def _tokens(seed):
    return {"input_ids": _ids(seed=seed)}


def _masked_tokens(seed):
    ids = _ids(seed=seed)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # padding at the end of the second row
    return {"input_ids": ids, "attention_mask": mask}


FAMILIES = {
    # name: (model builder, batch builder, the group kinds that must be found)
    "llama (GQA, rotary)": (_llama, _tokens, {"residual", "mlp (gated)", "attention v/o"}),
    "qwen2 (q/k/v bias)": (_qwen2, _tokens, {"residual", "mlp (gated)", "attention v/o"}),
    "gpt2 (Conv1D, fused qkv, tied head)": (_gpt2, _tokens, {"residual", "mlp", "attention v/o", "attention q/k"}),
    # A base encoder returns the stream itself: its residual permutation is found, moves the outputs, and is undone.
    "bert (encoder, padding)": (_bert, _masked_tokens, {"mlp", "attention v/o", "attention q/k"}),
    "char LM (examples)": (lambda: CharTransformer(d_model=32, n_layers=2, n_heads=4, d_ff=64, context=32),
                           lambda s: _ids(seed=s), {"residual", "mlp", "attention v/o", "attention q/k"}),
    "CNN + BatchNorm": (lambda: small_cnn(16), lambda s: torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(s)),
                        {"chain", "mlp"}),
    "MLP in nn.Sequential": (lambda: nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.LayerNorm(32), nn.Linear(32, 32),
                                                   nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 8)),
                             lambda s: torch.randn(16, 16, generator=torch.Generator().manual_seed(s)), {"chain"}),
}


def _outputs(model, batch):
    with torch.no_grad():
        out = model(**batch) if isinstance(batch, dict) else model(batch)
    for key in ("logits", "last_hidden_state"):
        if hasattr(out, key):
            return getattr(out, key)
    return out


def _trained_like(model):
    """Give some channels much larger weights (outlier channels, as trained LLMs have), so that
    the order matters; seeded."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (nn.Linear, nn.Conv2d)) or type(mod).__name__ == "Conv1D":
                w = mod.weight
                w.mul_(1 + 4 * torch.rand(w.shape, generator=g) ** 8)
    return model


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("pattern,scores", [("2:4", "wanda"), ("2:4T", "magnitude"), ("4:8T", "wanda")])
def test_function_preserved_and_more_kept(family, pattern, scores):
    build, batch_of, kinds = FAMILIES[family]
    torch.manual_seed(0)
    model = _trained_like(build()).eval()
    batches = [batch_of(0), batch_of(1)]
    probe = batch_of(7)  # not a calibration batch: the function is preserved everywhere, not only where checked
    before = _outputs(model, probe)
    rep = nms.permute_(model, pattern, calibration=batches, scores=scores, iterations=6)
    after = _outputs(model, probe)
    assert torch.allclose(after, before, rtol=1e-4, atol=1e-5 * float(before.abs().max())), family
    assert rep.verified is True
    found = {g.kind for g in rep.groups}
    assert kinds <= found, found
    assert rep.permuted > 0
    assert rep.kept_after >= rep.kept_before
    for g in rep.groups:
        if g.status in ("permuted", "unchanged"):
            assert g.kept_after >= g.kept_before
        assert g.status != "unsafe" or (family.startswith("bert") and g.kind == "residual")
    # the report's layer scores are the optimal masks' objectives (independent check on one layer)
    row = rep.layers[-1]
    assert row.kept_after >= 0


def test_rotary_query_key_left_alone_and_reported():
    model = _llama().eval()
    rep = nms.permute_(model, "2:4T", calibration=[_tokens(0)], iterations=2)
    reasons = [why for name, why in rep.skipped if "q/k" in why]
    assert len(reasons) == 2 and all("rotary" in why for why in reasons)
    assert not any(g.kind == "attention q/k" for g in rep.groups)
    assert [g.kind for g in rep.groups].count("residual") == 1


def test_gqa_groups_cover_the_query_heads_of_each_kv_head():
    model = _llama()
    groups, _ = nms.oneshot.permute.find_groups(model)
    vo = [g for g in groups if g.kind == "attention v/o" and g.name.startswith("model.layers.0.")]
    assert len(vo) == 2  # 2 kv heads
    for h, g in enumerate(vo):
        o_starts = sorted(mb.start for mb in g.members if mb.module_name.endswith("o_proj"))
        v_starts = [mb.start for mb in g.members if mb.module_name.endswith("v_proj")]
        assert v_starts == [h * 8] and o_starts == [(2 * h) * 8, (2 * h + 1) * 8]  # head_dim 8, 2 q heads per kv head


def test_row_wise_query_key_groups_have_no_effect():
    model = _gpt2().eval()
    rep = nms.permute_(model, "2:4", calibration=[_tokens(0)], iterations=2)
    qk = [g for g in rep.groups if g.kind == "attention q/k"]
    assert qk and all(g.status == "no effect" for g in qk)


def test_deterministic():
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        model = _trained_like(_gpt2()).eval()
        nms.permute_(model, "2:4T", calibration=[_tokens(0)], scores="wanda", iterations=5, seed=3)
        results.append(copy.deepcopy(model.state_dict()))
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


class _Mixer(nn.Module):
    """Looks like an MLP (fc1, fc2) but mixes the hidden channels between them: not permutable."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)

    def forward(self, x):
        return self.fc2(torch.cumsum(self.fc1(x), dim=-1))


def test_unsafe_group_is_undone_and_reported():
    torch.manual_seed(0)
    model = _trained_like(nn.Sequential(_Mixer(), nn.ReLU(), nn.Linear(16, 8))).eval()
    x = torch.randn(32, 16)
    ref = model(x)
    rep = nms.permute_(model, "2:4", calibration=[x], iterations=4)
    mixer = [g for g in rep.groups if g.name == "0"]
    assert mixer and mixer[0].status == "unsafe" and "changed the outputs" in mixer[0].reason
    assert torch.allclose(model(x), ref, atol=1e-6)


def test_parametrized_layers_are_skipped_with_the_reason():
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    nms.sparsify_(model, "2:4", include="0")
    rep = nms.permute_(model, "2:4", calibration=[torch.randn(8, 16)])
    assert not rep.groups and any("parametrization" in why for _, why in rep.skipped)


class _WantsMore(nn.Module):
    """Looks like a Hugging Face LM fed token ids, but its forward needs another argument."""

    main_input_name = "input_ids"

    def __init__(self):
        super().__init__()
        self.config = transformers.PretrainedConfig(vocab_size=64)
        self.embed = nn.Embedding(64, 16)
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))

    def forward(self, input_ids, scale):
        return self.mlp(self.embed(input_ids)) * scale


@pytest.mark.parametrize("name,build,verified,note", [
    ("Sequential from a Linear", lambda: nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)), True,
     "random probe of 8 x 16 inputs"),
    ("HF causal LM", lambda: _llama().eval(), True, "random probe of 2 x 16 token ids"),
    ("HF encoder", lambda: _bert().eval(), True, "random probe of 2 x 16 token ids"),
    ("Sequential from a conv", lambda: nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3)), None, None),
    ("probe rejected", _WantsMore, None, "rejected a random probe input (TypeError"),
])
def test_without_calibration_a_probe_checks_the_outputs(name, build, verified, note):
    model = build()
    rep = nms.permute_(model, "2:4", iterations=2)
    assert rep.verified is verified, name
    assert ("checked unchanged" if verified else "not checked") in rep.summary()
    assert (note is None and not rep.notes) or any(note in n for n in rep.notes), rep.notes


def test_the_probe_finds_an_unsafe_group_without_calibration():
    torch.manual_seed(0)
    model = _trained_like(nn.Sequential(nn.Linear(16, 16), _Mixer(), nn.ReLU(), nn.Linear(16, 8))).eval()
    x = torch.randn(32, 16)
    ref = model(x)
    rep = nms.permute_(model, "2:4", iterations=4)
    mixer = [g for g in rep.groups if g.name == "1"]
    assert mixer and mixer[0].status == "unsafe" and rep.verified is True
    assert torch.allclose(model(x), ref, atol=1e-6)


def test_prune_without_calibration_is_checked_on_a_probe():
    model = _trained_like(_llama()).eval()
    x = _tokens(5)
    ref = copy.deepcopy(model)
    nms.permute_(ref, "2:4", check=False)
    rep = PruneReport()
    nms.prune_(model, "2:4", algorithm="magnitude", permute=True, report=rep)
    assert rep.permute.verified is True and rep.permute.permuted > 0
    assert any("random probe" in n for n in rep.permute.notes)
    nms.prune_(ref, "2:4", algorithm="magnitude")
    assert torch.equal(model(**x).logits, ref(**x).logits)


def test_prune_with_permute_keeps_more_and_obeys_the_pattern():
    torch.manual_seed(0)
    dense = _trained_like(_llama()).eval()
    batches = [_tokens(0), _tokens(1)]
    errs = {}
    for permute in (False, True):
        model = copy.deepcopy(dense)
        rep = PruneReport()
        nms.prune_(model, "2:4T", calibration=batches, algorithm="wanda", permute=permute, report=rep, exclude="lm_head")
        errs[permute] = sum(r.kept_fraction for r in rep.layers)
        for r in rep.layers:
            w = model.get_submodule(r.module_name).weight
            assert nms.is_valid_mask(w != 0, "2:4T"), r.name
        if permute:
            assert rep.permute is not None and rep.permute.permuted > 0 and rep.permute.verified is True
            assert "permute" in rep.to_dict()
    assert errs[True] > errs[False]  # more of |W| kept at the same sparsity


def test_prune_permute_undone_when_pruning_fails(monkeypatch):
    model = _trained_like(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))).eval()
    state = copy.deepcopy(model.state_dict())
    from nmsparse.oneshot import driver

    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(driver, "_prune_layer", boom)
    with pytest.raises(RuntimeError):
        nms.prune_(model, "2:4", calibration=[torch.randn(8, 16)], algorithm="wanda", permute=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_prune_streamed_per_block_equals_in_memory_per_block(tmp_path):
    """The streamed path permutes each block at its turn; the in-memory path with the same per-block
    hook gives the very same tensors."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_hf_stream import _folder, _tensors, _text  # noqa: E402
    from nmsparse.oneshot import hf as hf_mod
    from nmsparse.oneshot.calibration_text import load_calibration

    (tmp_path / "calib.txt").write_text(_text(600), encoding="utf-8")
    folder = _folder(tmp_path, "llama", "40KB", dtype=torch.float32)
    rep, _, _ = hf_mod.prune_hf_folder(folder, tmp_path / "out", "2:4T", calibration_file=tmp_path / "calib.txt",
                                       algorithm="wanda", samples=4, seq_len=16, permute=True)
    assert rep.permute is not None and rep.permute.permuted > 0 and rep.permute.verified is True
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    calib = load_calibration(folder, tmp_path / "calib.txt", 4, 16, False, 64)
    nms.prune_(model, "2:4T", calibration=calib.batches, algorithm="wanda", permute=True, _on_block=lambda *a: None)
    got, before = _tensors(tmp_path / "out"), _tensors(folder)
    state = model.state_dict()
    moved = 0
    for k, t in got.items():
        assert torch.equal(t, state[k]), k
        moved += not torch.equal(t, before[k])
    assert moved >= len(rep.permuted_tensors)


@pytest.mark.parametrize("bad,error,match", [
    (dict(pattern=0.5), nms.PatternError, "N:M pattern"),
    (dict(pattern="50%"), nms.PatternError, "N:M pattern"),
    (dict(pattern="2:4X"), nms.PatternError, "permute_"),
    (dict(scores="support"), nms.ArgumentError, "scores must be"),
    (dict(scores="wanda", calibration=None), nms.ArgumentError, "needs calibration"),
    (dict(iterations=-1), nms.ArgumentError, "iterations"),
    (dict(iterations=2.5), nms.ArgumentError, "iterations"),
    (dict(patience=0), nms.ArgumentError, "patience"),
    (dict(time_budget=float("nan")), nms.ArgumentError, "time_budget"),
    (dict(time_budget=0), nms.ArgumentError, "time_budget"),
    (dict(seed=True), nms.ArgumentError, "seed"),
    (dict(seed=-1), nms.ArgumentError, "seed"),
    (dict(scores={"0.weight": torch.ones(3)}), nms.ScoreError, "weight's shape"),
    (dict(scores=lambda name, mod: -mod.weight.abs()), nms.ScoreError, "non-negative"),
])
def test_bad_arguments_are_clear_errors(bad, error, match):
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    kw = dict(pattern="2:4", calibration=[torch.randn(4, 16)])
    kw.update(bad)
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(error, match=match) as info:
        nms.permute_(model, kw.pop("pattern"), **kw)
    assert "\n" not in str(info.value)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_nan_weight_names_the_layer():
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    with pytest.raises(nms.ScoreError, match="layer 2.weight"):
        nms.permute_(model, "2:4")


def test_prune_permute_arguments():
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    with pytest.raises(nms.PatternError, match="permute=True needs an N:M pattern"):
        nms.prune_(model, 0.5, permute=True)
    with pytest.raises(nms.ArgumentError, match="permute must be True or False"):
        nms.prune_(model, "2:4", permute="yes")


def test_cli_permute(tmp_path, capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_hf_stream import _folder, _text  # noqa: E402
    from nmsparse.cli import main

    (tmp_path / "calib.txt").write_text(_text(600), encoding="utf-8")
    folder = _folder(tmp_path, "gpt2", None)
    out = tmp_path / "out"
    rc = main(["prune", str(folder), "-o", str(out), "--pattern", "2:4", "--permute", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "--permute" in err and "--calibration" in err and not out.exists()
    rc = main(["prune", str(folder), "-o", str(out), "--pattern", "50%", "--permute", "--algorithm", "wanda",
               "--calibration", str(tmp_path / "calib.txt"), "--samples", "4", "--seq-len", "16", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "N:M pattern" in err and not out.exists()
    rc = main(["prune", str(folder), "-o", str(out), "--pattern", "2:4T", "--permute", "--algorithm", "sparsegpt",
               "--calibration", str(tmp_path / "calib.txt"), "--samples", "4", "--seq-len", "16", "--quiet"])
    text = capsys.readouterr().out
    assert rc == 0 and "channel groups for 2:4T" in text and "outputs checked unchanged" in text, text
    report = __import__("json").loads((tmp_path / "out.prune.json").read_text())
    assert report["permute"]["permuted"] > 0


def test_tied_members_are_left_alone():
    a = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))
    b = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))
    b[0].weight = a[0].weight  # tied across two chains
    model = nn.Sequential(a, b).eval()
    x = torch.randn(8, 16)
    ref = model(x)
    rep = nms.permute_(model, "2:4", calibration=[x], iterations=3)
    assert not rep.groups and sum("tied" in why for _, why in rep.skipped) == 2
    assert torch.equal(model(x), ref)


def test_half_precision_and_frozen_parameters():
    torch.manual_seed(0)
    model = _trained_like(nn.Sequential(nn.Linear(16, 32), nn.SiLU(), nn.Linear(32, 8))).to(torch.bfloat16).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(16, 16, dtype=torch.bfloat16)
    ref = model(x)
    rep = nms.permute_(model, "2:4T", calibration=[x], scores="wanda", iterations=3)
    assert rep.verified is True and rep.permuted == 1
    assert model[0].weight.dtype == torch.bfloat16 and not model[0].weight.requires_grad
    assert torch.allclose(model(x).float(), ref.float(), atol=5e-2 * float(ref.abs().max()))


def test_interrupted_search_puts_every_channel_back(monkeypatch):
    from nmsparse.oneshot.permute import api

    model = _trained_like(_gpt2()).eval()
    state = copy.deepcopy(model.state_dict())
    real = api.search_permutation
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(api, "search_permutation", flaky)
    with pytest.raises(KeyboardInterrupt):
        nms.permute_(model, "2:4T", calibration=[_tokens(0)], iterations=3)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_check_false_is_reported():
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    rep = nms.permute_(model, "2:4", calibration=[torch.randn(8, 16)], check=False, iterations=2)
    assert rep.verified is False and "NOT checked" in rep.summary()
