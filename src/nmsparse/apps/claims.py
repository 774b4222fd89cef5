"""``nmsparse bench claims``: test the papers' accuracy claims at CPU scale, with seeds.

Two tasks, each trained for several seeds under every structure at density 1/2:

* ``digits``: the small CNN of :mod:`nmsparse.examples.digits` on scikit-learn's digits (test accuracy);
* ``lm``: the byte-level transformer of :mod:`nmsparse.examples.lm` on the interpreter's own
  standard-library sources (validation loss in nats per byte and perplexity ``exp(loss)``).

Structures: dense, unstructured 50 % (top-k per tensor), row-wise 1:2 / 2:4 / 4:8, transposable
2:4T / 4:8T / 8:16T with the exact and the greedy (2-approximation) solver; each sparse structure
with STE and with SR-STE (Zhou et al. 2021, eq. 4). Masks are recomputed from the dense weights
every ``update_every`` steps (Hubara et al. 2021, Sec. 5) and frozen for the last
``freeze_fraction`` of the steps. The first and last layers (digits: ``conv1, fc2``; LM:
embeddings and ``head``) stay dense. Seeds vary the initial weights and the batch order; the
data split is fixed.

Claims tested: (a) mask diversity predicts accuracy across structures (Hubara et al. 2021,
Sec. 3): the Spearman rank correlation of log10 diversity with the metric; (b) transposable N:M
training loses no accuracy against dense: the gap to dense against the seed spread.

Mask diversity here is log10 of the number of masks a structure allows per 64 weights (an 8x8
block; :func:`nmsparse.diversity.log10_masks_per_64`, the same figure ``nmsparse demo`` prints).

The module runs the trainings; the table, claim checks and JSON lines are in :mod:`.claims_report`,
the plot in :mod:`.claims_plot`, and what both share in :mod:`.claims_common`.

Example
-------
>>> out = main(quick=True, out="/tmp/claims", verbose=False)   # doctest: +SKIP
>>> print(out["table"])                                         # doctest: +SKIP
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable, Dict, Iterator, List, Optional

import torch

from .claims_common import STES, STRUCTURES, TASKS, family, log10_diversity_per_64
from .claims_report import aggregate, claim_checks, report_from_jsonl, results_table, spearman, write_jsonl
from .demo import RunSpec, warm_up_solvers
from ..errors import ArgumentError
from ..nn import kept_and_density, sparsified_parameters, sparsify_

__all__ = [  # the report's numbers live in claims_report, shared names in claims_common; re-exported here
    "STRUCTURES", "STES", "TASKS", "ClaimsConfig", "configurations", "run_claims", "main", "environment",
    "family", "log10_diversity_per_64", "aggregate", "results_table", "spearman", "claim_checks",
    "write_jsonl", "report_from_jsonl",
]

DIGITS_DENSE = ("conv1", "fc2")
LM_DENSE = ("head",)  # embeddings are not nn.Linear/Conv, so they are never candidates


@dataclass(frozen=True)
class ClaimsConfig:
    """Everything that defines a claims report; stored with every result line."""

    seeds: int = 3
    structures: tuple = STRUCTURES
    tasks: tuple = TASKS
    update_every: int = 20
    freeze_fraction: float = 0.1  # masks stop changing for this last share of the steps
    srste_decay: float = 2e-4
    threads: int = 1
    jobs: int = 1
    digits_epochs: int = 10
    digits_train_limit: int = 0  # 0: the whole training split; >0: its first this many images
    digits_width: int = 16
    lm_steps: int = 800
    lm_batch: int = 16
    lm_lr: float = 3e-3
    lm_d_model: int = 64
    lm_layers: int = 2
    lm_heads: int = 4
    lm_d_ff: int = 256
    lm_context: int = 64
    lm_eval_windows: int = 256

    @classmethod
    def quick(cls, seeds: int = 2) -> "ClaimsConfig":
        """A smoke version (seconds): few structures, one digits epoch, a tiny LM, few steps."""
        return cls(
            seeds=seeds, structures=("dense", "50%", "2:4", "8:16T@greedy"), digits_epochs=1, digits_train_limit=128,
            lm_steps=6, lm_batch=4, lm_d_model=32, lm_layers=1, lm_heads=2, lm_d_ff=64, lm_context=32,
            lm_eval_windows=8, update_every=2,
        )

    def check(self) -> None:
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1:
            raise ArgumentError(f"bench claims: --seeds must be a positive int, got {self.seeds!r}; pass e.g. --seeds 3.")
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise ArgumentError(f"bench claims: tasks must be a non-empty subset of {TASKS}, got {self.tasks!r}; pick from those.")
        for s in self.structures:
            RunSpec.parse(s)  # raises a clear error on a bad structure
        if not 0.0 <= self.freeze_fraction < 1.0:
            raise ArgumentError(f"bench claims: freeze_fraction must be in [0, 1), got {self.freeze_fraction!r}; pass e.g. 0.75.")
        for name in ("threads", "jobs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ArgumentError(f"bench claims: {name} must be a positive int, got {value!r}; pass e.g. 1.")


def configurations(cfg: ClaimsConfig) -> List[tuple]:
    """``(task, structure, ste)`` triples in run order; dense runs once (no STE)."""
    out = []
    for task in cfg.tasks:
        for s in cfg.structures:
            for ste in (("-",) if s == "dense" else STES):
                out.append((task, s, ste))
    return out


def run_claims(
    cfg: ClaimsConfig, *, progress: Optional[Callable[[Dict[str, object]], None]] = None
) -> Iterator[Dict[str, object]]:
    """Train every configuration for every seed; yield one record per finished run, in order.

    Record keys: task, structure, family, ste, seed, metric ("accuracy" or "val_loss"), value,
    val_ppl (LM), log10_div64, density and kept (share of sum |W| the final masks keep, of the
    sparsified layers' dense weights), seconds, steps. Each run uses ``cfg.threads`` torch
    threads (restored afterwards); ``cfg.jobs > 1`` trains that many runs at once in spawned
    worker processes. A run's result depends only on its seed and config, not on the worker.
    """
    cfg.check()
    work = [(task, s, ste, seed) for task, s, ste in configurations(cfg) for seed in range(cfg.seeds)]
    if cfg.jobs == 1:
        _worker_init(cfg)
        results = map(_worker_run, work)
    else:
        import multiprocessing

        # spawn, not fork: a forked child of a process whose OpenMP pool already ran can hang.
        pool = multiprocessing.get_context("spawn").Pool(cfg.jobs, initializer=_worker_init, initargs=(cfg,))
        results = pool.imap(_worker_run, work)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        for rec in results:
            if progress is not None:
                progress(rec)
            yield rec
    finally:
        torch.set_num_threads(old_threads)
        _WORKER.clear()
        if cfg.jobs > 1:
            pool.terminate()
            pool.join()


_WORKER: Dict[str, object] = {}


def _worker_init(cfg: ClaimsConfig) -> None:
    warm_up_solvers([RunSpec.parse(s) for s in cfg.structures])
    _WORKER.update(cfg=cfg, data=_load(cfg))
    # One throw-away step of each model, so the first timed run is not charged for torch's
    # one-off kernel initialisation.
    old = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        from ..examples import small_cnn
        from ..examples.lm import CharTransformer

        small_cnn(width=cfg.digits_width, seed=0)(torch.zeros(4, 1, 8, 8)).sum().backward()
        CharTransformer(d_model=cfg.lm_d_model, n_layers=1, n_heads=cfg.lm_heads, d_ff=cfg.lm_d_ff,
                        context=cfg.lm_context)(torch.zeros(2, 8, dtype=torch.long)).sum().backward()
    finally:
        torch.set_num_threads(old)


def _worker_run(item: tuple) -> Dict[str, object]:
    old = torch.get_num_threads()
    cfg = _WORKER["cfg"]
    torch.set_num_threads(cfg.threads)
    try:
        return _run_one(cfg, _WORKER["data"], *item)
    finally:
        torch.set_num_threads(old)


def _load(cfg: ClaimsConfig) -> dict:
    data = {}
    if "digits" in cfg.tasks:
        from ..examples import load_digits_split

        digits = load_digits_split(seed=0)  # one fixed split; seeds vary init and batch order
        if cfg.digits_train_limit:
            k = cfg.digits_train_limit
            digits = type(digits)(digits.x_train[:k], digits.y_train[:k], digits.x_test, digits.y_test)
        data["digits"] = digits
    if "lm" in cfg.tasks:
        from ..examples.lm import load_stdlib_corpus

        data["lm"] = load_stdlib_corpus()
    return data


def _run_one(cfg: ClaimsConfig, data: dict, task: str, structure: str, ste: str, seed: int) -> Dict[str, object]:
    spec = RunSpec.parse(structure)
    start, cpu_start = time.perf_counter(), time.process_time()
    if task == "digits":
        from ..examples import small_cnn, train

        model = small_cnn(width=cfg.digits_width, seed=seed)
        dense_layers = DIGITS_DENSE
    else:
        from ..examples.lm import CharTransformer

        model = CharTransformer(
            d_model=cfg.lm_d_model, n_layers=cfg.lm_layers, n_heads=cfg.lm_heads, d_ff=cfg.lm_d_ff,
            context=cfg.lm_context, seed=seed,
        )
        dense_layers = LM_DENSE
    if spec.pattern is not None:
        sparsify_(
            model, spec.pattern, method=spec.method, update_every=cfg.update_every, exclude=list(dense_layers),
            ste=ste, srste_decay=cfg.srste_decay,
        )
    freeze = _freeze_after(model, cfg, _total_steps(cfg, data, task))
    rec: Dict[str, object] = {"task": task, "structure": structure, "family": family(structure), "ste": ste, "seed": seed}
    if task == "digits":
        result = train(model, data["digits"], epochs=cfg.digits_epochs, seed=seed, after_step=freeze)
        rec.update(metric="accuracy", value=result.accuracy, steps=result.steps)
    else:
        from ..examples.lm import train_lm

        result = train_lm(
            model, data["lm"], steps=cfg.lm_steps, batch_size=cfg.lm_batch, lr=cfg.lm_lr, seed=seed,
            eval_windows=cfg.lm_eval_windows, after_step=freeze,
        )
        rec.update(metric="val_loss", value=result.val_loss, val_ppl=result.val_ppl, steps=result.steps)
    kept, density = kept_and_density(model)
    rec.update(log10_div64=log10_diversity_per_64(structure), density=density, kept=kept, seconds=time.perf_counter() - start,
               cpu_seconds=time.process_time() - cpu_start)
    return rec


def _total_steps(cfg: ClaimsConfig, data: dict, task: str) -> int:
    if task == "lm":
        return cfg.lm_steps
    from ..examples import steps_per_epoch

    return cfg.digits_epochs * steps_per_epoch(data["digits"])


def _freeze_after(model, cfg: ClaimsConfig, total: int) -> Callable:
    """An ``after_step`` that freezes every mask once ``(1 - freeze_fraction) * total`` steps are done.

    Without it a refresh can land on the very last steps (e.g. step 220 of 220 with
    ``update_every=20``): the weights and BatchNorm statistics never adapt to the new mask, and
    the final accuracy becomes a lottery. A fixed mask for the final steps is the usual remedy.
    """
    last = int(total * (1.0 - cfg.freeze_fraction))

    def after_step(m, step: int) -> None:
        if step == last:
            for module, pname in sparsified_parameters(m).values():
                module.parametrizations[pname][0].static = True

    return after_step


def environment(cfg: ClaimsConfig) -> Dict[str, object]:
    """What a result line needs to be reproduced: versions, threads, the config."""
    return {
        "python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
        "threads": cfg.threads, "platform": platform.platform(), "config": asdict(cfg),
    }


def _check_writable(out: str, plot_path: Optional[str]) -> None:
    """Create OUT (and the plot's folder) and prove a file can be written there, or raise OSError."""
    for folder in {out, os.path.dirname(plot_path) if plot_path else out}:
        folder = folder or "."
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".nmsparse-write-test-{os.getpid()}")
        with open(probe, "w", encoding="utf-8"):
            pass
        os.remove(probe)


def main(quick: bool = False, seeds: Optional[int] = None, out: str = "bench-results", plot_path: Optional[str] = None,
         threads: int = 1, jobs: Optional[int] = None, verbose: bool = True) -> Dict[str, object]:
    """Run the report; append every run to ``<out>/claims.jsonl``; write ``<out>/claims.md`` (table,
    claim checks, command) and the plot (default ``<out>/claims.png``). Returns a dict with
    ``records, rows, table, checks, seconds, paths``."""
    cfg = ClaimsConfig.quick() if quick else ClaimsConfig()
    jobs = (1 if quick else 2) if jobs is None else jobs
    cfg = replace(cfg, threads=threads, jobs=jobs, **({} if seeds is None else {"seeds": seeds}))
    cfg.check()
    jsonl = os.path.join(out, "claims.jsonl")
    _check_writable(out, plot_path)  # fail in one line now, not after the first training run
    run_id = time.strftime("%Y%m%dT%H%M%S")
    env = environment(cfg)
    say = print if verbose else (lambda *a, **k: None)
    total = len(configurations(cfg)) * cfg.seeds
    say(f"nmsparse bench claims{' --quick' if quick else ''}: {total} training runs, {cfg.jobs} at a time, {cfg.threads} thread(s) each")
    if "lm" in cfg.tasks:
        from ..examples.lm import load_stdlib_corpus

        say("LM text: " + load_stdlib_corpus().describe())
    start = time.perf_counter()
    records: List[Dict[str, object]] = []

    def on_record(rec):
        rec = dict(rec, run_id=run_id, quick=quick)
        records.append(rec)
        write_jsonl(jsonl, [rec])
        shown = f"{100 * rec['value']:.2f}%" if rec["task"] == "digits" else f"ppl {rec['val_ppl']:.3f}"
        say(f"[{len(records)}/{total} {time.perf_counter() - start:.0f}s] {rec['task']} {rec['structure']} "
            f"{rec['ste']} seed {rec['seed']}: {shown} ({rec['seconds']:.1f}s)", flush=True)

    for _ in run_claims(cfg, progress=on_record):
        pass
    seconds = time.perf_counter() - start
    rows = aggregate(records)
    table = results_table(rows, cfg.structures)
    checks = claim_checks(rows)
    write_jsonl(jsonl, [{"run_id": run_id, "summary": rows, "seconds_total": seconds, "env": env}])
    from .claims_plot import plot

    png = plot(rows, plot_path or os.path.join(out, "claims.png"))
    command = "nmsparse bench claims" + (" --quick" if quick else "") + (f" --seeds {cfg.seeds}" if seeds is not None else "")
    md = os.path.join(out, "claims.md")
    with open(md, "w", encoding="utf-8") as fh:
        fh.write(f"{table}\n\n" + "\n".join(f"- {c}" for c in checks)
                 + f"\n\nTotal {seconds / 60:.1f} min for {total} runs, {cfg.jobs} at a time with {cfg.threads} thread(s) each. Command: `{command}`\n")
    say("\n" + table + "\n\n" + "\n".join(checks))
    say(f"\ntotal {seconds:.0f} s ({seconds / 60:.1f} min); wrote {jsonl}, {md}, {png}")
    return {"records": records, "rows": rows, "table": table, "checks": checks, "seconds": seconds,
            "paths": {"jsonl": jsonl, "table": md, "plot": png}}
