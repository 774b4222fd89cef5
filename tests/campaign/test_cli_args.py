"""Campaign: every ``nmsparse`` sub-command with wrong, missing and unusual arguments.

A failure is one line on stderr and exit status 1 (argparse's usage errors: 2), never a
traceback; successes are checked for what they produce (a pruned checkpoint that obeys the pattern
by check_mask, the input left byte-for-byte unchanged). The checkpoint cases (hostile files,
atomic writes) belong to the io-safety campaign; here are the arguments.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import nmsparse as nms
from _harness import CliCase, parametrize, run_cli_case

ROOT = Path(tempfile.mkdtemp(prefix="nmsparse-cli-campaign-"))
G = torch.Generator().manual_seed(3)


@pytest.fixture(scope="module", autouse=True)
def _cleanup():
    yield
    shutil.rmtree(ROOT, ignore_errors=True)


def _file(name: str, tensors=None) -> str:
    path = ROOT / name
    if not path.exists():
        tensors = tensors if tensors is not None else {
            "layers.0.fc1.weight": torch.randn(16, 16, generator=G), "layers.0.fc1.bias": torch.randn(16, generator=G),
        }
        save_file(tensors, str(path))
    return str(path)


def _digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


DENSE = _file("dense.safetensors")
DENSE_SHA = _digest(DENSE)
CONV = _file("conv.safetensors", {"conv.weight": torch.randn(16, 3, 3, 3, generator=G), "fc.weight": torch.randn(16, 16, generator=G)})
GARBAGE = ROOT / "garbage.safetensors"
GARBAGE.write_bytes(b"this is not a checkpoint at all")
TEXT = ROOT / "notes.txt"
TEXT.write_text("hello")
torch.save({"fc.weight": torch.randn(8, 8, generator=G), "step": 3, "name": "run-1"}, ROOT / "mixed.pt")
EMPTY_DIR = ROOT / "empty-folder"
EMPTY_DIR.mkdir()


def _out(name: str) -> str:
    return str(ROOT / "out" / name)


(ROOT / "out").mkdir()


def _pruned_obeys(out: str, pattern: str):
    def check():
        tensors, dense = load_file(out), load_file(DENSE)
        w, w0 = tensors["layers.0.fc1.weight"], dense["layers.0.fc1.weight"]
        nms.check_mask(w != 0, pattern)
        # Pruned, not emptied: every kept entry is the dense value, and some entries are kept.
        assert (w != 0).any() and torch.equal(w[w != 0], w0[w != 0]), "OUT's kept weights are not the input's"
        assert torch.equal(tensors["layers.0.fc1.bias"], dense["layers.0.fc1.bias"]), "the bias changed"
        assert _digest(DENSE) == DENSE_SHA, "the input checkpoint changed"
    return check


def _nothing_written(out: str):
    def check():
        assert not Path(out).exists(), f"{out} was written although the command failed"
        assert _digest(DENSE) == DENSE_SHA
    return check


def argv(*args):
    return lambda: list(args)


CASES = [
    CliCase("no command prints help", argv(), 2),
    CliCase("--version", argv("--version"), 0),
    CliCase("unknown command", argv("frobnicate"), 2, "invalid choice"),
    CliCase("unknown option", argv("--frobnicate"), 2, "unrecognized"),
]
for cmd in ("masks", "diversity", "prune", "report", "bench", "bench claims"):
    CASES.append(CliCase(f"{cmd} --help", argv(*cmd.split(), "--help"), 0))

# diversity
CASES += [
    CliCase("diversity 2:4", argv("diversity", "2:4", "--shape", "8x8"), 0),
    CliCase("diversity 4:8T huge shape is fast (log10)", argv("diversity", "4:8T", "--shape", "1000000x1000000"), 0),
    CliCase("diversity missing pattern", argv("diversity"), 2, "required"),
    CliCase("diversity n > m", argv("diversity", "9:4"), 1, "1 <= n <= m"),
    CliCase("diversity garbage pattern", argv("diversity", "two:four"), 1, "accepted forms"),
    CliCase("diversity empty pattern", argv("diversity", ""), 1, "pattern"),
    CliCase("diversity shape 0x4", argv("diversity", "2:4", "--shape", "0x4"), 1, ">= 1"),
    CliCase("diversity shape abc", argv("diversity", "2:4", "--shape", "abc"), 1, "cannot parse shape"),
    CliCase("diversity shape negative (argparse reads an option)", argv("diversity", "2:4", "--shape", "-4x4"), 2, "expected one argument"),
    CliCase("diversity shape negative with =", argv("diversity", "2:4", "--shape=-4x4"), 1, "shape"),
    CliCase("diversity shape 1-D", argv("diversity", "2:4", "--shape", "16"), 0),
]

# masks
CASES += [
    CliCase("masks small", argv("masks", "--size", "8", "--patterns", "2:4", "2:4T", "--methods", "exact", "greedy"), 0),
    CliCase("masks size 0", argv("masks", "--size", "0"), 2, "positive integer"),
    CliCase("masks size -8", argv("masks", "--size", "-8"), 2, "positive integer"),
    CliCase("masks size text", argv("masks", "--size", "big"), 2, "invalid"),
    CliCase("masks size float", argv("masks", "--size", "8.5"), 2, "invalid"),
    CliCase("masks size not a multiple of m", argv("masks", "--size", "6", "--patterns", "2:4T"), 1, "multiple of 4"),
    CliCase("masks pattern m far above size", argv("masks", "--size", "8", "--patterns", "1:100000T"), 1, "multiple of 100000"),
    CliCase("masks bad pattern", argv("masks", "--size", "8", "--patterns", "9:4"), 1, "1 <= n <= m"),
    CliCase("masks unknown method", argv("masks", "--size", "8", "--patterns", "2:4T", "--methods", "magic"), 1, "magic"),
    CliCase("masks seed text", argv("masks", "--seed", "x"), 2, "invalid"),
]

# demo: argument errors only (a run trains a CNN; tests/apps covers it)
CASES += [
    CliCase("demo epochs 0", argv("demo", "--epochs", "0"), 2, "positive integer"),
    CliCase("demo epochs text", argv("demo", "--epochs", "ten"), 2, "invalid"),
    CliCase("demo width 0", argv("demo", "--width", "0"), 2, "positive integer"),
    CliCase("demo update-every -1", argv("demo", "--update-every", "-1"), 2, "positive integer"),
    CliCase("demo unknown run", argv("demo", "--runs", "bogus", "--epochs", "1", "--no-progress"), 1, "bogus"),
    CliCase("demo bad pattern run", argv("demo", "--runs", "5:4", "--epochs", "1", "--no-progress"), 1, "1 <= n <= m"),
]

# bench claims: argument errors, and an unwritable --out fails in one line before training.
CASES += [
    CliCase("bench without sub-command", argv("bench"), 2, "required|invalid choice"),
    CliCase("bench claims seeds 0", argv("bench", "claims", "--seeds", "0"), 2, "positive integer"),
    CliCase("bench claims threads text", argv("bench", "claims", "--threads", "many"), 2, "invalid"),
    CliCase("bench claims jobs 0", argv("bench", "claims", "--jobs", "0"), 2, "positive integer"),
    CliCase("bench claims unwritable out", argv("bench", "claims", "--quick", "--out", "/proc/nmsparse-nope"), 1, "nmsparse-nope"),
]

# prune
CASES += [
    CliCase("prune ok 2:4T", argv("prune", DENSE, "-o", _out("a.safetensors"), "--pattern", "2:4T", "--quiet"), 0,
            check=_pruned_obeys(_out("a.safetensors"), "2:4T")),
    CliCase("prune ok 2:4 greedy is refused (row-wise)", argv("prune", DENSE, "-o", _out("b.safetensors"), "--pattern", "2:4",
                                                               "--method", "greedy", "--quiet"), 1, "2:4T", check=_nothing_written(_out("b.safetensors"))),
    CliCase("prune ok 4:8T refine", argv("prune", DENSE, "-o", _out("c.safetensors"), "--pattern", "4:8T", "--method", "refine", "--quiet"), 0,
            check=_pruned_obeys(_out("c.safetensors"), "4:8T")),
    CliCase("prune missing -o", argv("prune", DENSE, "--pattern", "2:4"), 2, "required"),
    CliCase("prune missing --pattern", argv("prune", DENSE, "-o", _out("d.safetensors")), 2, "required"),
    CliCase("prune missing IN", argv("prune", "-o", _out("d.safetensors"), "--pattern", "2:4"), 2, "required"),
    CliCase("prune IN does not exist", argv("prune", str(ROOT / "nope.safetensors"), "-o", _out("e.safetensors"), "--pattern", "2:4"), 1,
            "nope.safetensors", check=_nothing_written(_out("e.safetensors"))),
    CliCase("prune IN garbage", argv("prune", str(GARBAGE), "-o", _out("f.safetensors"), "--pattern", "2:4"), 1, "garbage",
            check=_nothing_written(_out("f.safetensors"))),
    CliCase("prune IN a text file", argv("prune", str(TEXT), "-o", _out("g.safetensors"), "--pattern", "2:4"), 1, "notes.txt"),
    CliCase("prune IN an empty folder", argv("prune", str(EMPTY_DIR), "-o", _out("h"), "--pattern", "2:4"), 1, "empty-folder"),
    # A torch.save file's non-tensor entries are kept unchanged (formats.py); the tensors are pruned.
    CliCase("prune IN holds non-tensors", argv("prune", str(ROOT / "mixed.pt"), "-o", _out("i.pt"), "--pattern", "2:4", "--quiet"), 0,
            check=lambda: _mixed_kept(_out("i.pt"))),
    CliCase("prune bad pattern", argv("prune", DENSE, "-o", _out("j.safetensors"), "--pattern", "2:5:7"), 1, "accepted forms",
            check=_nothing_written(_out("j.safetensors"))),
    CliCase("prune pattern n > m", argv("prune", DENSE, "-o", _out("k.safetensors"), "--pattern", "5:4"), 1, "1 <= n <= m"),
    CliCase("prune unknown method", argv("prune", DENSE, "-o", _out("l.safetensors"), "--pattern", "2:4T", "--method", "magic"), 1, "magic"),
    CliCase("prune bad ragged value", argv("prune", DENSE, "-o", _out("m.safetensors"), "--pattern", "2:4", "--ragged", "maybe"), 2,
            "invalid choice"),
    CliCase("prune bad include regex", argv("prune", DENSE, "-o", _out("n.safetensors"), "--pattern", "2:4", "--include", "("), 1,
            "regular expression"),
    CliCase("prune bad exclude regex", argv("prune", DENSE, "-o", _out("o.safetensors"), "--pattern", "2:4", "--exclude", "[a-"), 1,
            "regular expression"),
    CliCase("prune ragged conv refused", argv("prune", CONV, "-o", _out("p.safetensors"), "--pattern", "2:4", "--quiet"), 1,
            "layer conv.weight", check=_nothing_written(_out("p.safetensors"))),
    CliCase("prune ragged conv skip", argv("prune", CONV, "-o", _out("q.safetensors"), "--pattern", "2:4", "--ragged", "skip", "--quiet"), 0),
    CliCase("prune huge pattern padded", argv("prune", DENSE, "-o", _out("r.safetensors"), "--pattern", "1:100000T", "--ragged", "pad",
                                              "--quiet"), 1, "padding", check=_nothing_written(_out("r.safetensors"))),
    CliCase("prune OUT = IN without --force", argv("prune", DENSE, "-o", DENSE, "--pattern", "2:4"), 1, "exists|force|same"),
]

# report: the fit/obey verdicts from the command line (exit 1 when a checked weight breaks it).
CASES += [
    CliCase("report densest", argv("report", DENSE), 0),
    CliCase("report dense weight breaks 2:4", argv("report", DENSE, "--pattern", "2:4"), 1),
    CliCase("report pruned output obeys 2:4T", lambda: ["report", _ensure_pruned("2:4T"), "--pattern", "2:4T"], 0),
    CliCase("report pruned 2:4T output also obeys 2:4", lambda: ["report", _ensure_pruned("2:4T"), "--pattern", "2:4"], 0),
    CliCase("report dense conv does not fit 8:16", argv("report", CONV, "--pattern", "8:16"), 1),
    CliCase("report dense conv 8:16 --ragged skip", argv("report", CONV, "--pattern", "8:16", "--ragged", "skip", "--include", "conv.*"), 0),
    CliCase("report bad ragged value", argv("report", CONV, "--pattern", "8:16", "--ragged", "no"), 2, "invalid choice"),
    CliCase("report missing file", argv("report", str(ROOT / "missing.safetensors")), 1, "missing.safetensors"),
    CliCase("report garbage", argv("report", str(GARBAGE)), 1, "garbage"),
    CliCase("report non-tensor entries", argv("report", str(ROOT / "mixed.pt")), 0),
    CliCase("report bad pattern", argv("report", DENSE, "--pattern", "4:2"), 1, "1 <= n <= m"),
    CliCase("report bad include", argv("report", DENSE, "--include", "(("), 1, "regular expression"),
    CliCase("report huge padded pattern", argv("report", DENSE, "--pattern", "1:100000T", "--ragged", "pad"), 1, "padding"),
    CliCase("report missing checkpoint", argv("report"), 2, "required"),
]


def _mixed_kept(out: str) -> None:
    saved = torch.load(out, weights_only=True)
    assert saved["step"] == 3 and saved["name"] == "run-1"
    nms.check_mask(saved["fc.weight"] != 0, "2:4")


def _ensure_pruned(pattern: str) -> str:
    out = _out(f"pruned-{pattern.replace(':', '-')}.safetensors")
    if not Path(out).exists():
        nms.convert.prune_checkpoint(DENSE, out, pattern)
    return out


@parametrize(CASES)
def test_cli_arguments(case):
    run_cli_case(case)
