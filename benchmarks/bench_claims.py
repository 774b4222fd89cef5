"""Test the papers' accuracy claims at CPU scale (same as ``nmsparse bench claims``).

Two tasks (a small CNN on scikit-learn's digits; a byte-level transformer LM on 101 files of the
interpreter's standard library), two protocols, three seeds:

* protocol 1: train dense, prune one-shot (magnitude, Wanda, SparseGPT) to unstructured 50 %,
  1:2 / 2:4 / 4:8 and 2:4T / 4:8T / 8:16T, measure, fine-tune with the masks fixed, measure;
* protocol 2: sparse from scratch with masks refreshed every 20 steps or on a growing interval,
  recording the flip rate (share of mask entries changed) at every refresh.

Prints Markdown tables (mean ± 95 % t-interval over seeds, paired gaps to dense, Spearman rho of
mask diversity with quality, per seed too), appends every run to ``<out>/claims.jsonl`` and
saves two plots (``claims.png`` and ``claims_flips.png``).

    python benchmarks/bench_claims.py                   # the full report (~35-45 min on 2 loaded cores)
    python benchmarks/bench_claims.py --quick           # smoke run, about a minute; its numbers mean nothing
    python benchmarks/bench_claims.py --out bench-results --plot docs/claims.png
"""

from __future__ import annotations

import argparse
import sys

from nmsparse.apps.claims import main as run_report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke version: few structures, tiny models, seconds")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per configuration (default 3; quick: 2)")
    ap.add_argument("--out", default="bench-results", help="folder for claims.jsonl, claims.md, claims.png")
    ap.add_argument("--plot", default=None, help="where to save the PNG (default <out>/claims.png)")
    ap.add_argument("--jobs", type=int, default=None, help="runs trained at once (default 2; quick: 1)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    args = ap.parse_args(argv)
    run_report(quick=args.quick, seeds=args.seeds, out=args.out, plot_path=args.plot, threads=args.threads, jobs=args.jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
