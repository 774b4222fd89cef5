"""Calibrated one-shot pruning of models: ``prune_`` with magnitude, Wanda, SparseGPT, AdaPrune and
chains, for row-wise N:M, transposable N:M and unstructured densities; the block-wise pipeline for
stacks of repeated blocks (in memory, or streamed block by block from a Hugging Face folder); and
AdaPrune's classic entry point. See :func:`prune_` and docs/convert.md."""

from .adaprune import AdaPruneReport, LayerFit, adaprune
from .calibration import reestimate_batchnorm
from .driver import prune_
from .permute import PermuteReport, permute_
from .hessian import inverse_cholesky
from .lsq import lsq_refit
from .report import LayerPrune, PruneReport
from .sparsegpt import sparsegpt
from .wanda import wanda_scores

__all__ = [
    "prune_", "permute_", "PermuteReport", "PruneReport", "LayerPrune",
    "sparsegpt", "wanda_scores", "lsq_refit", "inverse_cholesky",
    "adaprune", "AdaPruneReport", "LayerFit", "reestimate_batchnorm",
]
