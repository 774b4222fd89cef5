"""Checkpoint conversion of Hugging Face Conv1D weights (GPT-2 family, stored ``(in, out)``):
grouped along dim 0 by ``prune`` and ``report`` alike (one decision: ``rules.plan_weight``).

Oracle: a brute-force count of non-zeros per m consecutive entries down each column (dim 0).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import nmsparse as nms
from nmsparse.cli import main
from nmsparse.convert import prune_checkpoint, prune_state_dict, report_checkpoint
from nmsparse.convert.rules import CONV1D_FAMILIES, default_dim0

transformers = pytest.importorskip("transformers")

CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def column_groups_ok(w: torch.Tensor, n: int, m: int) -> bool:
    nz = (w != 0).int()
    for c in range(nz.shape[1]):
        for r in range(0, nz.shape[0], m):
            if int(nz[r:r + m, c].sum()) > n:
                return False
    return True


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpt2")
    cfg = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=64, n_positions=32)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(root / "in")
    return root / "in"


@pytest.mark.parametrize("pattern", ["2:4", "2:4T"])
def test_hf_folder_prune_and_report_agree_along_dim0(gpt2_folder, tmp_path, pattern, capsys):
    out = tmp_path / "out"
    assert main(["prune", str(gpt2_folder), "-o", str(out), "--pattern", pattern, "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "grouped along dim 0" in printed and "(groups along dim 0)" in printed
    before = load_file(str(gpt2_folder / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    for layer in CONV1D:
        name = f"transformer.h.0.{layer}.weight"
        assert column_groups_ok(after[name], 2, 4), name
        kept = after[name] != 0  # the n largest |w| per column group of 4 (no ties in random weights)
        expect = nms.find_mask(before[name].t().contiguous(), pattern).t()
        assert torch.equal(kept, expect), name
    rep = report_checkpoint(out, pattern)
    checked = {w.name: w for w in rep.weights if w.checked}
    assert set(checked) == {f"transformer.h.0.{layer}.weight" for layer in CONV1D}
    assert all(w.obeys and w.group_dim == 0 for w in checked.values())
    assert main(["report", str(out), "--pattern", pattern]) == 0
    assert "groups along dim 0 (HF Conv1D)" in capsys.readouterr().out
    # the same weights, checked along the last axis, do not obey a row-wise pattern
    if pattern == "2:4":
        assert any(w.obeys is False for w in report_checkpoint(out, pattern, dim0=[]).weights)


def test_bare_file_needs_dim0(gpt2_folder, tmp_path):
    bare = tmp_path / "bare.safetensors"
    save_file(load_file(str(gpt2_folder / "model.safetensors")), str(bare))
    name = "transformer.h.0.attn.c_attn.weight"
    plain = prune_checkpoint(bare, tmp_path / "plain.safetensors", "2:4")
    assert all("dim" not in (r.pattern or "") for r in plain.layers)
    assert not column_groups_ok(load_file(str(tmp_path / "plain.safetensors"))[name], 2, 4)  # last axis
    res = prune_checkpoint(bare, tmp_path / "dim0.safetensors", "2:4", dim0=r".*\.(c_attn|c_proj|c_fc)")
    pruned = load_file(str(tmp_path / "dim0.safetensors"))
    assert column_groups_ok(pruned[name], 2, 4)
    assert sum(r.pruned for r in res.layers) == 4
    assert all(w.obeys for w in report_checkpoint(tmp_path / "dim0.safetensors", "2:4", dim0=".*c_(attn|proj|fc)").weights
               if w.checked)


def test_dim0_ragged_is_judged_on_dim0():
    sd = {"h.c_attn.weight": torch.randn(6, 8)}  # 8 output columns fit 4, 6 input rows do not
    with pytest.raises(nms.errors.ShapeError, match="along dim 0"):
        prune_state_dict(sd, "2:4", dim0="h.c_attn")
    prune_state_dict(sd, "2:4")  # the default layout groups the 8 columns: fits


def test_default_dim0_families():
    assert CONV1D_FAMILIES == ("gpt2", "openai-gpt", "imagegpt", "decision_transformer")
    assert default_dim0("llama") is None and default_dim0(None) is None
    for family in CONV1D_FAMILIES:
        assert default_dim0(family) is not None


def test_report_densest_patterns_along_dim0(gpt2_folder, tmp_path):
    out = tmp_path / "out"
    prune_checkpoint(gpt2_folder, out, "2:4")
    rep = {w.name: w for w in report_checkpoint(out).weights if w.checked}
    assert rep["transformer.h.0.mlp.c_fc.weight"].densest[4].startswith("2:4")
    flat = {w.name: w for w in report_checkpoint(out, dim0=[]).weights if w.checked}
    assert not flat["transformer.h.0.mlp.c_fc.weight"].densest[4].startswith("2:4")


def test_dim0_with_calibration_is_refused(gpt2_folder, tmp_path, capsys):
    text = tmp_path / "calib.txt"
    text.write_text("hello world\n", encoding="utf-8")
    code = main(["prune", str(gpt2_folder), "-o", str(tmp_path / "o"), "--pattern", "2:4", "--calibration", str(text),
                 "--algorithm", "wanda", "--dim0", "c_attn"])
    assert code == 2 and "--dim0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
