"""Campaign: resource bombs. Sizes that would hang exact arithmetic, overflow a float, exceed Python's
int-string limit, ask the allocator for more memory than any machine has, or recurse past Python's
limit while parsing JSON. Each must end, fast, in the right result (a log-scale answer) or in a
one-line library error naming the input, never in a hang, a RecursionError or "internal error".
"""

from __future__ import annotations

import torch

import nmsparse as nms
from _harness import Case, CliCase, parametrize, run_case, run_cli_case
from _io_world import guarded, hf_folder, raw_st, st_file
from nmsparse import diversity as div
from nmsparse.convert import read_checkpoint, report_checkpoint
from nmsparse.errors import CheckpointError

HUGE_DIGITS = "9" * 5000
DEEP = 100_000


def _finite(x):
    assert isinstance(x, float) and x == x and abs(x) != float("inf"), x


def _deep_json(depth: int = DEEP) -> str:
    return "[" * depth + "]" * depth  # json.dumps itself would recurse; written by hand


CASES = [
    # patterns and shapes that are numbers no one can afford
    Case("parse 1:9*5000", lambda: nms.NMPattern.parse("1:" + HUGE_DIGITS), nms.PatternError, "cannot parse pattern"),
    Case("parse 19-digit m over 2**63", lambda: nms.NMPattern.parse("1:" + "9" * 19), nms.PatternError, "2\\*\\*63"),
    Case("parse 20-digit n and m", lambda: nms.NMPattern.parse("9" * 20 + ":" + "9" * 20), nms.PatternError, "2\\*\\*63"),
    Case("NMPattern(1, 10**5000)", lambda: nms.NMPattern(1, 10**5000), nms.PatternError, "tensor dimension"),
    Case("NMPattern(10**5000, 4)", lambda: nms.NMPattern(10**5000, 4), nms.PatternError, "bits"),
    Case("parse_shape 2000 dims", lambda: div.parse_shape("x".join(["4"] * 2000)), nms.ShapeError, "at most 64"),
    Case("parse_shape 5000-digit dim", lambda: div.parse_shape("1" + "0" * 5000 + "x4"), nms.ShapeError, "characters"),
    Case("parse_shape 30-digit dim", lambda: div.parse_shape("1" + "0" * 30 + "x4"), nms.ShapeError, "2\\*\\*63"),
    Case("count_masks 40 dims of 4", lambda: nms.count_masks("2:4", (4,) * 40), nms.ShapeError, "entries"),
    Case("log10_count_masks 2000 dims", lambda: nms.log10_count_masks("2:4", (4,) * 2000), nms.ShapeError, "dimensions"),
    Case("log10_count_masks dim 10**30", lambda: nms.log10_count_masks("2:4", (4, 10**30)), nms.ShapeError, "2\\*\\*63"),
    Case("count_masks 5e6:1e7 row-wise (huge binomial base)",
         lambda: nms.count_masks("5000000:10000000", (1, 10_000_000)), nms.ShapeError, "log10_count_masks"),
    Case("count_unstructured 1e7 entries", lambda: div.count_unstructured((10_000_000,), 0.5), nms.ShapeError, "digits"),
    Case("count_block_masks 1e12 blocks", lambda: div.count_block_masks((10**6, 10**6), 1, 0.5), nms.ShapeError, "digits"),
    Case("count_transposable_tile 5e6:1e7", lambda: div.count_transposable_tile(5_000_000, 10_000_000), nms.PatternError, "10\\*\\*"),
    Case("count_masks 2:4T on a 1e7 tile", lambda: nms.count_masks("5000000:10000000T", (10_000_000, 10_000_000)),
         nms.ShapeError, "log10_count_masks"),
    # log-scale answers stay cheap and finite
    Case("log10 5e6:1e7 row-wise", lambda: nms.log10_count_masks("5000000:10000000", (1, 10_000_000)), check=_finite),
    Case("log10 5e6:1e7T (estimate)", lambda: nms.log10_count_masks("5000000:10000000T", (10_000_000, 10_000_000)), check=_finite),
    Case("log10 unstructured 2**62 entries", lambda: nms.log10_count_masks("1:2", (2**31, 2**31), structure="unstructured"), check=_finite),
    Case("log10 per 64 of 5e6:1e7T", lambda: div.log10_masks_per_64("5000000:10000000T"), check=_finite),
    Case("log10 per 64 of 1:2**62", lambda: div.log10_masks_per_64("1:" + str(2**62)), check=_finite),
    Case("diversity_table 5e6:1e7 on 1x1e7",
         lambda: div.diversity_table("5000000:10000000", (1, 10_000_000)),
         check=lambda rows: [_finite(r["log10_count"]) for r in rows[:2]] and None),
    # tensors torch holds, but whose solving needs more memory than exists (a broadcast view of 4 bytes)
    Case("find_mask 2:4 on a 200000^2 view", lambda: nms.find_mask(torch.ones(1).expand(200_000, 200_000), "2:4"),
         nms.ShapeError, "out of memory on an input of shape \\(200000, 200000\\)"),
    Case("find_mask 2:4T on a 200000^2 view", lambda: nms.find_mask(torch.ones(1).expand(200_000, 200_000), "2:4T"),
         nms.ShapeError, "out of memory"),
    Case("solve_mask on a 200000^2 view", lambda: nms.solve_mask(torch.ones(1).expand(200_000, 200_000), "2:4T", method="greedy"),
         nms.ShapeError, "out of memory"),
    Case("unstructured_mask on a 200000^2 view", lambda: nms.unstructured_mask(torch.ones(1).expand(200_000, 200_000), 0.5),
         nms.ShapeError, "out of memory"),
    Case("check_mask on a 200000^2 view",
         lambda: nms.check_mask(torch.ones(1, dtype=torch.bool).expand(200_000, 200_000), "2:4"), nms.ShapeError, "out of memory"),
    Case("is_valid_mask on a 200000^2 view",
         lambda: nms.is_valid_mask(torch.ones(1, dtype=torch.bool).expand(200_000, 200_000), "2:4T"), nms.ShapeError, "out of memory"),
]


def _write(world, name, text):
    p = world.root / name
    p.write_text(text)
    return p


def _st_with_header_text(world, text: str):
    raw = text.encode()
    p = world.root / "deep.safetensors"
    p.write_bytes(len(raw).to_bytes(8, "little") + raw)
    return p


def _deep_index(world):
    folder = hf_folder(world, 2)
    (folder / "model.safetensors.index.json").write_text('{"metadata": ' + _deep_json() + ', "weight_map": {}}')
    return folder


def _deep_config(world):
    folder = hf_folder(world, 2)
    (folder / "config.json").write_text('{"model_type": ' + _deep_json() + "}")
    return folder


CASES += [
    Case("safetensors header nested 100k deep",
         guarded(lambda w: _st_with_header_text(w, _deep_json()), lambda w, p: read_checkpoint(p)), CheckpointError,
         "nested too deeply|unknown checkpoint format"),
    Case("safetensors __metadata__ nested 100k deep",
         guarded(lambda w: _st_with_header_text(w, '{"__metadata__": {"a": ' + _deep_json() + "}}"), lambda w, p: read_checkpoint(p)),
         CheckpointError, "nested too deeply"),
    Case("safetensors tensor entry nested 100k deep",
         guarded(lambda w: _st_with_header_text(w, '{"w": {"dtype": "F32", "shape": ' + _deep_json() + "}}"), lambda w, p: report_checkpoint(p)),
         CheckpointError, "nested too deeply"),
    Case("HF index nested 100k deep", guarded(_deep_index, lambda w, p: read_checkpoint(p)), CheckpointError, "nested too deeply"),
    Case("HF index nested 100k deep (report)", guarded(_deep_index, lambda w, p: report_checkpoint(p)), CheckpointError, "nested too deeply"),
    # config.json only decides the Conv1D rule; an unreadable one is ignored, the weights still read
    Case("config.json nested 100k deep (report)", guarded(_deep_config, lambda w, p: report_checkpoint(p)), check=lambda r: None),
]


@parametrize(CASES)
def test_resource_bombs(case):
    run_case(case)


def argv(*args):
    return lambda: list(args)


CLI = [
    CliCase("diversity 5e6:1e7 on 1x1e7 answers (log10)", argv("diversity", "5000000:10000000", "--shape", "1x10000000"), 0),
    CliCase("diversity 5e6:1e7T on 1e7 x 1e7 answers (estimate)",
            argv("diversity", "5000000:10000000T", "--shape", "10000000x10000000"), 0),
    CliCase("diversity 1:9*5000", argv("diversity", "1:" + HUGE_DIGITS, "--shape", "4x4"), 1, "cannot parse pattern"),
    CliCase("diversity 2000-dim shape", argv("diversity", "2:4", "--shape", "x".join(["4"] * 2000)), 1, "at most 64"),
    CliCase("diversity 40-dim shape", argv("diversity", "2:4", "--shape", "x".join(["4"] * 40)), 1, "entries"),
    CliCase("diversity 5000-digit dim", argv("diversity", "2:4", "--shape", "1" + "0" * 5000 + "x4"), 1, "characters"),
    CliCase("masks --size 200000", argv("masks", "--size", "200000"), 2, "at most 16384"),
    CliCase("masks --size 5000 digits", argv("masks", "--size", HUGE_DIGITS), 2, "--size"),
]


@parametrize(CLI)
def test_resource_bombs_cli(case):
    run_cli_case(case)
