"""One error module: every public exception lives in nmsparse.errors, no bare NMSparseError is
raised, and the former bare raise sites raise their fitting subclass with a one-line message."""

from __future__ import annotations

import ast
import inspect
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import nmsparse
import nmsparse.errors as errors
from nmsparse.errors import ArgumentError, MethodError, NMSparseError, PatternError, ShapeError

SRC = Path(nmsparse.__file__).parent


def _sources():
    return sorted(SRC.rglob("*.py"))


def test_no_library_source_raises_bare_nmsparse_error():
    # Grep-style over src/: any construction of the base class (raise NMSparseError(...), or a
    # NMSparseError(...) built and raised later) is a finding; `except NMSparseError` is fine.
    found = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            target = node.func if isinstance(node, ast.Call) else node.exc if isinstance(node, ast.Raise) else None
            name = target.id if isinstance(target, ast.Name) else target.attr if isinstance(target, ast.Attribute) else None
            if name == "NMSparseError":
                found.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not found, "bare NMSparseError raised at " + ", ".join(found)


def test_the_check_above_can_fail(tmp_path):
    tree = ast.parse("def f():\n    raise NMSparseError('x')\n")
    assert any(isinstance(n, ast.Call) and getattr(n.func, "id", None) == "NMSparseError" for n in ast.walk(tree))


def test_every_public_exception_class_lives_in_errors():
    defined_elsewhere = []
    for path in _sources():
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                bases = [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases]
                if any(b.endswith(("Error", "Exception", "Warning")) for b in bases):
                    defined_elsewhere.append(f"{path.relative_to(SRC)}: {node.name}")
    assert not defined_elsewhere, defined_elsewhere


@pytest.mark.parametrize("name", errors.__all__)
def test_error_classes_are_exported_and_subclass_a_builtin(name):
    cls = getattr(errors, name)
    assert getattr(nmsparse, name) is cls and name in nmsparse.__all__
    assert issubclass(cls, NMSparseError)
    if cls is not NMSparseError:
        assert issubclass(cls, (ValueError, RuntimeError)), name
    all_classes = {n for n, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__}
    assert all_classes == set(errors.__all__)


def _model():
    return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 6))


def _lm(**kw):
    from nmsparse.examples.lm import CharTransformer

    return CharTransformer(**{"d_model": 8, "n_layers": 1, "n_heads": 2, "d_ff": 16, "context": 8, **kw})


def _corpus(n):
    from nmsparse.examples.lm import TextCorpus

    return TextCorpus(torch.zeros(n, dtype=torch.uint8), torch.zeros(n, dtype=torch.uint8), (), "", "")


def _claims_check(**kw):
    from nmsparse.apps.claims import ClaimsConfig

    ClaimsConfig(**kw).check()


def _report_from(tmp_path, lines, run_id=None):
    from nmsparse.apps.claims import report_from_jsonl

    path = tmp_path / "claims.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    report_from_jsonl(str(path), run_id=run_id)


def _wgsef(**kw):
    from nmsparse.examples import mlp
    from nmsparse.regularizers import WGSEFRegularizer

    return WGSEFRegularizer(mlp(hidden=(16,), seed=0), **{"groups": "rows", "k": 2, **kw})


# (label, call, expected class, regex the message must match): the former bare raise sites.
SITES = [
    ("sparsify_ model", lambda t: nmsparse.sparsify_("model", "2:4"), ArgumentError, r"model must be a torch.nn.Module, got str"),
    ("sparsify_ density", lambda t: nmsparse.sparsify_(_model(), 1.5), PatternError, r"density .* in \(0, 1\], got 1.5"),
    ("sparsify_ update_every", lambda t: nmsparse.sparsify_(_model(), "2:4", update_every=0), ArgumentError, r"update_every must be a positive int, got 0"),
    ("sparsify_ gradient", lambda t: nmsparse.sparsify_(_model(), "2:4", gradient="sr"), ArgumentError, r"gradient must be one of .*got 'sr'"),
    ("sparsify_ srste_decay", lambda t: nmsparse.sparsify_(_model(), "2:4", srste_decay=-1.0), ArgumentError, r"srste_decay must be .*got -1.0"),
    ("sparsify_ kernels", lambda t: nmsparse.sparsify_(_model(), "2:4", kernels="fast"), ArgumentError, r"kernels must be one of .*got 'fast'"),
    ("sparsify_ explicit layer", lambda t: nmsparse.sparsify_(_model(), "2:4T", include="2"), ShapeError, r"layer '2.weight' with shape \(6, 16\) cannot take"),
    ("sparsify_ nothing", lambda t: nmsparse.sparsify_(nn.Sequential(nn.ReLU()), "2:4"), ShapeError, r"no layer can take"),
    ("update_masks_ unsparsified", lambda t: nmsparse.update_masks_(_model()), ArgumentError, r"has not been sparsified"),
    ("load_stdlib_corpus fraction", lambda t: __import__("nmsparse.examples.lm", fromlist=["x"]).load_stdlib_corpus(valid_fraction=1.0), ArgumentError, r"valid_fraction must be in \(0, 1\), got 1.0"),
    ("load_stdlib_corpus files", lambda t: __import__("nmsparse.examples.lm", fromlist=["x"]).load_stdlib_corpus(files=[]), ArgumentError, r"files must name at least one file"),
    ("load_stdlib_corpus root", lambda t: __import__("nmsparse.examples.lm", fromlist=["x"]).load_stdlib_corpus(root=str(t)), ArgumentError, r"are not in .*pass root="),
    ("CharTransformer int", lambda t: _lm(d_model=0), ArgumentError, r"d_model must be a positive int, got 0"),
    ("CharTransformer heads", lambda t: _lm(d_model=10, n_heads=4), ShapeError, r"d_model must be divisible by n_heads, got d_model=10, n_heads=4"),
    ("CharTransformer context", lambda t: _lm()(torch.zeros(1, 9, dtype=torch.long)), ShapeError, r"at most context=8 long, got length 9"),
    ("train_lm steps", lambda t: __import__("nmsparse.examples.lm", fromlist=["x"]).train_lm(_lm(), _corpus(100), steps=0), ArgumentError, r"steps and batch_size must be >= 1, got steps=0"),
    ("train_lm text", lambda t: __import__("nmsparse.examples.lm", fromlist=["x"]).train_lm(_lm(), _corpus(9), steps=1), ShapeError, r"longer than one window \(9 bytes\), got 9 bytes"),
    ("evaluate_lm text", lambda t: __import__("nmsparse.examples.lm", fromlist=["x"]).evaluate_lm(_lm(), torch.zeros(8, dtype=torch.long)), ShapeError, r"at least one window \(9 bytes\), got 8 bytes"),
    ("demo density", lambda t: __import__("nmsparse.apps.demo", fromlist=["x"]).RunSpec.parse("120%"), PatternError, r"between 0% and 100%, got '120%'"),
    ("demo method", lambda t: __import__("nmsparse.apps.demo", fromlist=["x"]).RunSpec.parse("2:4T@fastest"), MethodError, r"unknown method 'fastest'"),
    ("demo epochs", lambda t: list(__import__("nmsparse.apps.demo", fromlist=["x"]).run_demo(["dense"], epochs=0)), ArgumentError, r"--epochs must be at least 1, got 0"),
    ("claims seeds", lambda t: _claims_check(seeds=0), ArgumentError, r"--seeds must be a positive int, got 0"),
    ("claims tasks", lambda t: _claims_check(tasks=("chess",)), ArgumentError, r"tasks must be a non-empty subset"),
    ("claims freeze", lambda t: _claims_check(freeze_fraction=1.0), ArgumentError, r"freeze_fraction must be in \[0, 1\), got 1.0"),
    ("claims jobs", lambda t: _claims_check(jobs=0), ArgumentError, r"jobs must be a positive int, got 0"),
    ("claims empty jsonl", lambda t: _report_from(t, []), ArgumentError, r"must hold per-run result lines"),
    ("claims run_id", lambda t: _report_from(t, [{"task": "digits", "run_id": "a"}], run_id="b"), ArgumentError, r"run_id must name a run in the file, got 'b'"),
    ("digits split", lambda t: __import__("nmsparse.examples", fromlist=["x"]).load_digits_split(test_fraction=0.0), ArgumentError, r"test_fraction must be in \(0, 1\), got 0.0"),
    ("digits width", lambda t: __import__("nmsparse.examples", fromlist=["x"]).small_cnn(width=0), ArgumentError, r"width must be a positive int, got 0"),
    ("WGSEF lam", lambda t: _wgsef(lam=-1.0), ArgumentError, r"lam must be a finite number >= 0, got -1.0"),
    ("WGSEF method", lambda t: _wgsef(method="fast"), MethodError, r"unknown method 'fast'"),
    ("WGSEF step lr", lambda t: _wgsef().step(float("nan")), ArgumentError, r"lr must be a finite number >= 0, got nan"),
    ("log10_int zero", lambda t: nmsparse.log10_int(0), ArgumentError, r"x must be a positive int, got 0"),
    ("log10_int float", lambda t: nmsparse.log10_int(2.5), ArgumentError, r"x must be a positive int, got float 2.5"),
    ("wgsef_prox step", lambda t: nmsparse.regularizers.wgsef_prox(torch.ones(4), 2, -1.0), ArgumentError, r"step must be a finite number >= 0, got -1.0"),
]


@pytest.mark.parametrize("label, call, cls, pattern", SITES, ids=[s[0] for s in SITES])
def test_former_bare_sites_raise_their_subclass_with_one_line(label, call, cls, pattern, tmp_path):
    with pytest.raises(cls, match=pattern) as info:
        call(tmp_path)
    assert type(info.value) is cls  # the subclass itself, never the bare base
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)
