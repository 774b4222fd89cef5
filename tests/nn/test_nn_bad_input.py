"""Bad input to the nn API: one clear library error that names the layer and the fix."""

import pytest
import torch
from torch import nn

import nmsparse as nms
from nmsparse.nn import sparsify_, squash_, update_masks_


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 6))


@pytest.mark.parametrize(
    "kwargs, error, text",
    [
        ({"pattern": "2:4T", "method": "fastest"}, nms.MethodError, "known methods: exact, greedy, refine"),
        ({"pattern": "2:4", "method": "greedy"}, nms.MethodError, "known methods: topn"),
        ({"pattern": 0.5, "method": "greedy"}, nms.MethodError, "top-k"),
        ({"pattern": "5:4"}, nms.PatternError, "1 <= n <= m"),
        ({"pattern": 1.5}, nms.NMSparseError, "(0, 1]"),
        ({"pattern": "2:4", "gradient": "sr-ste"}, nms.NMSparseError, "gradient must be one of"),
        ({"pattern": "2:4", "update_every": 0}, nms.NMSparseError, "update_every must be a positive int"),
        ({"pattern": "2:4", "update_every": 2.5}, nms.NMSparseError, "update_every"),
        ({"pattern": "2:4", "srste_decay": -1.0}, nms.NMSparseError, "srste_decay"),
        ({"pattern": "2:4", "kernels": "cuda"}, nms.NMSparseError, "kernels must be one of"),
        ({"pattern": "2:4", "include": "fc["}, nms.NMSparseError, "not a valid regular expression"),
        ({"pattern": "2:4T", "include": "2"}, nms.NMSparseError, "layer '2.weight' with shape (6, 16)"),
        ({"pattern": "2:4", "include": "nothing_here"}, nms.NMSparseError, "no layer can take"),
    ],
)
def test_bad_arguments(kwargs, error, text):
    model = _model()
    pattern = kwargs.pop("pattern")
    with pytest.raises(error) as exc:
        sparsify_(model, pattern, **kwargs)
    assert text in str(exc.value)
    assert not hasattr(model, "_nmsparse_state")  # nothing attached on error


def test_explicit_ineligible_layer_names_layer_and_reason():
    model = nn.Sequential(nn.Conv2d(3, 8, 3))
    with pytest.raises(nms.NMSparseError, match=r"layer '0.weight'.*in_channels=3 is not a multiple of m=4"):
        sparsify_(model, "2:4", include="0")


def test_nan_weight_names_layer_and_leaves_model_untouched():
    model = _model()
    with torch.no_grad():
        model[2].weight[1, 3] = float("nan")
    with pytest.raises(nms.ScoreError, match=r"layer '2.weight'"):
        sparsify_(model, "2:4")
    assert not any(hasattr(m, "parametrizations") for m in model.modules())


def test_nan_during_training_names_layer():
    model = sparsify_(_model(), "2:4", update_every=1)
    with torch.no_grad():
        model[0].parametrizations.weight.original[0, 0] = float("inf")
    with pytest.raises(nms.ScoreError, match=r"layer '0.weight'"):
        model(torch.randn(2, 16))


def test_already_sparsified_layer_refuses_without_replace():
    model = sparsify_(_model(), "2:4")
    with pytest.raises(nms.MaskError, match=r"'0.weight' already carries an nmsparse mask \(2:4.*masks never stack.*replace=True"):
        sparsify_(model, "2:4T", include="0", replace=False)
    assert str(model[0].parametrizations.weight[0].pattern) == "2:4"  # untouched


def test_not_a_module_and_not_sparsified():
    with pytest.raises(nms.NMSparseError, match="torch.nn.Module"):
        sparsify_(torch.randn(4, 4), "2:4")
    for fn in (update_masks_, squash_):
        with pytest.raises(nms.NMSparseError, match="has not been sparsified"):
            fn(_model())
