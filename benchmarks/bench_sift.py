"""Sparse-IFT on scikit-learn digits: dense vs each family at s in {0.5, 0.75, 0.9}, equal FLOPs,
static random masks vs RigL, mean +- std over seeds. Every mask is an ``NMMask`` (masked gradients);
RigL is its ``"rigl"`` update policy (``nmsparse.nn.set_update_``).

    python benchmarks/bench_sift.py            # full: 3 seeds, ~5-8 min on 2 cores
    python benchmarks/bench_sift.py --quick    # 2 seeds, s in {0.5, 0.9}, fewer epochs (~1 min)

Every model is small_cnn(width=4) or its Sparse-IFT transform (first and last layers dense) with
the same forward multiply-adds (checked and printed: FLOPs/dense). RigL updates every 10 steps
until 75 % of training (the run is only ~130 steps, so the library's default Delta T = 100 would
update once at most). Appends JSON lines to bench-results/sift.jsonl.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, print_table, write_jsonl  # noqa: E402

from nmsparse._progress import Progress  # noqa: E402
from nmsparse.examples import load_digits_split, small_cnn, steps_per_epoch, train  # noqa: E402
from nmsparse.nn import set_update_, sparsified_parameters, track_optimizers  # noqa: E402
from nmsparse.sift import FAMILIES, count_flops, transform  # noqa: E402

SHAPE = (1, 1, 8, 8)


def run_one(family, s, method, seed, args):
    data = load_digits_split(seed)
    model = small_cnn(width=args.width, seed=seed)
    if family != "dense":
        model = transform(model, family, s, input_shape=SHAPE, seed=seed)
    flops = count_flops(model, SHAPE).total
    masks = [m.parametrizations[p][0].mask for m, p in sparsified_parameters(model).values()]
    kept = sum(int(mask.sum()) for mask in masks)
    numel = sum(mask.numel() for mask in masks)
    if family != "dense" and method == "rigl":
        total = args.epochs * steps_per_epoch(data)
        set_update_(model, "rigl", total_steps=total, update_every=args.update_every, seed=seed)
    start = time.perf_counter()
    with track_optimizers(model):
        acc = train(model, data, epochs=args.epochs, seed=seed).accuracy
    return {"family": family, "sparsity": s, "method": method, "seed": seed, "accuracy": acc, "flops": flops,
            "actual_sparsity": 1 - kept / numel if numel else 0.0, "seconds": time.perf_counter() - start}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 seeds, s in {0.5, 0.9}, 4 epochs")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--width", type=int, default=4)
    ap.add_argument("--update-every", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(args.threads, 2)))
    seeds = [0, 1] if args.quick else [0, 1, 2]
    levels = [0.5, 0.9] if args.quick else [0.5, 0.75, 0.9]
    args.epochs = args.epochs or (4 if args.quick else 6)
    jobs = [("dense", 0.0, "-", seed) for seed in seeds]
    jobs += [(f, s, m, seed) for f in FAMILIES for s in levels for m in ("static", "rigl") for seed in seeds]
    results = []
    with Progress(len(jobs), "sift bench") as bar:
        for job in jobs:
            results.append(run_one(*job, args))
            bar.advance()
    dense = [r for r in results if r["family"] == "dense"]
    dense_acc = statistics.mean(r["accuracy"] for r in dense)
    dense_flops = dense[0]["flops"]

    def stat(rs):
        accs = [100 * r["accuracy"] for r in rs]
        return f"{statistics.mean(accs):.2f} ± {statistics.pstdev(accs):.2f}"

    rows = [{"model": "dense", "s": "0", "actual": "0", "flops": 1.0, "static": stat(dense), "rigl": "-",
             "delta": "-", "sec": statistics.mean(r["seconds"] for r in dense)}]
    for f in FAMILIES:
        for s in levels:
            st = [r for r in results if r["family"] == f and r["sparsity"] == s and r["method"] == "static"]
            rg = [r for r in results if r["family"] == f and r["sparsity"] == s and r["method"] == "rigl"]
            best = max(statistics.mean(r["accuracy"] for r in st), statistics.mean(r["accuracy"] for r in rg))
            rows.append({"model": f, "s": f"{s:g}", "actual": f"{st[0]['actual_sparsity']:.3f}",
                         "flops": st[0]["flops"] / dense_flops, "static": stat(st), "rigl": stat(rg),
                         "delta": f"{100 * (best - dense_acc):+.2f}",
                         "sec": statistics.mean(r["seconds"] for r in st + rg)})
    print(f"\nsmall_cnn(width={args.width}) on digits, {args.epochs} epochs, Adam 2e-3, seeds {seeds}, "
          f"RigL every {args.update_every} steps until 75 %; dense forward = {dense_flops:,} MACs/image; "
          f"test accuracy in %, mean ± std\n")
    print_table(rows, [("model", "family", ""), ("s", "s", ""), ("actual", "actual s", ""),
                       ("flops", "FLOPs/dense", ".4f"), ("static", "static masks", ""), ("rigl", "RigL", ""),
                       ("delta", "best − dense (pts)", ""), ("sec", "s/run", ".1f")])
    meta = {"bench": "sift", "quick": args.quick, "epochs": args.epochs, "width": args.width, **machine()}
    write_jsonl(os.path.join("bench-results", "sift.jsonl"), [{**meta, **r} for r in results])


if __name__ == "__main__":
    main()
