"""Campaign: legal torch inputs the library did not expect (issue 20, kind 5).

Each is supported (a right result, checked against the plain case) or refused in one line naming
the layer and the fix, at every entry point that meets it (``sparsify_``, ``prune_``,
``attach_mask_``, ``sift.transform``, ``find_mask``): other parametrizations (weight_norm,
spectral_norm, orthogonal, a user's), the old hook-based weight_norm / spectral_norm, meta weights,
quantized layers and tensors, integer and fp8 weights, sparse layouts, DTensors outside FSDP,
frozen parameters, channels_last and non-contiguous weights, float16 / bfloat16 / float64.
"""

from __future__ import annotations

import os
import tempfile
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import orthogonal, spectral_norm, weight_norm

import nmsparse as nms
from _harness import Case, parametrize as table, run_case
from nmsparse import sift
from nmsparse.errors import ConvertError, MaskError, ScoreError, ShapeError


def _built(factory):
    """Layers built without touching the caller's RNG (the campaign checks global state)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's deprecation notes (old weight_norm, torch.ao)
            return factory()


def _mlp(dtype=torch.float32):
    return _built(lambda: nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8)).to(dtype))


def _first(edit, dtype=torch.float32):
    """The MLP with ``edit`` applied to its first layer."""
    def build():
        m = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8)).to(dtype)
        edit(m[0])
        return m
    return lambda: _built(build)


class Negate(nn.Module):
    def forward(self, w):
        return -w


def _set_weight(value_of):
    def edit(layer):
        layer.weight = nn.Parameter(value_of(layer.weight.detach()), requires_grad=False)
    return edit


PARAMETRIZED = {
    "weight_norm": (lambda layer: weight_norm(layer), "_WeightNorm"),
    "spectral_norm": (lambda layer: spectral_norm(layer), "_SpectralNorm"),
    "orthogonal": (lambda layer: orthogonal(layer), "_Orthogonal"),
    "a user parametrization": (lambda layer: parametrize.register_parametrization(layer, "weight", Negate()), "Negate"),
}
HOOKED = {
    "old weight_norm hook": lambda layer: torch.nn.utils.weight_norm(layer),
    "old spectral_norm hook": lambda layer: torch.nn.utils.spectral_norm(layer),
}


def _skipped(name, reason_rx):
    """sparsify_'s result: ``name`` skipped with a reason matching ``reason_rx``, the other layer masked."""
    import re

    def check(model):
        rows = {r["name"]: r for r in nms.summary(model).rows}
        assert name in rows and re.search(reason_rx, str(rows[name]["status"])), rows.get(name)
        assert nms.is_valid_mask(model[2].parametrizations.weight[0].mask, "2:4T")
    return check


def _pruned_except(name, reason_rx):
    import re

    def check(model):
        assert nms.is_valid_mask(model[2].weight != 0, "2:4T"), "2.weight not pruned"
        report = getattr(model, "_nmsparse_prune_report", None)  # the report, where prune_ leaves one
        if report is not None:
            assert any(n == name and re.search(reason_rx, r) for n, r in report.skipped)
    return check


def _report_skip(build, name, reason_rx, **kwargs):
    """prune_ with a report: ``name`` is left dense with that reason, the rest pruned."""
    import re

    def call():
        from nmsparse.oneshot.report import PruneReport

        report = PruneReport()
        model = nms.prune_(build(), "2:4T", report=report, **kwargs)
        assert any(n == name and re.search(reason_rx, r) for n, r in report.skipped), report.skipped
        assert nms.is_valid_mask(model[2].weight != 0, "2:4T")
        return model
    return call


CASES = []
for label, (edit, cls) in PARAMETRIZED.items():
    CASES += [
        Case(f"sparsify_ skips a layer under {label}", lambda e=edit: nms.sparsify_(_first(e)(), "2:4T"),
             check=_skipped("0.weight", f"already carries the parametrization {cls}.*remove_parametrizations")),
        Case(f"sparsify_ include= a layer under {label}", lambda e=edit: nms.sparsify_(_first(e)(), "2:4T", include="0"),
             ShapeError, rf"layer '0.weight' .*cannot take pattern 2:4T: already carries the parametrization {cls}"),
        Case(f"sparsify_ density on {label}", lambda e=edit: nms.sparsify_(_first(e)(), 0.5),
             check=lambda m: None if "0.weight" not in nms.nn.sparsified_parameters(m) else (_ for _ in ()).throw(AssertionError())),
        Case(f"attach_mask_ on {label}",
             lambda e=edit: nms.nn.attach_mask_(_first(e)(), "0.weight", torch.ones(8, 8, dtype=torch.bool), 0.5),
             MaskError, f"'0.weight' carries the parametrization {cls}, which is not an nmsparse mask"),
        Case(f"prune_ leaves {label} dense", _report_skip(_first(edit), "0.weight", f"already carries the parametrization {cls}.*remove_parametrizations")),
    ]
for label, edit in HOOKED.items():
    CASES += [
        Case(f"sparsify_ skips a layer with the {label}", lambda e=edit: nms.sparsify_(_first(e)(), "2:4T"),
             check=_skipped("0.weight", "recomputed before each forward.*remove_weight_norm")),
        Case(f"sparsify_ include= a layer with the {label}", lambda e=edit: nms.sparsify_(_first(e)(), "2:4T", include="0"),
             ShapeError, "layer '0.weight'.*recomputed before each forward"),
        Case(f"prune_ leaves the {label} dense", _report_skip(_first(edit), "0.weight", "recomputed before each forward")),
        Case(f"prune_ on a model of only {label} layers",
             lambda e=edit: nms.prune_(_built(lambda: nn.Sequential(e(nn.Linear(8, 8)))), "2:4"), ShapeError,
             "no layer to prune.*recomputed before each forward"),
    ]

CASES += [
    Case("sparsify_ include= the old weight_norm's weight_v parameter",
         lambda: nms.sparsify_(_first(HOOKED["old weight_norm hook"])(), "2:4T", include="0.weight_v"),
         check=lambda m: None if list(nms.nn.sparsified_parameters(m)) == ["0.weight_v"] else (_ for _ in ()).throw(AssertionError())),
    Case("weight_norm stacked on an nmsparse mask: sparsify_ again skips it",
         lambda: nms.sparsify_((lambda m: (weight_norm(m[0]), m)[1])(nms.sparsify_(_mlp(), "2:4T")), "2:4"),
         check=lambda m: None),
    Case("weight_norm stacked on an nmsparse mask: squash_ says what to remove",
         lambda: nms.squash_((lambda m: (weight_norm(m[0]), m)[1])(nms.sparsify_(_mlp(), "2:4T"))), MaskError,
         "carries other parametrizations besides the nmsparse mask"),
    Case("sift.transform over a weight_norm layer",
         lambda: sift.transform(_built(lambda: nn.Sequential(nn.Linear(8, 8), nn.ReLU(), weight_norm(nn.Linear(8, 16)),
                                                               nn.ReLU(), nn.Linear(16, 4))), "wide", 0.5), check=lambda m: None),
]

# --- weights without values: the meta device ------------------------------------------------------
_meta = lambda: _mlp().to("meta")  # noqa: E731
_cal = [torch.ones(2, 8)]
CASES += [
    Case("prune_ magnitude on a meta model", lambda: nms.prune_(_meta(), "2:4"), ScoreError,
         r"prune_: layer '0.weight': the weight is on the meta device.*to_empty"),
    Case("prune_ wanda on a meta model", lambda: nms.prune_(_meta(), "2:4", algorithm="wanda", calibration=_cal), ScoreError,
         "meta device"),
    Case("prune_ sparsegpt on a meta model", lambda: nms.prune_(_meta(), "2:4T", algorithm="sparsegpt", calibration=_cal),
         ScoreError, "meta device"),
    Case("prune_ density on a meta model", lambda: nms.prune_(_meta(), 0.5), ScoreError, "meta device"),
    Case("prune_ with one meta layer", lambda: nms.prune_(_first(lambda l: l.to("meta"))(), "2:4"), ScoreError,
         "layer '0.weight': the weight is on the meta device"),
    Case("prune_ excluding the meta layer", lambda: nms.prune_(_first(lambda l: l.to("meta"))(), "2:4", exclude="0"),
         check=lambda m: None if nms.is_valid_mask(m[2].weight != 0, "2:4") else (_ for _ in ()).throw(AssertionError())),
    Case("sparsify_ on a meta model", lambda: nms.sparsify_(_meta(), "2:4T"), ScoreError, "layer '0.weight'.*meta tensor"),
    Case("sparsify_ density on a meta model", lambda: nms.sparsify_(_meta(), 0.5), ScoreError, "meta tensor"),
    Case("sift.transform of a meta model",
         lambda: sift.transform(_built(lambda: nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 16), nn.ReLU(),
                                                               nn.Linear(16, 4))).to("meta"), "wide", 0.5),
         ScoreError, "transform: layer '2': the weight is on the meta device"),
    Case("find_mask of a meta tensor", lambda: nms.find_mask(torch.empty(8, 8, device="meta"), "2:4T"), ScoreError, "meta tensor"),
]

# --- quantized layers and tensors, integer and fp8 weights -----------------------------------------
def _quantized():
    return _built(lambda: torch.ao.quantization.quantize_dynamic(_mlp(), {nn.Linear}, dtype=torch.qint8))


_int8 = _first(_set_weight(lambda w: (w * 10).to(torch.int8)))
_fp8 = _first(_set_weight(lambda w: w.to(torch.float8_e4m3fn)))
_complex = _first(_set_weight(lambda w: w.to(torch.complex64)))
CASES += [
    Case("sparsify_ a dynamically quantized model", lambda: nms.sparsify_(_quantized(), "2:4"), ShapeError,
         r"0.weight: quantized layer \(torch.ao.nn.quantized.dynamic.*float model, then quantize"),
    Case("sparsify_ include= a quantized layer", lambda: nms.sparsify_(_quantized(), "2:4", include="0"), ShapeError,
         "layer '0.weight'.*quantized layer"),
    Case("prune_ a dynamically quantized model", lambda: nms.prune_(_quantized(), "2:4"), ShapeError,
         "no layer to prune.*quantized layer"),
    Case("find_mask of a quantized tensor",
         lambda: nms.find_mask(torch.quantize_per_tensor(torch.ones(8, 8), 0.1, 0, torch.qint8), "2:4"), ScoreError,
         r"quantized tensor \(torch.qint8\).*dequantize"),
    Case("sparsify_ skips an int8 weight", lambda: nms.sparsify_(_int8(), "2:4T"),
         check=_skipped("0.weight", "dtype torch.int8 is not a floating-point type")),
    Case("sparsify_ include= an int8 weight", lambda: nms.sparsify_(_int8(), "2:4T", include="0"), ShapeError,
         "'0.weight'.*dtype torch.int8"),
    Case("prune_ leaves an int8 weight dense", _report_skip(_int8, "0.weight", "dtype torch.int8")),
    Case("sparsify_ skips an fp8 weight", lambda: nms.sparsify_(_fp8(), "2:4T"), check=_skipped("0.weight", "float8")),
    Case("prune_ leaves an fp8 weight dense", _report_skip(_fp8, "0.weight", "float8")),
    Case("sparsify_ skips a complex weight", lambda: nms.sparsify_(_complex(), "2:4T"), check=_skipped("0.weight", "complex64")),
    Case("find_mask of an int tensor", lambda: nms.find_mask(torch.ones(8, 8, dtype=torch.int32), "2:4"), ScoreError,
         "dtype torch.int32.*floating"),
]

# --- sparse layouts --------------------------------------------------------------------------------
for layout, to in (("sparse_coo", lambda w: w.to_sparse()), ("sparse_csr", lambda w: w.to_sparse_csr())):
    build = _first(_set_weight(to))
    CASES += [
        Case(f"sparsify_ a {layout} weight", lambda b=build: nms.sparsify_(b(), "2:4T"), ShapeError,
             f"layer '0.weight'.*layout torch.{layout}.*to_dense"),
        Case(f"prune_ a {layout} weight", lambda b=build: nms.prune_(b(), "2:4T"), ShapeError,
             f"prune_: layer '0.weight': the weight has layout torch.{layout}.*to_dense"),
        Case(f"prune_ sparsegpt a {layout} weight", lambda b=build: nms.prune_(b(), "2:4", algorithm="sparsegpt", calibration=_cal),
             ShapeError, f"layout torch.{layout}"),
        Case(f"prune_ excluding the {layout} weight", lambda b=build: nms.prune_(b(), "2:4", exclude="0"),
             check=lambda m: None if nms.is_valid_mask(m[2].weight != 0, "2:4") else (_ for _ in ()).throw(AssertionError())),
        Case(f"find_mask of a {layout} tensor", lambda t=to: nms.find_mask(t(torch.ones(8, 8)), "2:4"), ShapeError,
             f"layout torch.{layout}"),
    ]
CASES += [
    Case("sift.transform over a sparse_coo weight",
         lambda: sift.transform(_built(lambda: (lambda m: (_set_weight(lambda w: w.to_sparse())(m[2]), m)[1])(
             nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)))), "wide", 0.5),
         ShapeError, "transform: layer '2': the weight has layout torch.sparse_coo"),
]


# --- frozen, channels_last and non-contiguous weights, half and double precision --------------------
def _frozen():
    m = _mlp()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def _trained_step(model, dtype=torch.float32):
    model.train()
    x = torch.ones(4, 8, dtype=dtype)
    out = model(x).float().sum()
    if out.requires_grad:
        out.backward()
    model(x)
    return model


def _frozen_kept(model):
    assert all(not p.requires_grad for p in model.parameters()), "requires_grad changed"
    masks = nms.nn.sparsified_parameters(model)
    if masks:
        for module, pname in masks.values():
            assert nms.is_valid_mask(module.parametrizations[pname][0].mask, "2:4T")
    else:
        assert nms.is_valid_mask(model[0].weight != 0, "2:4T")


def _conv(channels_last=False):
    def build():
        m = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        return m.to(memory_format=torch.channels_last) if channels_last else m
    return _built(build)


_X = torch.linspace(-1, 1, 2 * 8 * 6 * 6).reshape(2, 8, 6, 6)


def _same_as_contiguous(run):
    def call():
        plain, cl = run(_conv(False), _X), run(_conv(True), _X.contiguous(memory_format=torch.channels_last))
        for a, b in zip(plain.parameters(), cl.parameters()):  # the same mask; values up to the conv's summation order
            a, b = a.detach(), b.detach()
            assert torch.equal(a != 0, b != 0) and torch.allclose(a, b, rtol=1e-3, atol=1e-5), "channels_last changed the result"
        return cl
    return call


def _transposed_view():
    def edit(layer):
        layer.weight = nn.Parameter(layer.weight.detach().t().contiguous().t())  # a non-contiguous Parameter
    return _first(edit)()


CASES += [
    Case("sparsify_ frozen parameters, then a training pass", lambda: _trained_step(nms.sparsify_(_frozen(), "2:4T", update_every=1)),
         check=_frozen_kept),
    Case("prune_ sparsegpt on frozen parameters", lambda: nms.prune_(_frozen(), "2:4T", algorithm="sparsegpt", calibration=_cal),
         check=_frozen_kept),
    Case("prune_ adaprune on frozen parameters", lambda: nms.prune_(_frozen(), "2:4T", algorithm="adaprune", calibration=_cal,
                                                                    iterations=2), check=_frozen_kept),
    Case("sparsify_ channels_last convs", _same_as_contiguous(lambda m, x: nms.squash_(nms.sparsify_(m, "2:4T"))),
         check=lambda m: None),
    Case("prune_ magnitude channels_last convs", _same_as_contiguous(lambda m, x: nms.prune_(m, "2:4T")), check=lambda m: None),
    Case("prune_ sparsegpt channels_last convs",
         _same_as_contiguous(lambda m, x: nms.prune_(m, "2:4T", algorithm="sparsegpt", calibration=[x])), check=lambda m: None),
    Case("prune_ wanda channels_last convs",
         _same_as_contiguous(lambda m, x: nms.prune_(m, "2:4", algorithm="wanda", calibration=[x])), check=lambda m: None),
    Case("sparsify_ a non-contiguous weight", lambda: nms.squash_(nms.sparsify_(_transposed_view(), "2:4T")),
         check=lambda m: None if torch.equal(m[0].weight, nms.squash_(nms.sparsify_(_mlp(), "2:4T"))[0].weight)
         else (_ for _ in ()).throw(AssertionError("non-contiguous weight gave another mask"))),
    Case("prune_ a non-contiguous weight", lambda: nms.prune_(_transposed_view(), "2:4T", algorithm="sparsegpt", calibration=_cal),
         check=lambda m: None if torch.allclose(m[0].weight, nms.prune_(_mlp(), "2:4T", algorithm="sparsegpt", calibration=_cal)[0].weight)
         else (_ for _ in ()).throw(AssertionError("non-contiguous weight gave another result"))),
]


def _dtype_kept(dtype, pattern="2:4T"):
    def check(model):
        for layer in (model[0], model[2]):
            assert layer.weight.dtype == dtype, layer.weight.dtype
            assert torch.isfinite(layer.weight.float()).all()
            assert nms.is_valid_mask(layer.weight != 0, pattern)
    return check


for dtype in (torch.float16, torch.bfloat16, torch.float64):
    name = str(dtype).replace("torch.", "")
    cal = [torch.linspace(-1, 1, 32).reshape(4, 8).to(dtype)]
    CASES += [
        Case(f"sparsify_ {name} and a training pass", lambda d=dtype: _trained_step(nms.sparsify_(_mlp(d), "2:4T", update_every=1), d),
             check=_dtype_kept(dtype)),
        Case(f"sparsify_ {name} density", lambda d=dtype: nms.sparsify_(_mlp(d), 0.5),
             check=lambda m, d=dtype: None if m[0].weight.dtype == d else (_ for _ in ()).throw(AssertionError())),
        Case(f"prune_ magnitude {name}", lambda d=dtype: nms.prune_(_mlp(d), "2:4T"), check=_dtype_kept(dtype)),
        Case(f"prune_ wanda {name}", lambda d=dtype, c=cal: nms.prune_(_mlp(d), "2:4", algorithm="wanda", calibration=c),
             check=_dtype_kept(dtype, "2:4")),
        Case(f"prune_ sparsegpt {name}", lambda d=dtype, c=cal: nms.prune_(_mlp(d), "2:4T", algorithm="sparsegpt", calibration=c),
             check=_dtype_kept(dtype)),
        Case(f"prune_ {name} model with float32 calibration",
             lambda d=dtype: nms.prune_(_mlp(d), "2:4", algorithm="wanda", calibration=_cal), ConvertError,
             "failed on calibration batch 0.*dtype"),
        Case(f"find_mask {name}", lambda d=dtype: nms.find_mask(torch.linspace(-1, 1, 64).reshape(8, 8).to(d), "2:4T"),
             check=lambda m: None if nms.is_valid_mask(m, "2:4T") and int(m.sum()) == 32 else (_ for _ in ()).throw(AssertionError())),
    ]


@table(CASES)
def test_torch_inputs(case):
    run_case(case)


# --- DTensor outside FSDP: a one-process gloo group (file rendezvous: no port) ---------------------
@pytest.fixture(scope="module")
def mesh():
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available() or dist.is_initialized():
        pytest.skip("torch.distributed unavailable, or a process group already exists")
    try:
        from torch.distributed.device_mesh import init_device_mesh
    except ImportError:
        pytest.skip("no torch.distributed.device_mesh")
    store = tempfile.NamedTemporaryFile(prefix="nmsparse-gloo-", delete=False)
    store.close()
    os.unlink(store.name)
    dist.init_process_group("gloo", init_method=f"file://{store.name}", rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()
        if os.path.exists(store.name):
            os.unlink(store.name)


def _sharded(mesh):
    from torch.distributed.tensor import Shard, distribute_tensor

    m = _mlp()
    m[0].weight = nn.Parameter(distribute_tensor(m[0].weight.detach(), mesh, [Shard(0)]))
    return m


DTENSOR = [
    ("sparsify_ a DTensor weight", lambda mesh: nms.sparsify_(_sharded(mesh), "2:4"), ShapeError,
     r"layer '0.weight': the weight is a DTensor.*distribute_tensor.*sparsify_ on the plain model"),
    ("prune_ a DTensor weight", lambda mesh: nms.prune_(_sharded(mesh), "2:4"), ShapeError,
     r"prune_: layer '0.weight': the weight is a DTensor.*full_tensor"),
    ("prune_ excluding the DTensor weight", lambda mesh: nms.prune_(_sharded(mesh), "2:4", exclude="0"), None, None),
    ("find_mask of a DTensor", lambda mesh: nms.find_mask(_sharded(mesh)[0].weight.detach(), "2:4"), ShapeError,
     r"find_mask: weight is a DTensor.*full_tensor\(\).*to_local\(\)"),
    ("unstructured_mask of a DTensor", lambda mesh: nms.unstructured_mask(_sharded(mesh)[0].weight, 0.5), ShapeError, "DTensor"),
    ("find_mask of the DTensor's local shard", lambda mesh: nms.find_mask(_sharded(mesh)[0].weight.detach().to_local(), "2:4"),
     None, None),
]


@pytest.mark.parametrize("label,call,error,match", DTENSOR, ids=[d[0] for d in DTENSOR])
def test_dtensor_outside_fsdp(mesh, label, call, error, match):
    run_case(Case(label, lambda: call(mesh), error, match))
