"""Transposable N:M solvers: speed AND quality, side by side with the reference approaches.

For every weight distribution x size x pattern, times the nmsparse methods through the public
API (``nmsparse.solve_mask``) and reports objective / exact objective, the share of tiles solved
optimally and the share of short tiles (greedy). In the same run, the baselines:

* networkx min-cost flow per tile, as in the paper's reference code (one graph per tile): a
  sample of tiles is timed and the time is extrapolated to the whole matrix (marked "extrap.");
* a scipy HiGHS LP per tile (sampled and extrapolated the same way);
* a straightforward vectorised torch greedy (all tiles at once, one step per tile entry).

Usage::

    python benchmarks/bench_transposable.py                      # full run (sizes 1024, 4096, 8192)
    python benchmarks/bench_transposable.py --quick              # 1024 only, small samples
    python benchmarks/bench_transposable.py --memory             # also peak extra memory at 8192^2
    python benchmarks/bench_transposable.py --memory-only        # only the memory table

Results: a Markdown table on stdout and JSON lines in bench-results/transposable.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import best_of, machine, make_weight, print_table, write_jsonl  # noqa: E402

import nmsparse as nms  # noqa: E402


def tile_objectives(weight: torch.Tensor, mask: torch.Tensor, m: int) -> torch.Tensor:
    rows, cols = weight.shape
    a = torch.where(mask, weight.abs().double(), 0.0)
    return a.reshape(rows // m, m, cols // m, m).sum((1, 3)).reshape(-1)


def torch_greedy_baseline(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Straightforward vectorised greedy over all tiles: sort each tile, then m*m batched steps."""
    rows, cols = weight.shape
    tiles = weight.abs().reshape(rows // m, m, cols // m, m).transpose(1, 2).reshape(-1, m * m)
    order = torch.sort(tiles, dim=1, descending=True, stable=True).indices
    t = tiles.shape[0]
    row_count = torch.zeros(t, m, dtype=torch.int32)
    col_count = torch.zeros(t, m, dtype=torch.int32)
    keep = torch.zeros(t, m * m, dtype=torch.bool)
    ar = torch.arange(t)
    for k in range(m * m):
        idx = order[:, k]
        r, c = idx // m, idx % m
        ok = (row_count[ar, r] < n) & (col_count[ar, c] < n)
        keep[ar, idx] = ok
        row_count[ar, r] += ok.int()
        col_count[ar, c] += ok.int()
    return keep.reshape(rows // m, cols // m, m, m).transpose(1, 2).reshape(rows, cols)


def networkx_tile(tile: np.ndarray, n: int) -> float:
    """The reference approach: one networkx min-cost-flow graph per tile (integer costs)."""
    import networkx as nx

    m = tile.shape[0]
    g = nx.DiGraph()
    for i in range(m):
        g.add_edge("s", ("r", i), capacity=n, weight=0)
        g.add_edge(("c", i), "t", capacity=n, weight=0)
        for j in range(m):
            g.add_edge(("r", i), ("c", j), capacity=1, weight=-int(round(tile[i, j] * 1e6)))
    flow = nx.max_flow_min_cost(g, "s", "t")
    return float(sum(tile[i, j] for i in range(m) for j in range(m) if flow[("r", i)][("c", j)] > 0))


def lp_tile(tile: np.ndarray, n: int) -> float:
    from nmsparse.testing import lp_transposable_objective

    return lp_transposable_objective(tile, n)


def sampled_baseline(fn, weight: torch.Tensor, n: int, m: int, samples: int, exact_tiles: torch.Tensor):
    """Per-tile seconds of `fn` on a fixed sample of tiles, and whether it matched the exact optimum."""
    rows, cols = weight.shape
    tiles = weight.abs().double().reshape(rows // m, m, cols // m, m).transpose(1, 2).reshape(-1, m, m).numpy()
    rng = np.random.default_rng(0)
    idx = rng.choice(tiles.shape[0], size=min(samples, tiles.shape[0]), replace=False)
    start = time.perf_counter()
    values = [fn(tiles[i], n) for i in idx]
    per_tile = (time.perf_counter() - start) / len(idx)
    ref = exact_tiles[torch.from_numpy(idx)].numpy()
    agree = float(np.mean(np.isclose(values, ref, rtol=1e-5, atol=1e-5)))
    return per_tile, agree


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(pattern: str, method: str, size: int) -> None:
    """Run in a fresh process: print the peak extra RSS of one solve_mask call, in bytes.

    After warm-up (imports, kernel loading) the kernel's high-water mark is reset through
    /proc/self/clear_refs, so the peak counts only what the solve itself allocates beyond the
    memory already in use (the weight included).
    """
    w = make_weight(size, size, "gaussian")
    nms.solve_mask(make_weight(64, 64, "gaussian"), pattern, method=method)  # compile / warm up
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    nms.solve_mask(w, pattern, method=method)
    peak = _status_kib("VmHWM")
    print(json.dumps({"extra": (peak - before) * 1024, "rss_before": before * 1024}))


def measure_memory(args, info, stamp) -> None:
    """Peak extra memory of each (pattern, method) at the largest size, each in a fresh process."""
    size = max(args.sizes)
    weight_bytes = size * size * 4
    mem_rows = []
    for p in args.patterns:
        for method in args.methods:
            out = subprocess.run(
                [sys.executable, __file__, "--memory-child", p, method, str(size)],
                capture_output=True, text=True, check=True,
            )
            rec = json.loads(out.stdout.strip().splitlines()[-1])
            mem_rows.append({"size": size, "pattern": p, "method": method,
                             "extra_mib": rec["extra"] / 2**20, "x_weight": rec["extra"] / weight_bytes})
    print()
    print_table(mem_rows, [("size", "size", ""), ("pattern", "pattern", ""), ("method", "method", ""),
                           ("extra_mib", "peak extra MiB", ".0f"), ("x_weight", "x weight", ".2f")])
    write_jsonl(args.out, ({"bench": "transposable-memory", "time": stamp, **info, **r} for r in mem_rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 8192])
    ap.add_argument("--patterns", nargs="+", default=["2:4T", "4:8T", "8:16T", "16:32T"])
    ap.add_argument("--distributions", nargs="+", default=["gaussian", "heavy"])
    ap.add_argument("--methods", nargs="+", default=["exact", "refine", "greedy"])
    ap.add_argument("--nx-samples", type=int, default=40, help="tiles timed per pattern for the networkx baseline")
    ap.add_argument("--lp-samples", type=int, default=40, help="tiles timed per pattern for the HiGHS LP baseline")
    ap.add_argument("--torch-greedy-max", type=int, default=4096, help="largest size for the torch greedy baseline")
    ap.add_argument("--quick", action="store_true", help="1024 only, few samples (smoke run)")
    ap.add_argument("--memory", action="store_true", help="also measure peak extra memory at the largest size")
    ap.add_argument("--memory-only", action="store_true", help="measure only peak extra memory (skips the timing table)")
    ap.add_argument("--out", default="bench-results/transposable.jsonl")
    ap.add_argument("--memory-child", nargs=3, metavar=("PATTERN", "METHOD", "SIZE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args.memory_child[0], args.memory_child[1], int(args.memory_child[2]))
        return
    if args.quick:
        args.sizes, args.nx_samples, args.lp_samples = [1024], 10, 10
    if args.memory_only:
        measure_memory(args, machine(), time.strftime("%Y-%m-%dT%H:%M:%S"))
        return

    info = machine()
    print(f"# transposable N:M solvers ({info['cpu_count']} cores, torch threads {info['torch_threads']})", flush=True)
    for p in args.patterns:  # compile every kernel before timing anything
        for method in args.methods:
            nms.solve_mask(make_weight(64, 64, "gaussian"), p, method=method)

    rows = []
    per_tile_baselines = {}
    for dist in args.distributions:
        for size in args.sizes:
            w = make_weight(size, size, dist)
            for p in args.patterns:
                pat = nms.NMPattern.parse(p)
                m = pat.m
                tiles = (size // m) ** 2
                repeats = 3 if size <= 1024 else 1
                results = {}
                for method in args.methods:
                    sec, res = best_of(lambda: nms.solve_mask(w, p, method=method), repeats)
                    results[method] = (sec, res)
                exact_sec, exact = results.get("exact") or best_of(lambda: nms.solve_mask(w, p, method="exact"), 1)
                exact_tiles = tile_objectives(w, exact.mask, m)
                for method, (sec, res) in results.items():
                    t_obj = tile_objectives(w, res.mask, m)
                    rows.append({
                        "dist": dist, "size": size, "pattern": p, "method": method, "seconds": sec,
                        "ratio": res.objective / exact.objective,
                        "at_opt": float(torch.isclose(t_obj, exact_tiles, rtol=1e-9, atol=1e-12).double().mean()),
                        "short": res.info.get("short_tiles", 0) / tiles,
                        "valid": nms.is_valid_mask(res.mask, p, exact=method != "greedy"),
                        "note": "",
                    })
                    print(f"  {dist} {size} {p} {method}: {sec:.3f}s ratio {rows[-1]['ratio']:.6f}", file=sys.stderr, flush=True)
                if size <= args.torch_greedy_max:
                    sec, mask = best_of(lambda: torch_greedy_baseline(w, pat.n, m), 1)
                    rows.append({
                        "dist": dist, "size": size, "pattern": p, "method": "baseline: torch greedy", "seconds": sec,
                        "ratio": float(tile_objectives(w, mask, m).sum()) / exact.objective,
                        "at_opt": None, "short": None, "valid": None, "note": "",
                    })
                key = (dist, p)
                if key not in per_tile_baselines:
                    nx_tile, nx_agree = sampled_baseline(networkx_tile, w, pat.n, m, args.nx_samples, exact_tiles)
                    lp_tile_s, lp_agree = sampled_baseline(lp_tile, w, pat.n, m, args.lp_samples, exact_tiles)
                    per_tile_baselines[key] = (nx_tile, nx_agree, lp_tile_s, lp_agree)
                nx_tile, nx_agree, lp_tile_s, lp_agree = per_tile_baselines[key]
                exact_per_tile = exact_sec / tiles
                for name, per_tile, agree, samples in (
                    ("baseline: networkx per tile", nx_tile, nx_agree, args.nx_samples),
                    ("baseline: HiGHS LP per tile", lp_tile_s, lp_agree, args.lp_samples),
                ):
                    rows.append({
                        "dist": dist, "size": size, "pattern": p, "method": name, "seconds": per_tile * tiles,
                        "ratio": None, "at_opt": agree, "short": None, "valid": None,
                        "note": f"extrap. from {samples} tiles; exact is {per_tile / exact_per_tile:,.0f}x faster per tile",
                    })

    columns = [
        ("dist", "weights", ""), ("size", "size", ""), ("pattern", "pattern", ""), ("method", "method", ""),
        ("seconds", "seconds", ".3f"), ("ratio", "obj / exact", ".6f"), ("at_opt", "tiles at opt", ".4f"),
        ("short", "short tiles", ".4f"), ("valid", "valid", ""), ("note", "note", ""),
    ]
    print_table(rows, columns)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    write_jsonl(args.out, ({"bench": "transposable", "time": stamp, **info, **r} for r in rows))

    if args.memory:
        measure_memory(args, info, stamp)

if __name__ == "__main__":
    main()
