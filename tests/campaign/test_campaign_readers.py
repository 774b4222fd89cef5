"""Campaign: every checkpoint reader x damaged, lying, hostile or unusual input, through every entry
point that reads (read_checkpoint, iter_tensors, report_checkpoint, `nmsparse report`, `nmsparse prune`).

Each case ends in the right result or a one-line CheckpointError naming the rule, AND keeps the
world's invariants (_io_world.guarded): no byte outside OUT changes, no partial OUT, no temporary.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from _harness import Case, CliCase, parametrize, run_case, run_cli_case
from _io_world import World, evil_pickle, guarded, hf_folder, raw_pickle, raw_st, snapshot, st_file, state, torch_file
from nmsparse.convert import iter_tensors, read_checkpoint, report_checkpoint
from nmsparse.errors import CheckpointError

F32_8x16 = {"dtype": "F32", "shape": [8, 16], "data_offsets": [0, 512]}


def _two(world, a, b, data=bytes(1024)):
    return raw_st(world, {"a.weight": a, "b.weight": b}, data)


def _victim_index(kind):
    def edit(world, folder, index):
        first = next(iter(index["weight_map"]))
        if kind == "dotdot":
            name = "../victim.safetensors"
        elif kind == "deep":
            name = "../../../../../../etc/passwd"
        elif kind == "absolute":
            name = str(world.victim)
        elif kind == "symlink":
            os.symlink(world.victim, folder / "link.safetensors")
            name = "link.safetensors"
        elif kind == "symlink-rel":
            os.symlink("../victim.safetensors", folder / "rel.safetensors")
            name = "rel.safetensors"
        elif kind == "subfolder":
            (folder / "sub").mkdir()
            name = "sub/x.safetensors"
        elif kind == "backslash":
            name = "..\\victim.safetensors"
        elif kind == "not-str":
            name = 7
        elif kind == "dict":
            name = {"a": 1}
        elif kind == "too-long":
            name = "a" * 300 + ".safetensors"
        elif kind == "empty":
            name = ""
        elif kind == "missing":
            name = "model-00009-of-00009.safetensors"
        elif kind == "dir":
            (folder / "adir.safetensors").mkdir()
            name = "adir.safetensors"
        elif kind == "wrong-shard":
            other = [v for v in index["weight_map"].values() if v != index["weight_map"][first]][0]
            name = other
        elif kind == "extra-tensor":
            index["weight_map"]["ghost.weight"] = index["weight_map"][first]
            return index
        else:
            raise ValueError(kind)
        index["weight_map"][first] = name
        return index

    return edit


def _hf_single_link_out(world):
    folder = world.root / "model"
    folder.mkdir()
    os.symlink(world.victim, folder / "model.safetensors")
    return folder


def _hf_index_link_out(world):
    folder = hf_folder(world, 2)
    outside = world.root / "outside.index.json"
    outside.write_text((folder / "model.safetensors.index.json").read_text())
    (folder / "model.safetensors.index.json").unlink()
    os.symlink(outside, folder / "model.safetensors.index.json")
    return folder


def _hf_config_link_out(world):
    folder = hf_folder(world, 2)
    (folder / "config.json").unlink()
    os.symlink(world.victim, folder / "config.json")
    return folder


def _hf_dup(world):
    folder = hf_folder(world, 2)
    from safetensors.torch import save_file

    shards = sorted(folder.glob("model-*.safetensors"))
    save_file({**state(), "extra.weight": torch.ones(4, 4)}, str(shards[1]))  # holds the other shard's tensors too
    return folder


def _hf_corrupt_shard(world):
    folder = hf_folder(world, 2)
    shard = sorted(folder.glob("model-*.safetensors"))[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    return folder


def _hf_bad_index(text):
    def build(world):
        folder = hf_folder(world, 2)
        (folder / "model.safetensors.index.json").write_text(text)
        return folder

    return build


def _hf_unicode(world):
    return hf_folder(world, 2, files={"names": ["modèle-1-ü.safetensors", "模型-2.safetensors"]})


def _plain_dir(world):
    d = world.root / "notamodel"
    d.mkdir()
    (d / "readme.txt").write_text("hi")
    return d


def _unicode_st(world):
    g = torch.Generator().manual_seed(0)  # the campaign checks that no case moves the global RNG
    sd = {"层.0.权重.weight": torch.randn(8, 8, generator=g), "λ.bias": torch.randn(8, generator=g)}
    return st_file(world, sd, name="模型.safetensors")


EVERY_DTYPE = {
    "u16": torch.zeros(4, 4, dtype=torch.uint16), "u32": torch.ones(4, 4, dtype=torch.uint32),
    "u64": torch.ones(4, 4, dtype=torch.uint64), "f8": torch.ones(4, 4).to(torch.float8_e4m3fn),
    "f8b": torch.ones(4, 4).to(torch.float8_e5m2), "scalar": torch.tensor(3.0), "mask": torch.ones(4, 4, dtype=torch.bool),
    "i8": torch.ones(4, 4, dtype=torch.int8), "f64.weight": torch.randn(8, 8, dtype=torch.float64), "w.weight": torch.randn(8, 8),
}


def _zero_size(world):
    return st_file(world, {"empty.weight": torch.zeros(0, 8), "fc.weight": torch.ones(8, 8)})


def _torch_nested(world):
    return torch_file(world, {"state_dict": state(), "optimizer": {"lr": 0.1, "state": {}}, "epoch": 3})


def _torch_non_tensor(world):
    sd = dict(state())
    sd.update({"step": 5, "names": ["a", "b"], "lr": 0.01, "flag": None})
    return torch_file(world, sd)


def _torch_truncated(world):
    p = torch_file(world)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p


def _torch_odd_protocol(world):
    p = torch_file(world, _use_new_zipfile_serialization=False)
    data = bytearray(p.read_bytes())
    data[1] = 0xF3  # the pickle protocol byte: torch warns, and loads
    p.write_bytes(bytes(data))
    return p


def _torch_pk_junk(world):
    p = world.root / "junk.pt"
    p.write_bytes(b"PK\x03\x04" + os.urandom(200))
    return p


def _torch_namespace(world):
    import argparse

    return torch_file(world, {"w": torch.ones(4, 4), "args": argparse.Namespace(lr=0.1)})


def _st_truncated(world):
    p = st_file(world)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 40])
    return p


def _bytes(content, name="m.safetensors"):
    def build(world):
        p = world.root / name
        p.write_bytes(content)
        return p

    return build


# name -> (builder, error regex or None for a right result, error regex for prune only when different)
READERS = {
    "st-good": (lambda w: st_file(w, metadata={"who": "me"}), None),
    "st-unicode-names": (_unicode_st, None),
    "st-zero-size-tensor": (_zero_size, None),
    "st-every-dtype": (lambda w: st_file(w, EVERY_DTYPE), None),
    "st-no-tensors": (lambda w: raw_st(w, {"__metadata__": {"a": "b"}}, b""), None),
    "torch-every-dtype": (lambda w: torch_file(w, EVERY_DTYPE), None),
    "st-truncated": (_st_truncated, "corrupt or truncated"),
    "st-header-not-json": (lambda w: raw_st(w, {}, b"", pad=b"}{garbage"), "not JSON"),
    "st-header-array": (lambda w: _bytes(b"\x02" + bytes(7) + b"[]")(w), "unknown checkpoint format|not a JSON object"),
    "st-header-length-huge": (_bytes((10**12).to_bytes(8, "little") + b"{}"), "does not fit"),
    "st-header-length-past-end": (_bytes((500).to_bytes(8, "little") + b'{"a": 1}'), "does not fit"),
    "st-size-lie": (lambda w: raw_st(w, {"a.weight": {"dtype": "F32", "shape": [8, 16], "data_offsets": [0, 256]}}, bytes(256)), "needs 512 bytes"),
    "st-offsets-past-end": (lambda w: raw_st(w, {"a.weight": F32_8x16}, bytes(100)), "cover 512 bytes"),
    "st-overlap": (lambda w: _two(w, F32_8x16, {"dtype": "F32", "shape": [8, 16], "data_offsets": [256, 768]}), "overlaps"),
    "st-duplicate-offsets": (lambda w: _two(w, F32_8x16, F32_8x16), "overlaps"),
    "st-gap": (lambda w: _two(w, F32_8x16, {"dtype": "F32", "shape": [8, 16], "data_offsets": [520, 1032]}, bytes(1032)), "gap"),
    "st-trailing-data": (lambda w: raw_st(w, {"a.weight": F32_8x16}, bytes(600)), "cover 512 bytes"),
    "st-bad-dtype": (lambda w: raw_st(w, {"a.weight": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 2]}}, bytes(2)), "unsupported dtype"),
    "st-entry-not-object": (lambda w: raw_st(w, {"a.weight": [1, 2]}, b""), "not an object"),
    "st-negative-offset": (lambda w: raw_st(w, {"a.weight": {"dtype": "U8", "shape": [2], "data_offsets": [-2, 0]}}, b""), "data_offsets"),
    "st-shape-not-list": (lambda w: raw_st(w, {"a.weight": {"dtype": "U8", "shape": "2", "data_offsets": [0, 2]}}, bytes(2)), "shape"),
    "st-negative-shape": (lambda w: raw_st(w, {"a.weight": {"dtype": "U8", "shape": [-2], "data_offsets": [0, 0]}}, b""), "shape"),
    "st-metadata-not-strings": (lambda w: raw_st(w, {"__metadata__": {"a": 1}, "a.weight": F32_8x16}, bytes(512)), "__metadata__"),
    "st-header-not-utf8": (lambda w: raw_st(w, {}, b"", pad=b"\xff\xfe"), "not JSON"),
    "st-too-short": (_bytes(b"\x01\x00\x00"), "unknown checkpoint format"),
    "empty-file": (_bytes(b"", "empty.safetensors"), "empty"),
    "text-file": (_bytes(b"hello, I am not a checkpoint", "notes.txt"), "unknown checkpoint format"),
    "folder-not-a-model": (_plain_dir, "not a Hugging Face model folder"),
    "missing-path": (lambda w: w.root / "nothing-here.safetensors", "no such file"),
    "hf-single": (lambda w: hf_folder(w, 0), None),
    "hf-sharded": (lambda w: hf_folder(w, 3), None),
    "hf-unicode-shards": (_hf_unicode, None),
    "hf-shard-dotdot": (lambda w: hf_folder(w, 2, index_edit=_victim_index("dotdot")), r"'\.\.'"),
    "hf-shard-deep-dotdot": (lambda w: hf_folder(w, 2, index_edit=_victim_index("deep")), r"'\.\.'"),
    "hf-shard-backslash": (lambda w: hf_folder(w, 2, index_edit=_victim_index("backslash")), r"'\.\.'"),
    "hf-shard-absolute": (lambda w: hf_folder(w, 2, index_edit=_victim_index("absolute")), "absolute path"),
    "hf-shard-symlink-out": (lambda w: hf_folder(w, 2, index_edit=_victim_index("symlink")), "symbolic link leading out"),
    "hf-shard-relative-symlink-out": (lambda w: hf_folder(w, 2, index_edit=_victim_index("symlink-rel")), "symbolic link leading out"),
    "hf-shard-subfolder": (lambda w: hf_folder(w, 2, index_edit=_victim_index("subfolder")), "sub-folder"),
    "hf-shard-not-a-string": (lambda w: hf_folder(w, 2, index_edit=_victim_index("not-str")), "not a file name"),
    "hf-shard-an-object": (lambda w: hf_folder(w, 2, index_edit=_victim_index("dict")), "not a file name"),
    "hf-shard-name-too-long": (lambda w: hf_folder(w, 2, index_edit=_victim_index("too-long")), "cannot be opened"),
    "torch-odd-pickle-protocol": (_torch_odd_protocol, None),  # loads; torch's warning must not reach stderr
    "hf-shard-empty-name": (lambda w: hf_folder(w, 2, index_edit=_victim_index("empty")), "not a file name"),
    "hf-shard-missing": (lambda w: hf_folder(w, 2, index_edit=_victim_index("missing")), "missing"),
    "hf-shard-is-a-folder": (lambda w: hf_folder(w, 2, index_edit=_victim_index("dir")), "not a file"),
    "hf-tensor-in-wrong-shard": (lambda w: hf_folder(w, 2, index_edit=_victim_index("wrong-shard")), "not where the index says"),
    "hf-index-lists-ghost": (lambda w: hf_folder(w, 2, index_edit=_victim_index("extra-tensor")), "no shard holds"),
    "hf-duplicate-tensor": (_hf_dup, "also appears"),
    "hf-corrupt-shard": (_hf_corrupt_shard, "corrupt or truncated"),
    "hf-index-not-json": (_hf_bad_index("{not json"), "not a valid safetensors index"),
    "hf-index-no-weight-map": (_hf_bad_index('{"metadata": {}}'), "not a valid safetensors index"),
    "hf-index-weight-map-list": (_hf_bad_index('{"weight_map": ["a"]}'), "not a valid safetensors index"),
    "hf-single-symlink-out": (_hf_single_link_out, "symbolic link leading out"),
    "hf-index-symlink-out": (_hf_index_link_out, "symbolic link leading out"),
    "hf-config-symlink-out": (_hf_config_link_out, None, "symbolic link leading out"),
    "torch-good": (lambda w: torch_file(w), None),
    "torch-legacy-format": (lambda w: torch_file(w, _use_new_zipfile_serialization=False), None),
    "torch-nested-with-optimizer": (_torch_nested, None),
    "torch-non-tensor-values": (_torch_non_tensor, None),
    "torch-truncated": (_torch_truncated, "corrupt or truncated"),
    "torch-malicious-reduce": (evil_pickle, "weights_only=True"),
    "torch-raw-malicious-pickle": (raw_pickle, "weights_only=True|not a readable"),
    "torch-python-object": (_torch_namespace, "Unsupported global"),
    "torch-zip-junk": (_torch_pk_junk, "not a readable torch.save file"),
    "torch-list": (lambda w: torch_file(w, [1, 2, 3]), "no state dict"),
    "torch-two-state-dicts": (lambda w: torch_file(w, {"a": {"w": torch.ones(4, 4)}, "b": {"w": torch.ones(4, 4)}}), "several state dicts"),
    "torch-only-numbers": (lambda w: torch_file(w, {"a": 1, "b": 2.0}), "no state dict"),
}


def _no_pwn(world, result):
    assert not os.path.exists("/tmp/nmsparse-pwned"), "a pickle ran code"


def _api_cases():
    cases = []
    for name, spec in READERS.items():
        build, err = spec[0], spec[1]
        error = CheckpointError if err else None
        cases.append(Case(f"read_checkpoint-{name}", guarded(build, lambda w, s: read_checkpoint(s), check=_no_pwn), error, err))
        cases.append(Case(f"iter_tensors-{name}", guarded(build, lambda w, s: list(iter_tensors(s).tensors), check=_no_pwn), error, err))
        cases.append(Case(f"report_checkpoint-{name}", guarded(build, lambda w, s: report_checkpoint(s, "2:4T"), check=_no_pwn), error, err))
    return cases


@parametrize(_api_cases())
def test_reader_api(case):
    run_case(case)


def _cli_case(name, spec, command):
    build, err = spec[0], spec[1]
    if command == "prune" and len(spec) > 2:
        err = spec[2]
    # A checkpoint with nothing to prune: `prune` writes OUT as a copy, then exits 1 with one line
    # saying that nothing was pruned (the CLI's rule since "0 pruned is exit 1").
    nothing_pruned = command == "prune" and name == "st-no-tensors"
    box = {}

    def argv():
        world = box["world"] = World()
        src = build(world)
        out = world.root / ("out" + (src.suffix if src.suffix != ".txt" else ".safetensors"))
        world.freeze(out)
        box["out"] = out
        if command == "prune":
            return ["prune", str(src), "-o", str(out), "--pattern", "2:4T", "--quiet"]
        return ["report", str(src)]

    def check():
        world = box["world"]
        try:
            world.check(succeeded=err is None)
            _no_pwn(world, None)
            if command == "prune" and err is None:
                rep = report_checkpoint(box["out"], "2:4T")
                assert not rep.broken, "OUT does not obey 2:4T"
                assert rep.checked or nothing_pruned, "prune exited 0 but report checks no weight of OUT"
                if nothing_pruned:
                    assert not rep.weights, "OUT of a checkpoint without tensors holds tensors"
            if err is not None:
                assert not os.path.lexists(box["out"]), "partial OUT"
        finally:
            world.close()

    if nothing_pruned:
        return CliCase(f"cli-{command}-{name}", argv, 1, "no tensor of .* was pruned", check)
    return CliCase(f"cli-{command}-{name}", argv, 1 if err else 0, err, check)


@parametrize([_cli_case(n, s, c) for c in ("prune", "report") for n, s in READERS.items()])
def test_reader_cli(case):
    run_cli_case(case)


def test_world_catches_a_write_outside_out():
    """The invariant check itself must fail when something outside OUT changes."""
    world = World()
    try:
        world.freeze(world.root / "out.safetensors")
        world.victim.write_bytes(b"lost")
        try:
            world.check(succeeded=True)
        except AssertionError:
            pass
        else:
            raise AssertionError("World.check missed a changed victim file")
        assert snapshot(world.root)
    finally:
        world.close()
