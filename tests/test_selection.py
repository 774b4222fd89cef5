"""One layer-selection rule: the same include/exclude table run against EVERY entry point.

``include`` / ``exclude`` are a regex or a list of regexes matched in full against the qualified
module name and, for named parameters/tensors, the full parameter name (nmsparse.selection). Each
case below says which of the model's layers an entry point must pick; each entry point reports
what it picked in its own way (masks attached, tensors pruned, layers transformed or regularized).
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import nmsparse as nms
from nmsparse.cli import main
from nmsparse.convert import json_path_for, prune_state_dict, report_checkpoint, report_state_dict
from nmsparse.oneshot import adaprune
from nmsparse.errors import PatternError
from nmsparse.regularizers import WGSEFRegularizer
from nmsparse.selection import NameFilter
from nmsparse.sift import transform

LAYERS = ("fc1", "fc2", "fc20", "block.0", "block.2", "head")


class Net(nn.Module):
    """Names chosen to trip a search-instead-of-full-match rule: fc2 / fc20, block.0 / block.2."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.fc1, self.fc2, self.fc20 = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)
        self.block = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16))
        self.head = nn.Linear(16, 8)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, x):
        return self.head(self.block(self.fc20(self.fc2(self.fc1(x)))))


def _module(tensor_name: str) -> str:
    return re.sub(r"\.(weight|bias)$", "", tensor_name)


def _sparsify(include, exclude, tmp_path):
    model = nms.sparsify_(Net(), "2:4", include=include, exclude=exclude)
    return {n for n, m in model.named_modules() if hasattr(m, "parametrizations")}


def _prune_state_dict(include, exclude, tmp_path):
    res = prune_state_dict(Net().state_dict(), "2:4", include=include, exclude=exclude)
    return {_module(r.name) for r in res.pruned}


def _report_state_dict(include, exclude, tmp_path):
    rep = report_state_dict(Net().state_dict(), "2:4", include=include, exclude=exclude)
    return {_module(w.name) for w in rep.weights if w.checked}


def _report_checkpoint(include, exclude, tmp_path):
    path = tmp_path / "in.safetensors"
    save_file(Net().state_dict(), str(path))
    rep = report_checkpoint(path, "2:4", include=include, exclude=exclude)
    return {_module(w.name) for w in rep.weights if w.checked}


def _flags(flag, patterns):
    if patterns is None:
        return []
    patterns = [patterns] if isinstance(patterns, str) else patterns
    return [arg for p in patterns for arg in (flag, p)]


def _prune_cli(include, exclude, tmp_path):
    src, out = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    save_file(Net().state_dict(), str(src))
    argv = ["prune", str(src), "-o", str(out), "--pattern", "2:4", "--quiet"]
    code = main(argv + _flags("--include", include) + _flags("--exclude", exclude))
    if code != 0:  # main prints the library error as one line; surface it as the error it was
        raise PatternError("prune CLI exited with status 1")
    layers = json.loads(json_path_for(out).read_text())["layers"]
    return {_module(r["name"]) for r in layers if r["pruned"]}


def _adaprune(include, exclude, tmp_path):
    calib = [torch.randn(8, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    model = adaprune(Net(), calib, "2:4", include=include, exclude=exclude, iterations=0, batchnorm=False)
    return {fit.name for fit in model.adaprune_report.layers}


def _prune_(include, exclude, tmp_path, algorithm="magnitude"):
    calib = [torch.randn(8, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    calibration = None if algorithm == "magnitude" else calib
    model = nms.prune_(Net(), "2:4", calibration=calibration, algorithm=algorithm, include=include, exclude=exclude,
                       attach_masks=True)
    return {n for n, m in model.named_modules() if hasattr(m, "parametrizations")}


def _prune_wanda(include, exclude, tmp_path):
    return _prune_(include, exclude, tmp_path, algorithm="wanda")


def _sift(include, exclude, tmp_path):
    model = transform(Net(), "doped", 0.5, include=include, exclude=exclude)
    return set(model.sift_info["layers"])


def _wgsef(include, exclude, tmp_path):
    reg = WGSEFRegularizer(Net(), groups="rows", k=0.5, include=include, exclude=exclude)
    return {g.name for g in reg.layers}


# name -> (selector, the layers it picks when include is None). Sparse-IFT leaves the first and
# the last layer dense by default (as the paper does); everything else starts from every layer.
ENTRY_POINTS = {
    "sparsify_": (_sparsify, set(LAYERS)),
    "prune_state_dict": (_prune_state_dict, set(LAYERS)),
    "report_state_dict": (_report_state_dict, set(LAYERS)),
    "report_checkpoint": (_report_checkpoint, set(LAYERS)),
    "prune CLI": (_prune_cli, set(LAYERS)),
    "adaprune": (_adaprune, set(LAYERS)),
    "prune_": (_prune_, set(LAYERS)),
    "prune_ (wanda)": (_prune_wanda, set(LAYERS)),
    "sift.transform": (_sift, set(LAYERS) - {"fc1", "head"}),
    "WGSEFRegularizer": (_wgsef, set(LAYERS)),
}

# (include, exclude, layers picked out of all LAYERS): the rule itself, entry-point free.
CASES = [
    (None, "fc2", {"fc1", "fc20", "block.0", "block.2", "head"}),  # fc20 is not fc2
    (None, ["fc2", "head"], {"fc1", "fc20", "block.0", "block.2"}),  # a list of regexes
    (None, "fc2.*", {"fc1", "block.0", "block.2", "head"}),  # a prefix must be spelled out
    (None, "fc1|fc2", {"fc20", "block.0", "block.2", "head"}),  # alternation matches in full too
    (None, r"block\.2\.weight", {"fc1", "fc2", "fc20", "block.0", "head"}),  # by parameter name
    ("fc2", None, {"fc2"}),
    (["fc1", r"block\..*"], None, {"fc1", "block.0", "block.2"}),
    ("fc20.weight", None, {"fc20"}),  # include by parameter name
    (r"block\.\d+", r".*2", {"block.0"}),  # exclude wins over include
    (["fc2", "fc20", "head"], ["head"], {"fc2", "fc20"}),
]


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize("include, exclude, picked", CASES, ids=[f"inc={c[0]!r},exc={c[1]!r}" for c in CASES])
def test_same_selection_everywhere(entry, include, exclude, picked, tmp_path):
    select, default = ENTRY_POINTS[entry]
    want = picked if include is not None else picked & default
    assert select(include, exclude, tmp_path) == want


@pytest.mark.parametrize("include, exclude, picked", CASES)
def test_cases_agree_with_the_rule(include, exclude, picked):
    # The table itself is checked against NameFilter (what every entry point calls) and against
    # a from-scratch re.fullmatch oracle, so a wrong row cannot hide behind a wrong implementation.
    def oracle(name):
        def hit(patterns):
            patterns = [patterns] if isinstance(patterns, str) else patterns or []
            return any(re.fullmatch(p, n) for p in patterns for n in (name, f"{name}.weight"))

        return (include is None or hit(include)) and not hit(exclude)

    f = NameFilter(include, exclude)
    assert {n for n in LAYERS if f(n, f"{n}.weight")} == picked == {n for n in LAYERS if oracle(n)}


@pytest.mark.parametrize("entry", [e for e in ENTRY_POINTS if e != "prune CLI"])
@pytest.mark.parametrize("bad", ["fc[", ["fc1", "(head"], ["fc1", 3]])
@pytest.mark.parametrize("arg", ["include", "exclude"])
def test_invalid_pattern_is_a_pattern_error_naming_the_entry_point(entry, bad, arg, tmp_path):
    select, _ = ENTRY_POINTS[entry]
    kwargs = {"include": None, "exclude": None, arg: bad}
    where = {"sparsify_": "sparsify_", "prune_state_dict": "prune", "report_state_dict": "report",
             "report_checkpoint": "report", "adaprune": "adaprune", "prune_": "prune_", "prune_ (wanda)": "prune_", "sift.transform": "transform",
             "WGSEFRegularizer": "WGSEFRegularizer"}[entry]
    with pytest.raises(PatternError, match=rf"^{re.escape(where)}: {arg} "):
        select(kwargs["include"], kwargs["exclude"], tmp_path)


@pytest.mark.parametrize("arg", ["--include", "--exclude"])
def test_cli_invalid_pattern_is_one_line_naming_prune(arg, tmp_path, capsys):
    src = tmp_path / "in.safetensors"
    save_file(Net().state_dict(), str(src))
    assert main(["prune", str(src), "-o", str(tmp_path / "o.safetensors"), "--pattern", "2:4", arg, "fc1", arg, "fc["]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"nmsparse prune: error: {arg[2:]} pattern 'fc[' is not a valid regular expression")
    assert err[0].count("prune") == 1  # the command is named once
    assert not (tmp_path / "o.safetensors").exists()


def test_checkpoint_bias_follows_its_module_name():
    # A tensor's module name is its name without .weight/.bias: exclude="fc2" keeps fc2.bias too
    # (a 2-D "bias" would otherwise be pruned), and include="fc2" picks fc2.weight.
    sd = {"fc2.weight": torch.randn(8, 8), "fc2.bias": torch.randn(8, 8), "fc20.weight": torch.randn(8, 8)}
    res = prune_state_dict(sd, "2:4", exclude="fc2")
    assert {r.name for r in res.pruned} == {"fc20.weight"}
    res = prune_state_dict(sd, "2:4", include="fc2")
    assert {r.name for r in res.pruned} == {"fc2.weight", "fc2.bias"}
