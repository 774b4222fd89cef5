"""The main job, ``nmsparse demo``: train a small CNN dense and under several sparsity structures.

Every run trains the same CNN (same initial weights, same batches) on scikit-learn's bundled
digits, so the only difference between rows is the mask structure. Sparse runs use dynamic
masks recomputed from the dense weights every ``update_every`` steps with straight-through
gradients (Hubara et al. 2021; Zhou et al. 2021). The first and last layers stay dense, as usual.

Columns: test accuracy; log10 of how many masks the structure allows on a block of 64 weights
(an 8x8 tile: more masks = more freedom = usually better accuracy, the paper's "mask
diversity"); the share of sum |W| the final masks keep (of the dense weights they were chosen
from); wall-clock seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, Iterator, Optional, Sequence

import torch

from ..diversity import log10_masks_per_64
from ..errors import ArgumentError, PatternError
from ..examples import load_digits_split, small_cnn, steps_per_epoch, train
from ..masks.methods import resolve_method
from ..nn import kept_and_density, sparsify_
from ..pattern import NMPattern

DEFAULT_RUNS = ("dense", "50%", "2:4", "2:4T@exact", "2:4T@greedy", "4:8T@exact")
DENSE_LAYERS = ("conv1", "fc2")  # first and last layer


@dataclass(frozen=True)
class RunSpec:
    """One demo row: ``"dense"``, ``"50%"`` (unstructured), ``"2:4"``, ``"2:4T@greedy"``."""

    label: str
    pattern: object  # None (dense), float (unstructured density) or NMPattern
    method: Optional[str]

    @classmethod
    def parse(cls, text: str) -> "RunSpec":
        t = text.strip()
        if t == "dense":
            return cls("dense", None, None)
        if t.endswith("%"):
            try:
                density = float(t[:-1]) / 100.0
            except ValueError:
                density = -1.0
            if not 0.0 < density < 1.0:
                raise PatternError(f"demo: a density run is the kept share strictly between 0% and 100%, got {text!r}; write e.g. '50%'.")
            return cls(f"unstructured {t}", density, None)
        pattern_text, _, method = t.partition("@")
        pattern = NMPattern.parse(pattern_text)
        # The library's one resolution: default and the "exact" alias resolved once, stored resolved.
        method = resolve_method(pattern, method or None, "demo")
        label = f"{pattern} ({method})" if pattern.transposable else str(pattern)
        return cls(label, pattern, method)


def diversity_per_64(spec: RunSpec) -> float:
    """log10 of the number of masks the run's structure allows on an 8x8 block of weights
    (:func:`nmsparse.diversity.log10_masks_per_64`, the figure the claims report prints too)."""
    return log10_masks_per_64(spec.pattern)


def run_demo(
    runs: Sequence[str] = DEFAULT_RUNS,
    *,
    epochs: int = 15,
    seed: int = 0,
    width: int = 16,
    update_every: int = 20,
    progress=None,
) -> Iterator[Dict[str, object]]:
    """Train one model per run spec and yield a result row as each finishes.

    Row keys: run, accuracy, log10_masks_64, kept (share of sum |W| of the sparsified layers'
    dense weights that the final masks keep; 1 for dense), density (of those layers), seconds.
    """
    specs = [RunSpec.parse(r) for r in runs]
    if epochs < 1:
        raise ArgumentError(f"demo: --epochs must be at least 1, got {epochs}; pass e.g. --epochs 15.")
    data = load_digits_split(seed=seed)
    steps = epochs * steps_per_epoch(data)
    warm_up_solvers(specs)
    for spec in specs:
        start = time.perf_counter()
        model = small_cnn(width=width, seed=seed)
        if spec.pattern is not None:
            sparsify_(model, spec.pattern, method=spec.method, update_every=update_every, exclude=list(DENSE_LAYERS))
        if progress is not None:
            progress.set_label(spec.label)
        result = train(model, data, epochs=epochs, seed=seed, progress=progress)
        kept, density = kept_and_density(model)
        yield {
            "run": spec.label,
            "accuracy": result.accuracy,
            "log10_masks_64": diversity_per_64(spec),
            "kept": kept,
            "density": density,
            "seconds": time.perf_counter() - start,
            "steps": steps,
        }


def warm_up_solvers(specs: Sequence[RunSpec]) -> None:
    """Load (on a very first run: compile) each solver on a tiny matrix, so no run is charged for it."""
    from ..masks import find_mask

    tiny = torch.rand(16, 16, generator=torch.Generator().manual_seed(0))
    for spec in specs:
        if isinstance(spec.pattern, NMPattern) and not spec.pattern.is_dense:
            find_mask(tiny, spec.pattern, method=spec.method)
