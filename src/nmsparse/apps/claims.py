"""``nmsparse bench claims``: test the papers' accuracy claims at CPU scale, under the protocol each
claim is stated for, with seeds and confidence intervals.

Two tasks: ``digits`` (the small CNN of :mod:`nmsparse.examples.digits`, test accuracy) and ``lm``
(the byte-level transformer of :mod:`nmsparse.examples.lm` on 101 standard-library files of the
running interpreter; validation loss in nats per byte and perplexity ``exp(loss)``).

* **Protocol 1, one-shot from a trained dense model** (``oneshot``; the setting of the
  mask-diversity argument, Hubara et al. 2021, Sec. 3): train dense once per seed, prune the
  trained model to every structure with every one-shot algorithm (magnitude; Wanda and SparseGPT
  where ``nmsparse.prune_`` exists), measure right after pruning and after a short fine-tune with
  the masks fixed. The dense reference gets the same fine-tune.
* **Protocol 2, sparse from scratch** (``scratch``; Sec. 5): masks recomputed from the dense
  weights every ``update_every`` steps (``fixed``) or on an interval that grows by ``growth``
  after every refresh (``growing``, the remedy against mask instability); masks frozen for the
  last ``freeze_fraction`` of the steps. The flip rate (share of mask entries that changed) is
  recorded at every refresh.

Structures: dense, unstructured 50 % (top-k per tensor), row-wise 1:2 / 2:4 / 4:8, transposable
2:4T / 4:8T / 8:16T (exact solver). The first and last layers (digits: ``conv1, fc2``; LM:
embeddings and ``head``) stay dense. Seeds vary the initial weights and the batch order; the data
split is fixed. Mask diversity is log10 of the number of masks a structure allows per 64 weights
(:func:`nmsparse.diversity.log10_masks_per_64`).

This module holds the configuration and the scheduling; the runs are in :mod:`.claims_runs`, the
tables and checks in :mod:`.claims_report`, the plots in :mod:`.claims_plot`, shared names in
:mod:`.claims_common`.

Example
-------
>>> out = main(quick=True, out="/tmp/claims", verbose=False)   # doctest: +SKIP
>>> print(out["markdown"])                                      # doctest: +SKIP
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable, Dict, Iterator, List, Optional

import torch

from .claims_common import ALGORITHMS, PROTOCOLS, SCHEDULES, STRUCTURES, TASKS, family, log10_diversity_per_64
from .claims_report import aggregate, claim_checks, markdown_report, report_from_jsonl, spearman, write_jsonl
from .claims_runs import available_algorithms, refresh_steps, run_group, run_scratch
from .demo import RunSpec, warm_up_solvers
from ..errors import ArgumentError

__all__ = [  # the report's numbers live in claims_report, shared names in claims_common; re-exported here
    "STRUCTURES", "TASKS", "PROTOCOLS", "SCHEDULES", "ALGORITHMS", "ClaimsConfig", "configurations", "run_claims",
    "main", "environment", "family", "log10_diversity_per_64", "aggregate", "markdown_report", "spearman",
    "claim_checks", "write_jsonl", "report_from_jsonl", "refresh_steps", "available_algorithms",
]

QUICK_BANNER = ("SMOKE RUN (--quick): tiny models, a few steps, a few images; the numbers below mean nothing "
                "and support no claim. Run without --quick for the report.")


@dataclass(frozen=True)
class ClaimsConfig:
    """Everything that defines a claims report; stored with every result line."""

    seeds: int = 3
    structures: tuple = STRUCTURES
    tasks: tuple = TASKS
    algorithms: tuple = ALGORITHMS  # protocol 1; cut to what this build can run (available_algorithms)
    schedules: tuple = SCHEDULES  # protocol 2
    update_every: int = 20
    growth: float = 1.5  # "growing": each refresh interval is this much longer than the last
    freeze_fraction: float = 0.1  # masks stop changing for this last share of the steps
    threads: int = 1
    jobs: int = 1
    calib_batches: int = 8  # protocol 1: calibration batches (of the training batch size) per seed
    finetune_lr_scale: float = 0.1  # protocol 1 fine-tune: this share of the training learning rate
    digits_epochs: int = 10
    digits_finetune_epochs: int = 2
    digits_lr: float = 2e-3
    digits_train_limit: int = 0  # 0: the whole training split; >0: its first this many images
    digits_width: int = 16
    lm_files: str = "large"  # "large": examples.lm.STDLIB_FILES_LARGE; "small": STDLIB_FILES
    lm_steps: int = 1000
    lm_finetune_steps: int = 100
    lm_batch: int = 16
    lm_lr: float = 3e-3
    lm_d_model: int = 96
    lm_layers: int = 2
    lm_heads: int = 4
    lm_d_ff: int = 384
    lm_context: int = 64
    lm_eval_windows: int = 256

    @classmethod
    def quick(cls, seeds: int = 2) -> "ClaimsConfig":
        """A smoke version (seconds): few structures, one digits epoch, a tiny LM, few steps."""
        return cls(
            seeds=seeds, structures=("dense", "50%", "2:4", "4:8T"), digits_epochs=1, digits_finetune_epochs=1,
            digits_train_limit=128, lm_files="small", lm_steps=8, lm_finetune_steps=2, lm_batch=4, lm_d_model=32,
            lm_layers=1, lm_heads=2, lm_d_ff=64, lm_context=32, lm_eval_windows=8, update_every=2, calib_batches=2,
        )

    def check(self) -> None:
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1:
            raise ArgumentError(f"bench claims: --seeds must be a positive int, got {self.seeds!r}; pass e.g. --seeds 3.")
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise ArgumentError(f"bench claims: tasks must be a non-empty subset of {TASKS}, got {self.tasks!r}; pick from those.")
        for s in self.structures:
            RunSpec.parse(s)  # raises a clear error on a bad structure
        bad = [a for a in self.algorithms if a not in ALGORITHMS]
        if bad or not self.algorithms:
            raise ArgumentError(f"bench claims: algorithms must be a non-empty subset of {ALGORITHMS}, got {self.algorithms!r}; pick from those.")
        bad = [s for s in self.schedules if s not in SCHEDULES]
        if bad:
            raise ArgumentError(f"bench claims: schedules must be a subset of {SCHEDULES}, got {self.schedules!r}; pick from those.")
        if not 0.0 <= self.freeze_fraction < 1.0:
            raise ArgumentError(f"bench claims: freeze_fraction must be in [0, 1), got {self.freeze_fraction!r}; pass e.g. 0.1.")
        if not self.growth >= 1.0:
            raise ArgumentError(f"bench claims: growth must be >= 1, got {self.growth!r}; pass e.g. 1.5.")
        if self.lm_files not in ("small", "large"):
            raise ArgumentError(f"bench claims: lm_files must be 'small' or 'large', got {self.lm_files!r}; pick one of those.")
        for name in ("threads", "jobs", "update_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ArgumentError(f"bench claims: {name} must be a positive int, got {value!r}; pass e.g. 1.")

    def runnable(self) -> "ClaimsConfig":
        """This config with the protocol-1 algorithms cut to those this build can run."""
        return replace(self, algorithms=tuple(a for a in self.algorithms if a in available_algorithms()))


def configurations(cfg: ClaimsConfig) -> List[tuple]:
    """The work items in run order: ``("group", task, seed)`` (dense training, then protocol 1 for
    that seed; the longest items, first) and ``("scratch", task, structure, schedule, seed)``, the
    cheap digits ones before the LM ones, and seed by seed, so that a report cut short still has
    every structure and schedule for the seeds it finished."""
    tasks = sorted(cfg.tasks, key=lambda t: t != "lm")
    groups = [("group", task, seed) for task in tasks for seed in range(cfg.seeds)]
    scratch = [("scratch", task, s, sched, seed) for task in reversed(tasks) for seed in range(cfg.seeds)
               for s in cfg.structures if s != "dense" for sched in cfg.schedules]
    return groups + scratch


def records_per_item(cfg: ClaimsConfig, item: tuple) -> int:
    if item[0] == "scratch":
        return 1
    return 2 + sum(1 for s in cfg.structures if s != "dense") * len(cfg.algorithms)


def run_claims(
    cfg: ClaimsConfig, *, progress: Optional[Callable[[Dict[str, object]], None]] = None
) -> Iterator[Dict[str, object]]:
    """Run every work item; yield one record per finished training, as items finish.

    Record keys: protocol, task, structure, family, variant (schedule, algorithm, "-" or
    "finetune"), seed, metric ("accuracy" or "val_loss"), value (protocol 1: after the fine-tune),
    value_pruned (protocol 1: right after pruning), val_ppl (LM), log10_div64, density, kept,
    params, tokens_seen (LM), flips (protocol 2: ``[step, flip rate]`` per refresh), seconds,
    cpu_seconds, steps. Each item uses ``cfg.threads`` torch threads (restored afterwards);
    ``cfg.jobs > 1`` runs that many items at once in spawned worker processes. A record depends
    only on its seed and config, not on the worker.
    """
    cfg.check()
    work = configurations(cfg)
    if cfg.jobs == 1:
        _worker_init(cfg)
        results = map(_worker_run, work)
    else:
        import multiprocessing

        # spawn, not fork: a forked child of a process whose OpenMP pool already ran can hang.
        pool = multiprocessing.get_context("spawn").Pool(cfg.jobs, initializer=_worker_init, initargs=(cfg,))
        results = pool.imap_unordered(_worker_run, work)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        for recs in results:
            for rec in recs:
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


def _worker_run(item: tuple) -> List[Dict[str, object]]:
    old = torch.get_num_threads()
    cfg = _WORKER["cfg"]
    torch.set_num_threads(cfg.threads)
    try:
        if item[0] == "group":
            return run_group(cfg, _WORKER["data"], *item[1:])
        return run_scratch(cfg, _WORKER["data"], *item[1:])
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
        data["lm"] = _corpus(cfg)
    return data


def _corpus(cfg: ClaimsConfig):
    from ..examples.lm import STDLIB_FILES, STDLIB_FILES_LARGE, load_stdlib_corpus

    return load_stdlib_corpus(STDLIB_FILES_LARGE if cfg.lm_files == "large" else STDLIB_FILES)


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
    """Run the report; append every run to ``<out>/claims.jsonl``; write ``<out>/claims.md`` (tables,
    checks, command) and the plots (default ``<out>/claims.png``, and the flip-rate plot next to
    it, ``claims_flips.png``). Returns a dict with ``records, rows, markdown, checks, seconds, paths``."""
    cfg = ClaimsConfig.quick() if quick else ClaimsConfig()
    jobs = (1 if quick else 2) if jobs is None else jobs
    cfg = replace(cfg, threads=threads, jobs=jobs, **({} if seeds is None else {"seeds": seeds}))
    cfg.check()
    cfg = cfg.runnable()
    jsonl = os.path.join(out, "claims.jsonl")
    _check_writable(out, plot_path)  # fail in one line now, not after the first training run
    run_id = time.strftime("%Y%m%dT%H%M%S")
    env = environment(cfg)
    say = print if verbose else (lambda *a, **k: None)
    work = configurations(cfg)
    total = sum(records_per_item(cfg, item) for item in work)
    if quick:
        say(QUICK_BANNER)
    say(f"nmsparse bench claims{' --quick' if quick else ''}: {total} trainings in {len(work)} work items, "
        f"{cfg.jobs} at a time, {cfg.threads} thread(s) each; protocol-1 algorithms: {', '.join(cfg.algorithms)}")
    if "lm" in cfg.tasks:
        say("LM text: " + _corpus(cfg).describe())
    start = time.perf_counter()
    records: List[Dict[str, object]] = []

    def on_record(rec):
        rec = dict(rec, run_id=run_id, quick=quick)
        records.append(rec)
        write_jsonl(jsonl, [rec])
        shown = f"{100 * rec['value']:.2f}%" if rec["task"] == "digits" else f"ppl {rec['val_ppl']:.3f}"
        say(f"[{len(records)}/{total} {time.perf_counter() - start:.0f}s] {rec['protocol']} {rec['task']} {rec['structure']} "
            f"{rec['variant']} seed {rec['seed']}: {shown} ({rec['seconds']:.1f}s)", flush=True)

    for _ in run_claims(cfg, progress=on_record):
        pass
    seconds = time.perf_counter() - start
    records.sort(key=lambda r: (r["protocol"], r["task"], r["structure"], r["variant"], r["seed"]))
    rows = aggregate(records)
    checks = claim_checks(rows)
    write_jsonl(jsonl, [{"run_id": run_id, "summary": rows, "seconds_total": seconds, "env": env}])
    from .claims_plot import plot, plot_flips

    png = plot(rows, plot_path or os.path.join(out, "claims.png"))
    flips_png = plot_flips(records, os.path.splitext(png)[0] + "_flips.png")
    command = "nmsparse bench claims" + (" --quick" if quick else "") + (f" --seeds {cfg.seeds}" if seeds is not None else "")
    body = markdown_report(rows, records, structures=cfg.structures)
    footer = (f"Total {seconds / 60:.1f} min for {total} trainings ({len(work)} work items), {cfg.jobs} at a time with "
              f"{cfg.threads} thread(s) each. Command: `{command}`")
    md = os.path.join(out, "claims.md")
    text = (f"**{QUICK_BANNER}**\n\n" if quick else "") + body + "\n\n" + footer + "\n"
    with open(md, "w", encoding="utf-8") as fh:
        fh.write(text)
    if quick:
        say("\n" + QUICK_BANNER + " (tables in " + md + ")")
    else:
        say("\n" + body)
    say(f"\ntotal {seconds:.0f} s ({seconds / 60:.1f} min); wrote {jsonl}, {md}, {png}, {flips_png}")
    return {"records": records, "rows": rows, "markdown": text, "checks": checks, "seconds": seconds,
            "paths": {"jsonl": jsonl, "table": md, "plot": png, "flips": flips_png}}
