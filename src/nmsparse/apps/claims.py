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

Mask diversity here is log10 of the number of masks a structure allows on a 16x16 block, divided
by 4 (so: per 64 weights, and 8:16T tiles fit).

Example
-------
>>> out = main(quick=True, out="/tmp/claims", verbose=False)   # doctest: +SKIP
>>> print(out["table"])                                         # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import torch

from .demo import RunSpec, warm_up_solvers
from ..diversity import log10_count_masks
from ..errors import ArgumentError
from ..nn import kept_and_density, sparsified_parameters, sparsify_
from ..pattern import NMPattern

STRUCTURES = (
    "dense", "50%", "1:2", "2:4", "4:8",
    "2:4T@exact", "2:4T@greedy", "4:8T@exact", "4:8T@greedy", "8:16T@exact", "8:16T@greedy",
)
STES = ("ste", "srste")
TASKS = ("digits", "lm")
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


def log10_diversity_per_64(structure: str) -> float:
    """log10(#masks on a 16x16 block) / 4; 0 for dense (one mask)."""
    spec = RunSpec.parse(structure)
    if spec.pattern is None:
        return 0.0
    if isinstance(spec.pattern, float):
        from fractions import Fraction

        frac = Fraction(spec.pattern).limit_denominator(256)
        return log10_count_masks(NMPattern(frac.numerator, frac.denominator), (16, 16), structure="unstructured") / 4
    return log10_count_masks(spec.pattern, (16, 16)) / 4


def family(structure: str) -> str:
    """``dense``, ``unstructured``, ``row-wise``, ``transposable exact`` or ``transposable greedy``."""
    spec = RunSpec.parse(structure)
    if spec.pattern is None:
        return "dense"
    if isinstance(spec.pattern, float):
        return "unstructured"
    return f"transposable {spec.method}" if spec.pattern.transposable else "row-wise"


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


def aggregate(records: Sequence[Dict[str, object]]) -> List[Dict[str, object]]:
    """Group by (task, structure, ste): mean and sample std (ddof 1; 0 for one seed) of the metric."""
    groups: Dict[tuple, List[Dict[str, object]]] = {}
    for r in records:
        groups.setdefault((r["task"], r["structure"], r["ste"]), []).append(r)
    rows = []
    for (task, structure, ste), rs in groups.items():
        vals = [float(r["value"]) for r in rs]
        row = {
            "task": task, "structure": structure, "family": rs[0]["family"], "ste": ste, "n": len(rs),
            "metric": rs[0]["metric"], "mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "log10_div64": rs[0]["log10_div64"], "seconds": statistics.fmean(float(r["seconds"]) for r in rs),
            "cpu_seconds": statistics.fmean(float(r.get("cpu_seconds", r["seconds"])) for r in rs),
            "kept": statistics.fmean(float(r["kept"]) for r in rs),
            "by_seed": {int(r["seed"]): float(r["value"]) for r in rs},
        }
        if task == "lm":
            ppl = [math.exp(v) for v in vals]
            row.update(ppl_mean=statistics.fmean(ppl), ppl_std=statistics.stdev(ppl) if len(ppl) > 1 else 0.0)
        rows.append(row)
    return rows


def _lookup(rows, task, structure, ste) -> Optional[Dict[str, object]]:
    for r in rows:
        if r["task"] == task and r["structure"] == structure and r["ste"] in (ste, "-"):
            return r
    return None


def _cell(row, task) -> str:
    if row is None:
        return "-"
    if task == "digits":
        return f"{100 * row['mean']:.2f} ± {100 * row['std']:.2f}"
    return f"{row['ppl_mean']:.3f} ± {row['ppl_std']:.3f}"


def results_table(rows: Sequence[Dict[str, object]], structures: Sequence[str] = STRUCTURES) -> str:
    """Markdown table: one line per structure; digits accuracy (%) and LM validation perplexity,
    mean ± std over seeds, for STE and SR-STE; mean wall-clock and CPU seconds per run. Dense
    fills both columns."""
    head = (
        "| structure | log10 masks/64 | digits acc % (STE) | digits acc % (SR-STE) | LM val ppl (STE) | "
        "LM val ppl (SR-STE) | s/run digits | s/run LM |\n|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for s in structures:
        cells = [s, f"{log10_diversity_per_64(s):.2f}"]
        secs = []
        for task in ("digits", "lm"):
            for ste in STES:
                cells.append(_cell(_lookup(rows, task, s, ste), task))
        for task in ("digits", "lm"):
            found = [r for r in rows if r["task"] == task and r["structure"] == s]
            wall = statistics.fmean(r["seconds"] for r in found) if found else 0.0
            cpu = statistics.fmean(r["cpu_seconds"] for r in found) if found else 0.0
            secs.append(f"{wall:.1f} ({cpu:.1f} CPU)" if found else "-")
        lines.append("| " + " | ".join(cells + secs) + " |")
    return "\n".join(lines)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN if either side is constant."""
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    rx, ry = ranks(list(x)), ranks(list(y))
    if len(set(rx)) < 2 or len(set(ry)) < 2:
        return float("nan")
    return statistics.correlation(rx, ry)


def claim_checks(rows: Sequence[Dict[str, object]]) -> List[str]:
    """Lines of numbers behind claims (a) and (b), for each task and STE.

    (a) Spearman rho between log10 diversity and quality (accuracy, or minus the validation
    loss) over the sparse structures; the exact solver stands for each transposable pattern.
    (b) For each transposable pattern (exact solver): its gap to dense and the larger of the two
    seed standard deviations.
    (c) For every sparse structure, the paired gap to dense: the same seed shares the initial
    weights and batch order, so per-seed differences cancel most of the seed-to-seed spread;
    mean ± std of those differences.
    """
    out = []
    for task in sorted({r["task"] for r in rows}):
        dense = _lookup(rows, task, "dense", "-")
        sign = 1.0 if task == "digits" else -1.0
        scale, unit = (100.0, " pts acc") if task == "digits" else (1.0, " nats/byte")
        for ste in STES:
            sparse = [r for r in rows if r["task"] == task and r["ste"] == ste and r["family"] != "transposable greedy"]
            if len(sparse) >= 3:
                rho = spearman([r["log10_div64"] for r in sparse], [sign * r["mean"] for r in sparse])
                out.append(f"{task} {ste}: (a) Spearman rho(log10 diversity, quality) = {rho:+.2f} over {len(sparse)} structures")
            if dense is None:
                continue
            for r in rows:
                if r["task"] == task and r["ste"] == ste and r["family"] == "transposable exact":
                    gap = scale * (r["mean"] - dense["mean"])
                    spread = scale * max(r["std"], dense["std"])
                    out.append(f"{task} {ste}: (b) {r['structure']} - dense = {gap:+.3f}{unit} (seed std up to {spread:.3f})")
            for r in rows:
                if r["task"] == task and r["ste"] == ste:
                    seeds = sorted(set(r["by_seed"]) & set(dense["by_seed"]))
                    diffs = [scale * (r["by_seed"][k] - dense["by_seed"][k]) for k in seeds]
                    if diffs:
                        sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
                        out.append(f"{task} {ste}: (c) paired {r['structure']} - dense = {statistics.fmean(diffs):+.3f} ± {sd:.3f}{unit} over {len(diffs)} seeds")
    return out


def environment(cfg: ClaimsConfig) -> Dict[str, object]:
    """What a result line needs to be reproduced: versions, threads, the config."""
    return {
        "python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
        "threads": cfg.threads, "platform": platform.platform(), "config": asdict(cfg),
    }


def write_jsonl(path: str, records: Sequence[Dict[str, object]]) -> None:
    """Append records as JSON lines (creating the folder)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")


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


def report_from_jsonl(path: str, run_id: Optional[str] = None, plot_path: Optional[str] = None) -> Dict[str, object]:
    """Rebuild the table, the claim checks and (if ``plot_path``) the plot from a ``claims.jsonl``.

    Uses the per-run lines of ``run_id`` (default: the last run in the file), so a report can be
    re-rendered without training again. Returns ``rows, table, checks, run_id``.
    """
    with open(path, encoding="utf-8") as fh:
        lines = [json.loads(line) for line in fh if line.strip()]
    runs = [r for r in lines if "summary" not in r and "task" in r]
    if not runs:
        raise ArgumentError(f"report_from_jsonl: the file must hold per-run result lines, but {path!r} has none; run `nmsparse bench claims` first.")
    run_id = run_id or runs[-1]["run_id"]
    records = [r for r in runs if r["run_id"] == run_id]
    if not records:
        raise ArgumentError(f"report_from_jsonl: run_id must name a run in the file, got {run_id!r}, not in {path!r}; pass run_id=None for the last run.")
    rows = aggregate(records)
    structures = [s for s in STRUCTURES if any(r["structure"] == s for r in rows)]
    structures += sorted({r["structure"] for r in rows} - set(structures))
    if plot_path:
        from .claims_plot import plot

        plot(rows, plot_path)
    return {"rows": rows, "table": results_table(rows, structures), "checks": claim_checks(rows), "run_id": run_id}
