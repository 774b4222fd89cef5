"""prune_ and ``nmsparse prune --calibration`` on tiny Hugging Face models built from configs (no download)."""

from __future__ import annotations

import json

import pytest
import torch

import nmsparse as nms
from nmsparse.cli import main
from nmsparse.oneshot import PruneReport

transformers = pytest.importorskip("transformers")
from safetensors import safe_open  # noqa: E402

TEXT = (
    "the quick brown fox jumps over the lazy dog . a sparse model keeps two of every four weights . "
    "transposable masks keep them in rows and in columns of every tile . "
) * 12


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted(set(TEXT.split()))
    vocab = {"[UNK]": 0, "[PAD]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]"), len(vocab)


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    tok, vocab = _tokenizer()
    cfg = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16)
    folder = tmp_path_factory.mktemp("hf") / "tiny-llama"
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    (folder.parent / "calib.txt").write_text(TEXT, encoding="utf-8")
    return folder


def _tensors(path):
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}


def test_cli_prune_with_calibration_writes_the_folder(llama_folder, capsys):
    out = llama_folder.parent / "pruned"
    rc = main(["prune", str(llama_folder), "-o", str(out), "--pattern", "2:4T", "--algorithm", "sparsegpt",
               "--calibration", str(llama_folder.parent / "calib.txt"), "--samples", "8", "--seq-len", "16", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "lm_head.weight" in printed and "tied to the embedding model.embed_tokens.weight, which stays dense by default" in printed
    before, after = _tensors(llama_folder / "model.safetensors"), _tensors(out / "model.safetensors")
    assert before.keys() == after.keys() and "lm_head.weight" not in after  # the tie is kept
    pruned = [k for k in after if k.endswith("_proj.weight")]
    assert len(pruned) == 14
    for k, t in after.items():
        assert t.dtype == before[k].dtype
        if k in pruned:
            nms.check_mask(t != 0, "2:4T")
            assert not torch.any(torch.signbit(t[t == 0]))
        else:
            assert torch.equal(t.view(torch.uint8), before[k].view(torch.uint8)), k  # byte-identical
    for name in ("config.json", "tokenizer.json"):
        assert (out / name).read_bytes() == (llama_folder / name).read_bytes()
    rep = json.loads((out.parent / "pruned.prune.json").read_text())
    assert rep["algorithm"] == "sparsegpt" and len(rep["layers"]) == 14
    assert all(r["error_after"] <= r["error_magnitude"] * (1 + 1e-9) for r in rep["layers"])
    assert any("tied" in reason for _, reason in rep["skipped"])
    # A second run refuses to overwrite OUT.
    rc = main(["prune", str(llama_folder), "-o", str(out), "--pattern", "2:4T", "--calibration",
               str(llama_folder.parent / "calib.txt"), "--algorithm", "wanda", "--quiet"])
    assert rc == 1 and "already exists" in capsys.readouterr().err


def test_cli_algorithm_without_calibration_is_an_error(llama_folder, capsys):
    rc = main(["prune", str(llama_folder), "-o", str(llama_folder.parent / "x"), "--pattern", "2:4", "--algorithm", "sparsegpt"])
    assert rc == 2 and "needs --calibration" in capsys.readouterr().err


def test_gpt2_conv1d_layers_and_dict_batches_with_padding():
    cfg = transformers.GPT2Config(vocab_size=50, n_positions=32, n_embd=32, n_layer=2, n_head=4)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg)
    ids = torch.randint(0, 50, (4, 16))
    mask = torch.ones_like(ids)
    mask[:, 12:] = 0
    batches = [{"input_ids": ids, "attention_mask": mask}]
    rep = PruneReport()
    nms.prune_(model, "2:4", calibration=batches, algorithm="sparsegpt", report=rep, attach_masks=False)
    names = [r.name for r in rep.layers]
    assert "transformer.h.0.attn.c_attn.weight" in names and "transformer.h.1.mlp.c_proj.weight" in names
    for r in rep.layers:
        w = model.get_submodule(r.module_name).weight
        layout_w = w.T if type(model.get_submodule(r.module_name)).__name__ == "Conv1D" else w
        nms.check_mask(layout_w != 0, "2:4", exact=True)  # groups run along the input dimension
        assert r.error_after <= r.error_magnitude * (1 + 1e-9)
    assert any("tied" in reason for _, reason in rep.skipped)  # lm_head shares wte


def test_cli_calibration_needs_a_hugging_face_folder(llama_folder, capsys):
    single = llama_folder / "model.safetensors"
    rc = main(["prune", str(single), "-o", str(llama_folder.parent / "y.safetensors"), "--pattern", "2:4",
               "--algorithm", "wanda", "--calibration", str(llama_folder.parent / "calib.txt")])
    assert rc == 1 and "needs a Hugging Face model folder" in capsys.readouterr().err
    assert not (llama_folder.parent / "y.safetensors").exists()
