"""A pruned Hugging Face model survives the ecosystem's own save and load, and masks come back from
its zeros for fine-tuning."""

from __future__ import annotations

import pytest
import torch

import nmsparse as nms
from nmsparse.errors import MaskError, ShapeError

transformers = pytest.importorskip("transformers")


def _model(kind):
    torch.manual_seed(0)
    if kind == "llama":
        cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
        return transformers.LlamaForCausalLM(cfg).eval()
    cfg = transformers.GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=32)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _batches():
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(0, 96, (2, 12), generator=g), "attention_mask": torch.ones(2, 12, dtype=torch.long)}]


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("pattern", ["2:4", "2:4T"])
def test_save_pretrained_after_prune_keeps_the_pruned_model(kind, pattern, tmp_path):
    model = nms.prune_(_model(kind), pattern, calibration=_batches(), algorithm="sparsegpt")
    ids = _batches()[0]["input_ids"]
    with torch.no_grad():
        want = model(ids).logits
    model.save_pretrained(tmp_path / "out")
    back = type(model).from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        got = back(ids).logits
    torch.testing.assert_close(got, want)
    for (name, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), name
    # the pruned layers keep their pattern and +0.0, and the masks come back from the zeros
    skipped = []
    nms.nn.reattach_masks_(back, pattern, skipped=skipped)
    masked = [n for n, m in back.named_modules() if hasattr(m, "parametrizations")]
    assert masked and all(".h." in n or ".layers." in n for n in masked)
    assert any("lm_head" in n or "wte" in n or "embed" in n for n, _ in skipped)
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, want)


def test_attached_masks_save_through_plain_state_dict(tmp_path):
    model = nms.prune_(_model("llama"), "2:4", calibration=_batches(), algorithm="wanda", attach_masks=True)
    ids = _batches()[0]["input_ids"]
    with torch.no_grad():
        want = model(ids).logits
    model.save_pretrained(tmp_path / "out", state_dict=nms.nn.plain_state_dict(model))
    back = type(model).from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, want)


def test_reattach_refuses_what_does_not_fit():
    model = _model("llama")
    with pytest.raises(ShapeError, match="no weight of the model fits 2:4"):
        nms.nn.reattach_masks_(model, "2:4")
    with pytest.raises(MaskError, match="model.layers.0.mlp.up_proj.weight"):
        nms.nn.reattach_masks_(model, "2:4", include="model.layers.0.mlp.up_proj")
