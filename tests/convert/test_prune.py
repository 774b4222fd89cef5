"""One-shot pruning of state dicts and checkpoints, and the pattern report."""

import itertools
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import nmsparse as nms
from nmsparse.convert import (
    ConvertError,
    densest_patterns,
    prune_checkpoint,
    prune_state_dict,
    read_checkpoint,
    report_state_dict,
)
from nmsparse.errors import MethodError, PatternError, ScoreError, ShapeError


def _model_state(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {
        "embed_tokens.weight": torch.randn(16, 8, generator=g),
        "layers.0.fc1.weight": torch.randn(16, 8, generator=g),
        "layers.0.fc1.bias": torch.randn(16, generator=g),
        "layers.0.norm.weight": torch.ones(8, 8),  # 2-D but a norm by name
        "conv.weight": torch.randn(8, 4, 3, 3, generator=g),
        "bn.num_batches_tracked": torch.tensor(3),
        "big.weight": torch.randn(2, 2, 2, 2, 2, 4, generator=g),
    }
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("pattern", ["2:4", "2:4T", "4:8T"])
def test_prunes_eligible_weights_keeps_dtype_and_values(dtype, pattern):
    sd = _model_state(dtype)
    if pattern == "4:8T":
        sd.pop("conv.weight")
    res = prune_state_dict(sd, pattern)
    pruned = {r.name for r in res.pruned}
    expected = {"layers.0.fc1.weight"} | ({"conv.weight"} if "conv.weight" in sd else set())
    assert pruned == expected
    for name, t in res.tensors.items():
        assert t.dtype == sd[name].dtype
        if name not in pruned:
            assert t is sd[name]
            continue
        kept = t != 0
        nms.check_mask(kept, pattern, exact=True)
        # Kept values are the original values bit for bit; pruned ones are +0.0, never -0.0.
        assert torch.equal(t[kept], sd[name][kept])
        zeros = t[~kept].float()
        assert torch.all(torch.copysign(torch.ones_like(zeros), zeros) > 0)
        # The mask is the one the solver picks on the fp32 values (fp16/bf16 are exact in fp32).
        mask = nms.find_mask(sd[name].float(), pattern)
        assert torch.equal(kept, mask & (sd[name] != 0))
    reasons = {r.name: r.reason for r in res.layers}
    assert "embedding" in reasons["embed_tokens.weight"]
    assert "normalisation" in reasons["layers.0.norm.weight"]
    assert "1-D" in reasons["layers.0.fc1.bias"]
    assert "not floating point" in reasons["bn.num_batches_tracked"]
    assert "6-D" in reasons["big.weight"]


def test_kept_fraction_matches_brute_force_for_a_tiny_weight():
    w = torch.tensor([[0.3, -2.0, 1.0, 0.1], [4.0, 0.5, -0.2, 0.25], [0.0, 1.5, 2.5, -3.0], [1.0, 1.0, 0.7, 0.2]])
    res = prune_state_dict({"fc.weight": w}, "2:4T")
    best = 0.0
    # Brute force over all 4x4 0/1 matrices with two ones per row and column (90 of them).
    rows = [r for r in itertools.product([0, 1], repeat=4) if sum(r) == 2]
    for pick in itertools.product(rows, repeat=4):
        m = torch.tensor(pick, dtype=torch.bool)
        if torch.all(m.sum(0) == 2):
            best = max(best, float(w.abs()[m].sum()))
    assert res.layers[0].kept_fraction == pytest.approx(best / float(w.abs().sum()))


def test_include_replaces_name_rules_and_exclude_wins():
    sd = _model_state()
    # Full match on the tensor name or its module name (the name without .weight/.bias).
    res = prune_state_dict(sd, "2:4", include=["embed_tokens", r".*\.fc1"])
    assert {r.name for r in res.pruned} == {"embed_tokens.weight", "layers.0.fc1.weight"}
    res = prune_state_dict(sd, "2:4", include=r"embed_tokens|.*fc1", exclude=r"embed.*")
    assert {r.name for r in res.pruned} == {"layers.0.fc1.weight"}
    assert "--exclude" in next(r.reason for r in res.layers if r.name == "embed_tokens.weight")
    assert not prune_state_dict(sd, "2:4", include="embed").pruned  # a search would have matched
    with pytest.raises(PatternError, match="prune: include pattern '\\(' is not a valid regular expression"):
        prune_state_dict(sd, "2:4", include="(")


def test_ragged_error_skip_and_pad():
    sd = {"conv1.weight": torch.randn(8, 3, 3, 3), "fc.weight": torch.randn(10, 16)}
    with pytest.raises(ShapeError, match=r"layer conv1.weight of shape \(8, 3, 3, 3\).*--ragged skip.*--ragged pad"):
        prune_state_dict(sd, "2:4")
    res = prune_state_dict(sd, "2:4T", ragged="skip")
    assert not res.pruned and all("does not fit" in r.reason for r in res.layers)
    res = prune_state_dict(sd, "2:4T", ragged="pad")
    assert {r.name for r in res.pruned} == {"conv1.weight", "fc.weight"}
    for name, t in res.tensors.items():
        nms.check_mask(t != 0, "2:4T")  # partial groups keep at most n
    with pytest.raises(ConvertError, match="ragged must be one of"):
        prune_state_dict(sd, "2:4", ragged="crop")


def test_bad_method_and_nan_name_the_problem():
    with pytest.raises(MethodError):
        prune_state_dict({"fc.weight": torch.randn(4, 4)}, "2:4T", method="nope")
    w = torch.randn(4, 4)
    w[1, 2] = float("nan")
    with pytest.raises(ScoreError, match="layer fc.weight"):
        prune_state_dict({"fc.weight": w}, "2:4T")


def test_tied_weights_stay_dense():
    w = torch.randn(8, 8)
    res = prune_state_dict({"a.weight": w, "b.weight": w}, "2:4", tied={"a.weight": ["b.weight"], "b.weight": ["a.weight"]})
    assert not res.pruned and "tied" in res.layers[0].reason


def test_prune_checkpoint_writes_out_and_json_and_refuses_overwrite(tmp_path):
    src = tmp_path / "m.safetensors"
    save_file(_model_state(torch.float16), str(src))
    out = tmp_path / "o.safetensors"
    res = prune_checkpoint(src, out, "2:4T")
    data = json.loads((tmp_path / "o.safetensors.prune.json").read_text())
    assert data["pattern"] == "2:4T" and len(data["layers"]) == len(_model_state())
    assert {row["name"] for row in data["layers"] if row["pruned"]} == {r.name for r in res.pruned}
    back = read_checkpoint(out)
    assert back.metadata["nmsparse_pattern"] == "2:4T"
    assert back.tensors["layers.0.fc1.weight"].dtype == torch.float16
    with pytest.raises(ConvertError, match="already exists"):
        prune_checkpoint(src, out, "2:4T")
    with pytest.raises(ConvertError, match="is the input"):
        prune_checkpoint(src, src, "2:4T")


def test_prune_checkpoint_bad_pattern_writes_nothing(tmp_path):
    src = tmp_path / "m.pt"
    torch.save({"conv1.weight": torch.randn(8, 3, 3, 3)}, src)
    with pytest.raises(ShapeError):
        prune_checkpoint(src, tmp_path / "o.pt", "2:4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def _oracle_densest(nz: torch.Tensor, m: int):
    """Smallest n per m by direct loops over groups and tiles of the 2-D matrix (rows, cols)."""
    rows, cols = nz.shape
    n_row = n_t = 1
    for r in range(rows):
        for c in range(0, cols, m):
            n_row = max(n_row, int(nz[r, c : c + m].sum()))
    for r in range(0, rows, m):
        for c in range(0, cols, m):
            tile = nz[r : r + m, c : c + m]
            n_t = max(n_t, int(tile.sum(0).max()), int(tile.sum(1).max()))
    return n_row, n_t


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 12), cols=st.integers(1, 20), density=st.floats(0, 1), seed=st.integers(0, 10_000))
def test_densest_patterns_against_loops(rows, cols, density, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * (torch.rand(rows, cols, generator=g) < density)
    got = densest_patterns(w, ms=(4, 8))
    for m in (4, 8):
        n_row, n_t = _oracle_densest(w != 0, m)
        text = got[m]
        if cols % m:  # a partial group cannot show structure: the shape does not fit m
            assert text == "does not fit"
            continue
        if rows % m and n_row < m:
            assert text == f"{n_row}:{m}, T does not fit"
        elif n_row == m:
            assert text == "dense"
        elif n_t == n_row:
            assert text == f"{n_row}:{m}T"
            nms.check_mask(w != 0, f"{n_row}:{m}T")
        else:
            assert text.startswith(f"{n_row}:{m}, ")
            assert not nms.is_valid_mask(w != 0, f"{n_row}:{m}T")
        nms.check_mask(w != 0, f"{n_row}:{m}")
        if n_row > 1:
            assert not nms.is_valid_mask(w != 0, f"{n_row - 1}:{m}")


def test_report_flags_broken_claims():
    sd = prune_state_dict(_model_state(), "2:4").tensors
    rep = report_state_dict(sd, "2:4")
    assert not rep.broken and {w.name for w in rep.checked} == {"layers.0.fc1.weight", "conv.weight"}
    rep = report_state_dict(sd, "1:4")
    assert {w.name for w in rep.broken} == {"layers.0.fc1.weight", "conv.weight"}
    assert "keep 2" in rep.broken[0].problem
    rep = report_state_dict(sd)
    assert next(w for w in rep.weights if w.name == "conv.weight").densest[4] in ("2:4T", "2:4, 3:4T", "2:4, not T")
    assert next(w for w in rep.weights if w.name == "embed_tokens.weight").reason.startswith("not checked")


@pytest.mark.parametrize("pattern,kept", [(0.5, 32), (0.25, 16), ("50%", 32)])
def test_cli_prune_takes_a_density(tmp_path, capsys, pattern, kept):
    from safetensors.torch import load_file, save_file

    from nmsparse.cli import main

    g = torch.Generator().manual_seed(0)
    save_file({"fc.weight": torch.randn(8, 8, generator=g), "fc.bias": torch.randn(8, generator=g)}, str(tmp_path / "in.safetensors"))
    assert main(["prune", str(tmp_path / "in.safetensors"), "-o", str(tmp_path / "out.safetensors"), "--pattern", str(pattern)]) == 0
    out = load_file(str(tmp_path / "out.safetensors"))
    assert int((out["fc.weight"] != 0).sum()) == kept
    w = load_file(str(tmp_path / "in.safetensors"))["fc.weight"]
    assert torch.equal(out["fc.weight"] != 0, nms.unstructured_mask(w, kept / 64))


def test_cli_prune_density_out_of_range_is_an_error(tmp_path, capsys):
    from nmsparse.cli import main

    assert main(["prune", str(tmp_path / "in.safetensors"), "-o", str(tmp_path / "o"), "--pattern", "150%"]) == 1
    assert "density" in capsys.readouterr().err
