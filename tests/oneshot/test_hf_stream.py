"""``nmsparse prune --calibration`` streams blocks from the shards: the same tensors as the in-memory
path, one block in memory at a time, honest calibration, arguments checked before any loading; and
``nmsparse eval``."""

from __future__ import annotations

import json

import pytest
import torch

import nmsparse as nms
from nmsparse.cli import main
from nmsparse.oneshot import hf as hf_mod
from nmsparse.oneshot.calibration_text import load_calibration

transformers = pytest.importorskip("transformers")
from safetensors import safe_open  # noqa: E402

WORDS = ("the quick brown fox jumps over the lazy dog a sparse model keeps two of every four weights "
         "transposable masks keep them in rows and in columns of every tile").split()


def _text(n_words, seed=0):
    g = torch.Generator().manual_seed(seed)
    return " ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (n_words,), generator=g))


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "[PAD]": 1, **{w: i + 2 for i, w in enumerate(sorted(set(WORDS)))}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]"), len(vocab)


def _folder(root, kind, shard=None, dtype=torch.bfloat16):
    tok, vocab = _tokenizer()
    torch.manual_seed(0)
    if kind == "llama":
        cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                       tie_word_embeddings=False)
        model = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=3, n_head=4, n_positions=64)
        model = transformers.GPT2LMHeadModel(cfg)
    folder = root / f"{kind}-{shard or 'single'}"
    model.to(dtype).save_pretrained(folder, max_shard_size=shard or "1GB")
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    (root / "calib.txt").write_text(_text(600), encoding="utf-8")
    (root / "short.txt").write_text(_text(20), encoding="utf-8")
    (root / "eval.txt").write_text(_text(400, seed=1), encoding="utf-8")
    return root


def _tensors(folder):
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            out.update({k: fh.get_tensor(k) for k in fh.keys()})
    return out


@pytest.mark.parametrize("kind,shard,algorithm,pattern", [
    ("llama", None, "sparsegpt", "2:4"),
    ("llama", "40KB", "wanda", "2:4T"),
    ("gpt2", "60KB", "sparsegpt", "2:4"),
    ("llama", None, "sparsegpt+lsq", "4:8T"),  # the LM head's 28 rows do not fit 8x8 tiles: left dense (skip)
])
def test_streamed_equals_in_memory(world, kind, shard, algorithm, pattern):
    ragged = "skip" if pattern == "4:8T" else "error"
    folder = _folder(world, kind, shard)
    out = world / f"out-{kind}-{shard}-{algorithm}-{pattern.replace(':', '')}"
    rep, notes, _ = hf_mod.prune_hf_folder(folder, out, pattern, calibration_file=world / "calib.txt", algorithm=algorithm,
                                           samples=4, seq_len=16, ragged=ragged)
    assert rep.pipeline.mode == "block-wise" and rep.calibration["windows"] == 4 and rep.calibration["tokens"] == 64
    # the in-memory reference: the whole model in float32, the same windows
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    calib = load_calibration(folder, world / "calib.txt", 4, 16, False, 64)
    ref = nms.oneshot.PruneReport()
    nms.prune_(model, pattern, calibration=calib.batches, algorithm=algorithm, report=ref, ragged=ragged)
    assert [r.name for r in ref.layers] == [r.name for r in rep.layers]
    got, before = _tensors(out), _tensors(folder)
    assert got.keys() == before.keys()
    state = model.state_dict()
    pruned = {r.name for r in rep.layers}
    for k, t in got.items():
        assert t.dtype == before[k].dtype
        if k in pruned:
            want = state[k].to(t.dtype)
            assert torch.equal(t, torch.where(want != 0, want, torch.zeros((), dtype=t.dtype))), k
            assert not torch.any(torch.signbit(t[t == 0]))
        else:
            assert torch.equal(t.view(torch.uint8), before[k].view(torch.uint8)), k
    if shard:
        index = json.loads((out / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"]) == set(got)


def test_one_block_in_memory_at_a_time(world, monkeypatch):
    folder = _folder(world, "llama", "40KB")
    seen = []
    real_load = hf_mod._Loader.load

    def load(self, modules):
        real_load(self, modules)
        blocks = self.model.model.layers
        seen.append(sum(any(not p.is_meta for p in b.parameters()) for b in blocks))

    monkeypatch.setattr(hf_mod._Loader, "load", load)
    hf_mod.prune_hf_folder(folder, world / "one-block", "2:4", calibration_file=world / "calib.txt", algorithm="sparsegpt",
                           samples=2, seq_len=16)
    assert seen and max(seen) == 1


def _cli(world, folder, *extra):
    return main(["prune", str(folder), "-o", str(world / "cli-out"), "--calibration", str(world / "calib.txt"), "--quiet",
                 "--force", *extra])


def test_short_calibration_is_an_error_unless_allowed(world, capsys):
    folder = _folder(world, "llama")
    rc = main(["prune", str(folder), "-o", str(world / "short-out"), "--pattern", "2:4", "--algorithm", "wanda",
               "--calibration", str(world / "short.txt"), "--samples", "8", "--seq-len", "16", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "20 tokens, fewer than the 8 windows x 16 tokens = 128" in err and "--allow-short" in err
    assert not (world / "short-out").exists()
    rc = main(["prune", str(folder), "-o", str(world / "short-out"), "--pattern", "2:4", "--algorithm", "wanda",
               "--calibration", str(world / "short.txt"), "--samples", "8", "--seq-len", "16", "--quiet", "--allow-short"])
    out = capsys.readouterr().out
    assert rc == 0 and "used 1 windows x 16 tokens = 16 tokens" in out and "asked for 8 x 16" in out
    report = json.loads((world / "short-out.prune.json").read_text())
    assert report["calibration"]["short"] is True and report["calibration"]["tokens"] == 16


@pytest.mark.parametrize("extra,message", [
    (["--pattern", "2:4", "--algorithm", "sparsegpt+"], "cannot refine"),
    (["--pattern", "2:4X", "--algorithm", "wanda"], "2:4X"),
    (["--pattern", "150%", "--algorithm", "wanda"], "density"),
    (["--pattern", "2:4", "--algorithm", "wanda", "--seq-len", "65"], "longer than the model's context (64"),
    (["--pattern", "2:4", "--algorithm", "wanda", "--method", "nope"], "nope"),
])
def test_arguments_are_checked_before_the_model_is_built(world, capsys, monkeypatch, extra, message):
    folder = _folder(world, "llama")

    def refuse(*a, **k):
        raise AssertionError("the model was built before the arguments were checked")

    monkeypatch.setattr(hf_mod, "build_skeleton", refuse) if "--seq-len" not in extra else None
    monkeypatch.setattr(hf_mod, "ShardReader", refuse) if "--seq-len" not in extra else None
    rc = _cli(world, folder, *extra)
    err = capsys.readouterr().err
    assert rc == 1 and message in err, err


def test_density_pattern_eval_and_unmatched_regex(world, capsys):
    folder = _folder(world, "llama")
    rc = _cli(world, folder, "--pattern", "50%", "--algorithm", "sparsegpt", "--samples", "4", "--seq-len", "16",
              "--eval", str(world / "eval.txt"), "--eval-windows", "4", "--exclude", "nothing_like_this")
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "IN perplexity" in out and "OUT perplexity" in out
    assert "--exclude 'nothing_like_this' matched no tensor" in out
    t = _tensors(world / "cli-out")["model.layers.0.mlp.up_proj.weight"]
    assert int((t != 0).sum()) == t.numel() // 2
    rc = main(["eval", str(folder), "--text", str(world / "eval.txt"), "--seq-len", "16", "--windows", "4", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and "perplexity" in out and "60 tokens" in out  # 4 windows x 15 predicted tokens


def test_eval_checks_context_and_text(world, capsys):
    folder = _folder(world, "llama")
    assert main(["eval", str(folder), "--text", str(world / "eval.txt"), "--seq-len", "100"]) == 1
    assert "context" in capsys.readouterr().err
    assert main(["eval", str(folder), "--text", str(world / "short.txt"), "--seq-len", "16", "--windows", "4"]) == 1
    assert "--allow-short" in capsys.readouterr().err
    assert main(["eval", str(folder), "--text", str(world / "missing.txt"), "--seq-len", "16"]) == 1
    assert "missing.txt" in capsys.readouterr().err
