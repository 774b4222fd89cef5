"""Our safetensors reader/writer against the reference implementation (the safetensors package),
streaming byte-identity, and the bound on tensors held at once."""

import json
import os
import weakref

import hypothesis.strategies as hs
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from nmsparse.convert import _safetensors as st
from nmsparse.convert import formats, iter_tensors, prune_checkpoint, read_checkpoint, report_checkpoint
from nmsparse.convert._hf import read_layout
from nmsparse.errors import CheckpointError
from nmsparse.testing import write_hf_folder

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.int8,
          torch.uint8, torch.bool, torch.int16, torch.float8_e4m3fn]


def _tensor(dtype, shape, seed):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if dtype.is_floating_point:
        return torch.randn(shape, generator=g).to(dtype)
    return torch.randint(-100 if dtype != torch.uint8 else 0, 100, shape, generator=g).to(dtype)


state_dicts = hs.dictionaries(
    hs.text(min_size=1, max_size=12).filter(lambda s: s != "__metadata__"),
    hs.tuples(hs.sampled_from(DTYPES), hs.lists(hs.integers(0, 5), max_size=3), hs.integers(0, 99)),
    max_size=6,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=state_dicts, meta=hs.dictionaries(hs.text(max_size=5), hs.text(max_size=5), max_size=2))
def test_round_trips_with_the_reference_implementation(tmp_path, spec, meta):
    sd = {k: _tensor(d, tuple(s), seed) for k, (d, s, seed) in spec.items()}
    ours = tmp_path / "ours.safetensors"
    formats._save_safetensors(sd, ours, meta)
    raw = ours.read_bytes()
    assert (8 + int.from_bytes(raw[:8], "little")) % 8 == 0  # data aligned, as the reference writer does
    back = load_file(str(ours))  # the reference reads what we write
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) and back[k].dtype == sd[k].dtype for k in sd)
    with safe_open(str(ours), "pt") as fh:
        assert (fh.metadata() or {}) == meta
    theirs = tmp_path / "theirs.safetensors"
    if sd:
        save_file(sd, str(theirs), metadata=meta or None)
        got, got_meta = formats._load_safetensors(theirs)  # we read what the reference writes
        assert got_meta == meta and set(got) == set(sd)
        assert all(torch.equal(got[k], sd[k]) and got[k].dtype == sd[k].dtype for k in sd)


def _header_file(tmp_path, header, data):
    raw = json.dumps(header).encode()
    p = tmp_path / "x.safetensors"
    p.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    return p


@pytest.mark.parametrize("header,data,needle", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, bytes(4), "needs 8 bytes"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "b": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}}, bytes(6), "overlaps"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8), "gap"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(3), "cover 4 bytes"),
])
def test_reader_refuses_what_the_reference_refuses(tmp_path, header, data, needle):
    p = _header_file(tmp_path, header, data)
    with pytest.raises(CheckpointError, match=needle):
        st.read_header(p)
    with pytest.raises(Exception):  # the reference agrees the file is broken
        load_file(str(p))


def _hf(tmp_path, n=6, shards=3):
    g = torch.Generator().manual_seed(1)
    sd = {f"layers.{i}.fc.weight": torch.randn(16, 32, generator=g).bfloat16() for i in range(n)}
    sd.update({f"layers.{i}.fc.bias": torch.randn(16, generator=g) for i in range(n)})
    sd["embed.weight"] = torch.randn(20, 8, generator=g)
    names = [f"model-{i + 1}-of-{shards}.safetensors" for i in range(shards)]
    folder = write_hf_folder(tmp_path / "model", sd, shards, shard_names=names, config="{}", index_metadata={"total_size": 1},
                             file_metadata={"format": "pt"})
    return folder, sd


def test_streamed_output_keeps_every_unpruned_byte_and_offset(tmp_path):
    folder, sd = _hf(tmp_path)
    out = tmp_path / "out"
    res = prune_checkpoint(folder, out, "2:4T")
    src_layout, out_layout = read_layout(folder), read_layout(out)
    assert src_layout.files == out_layout.files
    pruned = {r.name for r in res.pruned}
    assert pruned == {k for k in sd if k.endswith("fc.weight")}
    for name in src_layout.files:
        a, b = src_layout.headers[name], out_layout.headers[name]
        assert [(e.name, e.begin, e.end) for e in a.entries] == [(e.name, e.begin, e.end) for e in b.entries]
        assert b.metadata == {"format": "pt", "nmsparse_pattern": "2:4T"}
        raw_a, raw_b = (folder / name).read_bytes(), (out / name).read_bytes()
        for ea in a.entries:
            bytes_a = raw_a[a.data_start + ea.begin:a.data_start + ea.end]
            bytes_b = raw_b[b.data_start + ea.begin:b.data_start + ea.end]
            assert (bytes_a == bytes_b) == (ea.name not in pruned), ea.name
    back = {k: v for name in out_layout.files for k, v in load_file(str(out / name)).items()}  # reference reader
    for k in pruned:
        kept = back[k] != 0
        assert torch.equal(back[k][kept], sd[k][kept]) and int(kept.sum()) == sd[k].numel() // 2
    assert json.loads((out / "model.safetensors.index.json").read_text())["metadata"]["total_size"] == src_layout.total_size()
    assert (out / "config.json").read_text() == "{}"


def _count_live(monkeypatch):
    live, peak = weakref.WeakSet(), [0]
    real = st.read_tensor

    def tracked(*args):
        t = real(*args)
        live.add(t)
        peak[0] = max(peak[0], len(live))
        return t

    monkeypatch.setattr(st, "read_tensor", tracked)
    return peak


def test_prune_holds_one_input_tensor_at_a_time(tmp_path, monkeypatch):
    folder, _ = _hf(tmp_path, n=12)
    peak = _count_live(monkeypatch)
    prune_checkpoint(folder, tmp_path / "out", "2:4T")
    assert peak[0] == 1, f"{peak[0]} weights held at once"
    peak[0] = 0
    # the bound is real: the in-memory reader holds them all, and the counter sees it
    read_checkpoint(folder)
    assert peak[0] >= 12


def test_report_holds_one_tensor_at_a_time(tmp_path, monkeypatch):
    folder, sd = _hf(tmp_path, n=12)
    peak = _count_live(monkeypatch)
    rep = report_checkpoint(folder, "2:4")
    assert peak[0] == 1 and len(rep.weights) == len(sd)


def test_torch_files_are_mapped_not_read(tmp_path):
    sd = {"fc.weight": torch.randn(64, 64), "fc.bias": torch.randn(64)}
    torch.save(sd, tmp_path / "m.pt")
    stream = iter_tensors(tmp_path / "m.pt")
    got = dict(stream.tensors)
    assert stream.format == "torch" and stream.tied == {} and all(torch.equal(got[k], sd[k]) for k in sd)
    maps = "/proc/self/maps"
    if not os.path.exists(maps):
        pytest.skip("needs /proc to see the mapping")
    with open(maps) as fh:
        assert str((tmp_path / "m.pt").resolve()) in fh.read()  # the file is mapped, not read into memory


def test_a_header_length_starting_with_0x80_is_still_safetensors(tmp_path):
    """0x80 is also the first byte of a pickle; a 384-byte header must not be taken for one."""
    from nmsparse.convert import detect_format

    for pad in range(0, 400, 8):
        sd = {"w" * (1 + pad): torch.ones(2)}
        p = tmp_path / "x.safetensors"
        formats._save_safetensors(sd, p, {})
        if p.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("no header of length 0x80 mod 256 was produced")
    assert detect_format(p) == "safetensors" and torch.equal(read_checkpoint(p).tensors["w" * (1 + pad)], torch.ones(2))
