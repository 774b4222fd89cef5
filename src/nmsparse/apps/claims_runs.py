"""The training runs of the claims report (one process's work; :mod:`.claims` schedules them).

* :func:`run_group` (protocol 1, and the dense reference of protocol 2): train dense once for a
  (task, seed); prune a copy of the trained model to every structure with every one-shot
  algorithm; measure right after pruning and after a fixed-budget fine-tune with the mask fixed.
* :func:`run_scratch` (protocol 2): train sparse from scratch, the masks recomputed from the
  dense weights on a refresh schedule, recording the flip rate (share of mask entries that
  changed) at every refresh.

Every refresh here is driven by the run itself (``sparsify_(..., update="static")`` then
``update_masks_(model, force=True)`` at the scheduled steps), so a fixed and a growing interval go
through the same code, and the entries changed per layer are read from ``nmsparse.nn.summary``.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

import nmsparse

from .claims_common import DENSE_FINETUNED, DENSE_VARIANT, family, log10_diversity_per_64
from .demo import RunSpec
from ..errors import ArgumentError
from ..nn import kept_and_density, sparsify_, summary, update_masks_

DIGITS_DENSE = ("conv1", "fc2")
LM_DENSE = ("head",)  # embeddings are not nn.Linear/Conv, so they are never candidates


def available_algorithms() -> tuple:
    """The one-shot algorithms this build can run: magnitude always; the calibrated ones
    (Wanda, SparseGPT) where ``nmsparse.prune_`` exists."""
    return ("magnitude", "wanda", "sparsegpt") if hasattr(nmsparse, "prune_") else ("magnitude",)


def refresh_steps(total: int, update_every: int, freeze_fraction: float, schedule: str, growth: float) -> List[int]:
    """Steps after which masks are recomputed: every ``update_every`` (``"fixed"``), or at
    intervals ``update_every, update_every·growth, update_every·growth², …`` (``"growing"``), never
    after ``(1 - freeze_fraction) * total`` (masks stay fixed for the end of training)."""
    last = int(total * (1.0 - freeze_fraction))
    if schedule == "fixed":
        return list(range(update_every, last + 1, update_every))
    if schedule != "growing":
        raise ArgumentError(f"bench claims: schedule must be 'fixed' or 'growing', got {schedule!r}; pick one of those.")
    steps, step, interval = [], 0.0, float(update_every)
    while round(step + interval) <= last:
        step += interval
        steps.append(int(round(step)))
        interval *= growth
    return steps


def flip_rate(model: torch.nn.Module) -> float:
    """Share of the sparsified weights' mask entries that changed at the latest refresh."""
    changed = total = 0
    for row in summary(model).rows:
        if row.get("pattern") and row.get("changed") is not None:
            changed += int(row["changed"])
            total += math.prod(row["shape"])
    return changed / total if total else 0.0


def _refresher(steps: Sequence[int], flips: List[list]) -> Callable:
    due = set(steps)

    def after_step(model, step: int) -> None:
        if step in due:
            update_masks_(model, force=True)
            flips.append([step, flip_rate(model)])

    return after_step


def _model(cfg, task: str, seed: int):
    if task == "digits":
        from ..examples import small_cnn

        return small_cnn(width=cfg.digits_width, seed=seed), list(DIGITS_DENSE)
    from ..examples.lm import CharTransformer

    return CharTransformer(d_model=cfg.lm_d_model, n_layers=cfg.lm_layers, n_heads=cfg.lm_heads, d_ff=cfg.lm_d_ff,
                           context=cfg.lm_context, seed=seed), list(LM_DENSE)


def _train(cfg, data: dict, task: str, model, seed: int, *, steps: Optional[int] = None, finetune: bool = False,
           after_step: Optional[Callable] = None) -> Dict[str, object]:
    """Train (or fine-tune) and evaluate; the metric and its value, steps and tokens seen."""
    if task == "digits":
        from ..examples import train

        epochs = cfg.digits_finetune_epochs if finetune else cfg.digits_epochs
        lr = cfg.digits_lr * (cfg.finetune_lr_scale if finetune else 1.0)
        res = train(model, data["digits"], epochs=epochs, lr=lr, seed=seed + (1000 if finetune else 0), after_step=after_step)
        return {"metric": "accuracy", "value": res.accuracy, "steps": res.steps}
    from ..examples.lm import train_lm

    steps = cfg.lm_finetune_steps if finetune else cfg.lm_steps
    lr = cfg.lm_lr * (cfg.finetune_lr_scale if finetune else 1.0)
    res = train_lm(model, data["lm"], steps=steps, batch_size=cfg.lm_batch, lr=lr, warmup=1 if finetune else 20,
                   seed=seed + (1000 if finetune else 0), eval_windows=cfg.lm_eval_windows, after_step=after_step)
    return {"metric": "val_loss", "value": res.val_loss, "val_ppl": res.val_ppl, "steps": res.steps,
            "tokens_seen": res.steps * cfg.lm_batch * cfg.lm_context}


def _evaluate(cfg, data: dict, task: str, model) -> float:
    if task == "digits":
        from ..examples import evaluate

        return evaluate(model, data["digits"].x_test, data["digits"].y_test)
    from ..examples.lm import evaluate_lm

    return evaluate_lm(model, data["lm"].valid, max_windows=cfg.lm_eval_windows)


def calibration_batches(cfg, data: dict, task: str, seed: int) -> List[torch.Tensor]:
    """Model inputs from the training split for the calibrated pruners (fixed per seed)."""
    if task == "digits":
        x = data["digits"].x_train
        g = torch.Generator().manual_seed(10_000 + seed)
        idx = torch.randperm(len(x), generator=g)[: cfg.calib_batches * 64]
        return [x[idx[i : i + 64]] for i in range(0, len(idx), 64)]
    from ..examples.lm import sample_windows

    windows = sample_windows(data["lm"].train, cfg.calib_batches * cfg.lm_batch, cfg.lm_context, seed=10_000 + seed)
    return list(windows.split(cfg.lm_batch))


def prune_model(model, structure: str, algorithm: str, calibration, exclude: Sequence[str]) -> None:
    """Prune ``model`` in place to ``structure`` and fix the masks (the seam to ``nmsparse.prune_``).

    With ``nmsparse.prune_`` (the one-shot pruners) every algorithm goes through it, magnitude
    included, so the algorithms differ only in what they compute. Without it only magnitude
    runs: ``sparsify_(..., update="static")``, the optimal mask of |W| under the structure, fixed.
    """
    spec = RunSpec.parse(structure)
    prune = getattr(nmsparse, "prune_", None)
    if prune is not None:
        prune(model, spec.pattern, calibration=None if algorithm == "magnitude" else calibration, algorithm=algorithm,
              method=spec.method, exclude=list(exclude), attach_masks=True)  # fine-tuned with the masks fixed
    elif algorithm == "magnitude":
        sparsify_(model, spec.pattern, method=spec.method, update="static", exclude=list(exclude))
    else:
        raise ArgumentError(f"bench claims: algorithm {algorithm!r} needs nmsparse.prune_, which this build lacks; use one of {available_algorithms()}.")


def _base(task: str, structure: str, protocol: str, variant: str, seed: int) -> Dict[str, object]:
    return {"protocol": protocol, "task": task, "structure": structure, "family": family(structure), "variant": variant,
            "seed": seed, "log10_div64": log10_diversity_per_64(structure)}


def run_group(cfg, data: dict, task: str, seed: int) -> List[Dict[str, object]]:
    """Protocol 1 for one (task, seed), and protocol 2's dense run (the same trained model)."""
    out = []
    start, cpu = time.perf_counter(), time.process_time()
    dense, exclude = _model(cfg, task, seed)
    trained = _train(cfg, data, task, dense, seed)
    params = sum(p.numel() for p in dense.parameters())
    out.append(dict(_base(task, "dense", "scratch", DENSE_VARIANT, seed), **trained, density=1.0, kept=1.0, params=params,
                    flips=[], seconds=time.perf_counter() - start, cpu_seconds=time.process_time() - cpu))
    state = copy.deepcopy(dense.state_dict())
    calibration = calibration_batches(cfg, data, task, seed)
    jobs = [("dense", DENSE_FINETUNED)] + [(s, a) for s in cfg.structures if s != "dense" for a in cfg.algorithms]
    for structure, algorithm in jobs:
        start, cpu = time.perf_counter(), time.process_time()
        model, _ = _model(cfg, task, seed)
        model.load_state_dict(state)
        if structure != "dense":
            prune_model(model, structure, algorithm, calibration, exclude)
        pruned = _evaluate(cfg, data, task, model)
        tuned = _train(cfg, data, task, model, seed, finetune=True)
        kept, density = kept_and_density(model)
        rec = dict(_base(task, structure, "oneshot", algorithm, seed), **tuned, value_pruned=pruned, density=density,
                   kept=kept, params=params, seconds=time.perf_counter() - start, cpu_seconds=time.process_time() - cpu)
        out.append(rec)
    return out


def run_scratch(cfg, data: dict, task: str, structure: str, schedule: str, seed: int) -> List[Dict[str, object]]:
    """Protocol 2: sparse from scratch under ``schedule``; the flip rate at every refresh."""
    start, cpu = time.perf_counter(), time.process_time()
    spec = RunSpec.parse(structure)
    model, exclude = _model(cfg, task, seed)
    sparsify_(model, spec.pattern, method=spec.method, update="static", exclude=exclude, gradient="ste")
    total = cfg.lm_steps if task == "lm" else cfg.digits_epochs * _digits_steps(data)
    steps = refresh_steps(total, cfg.update_every, cfg.freeze_fraction, schedule, cfg.growth)
    flips: List[list] = []
    trained = _train(cfg, data, task, model, seed, after_step=_refresher(steps, flips))
    kept, density = kept_and_density(model)
    params = sum(p.numel() for p in model.parameters())
    return [dict(_base(task, structure, "scratch", schedule, seed), **trained, density=density, kept=kept, params=params,
                 flips=flips, seconds=time.perf_counter() - start, cpu_seconds=time.process_time() - cpu)]


def _digits_steps(data: dict) -> int:
    from ..examples import steps_per_epoch

    return steps_per_epoch(data["digits"])
