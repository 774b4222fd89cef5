"""Sparse linear products against the dense reference (CPU always; the CUDA 2:4 path when present)."""

import warnings

import pytest
import torch
from torch import nn

import nmsparse as nms
from nmsparse.nn import CompressedWeight, sparse_linear, sparsify_, squash_
from nmsparse.nn.sparse_linear import SemiStructuredForward, semi_structured_unsupported


def _reference(x, w, mask, b, decay):
    """Autograd through the plainly masked weight, with the STE/SR-STE gradient mapped back by hand."""
    wm = torch.where(mask, w, torch.zeros((), dtype=w.dtype)).detach().requires_grad_(True)
    xr = x.detach().requires_grad_(True)
    br = None if b is None else b.detach().requires_grad_(True)
    y = torch.nn.functional.linear(xr, wm, br)
    return y, xr, wm, br


@pytest.mark.parametrize("batch_shape", [(5,), (2, 3)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("decay", [0.0, 0.05])
def test_sparse_linear_matches_masked_dense(batch_shape, bias, decay):
    torch.manual_seed(0)
    w = torch.randn(16, 24, dtype=torch.float64, requires_grad=True)
    mask = nms.find_mask(w.detach(), "2:4")
    b = torch.randn(16, dtype=torch.float64, requires_grad=True) if bias else None
    x = torch.randn(*batch_shape, 24, dtype=torch.float64, requires_grad=True)
    y = sparse_linear(x, w, mask, b, srste_decay=decay)
    y_ref, xr, wm, br = _reference(x, w, mask, b, decay)
    torch.testing.assert_close(y, y_ref)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, xr.grad)
    expected_w = wm.grad + decay * torch.where(mask, torch.zeros((), dtype=w.dtype), w.detach())
    torch.testing.assert_close(w.grad, expected_w)
    if bias:
        torch.testing.assert_close(b.grad, br.grad)


def test_sparse_linear_gradcheck():
    torch.manual_seed(1)
    w = torch.randn(8, 8, dtype=torch.float64, requires_grad=True)
    mask = nms.find_mask(w.detach(), "2:4T")
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    b = torch.randn(8, dtype=torch.float64, requires_grad=True)
    # d/dx and d/db are true gradients; d/dW is the straight-through gradient, so check only x and b.
    assert torch.autograd.gradcheck(lambda x, b: sparse_linear(x, w.detach(), mask, b), (x, b))


def test_auto_kernels_on_cpu_equal_the_parametrized_forward():
    torch.manual_seed(0)
    auto = sparsify_(nn.Sequential(nn.Linear(32, 16)), "2:4T", kernels="auto")
    torch.manual_seed(0)
    dense = sparsify_(nn.Sequential(nn.Linear(32, 16)), "2:4T", kernels="dense")
    assert isinstance(auto[0].__dict__.get("forward"), SemiStructuredForward)
    assert "forward" not in dense[0].__dict__
    x = torch.randn(4, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # CPU is the reference path, not a fallback: no notice
        assert torch.equal(auto(x), dense(x))
    squash_(auto)
    assert "forward" not in auto[0].__dict__


def test_unsupported_reasons_on_cpu():
    w = torch.zeros(64, 64)
    assert "not on a CUDA device" in semi_structured_unsupported(w, torch.zeros(1, 64))


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_semi_structured_matches_dense_reference_on_cuda(dtype):
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("2:4 sparse tensor cores need compute capability 8.0+")
    torch.manual_seed(0)
    w = torch.randn(256, 512, device="cuda", dtype=dtype, requires_grad=True)
    mask = nms.find_mask(w.detach(), "2:4T")
    x = torch.randn(128, 512, device="cuda", dtype=dtype, requires_grad=True)
    cache = CompressedWeight()
    compressed = cache.get(w, mask, transposable=True)
    y = sparse_linear(x, w, mask, compressed=compressed)
    y_ref, xr, wm, _ = _reference(x, w, mask, None, 0.0)
    torch.testing.assert_close(y, y_ref, rtol=2e-2, atol=2e-2)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, xr.grad, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(w.grad, wm.grad, rtol=2e-2, atol=2e-2)
    assert cache.get(w, mask, True) is cache and cache.forward is compressed.forward  # no re-compression
    with torch.no_grad():
        w.add_(1.0)
    old = cache.forward
    cache.get(w, mask, True)
    assert cache.forward is not old  # re-compressed after a weight update


@pytest.mark.gpu
@needs_cuda
def test_sparsified_linear_on_cuda_matches_cpu_reference():
    torch.manual_seed(0)
    model = sparsify_(nn.Sequential(nn.Linear(512, 256)), "2:4T", kernels="auto")
    x = torch.randn(64, 512)
    ref = model(x)
    model = model.cuda().half()
    with warnings.catch_warnings(record=True):
        out = model(x.cuda().half()).float().cpu()
    torch.testing.assert_close(out, ref, rtol=3e-2, atol=3e-2)
