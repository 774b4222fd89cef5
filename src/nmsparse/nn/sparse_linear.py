"""Sparse products for linear layers: ``y = x (W⊙S)ᵀ`` and ``dx = dy (W⊙S)`` with a dense ``dW``.

With a transposable mask S, ``W⊙S`` is n:m along ``in`` (the forward's reduction dimension) and
``(W⊙S)ᵀ`` is n:m along ``out`` (the input-gradient product's reduction dimension), so both
products can use 2:4 sparse tensor cores (Hubara et al. 2021, Sec. 3). The weight gradient
``dW = dyᵀ x`` stays dense: it is the straight-through gradient of the dense weight.

On CPU (and wherever the sparse kernels do not apply) the products are the masked dense ones,
which are the reference. On CUDA with fp16/bf16 and shapes PyTorch's semi-structured kernels
accept, ``W⊙S`` and ``(W⊙S)ᵀ`` are compressed once per weight update (the cache key is the
weight's and mask's version counters) and reused by every call until the weight changes.
"""

from __future__ import annotations

import warnings
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..pattern import NMPattern
from .ste import masked

_NOTICES: set = set()


class CompressedWeight:
    """Semi-structured copies of ``W⊙S`` (forward) and, if transposable, ``(W⊙S)ᵀ`` (backward)."""

    def __init__(self) -> None:
        self.key: Optional[tuple] = None
        self.forward: Optional[torch.Tensor] = None
        self.transposed: Optional[torch.Tensor] = None

    def get(self, weight: torch.Tensor, mask: torch.Tensor, transposable: bool) -> "CompressedWeight":
        key = (weight.data_ptr(), weight._version, mask.data_ptr(), mask._version, weight.dtype)
        if key != self.key:
            from torch.sparse import to_sparse_semi_structured

            dense = masked(weight.detach(), mask)
            self.forward = to_sparse_semi_structured(dense.contiguous())
            self.transposed = to_sparse_semi_structured(dense.t().contiguous()) if transposable else None
            self.key = key
        return self


class _SparseLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, mask, bias, decay, compressed):
        w = masked(weight, mask)
        if compressed is not None:
            y = F.linear(x, compressed.forward)
            if bias is not None:
                y = y + bias
        else:
            y = F.linear(x, w, bias)
        ctx.decay = float(decay)
        ctx.has_bias = bias is not None
        ctx.transposed = compressed.transposed if compressed is not None else None
        ctx.save_for_backward(x, weight, mask)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, mask = ctx.saved_tensors
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            if ctx.transposed is not None:
                # dx = dy (W⊙S) = dy ((W⊙S)ᵀ)ᵀ: a linear with the compressed transpose.
                dx = F.linear(dy, ctx.transposed)
            else:
                dx = dy.matmul(masked(weight, mask))
        if ctx.needs_input_grad[1]:
            dw = dy.reshape(-1, dy.shape[-1]).t().matmul(x.reshape(-1, x.shape[-1]))
            if ctx.decay:
                dw = dw + ctx.decay * torch.where(mask, torch.zeros((), dtype=weight.dtype, device=weight.device), weight)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            db = dy.reshape(-1, dy.shape[-1]).sum(0)
        return dx, dw, None, db, None, None


def sparse_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    *,
    srste_decay: float = 0.0,
    compressed: Optional[CompressedWeight] = None,
) -> torch.Tensor:
    """``x (W⊙S)ᵀ + b`` whose backward is ``dx = dy (W⊙S)``, ``dW = dyᵀx (+ SR-STE decay)``.

    Parameters
    ----------
    x : torch.Tensor
        ``(..., in)`` input.
    weight : torch.Tensor
        Dense ``(out, in)`` weight; it receives the straight-through (dense) gradient.
    mask : torch.Tensor
        Bool ``(out, in)``; True = kept.
    bias : torch.Tensor, optional
        ``(out,)``.
    srste_decay : float
        SR-STE's λ: adds ``λ (1 − S) ⊙ W`` to the weight gradient.
    compressed : CompressedWeight, optional
        Semi-structured copies from :meth:`CompressedWeight.get` (CUDA only); None computes the
        masked dense products, the reference.

    Examples
    --------
    >>> w = torch.randn(8, 8, requires_grad=True)
    >>> s = torch.tensor([[1, 1, 0, 0]] * 16, dtype=torch.bool).reshape(8, 8)
    >>> y = sparse_linear(torch.randn(2, 8), w, s)
    >>> y.shape
    torch.Size([2, 8])
    """
    return _SparseLinear.apply(x, weight, mask, bias, srste_decay, compressed)


def wants_semi_structured(module: nn.Module, pname: str, pattern) -> bool:
    """Whether ``sparsify_(kernels="auto")`` routes this layer through :class:`SemiStructuredForward`."""
    return (
        isinstance(module, nn.Linear)
        and pname == "weight"
        and isinstance(pattern, NMPattern)
        and (pattern.n, pattern.m) == (2, 4)
    )


def semi_structured_unsupported(weight: torch.Tensor, x: torch.Tensor) -> Optional[str]:
    """Why the semi-structured kernels cannot run this product (None if they can)."""
    if not weight.is_cuda:
        return "the layer is not on a CUDA device"
    if weight.dtype not in (torch.float16, torch.bfloat16) or x.dtype != weight.dtype:
        return f"dtype {weight.dtype} (input {x.dtype}); the kernels need fp16 or bf16 for both"
    major, _ = torch.cuda.get_device_capability(weight.device)
    if major < 8:
        return f"compute capability {major}.x; 2:4 sparse tensor cores need 8.0 or newer"
    min_rows, min_cols = _min_shape(weight.dtype)
    out_f, in_f = weight.shape
    for rows, cols, what in ((out_f, in_f, "W"), (in_f, out_f, "Wᵀ")):
        if rows % min_rows or cols % min_cols:
            return f"{what} shape ({rows}, {cols}) is not a multiple of ({min_rows}, {min_cols})"
    return None


def _min_shape(dtype: torch.dtype) -> Tuple[int, int]:
    from torch.sparse import SparseSemiStructuredTensor
    from torch.sparse.semi_structured import (
        SparseSemiStructuredTensorCUSPARSELT,
        SparseSemiStructuredTensorCUTLASS,
    )

    cls = SparseSemiStructuredTensorCUTLASS if SparseSemiStructuredTensor._FORCE_CUTLASS else SparseSemiStructuredTensorCUSPARSELT
    cfg = cls._DTYPE_SHAPE_CONSTRAINTS[dtype]
    # Both backends' constraints (cuSPARSELt may be missing at run time): take the stricter.
    other = SparseSemiStructuredTensorCUTLASS._DTYPE_SHAPE_CONSTRAINTS.get(dtype, cfg)
    return max(cfg.sparse_min_rows, other.sparse_min_rows), max(cfg.sparse_min_cols, other.sparse_min_cols)


def _notice(layer: str, reason: str) -> None:
    key = (layer, reason)
    if key not in _NOTICES:
        _NOTICES.add(key)
        warnings.warn(
            f"nmsparse: layer {layer!r} uses the masked dense product instead of 2:4 sparse kernels: {reason}.",
            RuntimeWarning,
            stacklevel=3,
        )


class SemiStructuredForward:
    """Instance-level ``forward`` for a 2:4(T) ``nn.Linear``: sparse kernels on CUDA, else dense.

    Installed by ``sparsify_(kernels="auto")`` and removed by ``squash_``. Off CUDA it calls the
    ordinary parametrized forward, so CPU results are exactly those of the masked dense model.
    A one-time warning says why a CUDA layer falls back (dtype, shape, device capability).
    """

    def __init__(self, module: nn.Linear, name: str, pattern: NMPattern):
        self.module = module
        self.name = name
        self.transposable = pattern.transposable
        self.cache = CompressedWeight()
        self.disabled: Optional[str] = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        module = self.module
        if not x.is_cuda:
            return type(module).forward(module, x)
        from .parametrization import NMMask

        weight = module.parametrizations.weight.original
        mask_param = next(p for p in module.parametrizations.weight if isinstance(p, NMMask))
        reason = self.disabled or semi_structured_unsupported(weight, x)
        if reason is None:
            try:
                compressed = self.cache.get(weight, mask_param.mask, self.transposable)
                return sparse_linear(x, weight, mask_param.mask, module.bias, srste_decay=mask_param.decay, compressed=compressed)
            except (RuntimeError, NotImplementedError) as err:  # kernel missing in this build
                self.disabled = reason = f"semi-structured kernels failed ({err})"
        _notice(self.name, reason)
        return type(module).forward(module, x)
