"""Checkpoint read/write: round trips per format, dtypes, atomic writes, refusal to overwrite, bad files."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from nmsparse.convert import CheckpointError, detect_format, read_checkpoint, write_checkpoint
from nmsparse.convert import formats
from nmsparse.testing import write_hf_folder

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _state(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "fc.weight": torch.randn(8, 16, generator=g),
        "fc.bias": torch.randn(8, generator=g),
        "half.weight": torch.randn(8, 8, generator=g).half(),
        "bf.weight": torch.randn(4, 8, generator=g).bfloat16(),
        "bn.num_batches_tracked": torch.tensor(7),
    }


def _same(a, b):
    assert list(a) == list(b) or sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


def _hf_folder(path, sd, shards):
    write_hf_folder(path, sd, 0 if shards == 1 else shards, index_metadata={"total_size": 0}, file_metadata={"format": "pt"})
    (path / "pytorch_model.bin").write_bytes(b"dense copy")


def test_safetensors_round_trip_keeps_dtypes_and_metadata(tmp_path):
    sd = _state()
    src = tmp_path / "m.safetensors"
    save_file(sd, str(src), metadata={"who": "test"})
    ckpt = read_checkpoint(src)
    assert ckpt.format == "safetensors" and ckpt.metadata == {"who": "test"}
    _same(ckpt.tensors, sd)
    write_checkpoint(ckpt, tmp_path / "out.safetensors", extra_metadata={"nmsparse_pattern": "2:4"})
    back = read_checkpoint(tmp_path / "out.safetensors")
    _same(back.tensors, sd)
    assert back.metadata == {"who": "test", "nmsparse_pattern": "2:4"}


@pytest.mark.parametrize("layout", ["flat", "nested_state_dict", "nested_model"])
def test_torch_round_trip_keeps_structure(tmp_path, layout):
    sd = _state()
    obj = {"flat": sd, "nested_state_dict": {"state_dict": sd, "epoch": 3}, "nested_model": {"model": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}}}[layout]
    src = tmp_path / "m.pt"
    torch.save(obj, src)
    ckpt = read_checkpoint(src)
    assert ckpt.format == "torch"
    assert ckpt.key_path == {"flat": (), "nested_state_dict": ("state_dict",), "nested_model": ("model",)}[layout]
    _same(ckpt.tensors, sd)
    ckpt.tensors["fc.weight"] = torch.zeros(8, 16)
    write_checkpoint(ckpt, tmp_path / "o.pt")
    back = torch.load(tmp_path / "o.pt", weights_only=True)
    inner = back if layout == "flat" else back[ckpt.key_path[0]]
    assert torch.equal(inner["fc.weight"], torch.zeros(8, 16))
    assert inner["half.weight"].dtype == torch.float16 and torch.equal(inner["half.weight"], sd["half.weight"])
    if layout == "nested_state_dict":
        assert back["epoch"] == 3
    if layout == "nested_model":
        assert back["optimizer"]["param_groups"][0]["lr"] == 0.1


def test_torch_tied_weights_are_detected(tmp_path):
    w = torch.randn(8, 8)
    torch.save({"emb.weight": w, "head.weight": w, "other.weight": torch.randn(8, 8)}, tmp_path / "t.pt")
    ckpt = read_checkpoint(tmp_path / "t.pt")
    assert ckpt.tied == {"emb.weight": ["head.weight"], "head.weight": ["emb.weight"]}


@pytest.mark.parametrize("shards", [1, 3])
def test_hf_folder_round_trip(tmp_path, shards):
    sd = _state()
    src = tmp_path / "model"
    _hf_folder(src, sd, shards)
    ckpt = read_checkpoint(src)
    assert ckpt.format == "hf-folder" and detect_format(src) == "hf-folder"
    _same(ckpt.tensors, sd)
    assert any("pytorch_model.bin" in n for n in ckpt.notes)
    out = tmp_path / "out"
    write_checkpoint(ckpt, out)
    assert (out / "config.json").read_text() == '{"model_type": "toy"}'
    assert not (out / "pytorch_model.bin").exists()  # dense weights in another format are not copied
    _same(read_checkpoint(out).tensors, sd)
    if shards > 1:
        index = json.loads((out / "model.safetensors.index.json").read_text())
        assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in sd.values())
        assert sorted(set(index["weight_map"].values())) == sorted(p.name for p in out.glob("*.safetensors"))
        for name in set(index["weight_map"].values()):  # each shard keeps its own tensors
            assert set(load_file(str(out / name))) == {k for k, v in index["weight_map"].items() if v == name}


def test_refuses_existing_out_and_input_without_force(tmp_path):
    src = tmp_path / "m.safetensors"
    save_file(_state(), str(src))
    ckpt = read_checkpoint(src)
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"keep me")
    with pytest.raises(CheckpointError, match="already exists.*--force"):
        write_checkpoint(ckpt, out)
    assert out.read_bytes() == b"keep me"
    with pytest.raises(CheckpointError, match="is the input checkpoint"):
        write_checkpoint(ckpt, src)
    write_checkpoint(ckpt, out, force=True)
    _same(read_checkpoint(out).tensors, _state())


def test_force_replaces_an_existing_folder(tmp_path):
    src = tmp_path / "model"
    _hf_folder(src, _state(), 3)
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    write_checkpoint(read_checkpoint(src), out, force=True)
    assert not (out / "stale.txt").exists()
    _same(read_checkpoint(out).tensors, _state())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "out"]  # no temporaries left


def _boom(*args, **kwargs):
    path = args[1] if len(args) > 1 else kwargs.get("path")
    with open(path, "wb") as fh:  # a half-written file, then a crash
        fh.write(b"partial")
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("kind", ["safetensors", "torch", "hf1", "hf3"])
def test_failure_mid_write_leaves_no_out(tmp_path, monkeypatch, kind):
    sd = _state()
    if kind == "safetensors":
        src = tmp_path / "m.safetensors"
        save_file(sd, str(src))
    elif kind == "torch":
        src = tmp_path / "m.pt"
        torch.save(sd, src)
    else:
        src = tmp_path / "model"
        _hf_folder(src, sd, 1 if kind == "hf1" else 3)
    ckpt = read_checkpoint(src)
    monkeypatch.setattr(formats, "_save_safetensors", lambda t, path, meta: _boom(t, path))
    monkeypatch.setattr(formats, "_save_torch", lambda obj, path: _boom(obj, path))
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(CheckpointError, match="nothing was written"):
        write_checkpoint(ckpt, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_failure_with_force_keeps_previous_out(tmp_path, monkeypatch):
    src = tmp_path / "m.safetensors"
    save_file(_state(), str(src))
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"previous")
    monkeypatch.setattr(formats, "_save_safetensors", lambda t, path, meta: _boom(t, path))
    with pytest.raises(CheckpointError):
        write_checkpoint(read_checkpoint(src), out, force=True)
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "o.safetensors"]


def test_bad_files_get_one_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        read_checkpoint(tmp_path / "missing.safetensors")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        read_checkpoint(tmp_path / "empty.pt")
    (tmp_path / "notes.txt").write_text("hello world, not a checkpoint")
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        read_checkpoint(tmp_path / "notes.txt")
    good = tmp_path / "good.safetensors"
    save_file(_state(), str(good))
    data = good.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_checkpoint(tmp_path / "cut.safetensors")
    torch.save(_state(), tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "folder").mkdir()
    with pytest.raises(CheckpointError, match="not a Hugging Face model folder"):
        read_checkpoint(tmp_path / "folder")


def test_torch_file_with_python_objects_is_refused(tmp_path):
    import argparse

    torch.save({"w": torch.ones(2, 2), "args": argparse.Namespace(lr=0.1)}, tmp_path / "obj.pt")
    with pytest.raises(CheckpointError, match="weights_only=True.*Unsupported global.*Namespace"):
        read_checkpoint(tmp_path / "obj.pt")


def test_torch_file_without_state_dict(tmp_path):
    torch.save({"a": {"w": torch.ones(2, 2)}, "b": {"w": torch.ones(2, 2)}}, tmp_path / "two.pt")
    with pytest.raises(CheckpointError, match="several state dicts"):
        read_checkpoint(tmp_path / "two.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="no state dict"):
        read_checkpoint(tmp_path / "list.pt")


def test_out_folder_must_exist(tmp_path):
    src = tmp_path / "m.safetensors"
    save_file(_state(), str(src))
    with pytest.raises(CheckpointError, match="does not exist"):
        write_checkpoint(read_checkpoint(src), tmp_path / "nope" / "o.safetensors")
    assert not os.path.exists(tmp_path / "nope")
