"""Hugging Face hub-cache snapshots: links into the same repository's blobs are followed; any other
link leading out of the snapshot is refused before a byte is read."""

import os

import pytest
import torch
from safetensors.torch import save_file

import nmsparse as nms
from nmsparse.convert import read_checkpoint
from nmsparse.errors import CheckpointError


def _cache(root, repo="models--org--tiny"):
    """A hub-cache layout: blobs hold the bytes, the snapshot holds relative links to them."""
    blobs = root / repo / "blobs"
    snap = root / repo / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    save_file({"fc.weight": torch.randn(8, 8), "fc.bias": torch.randn(8)}, str(blobs / "1f2e"))
    (blobs / "9c0d").write_text('{"model_type": "tiny"}')
    os.symlink("../../blobs/1f2e", snap / "model.safetensors")
    os.symlink("../../blobs/9c0d", snap / "config.json")
    return snap


def test_snapshot_links_into_its_blobs_are_read_and_pruned(tmp_path):
    snap = _cache(tmp_path)
    ckpt = read_checkpoint(snap)
    assert set(ckpt.tensors) >= {"fc.weight"}
    out = tmp_path / "out"
    before = (tmp_path / "models--org--tiny" / "blobs" / "1f2e").read_bytes()
    nms.convert.prune_checkpoint(snap, out, "2:4")
    assert (tmp_path / "models--org--tiny" / "blobs" / "1f2e").read_bytes() == before  # IN untouched
    assert (out / "config.json").read_text() == '{"model_type": "tiny"}'  # copied as a file, not a link
    assert not (out / "config.json").is_symlink()
    pruned = read_checkpoint(out).tensors["fc.weight"]
    assert nms.is_valid_mask(pruned != 0, "2:4")


@pytest.mark.parametrize(
    "target",
    ["../../../models--other--repo/blobs/1f2e", "../../../../outside.safetensors", "../../refs/main"],
    ids=["another-repo-blobs", "out-of-cache", "same-repo-not-blobs"],
)
def test_snapshot_links_elsewhere_are_refused(tmp_path, target):
    snap = _cache(tmp_path)
    _cache(tmp_path, "models--other--repo")
    save_file({"fc.weight": torch.randn(8, 8)}, str(tmp_path / "outside.safetensors"))
    (tmp_path / "models--org--tiny" / "refs").mkdir()
    save_file({"fc.weight": torch.randn(8, 8)}, str(tmp_path / "models--org--tiny" / "refs" / "main"))
    os.remove(snap / "model.safetensors")
    os.symlink(target, snap / "model.safetensors")
    with pytest.raises(CheckpointError, match="symbolic link leading out"):
        read_checkpoint(snap)


def test_a_plain_folder_named_like_a_cache_without_blobs_gets_no_exception(tmp_path):
    snap = tmp_path / "models--x--y" / "snapshots" / "r"
    snap.mkdir(parents=True)
    save_file({"fc.weight": torch.randn(8, 8)}, str(tmp_path / "elsewhere.safetensors"))
    os.symlink("../../../elsewhere.safetensors", snap / "model.safetensors")
    with pytest.raises(CheckpointError, match="symbolic link leading out"):
        read_checkpoint(snap)
