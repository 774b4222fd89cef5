"""Sparse-IFT transforms: iso-FLOP, sizes, forward equivalence, patterns, checkpoints, bad input."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

import nmsparse as nms
from nmsparse.errors import MethodError, NMSparseError, PatternError, ScoreError, ShapeError
from nmsparse.examples import mlp, small_cnn
from nmsparse.nn import sparsified_parameters
from nmsparse.sift import FAMILIES, SparseDoped, SparseFactorized, SparseParallel, count_flops, transform


def masked_layers(model):
    """(layer name, NMMask, dense weight) of every masked weight."""
    for name, (module, pname) in sparsified_parameters(model).items():
        yield name[: -len(pname) - 1], module.parametrizations[pname][0], module.parametrizations[pname].original

CNN_SHAPE = (1, 1, 8, 8)


def _cnn():
    return small_cnn(width=8, seed=0)


@pytest.mark.parametrize("s", [0.5, 0.75, 0.9])
@pytest.mark.parametrize("family", ["parallel", "factorized", "doped"])
def test_layerwise_families_are_iso_flop_per_layer(family, s):
    dense = _cnn()
    base = count_flops(dense, CNN_SHAPE)
    report = count_flops(transform(dense, family, s), CNN_SHAPE)
    for name in ["conv2", "conv3", "fc1"]:
        assert report.group(name) == pytest.approx(base.layers[name].macs, rel=0.02)
    for name in ["conv1", "fc2"]:  # first and last stay dense and unchanged
        assert report.layers[name].macs == base.layers[name].macs


@settings(max_examples=25, deadline=None)
@given(d_in=st.integers(16, 160), d_out=st.integers(16, 160), s=st.floats(0.3, 0.95),
       family=st.sampled_from(["parallel", "factorized", "doped"]))
def test_iso_flop_property_on_random_mlps(d_in, d_out, s, family):
    dense = mlp(hidden=(d_in, d_out), in_features=8)
    base = count_flops(dense, (1, 8)).layers["fc2"].macs
    got = count_flops(transform(dense, family, s), (1, 8)).group("fc2")
    assert got == pytest.approx(base, rel=0.02)


@pytest.mark.parametrize("s", [0.0, 0.5, 0.75, 0.9])
@pytest.mark.parametrize("make, shape", [(_cnn, CNN_SHAPE), (lambda: mlp((96, 96, 96)), (1, 64))])
def test_wide_matches_whole_network_flops(make, shape, s):
    dense = make()
    sparse = transform(dense, "wide", s, input_shape=shape)
    total, base = count_flops(sparse, shape).total, count_flops(dense, shape).total
    assert abs(total / base - 1) <= 1e-3
    info = sparse.sift_info["layers"]["network"]
    k = math.sqrt(1 / (1 - s))
    last = list(info["widths"])[-1]
    for name, width in info["widths"].items():
        layer = dense.get_submodule(name)
        orig = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
        expect = orig if name == last else round(k * orig)  # the classifier's output is fixed
        assert width == expect
    if s > 0:  # the searched sparsity is a bit above s: the dense first/last layers grew too
        assert 1 - info["density"] >= s
    assert sparse(torch.zeros(shape)).shape == (1, 10)


def test_shapes_of_each_family():
    dense = _cnn()
    par = transform(dense, "parallel", 0.75)
    assert isinstance(par.conv2, SparseParallel) and len(par.conv2.branches) == 4
    assert isinstance(par.bn2, nn.Identity)  # the norm moved into each branch
    assert all(isinstance(b[1], nn.BatchNorm2d) for b in par.conv2.branches)
    fac = transform(dense, "factorized", 0.5)
    d_in, d_out = 8 * 9, 16
    assert isinstance(fac.conv2, SparseFactorized)
    assert fac.conv2.u.out_channels == math.ceil(d_in * d_out / ((d_in + d_out) * 0.5))
    assert fac.conv2.v.kernel_size == (1, 1)
    dop = transform(dense, "doped", 0.5)
    assert isinstance(dop.fc1, SparseDoped)
    assert dop.fc1.u.out_features == round(0.5 * 256 * 64 / (256 + 64))
    for model in (par, fac, dop):
        assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)


@pytest.mark.parametrize("family", ["parallel", "doped"])
@pytest.mark.parametrize("train_mode", [False, True])
def test_zero_sparsity_is_the_dense_function(family, train_mode):
    # Branch 0 of parallel and W of doped reuse the dense weights (and norm state); at s = 0 there
    # is one dense branch / rank 0, so the function is exactly the dense one.
    dense = _cnn()
    dense(torch.randn(64, 1, 8, 8))  # non-trivial BN running statistics
    sparse = transform(dense, family, 0.0)
    dense.train(train_mode), sparse.train(train_mode)
    x = torch.randn(5, 1, 8, 8)
    assert torch.equal(dense(x), sparse(x))


def test_doped_at_init_is_the_masked_dense_layer():
    dense = mlp((32, 32, 32))
    sparse = transform(dense, "doped", 0.75)
    x = torch.randn(4, 32)
    w = torch.where(sparse.fc2.sparse.parametrizations.weight[0].mask, dense.fc2.weight, 0.0)
    assert torch.allclose(sparse.fc2(x), nn.functional.linear(x, w, dense.fc2.bias), atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("pattern", ["2:4", "4:8T"])
def test_patterns_are_respected(family, pattern):
    sparse = transform(_cnn(), family, 0.5, pattern=pattern, input_shape=CNN_SHAPE)
    layers = list(masked_layers(sparse))
    assert layers
    for name, nm, _ in layers:
        assert str(nm.pattern) == pattern and nm.gradient == "masked" and nm.update == "static"
        nms.check_mask(nm.mask, pattern, exact=True)
    assert all(r["status"] == "sparse" for r in nms.nn.summary(sparse).rows)  # summary sees Sparse-IFT masks


def test_pattern_needs_compatible_sparsity():
    with pytest.raises(PatternError, match="sparsity=0.75"):
        transform(_cnn(), "doped", 0.75, pattern="2:4")
    with pytest.raises(PatternError, match="not an integer"):
        transform(mlp((32, 32, 32)), "parallel", 1 - 3 / 8, pattern="3:8")


def test_pruned_weights_are_positive_zero_and_masks_in_state_dict():
    sparse = transform(_cnn(), "wide", 0.75, input_shape=CNN_SHAPE, seed=3)
    for name, nm, dense in masked_layers(sparse):
        pruned = dense[~nm.mask]
        assert torch.equal(pruned, torch.zeros_like(pruned)) and not torch.signbit(pruned).any()
        assert f"{name}.parametrizations.weight.0.mask" in sparse.state_dict()
    other = transform(_cnn(), "wide", 0.75, input_shape=CNN_SHAPE, seed=4)
    mask_of = lambda m: m.conv2.parametrizations.weight[0].mask  # noqa: E731
    assert not torch.equal(mask_of(other), mask_of(sparse))
    other.load_state_dict(sparse.state_dict())
    x = torch.randn(2, 1, 8, 8)
    sparse.eval(), other.eval()
    assert torch.equal(mask_of(other), mask_of(sparse)) and torch.equal(other(x), sparse(x))


def test_deterministic_and_input_untouched():
    dense = _cnn()
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    a = transform(dense, "factorized", 0.9, seed=1)
    b = transform(dense, "factorized", 0.9, seed=1)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert all(torch.equal(v, before[k]) for k, v in dense.state_dict().items())
    assert isinstance(dense.conv2, nn.Conv2d)


def test_include_exclude():
    sparse = transform(_cnn(), "doped", 0.5, include=["conv.*"], exclude=["conv1"])
    assert isinstance(sparse.conv2, SparseDoped) and isinstance(sparse.conv3, SparseDoped)
    assert isinstance(sparse.conv1, nn.Conv2d) and isinstance(sparse.fc1, nn.Linear)


@pytest.mark.parametrize("s", [1.0, -0.1, 1.5, "0.5", True, float("nan")])
def test_bad_sparsity(s):
    with pytest.raises(PatternError, match=r"sparsity is the fraction of weights PRUNED.*a number in \[0, 1\)"):
        transform(_cnn(), "wide", s)


def test_bad_family_and_layers():
    with pytest.raises(MethodError, match="unknown Sparse-IFT family 'deep'.*wide, parallel, factorized, doped"):
        transform(_cnn(), "deep", 0.5)
    with pytest.raises(ShapeError, match="'conv9' matches no"):
        transform(_cnn(), "doped", 0.5, include=["conv9"])
    with pytest.raises(ShapeError, match="no layer left"):
        transform(mlp((32,)), "doped", 0.5)
    with pytest.raises(ShapeError, match="input_shape"):
        transform(_cnn(), "wide", 0.5)
    with pytest.raises(ShapeError, match="nn.Sequential"):
        transform(nn.ModuleDict({"a": nn.Linear(2, 2), "b": nn.Linear(2, 2), "c": nn.Linear(2, 2)}), "wide", 0.5)
    with pytest.raises(ShapeError, match="alone cost"):
        transform(mlp((32, 32, 32)), "wide", 0.9)
    with pytest.raises(NMSparseError, match="groups=2"):
        transform(nn.Sequential(nn.Conv2d(2, 4, 1), nn.Conv2d(4, 4, 1, groups=2), nn.Conv2d(4, 2, 1)), "doped", 0.5)


def test_flop_ratio_recorded_and_warned_when_a_pattern_breaks_iso_flop():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # unstructured transforms are iso-FLOP: no warning
        for family in ["parallel", "factorized", "doped"]:
            info = transform(_cnn(), family, 0.75).sift_info
            assert all(abs(v["flop_ratio"] - 1) <= 0.02 for v in info["layers"].values())
    # 1:10 groups along 8 or 16 input channels: partial groups keep 1 of <= 10, so the density
    # is above 1/10 and 10 branches cost more than the dense layer.
    with pytest.warns(UserWarning, match="not iso-FLOP within 2 %"):
        sparse = transform(_cnn(), "parallel", 0.9, pattern="1:10")
    ratio = sparse.sift_info["layers"]["conv2"]["flop_ratio"]
    dense_conv2 = count_flops(_cnn(), CNN_SHAPE).layers["conv2"].macs
    assert ratio == pytest.approx(count_flops(sparse, CNN_SHAPE).group("conv2") / dense_conv2) and ratio > 1.02


def _conv1d_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(2, 8, 3, padding=1), nn.BatchNorm1d(8), nn.ReLU(), nn.Conv1d(8, 16, 3, padding=1),
                         nn.BatchNorm1d(16), nn.ReLU(), nn.Conv1d(16, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 6, 4))


def _conv3d_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 8, 2), nn.ReLU(), nn.Conv3d(8, 16, 2), nn.ReLU(), nn.Conv3d(16, 8, 1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8, 3))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("make, shape", [(_conv1d_net, (1, 2, 8)), (_conv3d_net, (1, 1, 4, 4, 4))])
@pytest.mark.parametrize("pattern", [None, "2:4"])
def test_conv1d_and_conv3d_layers_transform(family, make, shape, pattern):
    import warnings

    dense = make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small N:M layers may be a few % off iso-FLOP (recorded in sift_info)
        sparse = transform(dense, family, 0.5, pattern=pattern, input_shape=shape)
    base, report = count_flops(dense, shape), count_flops(sparse, shape)
    tol = 1e-3 if family == "wide" else 0.02
    if pattern is None:
        if family == "wide":
            assert report.total == pytest.approx(base.total, rel=tol)
        else:
            for name in sparse.sift_info["layers"]:
                assert report.group(name) == pytest.approx(base.layers[name].macs, rel=tol)
    layers = list(masked_layers(sparse))
    assert layers and all(type(nm).__name__ == "NMMask" for _, nm, _ in layers)
    for _, nm, _ in layers:
        if pattern:
            nms.check_mask(nm.mask, pattern)
    conv_types = {type(m).__bases__[0] if hasattr(m, "parametrizations") else type(m) for m in sparse.modules()}
    assert (nn.Conv1d if make is _conv1d_net else nn.Conv3d) in conv_types and nn.Conv2d not in conv_types
    assert sparse(torch.randn(2, *shape[1:])).shape == dense(torch.randn(2, *shape[1:])).shape
