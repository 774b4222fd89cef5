"""Test the papers' accuracy claims at CPU scale (same as ``nmsparse bench claims``).

Trains, for several seeds, a small CNN on scikit-learn's digits and a byte-level transformer LM
on the interpreter's standard-library sources: dense, unstructured 50 %, 1:2 / 2:4 / 4:8 row-wise
and 2:4T / 4:8T / 8:16T transposable (exact and greedy solvers), each with STE and SR-STE.
Prints a Markdown table (mean ± std over seeds, seconds per run) and the numbers behind the claims,
appends every run to ``<out>/claims.jsonl`` and saves the plot.

    python benchmarks/bench_claims.py                   # the full report (~30 min on 2 cores)
    python benchmarks/bench_claims.py --quick           # smoke version (seconds)
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
