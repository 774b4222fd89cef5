"""Mask refresh under FSDP2: shard-local against gathered, time and bytes per refresh.

A 4-layer MLP of width 2048 (four ``Linear(2048, 2048)``, every weight sparsified) is sharded
with ``fully_shard`` over 2 gloo CPU processes. One refresh recomputes every layer's mask from
the dense weights. Three ways, timed in turn refresh after refresh, in a rotating order (so that
load on a shared machine, and whichever refresh ran just before, hit them alike):

* ``library, Shard(0)``: ``nmsparse.update_masks_(model)`` under FSDP2's default sharding. Each
  rank holds 1024 whole rows, so row-wise and transposable masks refresh **shard-locally** (each
  rank solves its rows; the ranks all-gather the masks, 1 bit per weight). Unstructured top-k is
  per tensor, so it gathers.
* ``script, Shard(0)``: the same model refreshed the gathered way with public calls: per layer
  ``full_tensor()`` then ``find_mask`` / ``unstructured_mask`` on every rank, copied into the
  mask. This is the baseline: what a refresh costs when every rank gathers the weight.
* ``library, Shard(1)``: ``update_masks_`` under ``shard_placement_fn`` = ``Shard(1)``: a rank's
  columns cut every group, so the library's fallback gathers (``Shard(1)`` also pays a
  concatenation to reassemble columns).

Bytes are counted by ``nmsparse.testing.CollectiveBytes``, a dispatch mode that sees every
collective (also those DTensor issues internally) and sums the bytes of this rank's input (its
contribution; an all-gather over k ranks delivers k times that to every rank). Time: wall clock
of one refresh, the slower rank's, best and median over ``--repeats``; each rank runs torch and
numba on one thread.

Usage: python benchmarks/bench_distributed.py [--quick] [--width 2048] [--repeats 5]
Results: a Markdown table and JSON lines in bench-results/distributed.jsonl.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, print_table, write_jsonl  # noqa: E402

OUT = os.path.join("bench-results", "distributed.jsonl")
WORLD = 2
CASES = [("2:4T", "exact"), ("2:4T", "greedy"), ("4:8T", "exact"), ("2:4", None), (0.5, None)]


def _model(width: int, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(*[nn.Linear(width, width) for _ in range(4)])


def _timed(refresh) -> float:
    dist.barrier()
    start = time.perf_counter()
    refresh()
    took = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
    dist.all_reduce(took, op=dist.ReduceOp.MAX)  # a collective refresh is as slow as its slowest rank
    return float(took)


def _sharded(pattern, method, width: int, placement: int):
    import nmsparse as nms
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard

    model = nms.sparsify_(_model(width), pattern, method=method)
    place = (lambda p: Shard(placement) if p.ndim == 2 else Shard(0))
    for layer in model:
        fully_shard(layer, shard_placement_fn=place)
    fully_shard(model, shard_placement_fn=place)
    return model


@torch.no_grad()
def _gather_and_solve(model, pattern, method) -> None:
    """The gathered refresh with public calls: every rank gathers each weight and solves it whole."""
    import nmsparse as nms
    from nmsparse.nn import sparsified_parameters

    for module, pname in sparsified_parameters(model).values():
        full = module.parametrizations[pname].original.full_tensor()
        mask = nms.find_mask(full, pattern, method=method) if isinstance(pattern, str) else nms.unstructured_mask(full, pattern)
        module.parametrizations[pname][0].mask.copy_(mask)


def _worker(rank: int, init_file: str, width: int, repeats: int, out_file: str) -> None:
    import warnings

    import numba

    # One core per rank on the 2-core machine, for torch and the solvers' numba alike. Set before
    # nmsparse is imported: set afterwards, the shard-local refreshes ran 3x slower in this
    # script (torch and numba share one OpenMP runtime), which would skew the comparison.
    torch.set_num_threads(1)
    numba.set_num_threads(1)

    import nmsparse as nms
    from nmsparse.nn import refresh_plan
    from nmsparse.testing import CollectiveBytes

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    rows = []
    try:
        for pattern, method in CASES:
            local, cols = (_sharded(pattern, method, width, placement) for placement in (0, 1))
            plan = {id(m): "/".join(sorted({p.mode for p in refresh_plan(m).values()})) for m in (local, cols)}
            variants = [
                ("library", "Shard(0)", plan[id(local)], lambda: nms.update_masks_(local)),
                ("script", "Shard(0)", "gathered", lambda: _gather_and_solve(local, pattern, method)),
                ("library", "Shard(1)", plan[id(cols)], lambda: nms.update_masks_(cols)),
            ]
            comm, times = [], [[] for _ in variants]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # the once-per-layer "gathered" notes
                for *_, refresh in variants:
                    with CollectiveBytes() as counter:
                        refresh()  # also warms up the solver (numba) and the process group
                    comm.append(counter)
                for r in range(repeats):
                    # Rotate the order every round: a refresh that follows another one's large
                    # frees and allocations runs measurably slower, whichever it is.
                    for i in [(r + j) % len(variants) for j in range(len(variants))]:
                        times[i].append(_timed(variants[i][-1]))
            for (who, placement, mode, _), counter, took in zip(variants, comm, times):
                rows.append({
                    "pattern": pattern if isinstance(pattern, str) else f"unstructured {pattern:.0%}",
                    "method": method or ("topk" if isinstance(pattern, float) else "topn"),
                    "by": who, "placement": placement, "refresh": mode,
                    "seconds_best": min(took), "seconds_median": statistics.median(took),
                    "bytes_per_rank": counter.bytes, "collectives": counter.calls,
                })
    finally:
        dist.destroy_process_group()
    if rank == 0:
        torch.save(rows, out_file)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="width 512, 2 repeats: a smoke run")
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    width, repeats = (512, 2) if args.quick else (args.width, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        out_file = os.path.join(tmp, "rows.pt")
        mp.start_processes(_worker, args=(os.path.join(tmp, "init"), width, repeats, out_file),
                           nprocs=WORLD, join=True, start_method="spawn")
        rows = torch.load(out_file, weights_only=False)
    weights = 4 * width * width
    for row in rows:
        row.update(width=width, ranks=WORLD, weights=weights, repeats=repeats,
                   bytes_per_weight=row["bytes_per_rank"] * WORLD / weights, machine=machine())
    # Each variant against the gathered baseline (script, Shard(0)) of the same case, in one run.
    base = {(r["pattern"], r["method"]): r for r in rows if r["by"] == "script"}
    for row in rows:
        ref = base[(row["pattern"], row["method"])]
        row["time_vs_gathered"] = row["seconds_best"] / ref["seconds_best"]
        row["bytes_vs_gathered"] = row["bytes_per_rank"] / ref["bytes_per_rank"]
    print(f"\nMask refresh under FSDP2: 4 x Linear({width}, {width}) fp32, {WORLD} gloo CPU processes, "
          f"1 torch + 1 numba thread each; best / median of {repeats}\n")
    print_table(rows, [
        ("pattern", "pattern", ""), ("method", "solver", ""), ("by", "by", ""), ("placement", "sharding", ""),
        ("refresh", "refresh", ""), ("seconds_best", "s / refresh (best)", ".3f"),
        ("seconds_median", "median", ".3f"), ("bytes_per_rank", "bytes sent / rank", ",d"),
        ("bytes_per_weight", "bytes / weight", ".3f"), ("time_vs_gathered", "time vs gathered", ".2f"),
        ("bytes_vs_gathered", "bytes vs gathered", ".4f"),
    ])
    write_jsonl(OUT, rows)
    print(f"\nJSON lines appended to {OUT}")


if __name__ == "__main__":
    main()
