"""WGSEF group sparsity on digits: accuracy vs dense and vs group lasso at the same group sparsity,
and the CPU inference latency of the physically shrunk model.

For each model (the MLP 64-128-128-10 with neuron groups on fc1, fc2; the small CNN, width 16,
with filter groups on conv1..conv3 - BatchNorm coupled - and neuron groups on fc1) and each
share of groups kept, three runs with the same seed, data order and epochs:

* ``wgsef``: Adam + the WGSEF prox after every step (``WGSEFRegularizer.step``), then the final
  projection to exactly k groups per layer and a fine-tune with the projection after every step;
* ``group lasso``: the same, with the group-lasso prox (group soft-thresholding, threshold
  ``lr * lam * sqrt(|G|)``) instead, and the same projection to exactly k groups, so both end at
  the same group sparsity. Its lambda was chosen (0.3 MLP, 0.1 CNN; WGSEF uses 2.0) so that
  both penalties leave about the same share of groups alive before the projection at k/m = 0.25
  (a calibration run: MLP 0.87 vs 0.87, CNN 0.94 vs 0.94); larger group-lasso lambdas (1.0) zero
  every group, since group lasso has no notion of k;
* ``dense``: no regularizer, as many epochs in total.

"groups alive" is the share of groups that are non-zero at the end of the regularized phase,
before the projection (how far each penalty drove the model by itself). Latency: eval-mode
forward of the 450 test images, 1 thread, best of N, dense model vs ``shrink_model`` output.

Usage::

    python benchmarks/bench_wgsef.py            # full run (about 2 min on 2 busy cores)
    python benchmarks/bench_wgsef.py --quick    # fewer epochs and one k per model

Results: a Markdown table on stdout and JSON lines in bench-results/wgsef.jsonl.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import best_of, machine, print_table, write_jsonl  # noqa: E402

from nmsparse.examples import load_digits_split, mlp, small_cnn, train  # noqa: E402
from nmsparse.regularizers import WGSEFRegularizer, shrink_model  # noqa: E402

LR = 2e-3


def group_lasso_step(reg: WGSEFRegularizer, lam: float, lr: float) -> None:
    """prox of lr*lam*sum_i sqrt(|G_i|) ||x_Gi||: group soft-thresholding, on the same groups."""
    with torch.no_grad():
        for g in reg.layers:
            n = g.norms()
            thr = lr * lam * g.sizes.to(torch.float64).sqrt()
            scale = torch.where(n > thr, 1 - thr / n.clamp_min(1e-300), torch.zeros_like(n))
            reg.rescale_groups(g, scale)


def spec(model_name: str, share: float):
    if model_name == "mlp":
        return (lambda: mlp(hidden=(128, 128), seed=0)), {"fc1": "neurons", "fc2": "neurons"}, True
    layers = {"conv1": "filters", "conv2": "filters", "conv3": "filters", "fc1": "neurons"}
    return (lambda: small_cnn(width=16, seed=0)), layers, False


def run(model_name, share, method, args, data):
    make, groups, flat = spec(model_name, share)
    d = data.flat() if flat else data
    model = make()
    if method == "dense":
        res = train(model, d, epochs=args.epochs + args.finetune, lr=LR, seed=0)
        return model, {"accuracy": res.accuracy, "alive": 1.0, "seconds": res.seconds}
    reg = WGSEFRegularizer(model, groups=groups, k=share, lam=args.lam_wgsef[model_name])
    if method == "wgsef":
        hook = reg.after_step(LR)
    else:
        lam = args.lam_gl[model_name]
        hook = lambda _m, _s: group_lasso_step(reg, lam, LR)  # noqa: E731
    start = time.perf_counter()
    train(model, d, epochs=args.epochs, lr=LR, seed=0, after_step=hook)
    rep = reg.report()
    alive = sum(r.nonzero_groups for r in rep) / sum(r.n_groups for r in rep)
    reg.project_()
    res = train(model, d, epochs=args.finetune, lr=LR, seed=1, after_step=lambda _m, _s: reg.project_())
    reached = reg.report()
    assert all(r.nonzero_groups <= r.k for r in reached)
    kept = sum(r.nonzero_groups for r in reached) / sum(r.n_groups for r in reached)
    return model, {"accuracy": res.accuracy, "alive": alive, "kept": kept, "seconds": time.perf_counter() - start}


def latency(model, x, repeats):
    model.eval()
    with torch.no_grad():
        model(x)
        return best_of(lambda: model(x), repeats)[0]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--finetune", type=int, default=6)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--out", default="bench-results/wgsef.jsonl")
    args = p.parse_args()
    torch.set_num_threads(1)
    shares = [0.125, 0.25, 0.5]
    if args.quick:
        args.epochs, args.finetune, args.repeats, shares = 6, 3, 10, [0.25]
    args.lam_wgsef = {"mlp": 2.0, "cnn": 2.0}
    args.lam_gl = {"mlp": 0.3, "cnn": 0.1}  # matched to WGSEF's groups-alive share at k/m = 0.25
    data = load_digits_split(seed=0)
    rows, records = [], []
    for model_name in ("mlp", "cnn"):
        dense, dres = run(model_name, 1.0, "dense", args, data)
        x = data.x_test.flatten(1) if model_name == "mlp" else data.x_test
        t_dense = latency(dense, x, args.repeats)
        n_dense = sum(p.numel() for p in dense.parameters())
        rows.append({"model": model_name, "share": "dense", "method": "dense", "acc": dres["accuracy"],
                     "params": n_dense, "ms": 1e3 * t_dense, "speedup": 1.0})
        for share in shares:
            for method in ("wgsef", "group lasso"):
                model, res = run(model_name, share, method, args, data)
                small, rep = shrink_model(model)
                model.eval()
                with torch.no_grad():
                    same = float((small.eval()(x) - model(x)).abs().max())
                t_small = latency(small, x, args.repeats)
                rows.append({"model": model_name, "share": f"{share:g}", "method": method, "acc": res["accuracy"],
                             "alive": res["alive"], "kept": res["kept"], "params": rep.params_after,
                             "ms": 1e3 * t_small, "speedup": t_dense / t_small, "maxdiff": same})
        print(f"[{model_name} done]", file=sys.stderr, flush=True)
    cols = [("model", "model", ""), ("share", "groups kept (k/m)", ""), ("method", "method", ""),
            ("acc", "test acc", ".3f"), ("alive", "groups alive before projection", ".2f"),
            ("kept", "groups after projection", ".3f"), ("params", "params (shrunk)", "d"),
            ("ms", "CPU latency ms (450 imgs)", ".3f"), ("speedup", "speedup vs dense", ".2f"),
            ("maxdiff", "max |shrunk - masked|", ".1e")]
    print_table(rows, cols)
    for r in rows:
        records.append({"bench": "wgsef", **r, "epochs": args.epochs, "finetune": args.finetune,
                        "lam_wgsef": args.lam_wgsef[r["model"]], "lam_group_lasso": args.lam_gl[r["model"]],
                        "machine": machine()})
    write_jsonl(args.out, records)


if __name__ == "__main__":
    main()
