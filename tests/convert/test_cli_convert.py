"""`nmsparse prune` and `nmsparse report` through nmsparse.cli.main."""

import json

import pytest
import torch
from safetensors.torch import save_file

import nmsparse as nms
from nmsparse.cli import main
from nmsparse.convert import read_checkpoint


def _cnn_state():
    g = torch.Generator().manual_seed(0)
    return {
        "conv1.weight": torch.randn(8, 1, 3, 3, generator=g),
        "conv1.bias": torch.randn(8, generator=g),
        "conv2.weight": torch.randn(8, 8, 3, 3, generator=g).half(),
        "bn.running_mean": torch.zeros(8),
        "fc.weight": torch.randn(16, 32, generator=g).bfloat16(),
        "embed.weight": torch.randn(32, 8, generator=g),
    }


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file(_cnn_state(), str(path))
    return path


def test_prune_then_report(tmp_path, ckpt, capsys):
    out = tmp_path / "o.safetensors"
    assert main(["prune", str(ckpt), "-o", str(out), "--pattern", "2:4T", "--ragged", "skip"]) == 0
    cap = capsys.readouterr()
    assert "conv2.weight" in cap.out and "fc.weight" in cap.out and "kept |W|" in cap.out
    assert "does not fit" in cap.out and "embedding" in cap.out  # why conv1 and embed stay dense
    assert "left dense: " in cap.out and "1-D" in cap.out
    assert "pruning to 2:4T" in cap.err  # progress on stderr
    assert (tmp_path / "o.safetensors.prune.json").is_file()
    sd = read_checkpoint(out).tensors
    assert sd["conv2.weight"].dtype == torch.float16 and sd["fc.weight"].dtype == torch.bfloat16
    nms.check_mask(sd["fc.weight"] != 0, "2:4T", exact=True)

    assert main(["report", str(out), "--pattern", "2:4T", "--exclude", "conv1"]) == 0
    cap = capsys.readouterr()
    assert "all 2 checked weights obey 2:4T" in cap.out
    assert main(["report", str(out), "--pattern", "2:4T"]) == 1  # conv1 was left dense
    cap = capsys.readouterr()
    assert "1 of 3 checked weights break 2:4T; first: conv1.weight" in cap.err  # the failing verdict is on stderr
    assert main(["report", str(out)]) == 0
    cap = capsys.readouterr()
    assert "densest m=4" in cap.out and "2:4T" in cap.out and "dense" in cap.out


def test_prune_torch_checkpoint_quiet(tmp_path, capsys):
    src = tmp_path / "m.pt"
    torch.save({"model": _cnn_state(), "step": 10}, src)
    out = tmp_path / "o.pt"
    assert main(["prune", str(src), "-o", str(out), "--pattern", "2:4", "--exclude", "conv1", "--quiet"]) == 0
    cap = capsys.readouterr()
    assert cap.err == "" and "under key 'model'" in cap.out
    back = torch.load(out, weights_only=True)
    assert back["step"] == 10
    nms.check_mask(back["model"]["conv2.weight"] != 0, "2:4", exact=True)
    data = json.loads((tmp_path / "o.pt.prune.json").read_text())
    assert {r["name"] for r in data["layers"] if r["pruned"]} == {"conv2.weight", "fc.weight"}


@pytest.mark.parametrize(
    "argv_tail, needle",
    [
        (["--pattern", "2:4"], "layer conv1.weight of shape (8, 1, 3, 3)"),
        (["--pattern", "5:4"], "1 <= n <= m"),
        (["--pattern", "2:4T", "--method", "magic", "--ragged", "skip"], "unknown method 'magic'"),
        (["--pattern", "2:4", "--include", "("], "not a valid regular expression"),
    ],
)
def test_prune_bad_arguments_one_line_nothing_written(tmp_path, ckpt, capsys, argv_tail, needle):
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["prune", str(ckpt), "-o", str(tmp_path / "o.safetensors"), *argv_tail]) == 1
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nmsparse prune: error:") and needle in lines[0]
    assert "Traceback" not in cap.err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_prune_bad_files(tmp_path, ckpt, capsys):
    cases = []
    (tmp_path / "junk.bin").write_bytes(b"\x00\x01garbage")
    cases.append((str(tmp_path / "junk.bin"), "unknown checkpoint format"))
    cases.append((str(tmp_path / "missing.safetensors"), "no such file"))
    data = ckpt.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:100])
    cases.append((str(tmp_path / "cut.safetensors"), "corrupt or truncated"))
    for path, needle in cases:
        assert main(["prune", path, "-o", str(tmp_path / "o.safetensors"), "--pattern", "2:4"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0] and path in err[0]
        assert not (tmp_path / "o.safetensors").exists()
    assert main(["report", str(tmp_path / "junk.bin")]) == 1
    assert "unknown checkpoint format" in capsys.readouterr().err


def test_prune_refuses_overwrite_without_force(tmp_path, ckpt, capsys):
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"old")
    args = ["prune", str(ckpt), "-o", str(out), "--pattern", "2:4T", "--ragged", "skip", "--quiet"]
    assert main(args) == 1
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == b"old"
    assert main(["prune", str(ckpt), "-o", str(ckpt), "--pattern", "2:4T", "--ragged", "skip"]) == 1
    assert "is the input checkpoint" in capsys.readouterr().err
    assert main(args + ["--force"]) == 0
    assert read_checkpoint(out).metadata["nmsparse_pattern"] == "2:4T"
