"""Campaign: state dicts holding non-tensor values, write_checkpoint's own refusals, and an unusable
`--out` for `nmsparse bench claims` (checked before any training)."""

from __future__ import annotations

from pathlib import Path

import torch

from _harness import Case, CliCase, parametrize, run_case, run_cli_case
from test_campaign_writers import _readonly_dir  # imported here: inside a case its set-up would count as a side effect
from _io_world import World, guarded, st_file, torch_file
from nmsparse.convert import Checkpoint, prune_state_dict, read_checkpoint, report_state_dict, write_checkpoint
from nmsparse.errors import CheckpointError, ConvertError

NON_TENSORS = {"int": 3, "float": 0.1, "none": None, "list": [torch.ones(2)], "str": "abc", "dict": {"a": torch.ones(2)}}


def _api_cases():
    cases = []
    for kind, value in NON_TENSORS.items():
        sd = {"fc.weight": torch.randn(8, 8), "extra": value}
        cases.append(Case(f"prune_state_dict-non-tensor-{kind}", lambda sd=sd: prune_state_dict(sd, "2:4"), ConvertError, r"'extra'.*not a (torch\.)?[Tt]ensor"))
        cases.append(Case(f"report_state_dict-non-tensor-{kind}", lambda sd=sd: report_state_dict(sd, "2:4"), ConvertError, r"'extra'.*not a (torch\.)?[Tt]ensor"))

        def write_st(world, src, value=value):
            ckpt = read_checkpoint(src)
            ckpt.tensors["extra"] = value
            return write_checkpoint(ckpt, world.root / "out.safetensors")

        cases.append(Case(f"write_checkpoint-safetensors-non-tensor-{kind}", guarded(st_file, write_st, "out.safetensors"),
                          CheckpointError, r"'extra'.*not a (torch\.)?[Tt]ensor"))
    cases.append(Case("write_checkpoint-unknown-format",
                      lambda: write_checkpoint(Checkpoint(Path("x"), "onnx", {}), "/tmp/never-written.onnx"),
                      CheckpointError, "unknown format"))

    def torch_round_trip(world, src):
        write_checkpoint(read_checkpoint(src), world.root / "out.pt")
        return torch.load(world.root / "out.pt", weights_only=True)

    def keeps_values(world, result):
        assert result["step"] == 5 and result["names"] == ["a", "b"]

    sd = {"fc.weight": torch.randn(8, 8), "step": 5, "names": ["a", "b"]}
    cases.append(Case("write_checkpoint-torch-keeps-non-tensor-values",
                      guarded(lambda w: torch_file(w, sd), torch_round_trip, "out.pt", check=keeps_values)))
    return cases


@parametrize(_api_cases())
def test_io_api(case):
    run_case(case)


def _claims_case(name, make_out, match):
    box = {}

    def argv():
        world = box["world"] = World()
        out = make_out(world)
        world.freeze(None)
        return ["bench", "claims", "--quick", "--out", str(out)]

    def check():
        try:
            box["world"].check(succeeded=False)  # nothing written anywhere
        finally:
            box["world"].close()

    return CliCase(f"bench-claims-{name}", argv, 1, match, check)


def _file(world):
    (world.root / "afile").write_text("x")
    return world.root / "afile"


def _under_file(world):
    return _file(world) / "sub"


def _readonly(world):
    return _readonly_dir(world) / "results"


CLAIMS = [
    _claims_case("out-is-a-file", _file, "File exists.*afile"),
    _claims_case("out-under-a-file", _under_file, "Not a directory.*afile"),
    _claims_case("out-in-read-only-folder", _readonly, "(Read-only file system|Permission denied).*ro"),
]


@parametrize(CLAIMS)
def test_bench_claims_out(case):
    run_cli_case(case)
