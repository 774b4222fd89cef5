"""``permute_`` across Hugging Face architecture families, table-driven: tiny random models whose
every norm weight, norm bias and bias is randomised (the default 1/0 would hide a norm or bias
left out of a permutation), permuted with no calibration data and with Wanda scores, both with
``check=False`` so that only the structural rules of :mod:`nmsparse.oneshot.permute.groups` keep
the outputs in place; then ``prune_(permute=True)`` must leave valid 2:4 masks.

Families that transformers 5.25 does not build offline from a config are left out here; every
family in :data:`FAMILIES` builds. ``python tests/oneshot/test_permute_archs.py`` prints, per family,
which group kinds were permuted.
"""

from __future__ import annotations

import copy

import pytest
import torch

import nmsparse as nms

transformers = pytest.importorskip("transformers")
T = transformers

V = 96  # vocabulary
TOKENS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
DEC = dict(TOKENS, vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
           max_position_embeddings=64)
GQA = dict(DEC, num_key_value_heads=2)


def _bert_like(cfg_cls, model_cls, **kw):
    return lambda: model_cls(cfg_cls(**dict(DEC, type_vocab_size=2, **kw)))


# name: (builder, input kind, group kinds that must be found and permuted somewhere in the model).
# "clm": input_ids; "enc": input_ids + attention_mask with padding; "s2s": + decoder_input_ids.
FAMILIES = {
    "llama (tied, SmolLM-like)": (lambda: T.LlamaForCausalLM(T.LlamaConfig(**GQA, tie_word_embeddings=True)), "clm",
                                  {"residual", "mlp (gated)", "attention v/o"}),
    "llama": (lambda: T.LlamaForCausalLM(T.LlamaConfig(**GQA, tie_word_embeddings=False)), "clm",
              {"residual", "mlp (gated)", "attention v/o"}),
    "qwen2": (lambda: T.Qwen2ForCausalLM(T.Qwen2Config(**GQA)), "clm", {"residual", "mlp (gated)", "attention v/o"}),
    "qwen3 (q/k norms)": (lambda: T.Qwen3ForCausalLM(T.Qwen3Config(**GQA, head_dim=8)), "clm",
                          {"residual", "mlp (gated)", "attention v/o"}),
    "mistral": (lambda: T.MistralForCausalLM(T.MistralConfig(**GQA)), "clm", {"residual", "mlp (gated)", "attention v/o"}),
    # experts are one fused 3-D parameter in this version: only attention v/o is modelled
    "mixtral (MoE)": (lambda: T.MixtralForCausalLM(T.MixtralConfig(**GQA, num_local_experts=4, num_experts_per_tok=2)),
                      "clm", {"attention v/o"}),
    "gemma": (lambda: T.GemmaForCausalLM(T.GemmaConfig(**GQA, head_dim=8)), "clm",
              {"residual", "mlp (gated)", "attention v/o"}),
    "gemma2 (post-norms)": (lambda: T.Gemma2ForCausalLM(T.Gemma2Config(**GQA, head_dim=8)), "clm",
                            {"residual", "mlp (gated)", "attention v/o"}),
    "gemma3 text": (lambda: T.Gemma3ForCausalLM(T.Gemma3TextConfig(**GQA, head_dim=8)), "clm",
                    {"residual", "mlp (gated)", "attention v/o"}),
    "phi3 (fused qkv, gate_up)": (lambda: T.Phi3ForCausalLM(T.Phi3Config(**GQA)), "clm", set()),
    "phi (partial rotary)": (lambda: T.PhiForCausalLM(T.PhiConfig(**DEC)), "clm", {"residual", "mlp", "attention v/o"}),
    "gpt2": (lambda: T.GPT2LMHeadModel(T.GPT2Config(**TOKENS, vocab_size=V, n_embd=32, n_layer=2, n_head=4,
                                                     n_positions=64)), "clm",
             {"residual", "mlp", "attention v/o", "attention q/k"}),
    # same c_attn/c_proj names as GPT-2 but k and v interleaved per head (multi_query=False), or one kv head
    "gpt-bigcode (MHA)": (lambda: T.GPTBigCodeForCausalLM(T.GPTBigCodeConfig(**TOKENS, vocab_size=V, n_embd=32, n_layer=2,
                                                                             n_head=4, n_positions=64, multi_query=False)),
                          "clm", {"mlp"}),
    "gpt-bigcode (MQA)": (lambda: T.GPTBigCodeForCausalLM(T.GPTBigCodeConfig(**TOKENS, vocab_size=V, n_embd=32, n_layer=2,
                                                                             n_head=4, n_positions=64, multi_query=True)),
                          "clm", {"mlp"}),
    "gpt-neo": (lambda: T.GPTNeoForCausalLM(T.GPTNeoConfig(**TOKENS, vocab_size=V, hidden_size=32, num_layers=2,
                                                            num_heads=4, intermediate_size=64, window_size=8,
                                                            attention_types=[[["global", "local"], 1]],
                                                            max_position_embeddings=64)), "clm",
                {"residual", "mlp", "attention v/o", "attention q/k"}),
    "gpt-neox (fused qkv, parallel)": (lambda: T.GPTNeoXForCausalLM(T.GPTNeoXConfig(**DEC)), "clm", {"mlp"}),
    "opt": (lambda: T.OPTForCausalLM(T.OPTConfig(**TOKENS, vocab_size=V, hidden_size=32, ffn_dim=64,
                                                  num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=32,
                                                  max_position_embeddings=64)), "clm",
            {"residual", "mlp", "attention v/o", "attention q/k"}),
    "falcon": (lambda: T.FalconForCausalLM(T.FalconConfig(**TOKENS, vocab_size=V, hidden_size=32, num_hidden_layers=2,
                                                           num_attention_heads=4)), "clm", {"mlp"}),
    "stablelm (partial rotary)": (lambda: T.StableLmForCausalLM(T.StableLmConfig(**GQA)), "clm",
                                  {"residual", "mlp (gated)", "attention v/o"}),
    "starcoder2": (lambda: T.Starcoder2ForCausalLM(T.Starcoder2Config(**GQA)), "clm",
                   {"residual", "mlp", "attention v/o"}),
    "olmo (no-affine norms)": (lambda: T.OlmoForCausalLM(T.OlmoConfig(**GQA)), "clm",
                               {"residual", "mlp (gated)", "attention v/o"}),
    "olmo2 (full-width q/k norms)": (lambda: T.Olmo2ForCausalLM(T.Olmo2Config(**GQA)), "clm",
                                     {"residual", "mlp (gated)", "attention v/o"}),
    "cohere (parallel, qk-norm)": (lambda: T.CohereForCausalLM(T.CohereConfig(**GQA, use_qk_norm=True)), "clm",
                                   {"mlp (gated)", "attention v/o"}),
    "bloom (alibi, fused qkv)": (lambda: T.BloomForCausalLM(T.BloomConfig(**TOKENS, vocab_size=V, hidden_size=32,
                                                                         n_layer=2, n_head=4)), "clm", {"mlp"}),
    "bert (MLM head)": (_bert_like(T.BertConfig, T.BertForMaskedLM), "enc",
                        {"residual", "mlp", "attention v/o", "attention q/k"}),
    "bert (base encoder)": (_bert_like(T.BertConfig, T.BertModel), "enc", {"mlp", "attention v/o", "attention q/k"}),
    "bert (classifier)": (_bert_like(T.BertConfig, T.BertForSequenceClassification, num_labels=3), "enc",
                          {"mlp", "attention v/o", "attention q/k"}),
    "roberta (MLM head)": (_bert_like(T.RobertaConfig, T.RobertaForMaskedLM, pad_token_id=1, max_position_embeddings=80),
                           "enc", {"residual", "mlp", "attention v/o", "attention q/k"}),
    "distilbert (MLM head)": (lambda: T.DistilBertForMaskedLM(T.DistilBertConfig(vocab_size=V, dim=32, hidden_dim=64,
                                                                                 n_layers=2, n_heads=4, pad_token_id=0)),
                              "enc", {"residual", "mlp", "attention v/o", "attention q/k"}),
    "t5": (lambda: T.T5ForConditionalGeneration(T.T5Config(**TOKENS, vocab_size=V, d_model=32, d_kv=8, d_ff=64,
                                                           num_layers=2, num_heads=4, decoder_start_token_id=0)),
           "s2s", {"mlp", "attention v/o", "attention q/k"}),
    "bart": (lambda: T.BartForConditionalGeneration(T.BartConfig(**TOKENS, vocab_size=V, d_model=32, encoder_layers=2,
                                                                 decoder_layers=2, encoder_attention_heads=4,
                                                                 decoder_attention_heads=4, encoder_ffn_dim=64,
                                                                 decoder_ffn_dim=64, max_position_embeddings=64,
                                                                 decoder_start_token_id=2)),
             "s2s", {"mlp", "attention v/o", "attention q/k"}),
}


def build(name):
    """The family's model, in float32 eval mode, with every 1-D parameter (norm weights and biases,
    layer biases) and every weight randomised from one seeded generator."""
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    model = FAMILIES[name][0]().float().eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.dim() == 1:
                base = 1.0 if pname.endswith("weight") and "bias" not in pname else 0.0
                p.copy_(base + 0.5 * torch.randn(p.shape, generator=g))
            else:  # outlier channels, as trained models have: the search then has something to gain
                p.mul_(1 + 4 * torch.rand(p.shape, generator=g) ** 8)
    return model


def batch(kind, seed, decoder_length=6):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (2, 10), generator=g)
    out = {"input_ids": ids}
    if kind == "enc":
        mask = torch.ones_like(ids)
        mask[1, 7:] = 0
        out["attention_mask"] = mask
    if kind == "s2s":
        out["decoder_input_ids"] = torch.randint(3, V, (2, decoder_length), generator=g)
    return out


def outputs(model, inputs):
    with torch.no_grad():
        out = model(**inputs, use_cache=False) if "decoder_input_ids" in inputs or _causal(model) else model(**inputs)
    for key in ("logits", "last_hidden_state"):
        if getattr(out, key, None) is not None:
            return getattr(out, key)
    raise AssertionError(f"no logits or last_hidden_state in {type(out).__name__}")


def _causal(model):
    return type(model).__name__.endswith("ForCausalLM") or type(model).__name__ == "GPT2LMHeadModel"


def _same(after, before):
    scale = float(before.abs().max())
    return float((after - before).abs().max()) <= 1e-4 * max(scale, 1e-12)


def permuted_kinds(rep):
    return sorted({g.kind for g in rep.groups if g.status == "permuted"})


CASES = [(f, p, mode) for f in FAMILIES for p in ("2:4", "2:4T") for mode in ("magnitude", "wanda")]


@pytest.mark.parametrize("family,pattern,mode", CASES, ids=[f"{f}-{p}-{m}" for f, p, m in CASES])
def test_structure_alone_keeps_the_outputs(family, pattern, mode):
    model = build(family)
    kind = FAMILIES[family][1]
    probe = batch(kind, 99)  # not the calibration batch: the function is preserved everywhere
    before = outputs(model, probe)
    permuted = copy.deepcopy(model)
    kw = dict(calibration=[batch(kind, 0)], scores="wanda") if mode == "wanda" else {}
    try:
        rounds = 1 if pattern.endswith("T") else 3  # transposable tile solves are the slow part: keep the file quick
        rep = nms.permute_(permuted, pattern, check=False, iterations=rounds, **kw)
    except nms.NMSparseError:  # a clear refusal is allowed; the model must then be untouched
        assert all(torch.equal(a, b) for a, b in zip(permuted.state_dict().values(), model.state_dict().values()))
        return
    assert _same(outputs(permuted, probe), before), (family, permuted_kinds(rep))
    assert rep.kept_after >= rep.kept_before
    want = FAMILIES[family][2]
    found = {g.kind for g in rep.groups}
    assert want <= found, (family, found, rep.skipped)
    if want:  # a supported family: something is actually permuted
        assert rep.permuted > 0, (family, [(g.name, g.status, g.reason) for g in rep.groups])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_prune_with_permute_leaves_valid_masks(family):
    model = build(family)
    kind = FAMILIES[family][1]
    rep = nms.oneshot.PruneReport()
    nms.prune_(model, "2:4", calibration=[batch(kind, 0, decoder_length=10)], algorithm="wanda", permute=True,
               report=rep)
    assert rep.layers, family
    for r in rep.layers:
        w = model.get_submodule(r.module_name).weight
        w = w.reshape(w.shape[0], -1) if w.dim() == 2 else w
        mask = (w != 0).T if type(model.get_submodule(r.module_name)).__name__ == "Conv1D" else (w != 0)
        assert nms.is_valid_mask(mask, "2:4"), (family, r.name)
    assert torch.isfinite(outputs(model, batch(kind, 99))).all()


def test_prune_permute_seq2seq_decoder_of_another_length():
    """The loss check scores the decoder's own inputs when the batch gives them (any length)."""
    rep = nms.oneshot.PruneReport()
    nms.prune_(build("t5"), "2:4", calibration=[batch("s2s", 0)], algorithm="wanda", permute=True, report=rep)
    assert rep.permute.loss_plain is not None and rep.permute.loss_permuted is not None


def _guarded_structures():
    """Structures left alone on purpose: each must say why in the report."""
    return [("olmo2 (full-width q/k norms)", "attention q/k"), ("qwen3 (q/k norms)", "attention q/k"),
            ("bert (base encoder)", "residual"), ("t5", "residual")]


@pytest.mark.parametrize("family,what", _guarded_structures())
def test_refusals_give_a_reason(family, what):
    rep = nms.permute_(build(family), "2:4", check=False, iterations=1)
    assert what not in {g.kind for g in rep.groups}
    label = "residual stream" if what == "residual" else what
    assert any(label in why for _, why in rep.skipped), rep.skipped


if __name__ == "__main__":  # the table of what each family permutes
    for fam in FAMILIES:
        m = build(fam)
        k = FAMILIES[fam][1]
        ref = outputs(m, batch(k, 99))
        r = nms.permute_(m, "2:4T", check=False, iterations=3)
        print(f"{fam:34s} ok={_same(outputs(m, batch(k, 99)), ref)!s:5s} {', '.join(permuted_kinds(r)) or '-'}")
