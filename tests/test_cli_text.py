"""The command's text (issue 20, "CLI text"): every sub-command has a description and clean --help,
messages name the command's flags and never the API's keyword arguments, quoted foreign messages are
cut at a word boundary with an ellipsis, and the counts it prints are true."""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import nmsparse
from nmsparse.cli import build_parser, cli_text, main
from nmsparse.errors import clip_text

SRC = Path(nmsparse.__file__).parent
# What a Python caller's keyword arguments look like, where a command's user needs a flag.
API_NAMES = re.compile(
    r"=True|=False|\b[a-z_][a-z_0-9]+_\(|\b(force|include|exclude|ragged|allow_short|permute|algorithm)="
    r"|\b(prune_|sparsify_|log10_count_masks|count_masks|find_mask|unstructured_mask|prune_state_dict|prune_checkpoint|"
    r"report_checkpoint)(?![a-z_])"
)


def _sub_commands(parser: argparse.ArgumentParser, path=()):
    """(argv path, parser) of every sub-command, nested ones too (bench claims)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield path + (name,), sub
                yield from _sub_commands(sub, path + (name,))


COMMANDS = [p for p, _ in _sub_commands(build_parser())]


def test_the_walk_finds_the_sub_commands():
    assert {("demo",), ("masks",), ("bench",), ("bench", "claims"), ("diversity",), ("prune",), ("eval",),
            ("report",)} <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_sub_command_has_a_description(path):
    sub = dict(_sub_commands(build_parser()))[path]
    assert sub.description and len(sub.description) > 40, f"nmsparse {' '.join(path)} has no description"


@pytest.mark.parametrize("path", [()] + COMMANDS, ids=lambda p: " ".join(p) or "nmsparse")
def test_help_has_no_doubled_percent_and_no_api_names(path, capsys):
    with pytest.raises(SystemExit) as done:
        main([*path, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "%%" not in text, f"a literal %% in `nmsparse {' '.join(path)} --help`"
    assert not API_NAMES.search(text), API_NAMES.search(text).group(0)


@pytest.mark.parametrize(
    "library, command",
    [
        ("x exists; choose another -o, or pass --force (force=True) to replace it.",
         "x exists; choose another -o, or pass --force to replace it."),
        ("Leave it dense with --exclude 'fc' or --ragged skip (ragged='skip'), or prune it padded",
         "Leave it dense with --exclude 'fc' or --ragged skip, or prune it padded"),
        ("no layer to prune (...). Check include=/exclude= and the pattern.",
         "no layer to prune (...). Check --include/--exclude and the pattern."),
        ("include='emb' matches 'emb' (Embedding), but prune_ prunes only the weights of Linear layers "
         "(sparsify_ takes any parameter)",
         "--include 'emb' matches 'emb' (Embedding), but prune prunes only the weights of Linear layers"),
        ("embedding, left dense by default (name it in include= to prune it)",
         "embedding, left dense by default (name it in --include to prune it)"),
        ("pass --allow-short (allow_short=True) to use what there is", "pass --allow-short to use what there is"),
        ("or use algorithm='magnitude' for it", "or use --algorithm magnitude for it"),
        ("a plain message", "a plain message"),
        ("log10_count_masks: pattern 2:4 groups the last dimension", "pattern 2:4 groups the last dimension"),
        ("prune_: layer fc: bad", "layer fc: bad"),
    ],
)
def test_cli_text_says_flags(library, command):
    assert cli_text(library) == command
    assert not API_NAMES.search(cli_text(library))


def _ckpt(tmp_path):
    g = torch.Generator().manual_seed(0)
    path = tmp_path / "m.safetensors"
    save_file({"fc.weight": torch.randn(8, 16, generator=g), "odd.weight": torch.randn(8, 6, generator=g),
               "fc.bias": torch.zeros(8)}, str(path))
    return path


@pytest.mark.parametrize(
    "argv, status",
    [
        (["prune", "{ckpt}", "-o", "{ckpt}", "--pattern", "2:4", "--exclude", "odd"], 1),  # OUT is IN, no --force
        (["prune", "{ckpt}", "-o", "{out}", "--pattern", "2:4"], 1),  # odd.weight does not fit: the ragged error
        (["prune", "{ckpt}", "-o", "{out}", "--pattern", "2:4", "--ragged", "skip", "--include", "nothing"], 1),
        (["prune", "{ckpt}", "-o", "{out}", "--pattern", "2:4", "--ragged", "skip"], 0),
        (["report", "{ckpt}", "--pattern", "2:4"], 1),  # dense weights break it
        (["report", "{ckpt}"], 0),
        (["diversity", "2:4X"], 1),
        (["diversity", "2:4", "--shape", "4x6"], 0),  # the table says why 2:4 does not fit
        (["prune", "{ckpt}", "-o", "{out}", "--pattern", "2:4", "--algorithm", "wanda"], 2),
    ],
)
def test_messages_name_flags_not_keyword_arguments(tmp_path, capsys, argv, status):
    ckpt = _ckpt(tmp_path)
    argv = [a.format(ckpt=ckpt, out=tmp_path / "o.safetensors") for a in argv]
    assert main(argv) == status
    cap = capsys.readouterr()
    for text in (cap.out, cap.err):
        found = API_NAMES.search(text)
        assert not found, f"{found.group(0)!r} in: {text}"


def test_out_exists_says_force_once(tmp_path, capsys):
    ckpt = _ckpt(tmp_path)
    assert main(["prune", str(ckpt), "-o", str(ckpt), "--pattern", "2:4", "--ragged", "skip"]) == 1
    err = capsys.readouterr().err
    assert "--force" in err and "force=True" not in err and err.count("--force") == 1


@pytest.mark.parametrize(
    "text, limit, want",
    [
        ("short", 10, "short"),
        ("the header is not valid JSON at all", 20, "the header is not..."),
        ("abc defghij", 10, "abc..."),
        ("x" * 30, 10, "xxxxxxx..."),  # one word longer than the limit: cut where it must be
        ("two\nlines  here", 50, "two lines here"),
        ("ends with a comma, then more words", 21, "ends with a comma..."),
    ],
)
def test_clip_text_cuts_at_a_word_boundary(text, limit, want):
    got = clip_text(text, limit)
    assert got == want and len(got) <= max(limit, 3)


def _sliced_messages():
    """Every f-string in a raise statement of src/nmsparse that shows ``value[:N]`` (a cut mid-word)."""
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Raise) or node.exc is None:
                continue
            for part in ast.walk(node.exc):
                if (isinstance(part, ast.FormattedValue) and isinstance(part.value, ast.Subscript)
                        and isinstance(part.value.slice, ast.Slice) and part.value.slice.upper is not None):
                    yield f"{path.relative_to(SRC)}:{node.lineno}"


def test_no_message_slices_text_mid_word():
    bad = list(_sliced_messages())
    assert not bad, "use errors.clip_text (a word boundary and '...'), not text[:N], in: " + ", ".join(bad)


def test_the_slice_finder_finds_a_planted_slice():
    tree = ast.parse('raise ValueError(f"bad ({text[:80]})")')
    node = tree.body[0]
    assert any(isinstance(p, ast.FormattedValue) and isinstance(p.value, ast.Subscript) for p in ast.walk(node.exc))


def test_calibrated_prune_counts_what_stayed_dense(tmp_path, capsys):
    """'left dense' counts OUT's tensors: an untied model's embedding stayed dense, so it is 1, not 0."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    text = "the quick brown fox jumps over the lazy dog . a sparse model keeps two of every four weights . " * 20
    vocab = {"[UNK]": 0, "[PAD]": 1, **{w: i + 2 for i, w in enumerate(sorted(set(text.split())))}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")
    cfg = transformers.LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=False)
    torch.manual_seed(0)
    folder = tmp_path / "llama"
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    (tmp_path / "calib.txt").write_text(text, encoding="utf-8")
    rc = main(["prune", str(folder), "-o", str(tmp_path / "out"), "--pattern", "2:4", "--algorithm", "wanda",
               "--calibration", str(tmp_path / "calib.txt"), "--samples", "4", "--seq-len", "16", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "pruned 8 weights" in out  # 7 projections and the untied head
    assert "left dense: 1 weight of 2 or more dimensions (model.embed_tokens.weight) and 3 1-D tensors" in out
    assert not API_NAMES.search(out)


# Commands that fail with a library error whose message starts with its own "where" (an app's or a
# CLI-facing library path's "masks:" / "prune:", an API's "prune_:"): the error line names the command once.
NAMED_ONCE = [
    (["masks", "--size", "6", "--pattern", "2:4T"], "masks", "pattern 2:4T needs a matrix side"),
    (["masks", "--method", "nope"], "masks", "unknown method(s) 'nope'"),
    (["prune", "{ckpt}", "-o", "{out}", "--pattern", "2:4", "--calibration", "{text}", "--algorithm", "wanda"], "prune",
     "--calibration needs a Hugging Face model folder"),
    (["prune", "{ckpt}", "-o", "{out}", "--pattern", "1.5"], "prune", "an unstructured density is the fraction"),
    (["prune", "{ckpt}", "-o", "{out}", "--pattern", "2:4", "--ragged", "error"], "prune", "layer odd.weight of shape"),
]


@pytest.mark.parametrize("argv, command, says", NAMED_ONCE, ids=[" ".join(a[:1] + a[-2:]) for a, _, _ in NAMED_ONCE])
def test_a_library_error_names_the_command_once(argv, command, says, tmp_path, capsys):
    ckpt = _ckpt(tmp_path)
    text = tmp_path / "calib.txt"
    text.write_text("some calibration text " * 50)
    argv = [a.format(ckpt=ckpt, out=tmp_path / "out", text=text) for a in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"nmsparse {command}: error: ") and says in err, err
    rest = err[len(f"nmsparse {command}: error: "):]
    assert not re.match(rf"(nmsparse )?{command}_?: ", rest), err  # not "nmsparse prune: error: prune: ..."
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("message", ["prune_: layer fc: bad", "prune: layer fc: bad", "nmsparse prune: layer fc: bad",
                                     "prune: prune_: layer fc: bad", "layer fc: bad"])
def test_error_line_strips_the_entry_point_once(message):
    from nmsparse.cli import error_line

    assert error_line("prune", message) == "nmsparse prune: error: layer fc: bad"
