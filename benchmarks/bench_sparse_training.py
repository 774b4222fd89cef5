"""Sparse training costs: sparse linear products vs dense, mask-refresh overhead, torch.compile.

Sections (all by default; pick with --sections):

* ``linear``   forward, backward-input and the whole layer step of ``nmsparse.nn.sparse_linear``
               against the dense ``F.linear`` at LLM-like shapes. On CUDA (fp16/bf16, 2:4T) this
               times PyTorch's semi-structured kernels (target: >= 1.3x on forward + backward-input
               at large shapes on an H100). On CPU it times the masked dense reference, i.e. the
               overhead of masking, and says that the sparse kernels were not measured.
* ``overhead`` share of the training step spent refreshing masks, for greedy and exact at
               update_every in {1, 40, 100}, on an MLP and a small CNN (targets: the paper reports
               14 % for its 2-approximation every 40 steps on ResNet-50; ours: <= 5 % at
               update_every=100 with the exact solver).
* ``compile``  eager vs torch.compile (inductor) step time of a sparsified MLP.

Usage: python benchmarks/bench_sparse_training.py [--quick] [--sections linear overhead compile]
Results: a Markdown table per section and JSON lines in bench-results/sparse_training.jsonl.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, print_table, write_jsonl  # noqa: E402

import nmsparse as nms  # noqa: E402
from nmsparse.examples import load_digits_split, mlp, small_cnn  # noqa: E402
from nmsparse.nn import CompressedWeight, sparse_linear  # noqa: E402
from nmsparse.nn.sparse_linear import semi_structured_unsupported  # noqa: E402

OUT = os.path.join("bench-results", "sparse_training.jsonl")


def _time(fn, repeats: int, sync) -> float:
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def bench_linear(quick: bool) -> list:
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = torch.float16 if cuda else torch.float32
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        shapes = [(4096, 4096, 4096), (8192, 4096, 11008), (8192, 8192, 8192), (16384, 8192, 16384)]
    else:
        shapes = [(256, 512, 512), (1024, 1024, 1024)] if quick else [(512, 1024, 1024), (2048, 2048, 2048), (2048, 4096, 4096)]
    repeats = 5 if quick else 20
    rows = []
    for tokens, d_in, d_out in shapes:
        g = torch.Generator().manual_seed(0)
        w = torch.randn(d_out, d_in, generator=g).to(device, dtype).requires_grad_(True)
        mask = nms.find_mask(w.detach().float().cpu(), "2:4T").to(device)
        x = torch.randn(tokens, d_in, generator=g).to(device, dtype).requires_grad_(True)
        dy = torch.randn(tokens, d_out, generator=g).to(device, dtype)
        reason = semi_structured_unsupported(w, x)
        compressed = CompressedWeight().get(w, mask, True) if reason is None else None
        wm = torch.where(mask, w.detach(), torch.zeros((), dtype=dtype, device=device))
        t_dense_fwd = _time(lambda: F.linear(x, w), repeats, sync)
        t_sparse_fwd = _time(lambda: sparse_linear(x, w, mask, compressed=compressed), repeats, sync)
        t_dense_bwd = _time(lambda: dy.matmul(wm), repeats, sync)
        t_sparse_bwd = (
            _time(lambda: F.linear(dy, compressed.transposed), repeats, sync) if compressed is not None else t_dense_bwd
        )

        def dense_step():
            y = F.linear(x, w)
            y.backward(dy)

        def sparse_step():
            y = sparse_linear(x, w, mask, compressed=compressed)
            y.backward(dy)

        t_dense_step = _time(dense_step, repeats, sync)
        t_sparse_step = _time(sparse_step, repeats, sync)
        t_compress = _time(lambda: CompressedWeight().get(w, mask, True), 3, sync) if compressed is not None else None
        rows.append({
            "section": "linear", "device": torch.cuda.get_device_name() if cuda else "cpu", "dtype": str(dtype).replace("torch.", ""),
            "shape": f"{tokens}x{d_in}->{d_out}", "kernel": "semi-structured 2:4" if compressed is not None else f"masked dense ({reason})",
            "fwd_dense_ms": 1e3 * t_dense_fwd, "fwd_sparse_ms": 1e3 * t_sparse_fwd,
            "bwd_in_dense_ms": 1e3 * t_dense_bwd, "bwd_in_sparse_ms": 1e3 * t_sparse_bwd,
            "fwd_bwd_in_speedup": (t_dense_fwd + t_dense_bwd) / (t_sparse_fwd + t_sparse_bwd),
            "step_speedup": t_dense_step / t_sparse_step,
            "compress_ms": None if t_compress is None else 1e3 * t_compress,
        })
    print_table(rows, [
        ("device", "device", ""), ("dtype", "dtype", ""), ("shape", "tokens x in -> out", ""), ("kernel", "kernel", ""),
        ("fwd_dense_ms", "fwd dense ms", ".2f"), ("fwd_sparse_ms", "fwd sparse ms", ".2f"),
        ("bwd_in_dense_ms", "dx dense ms", ".2f"), ("bwd_in_sparse_ms", "dx sparse ms", ".2f"),
        ("fwd_bwd_in_speedup", "fwd+dx speedup", ".2f"), ("step_speedup", "layer step speedup", ".2f"),
        ("compress_ms", "compress W,Wt ms", ".2f"),
    ])
    if not cuda:
        print("No CUDA device: the semi-structured kernels were NOT measured; rows show the masked dense reference.\n")
    return rows


def _overhead_models(quick: bool):
    data = load_digits_split(seed=0)
    width = 512 if quick else 1024
    yield "MLP 64-{0}-{0}-{0}-10".format(width), (lambda: mlp(hidden=(width, width, width), seed=0)), data.flat(), ["fc4"]
    yield "CNN (width 32)", (lambda: small_cnn(width=32, seed=0)), data, ["conv1", "fc2"]


def bench_overhead(quick: bool) -> list:
    """Refresh share = one refresh / (update_every x one training step), each the best of repeats.

    Timing both parts separately (best of several windows) instead of differencing two long
    training runs keeps the figure stable on a noisy machine; the step includes masking the
    weights in the forward pass, so the share is the refresh's alone.
    """
    rows = []
    for model_name, make, data, dense_layers in _overhead_models(quick):
        x, y = data.x_train[:128], data.y_train[:128]
        step = _step_time(make, x, y, dense_layers, windows=3 if quick else 5)
        for method in ("greedy", "exact"):
            refresh = _refresh_time(make, method, dense_layers)
            for every in (1, 40, 100):
                rows.append({
                    "section": "overhead", "model": model_name, "method": method, "update_every": every,
                    "refresh_ms": 1e3 * refresh, "step_ms": 1e3 * step,
                    "overhead_pct": 100.0 * refresh / (every * step),
                })
    print_table(rows, [
        ("model", "model", ""), ("method", "2:4T solver", ""), ("update_every", "update every", ""),
        ("refresh_ms", "one refresh ms", ".2f"), ("step_ms", "train step ms", ".2f"),
        ("overhead_pct", "refresh share of step %", ".2f"),
    ])
    return rows


def _step_time(make, x, y, dense_layers, windows: int) -> float:
    model = make()
    nms.sparsify_(model, "2:4T", update="static", exclude=dense_layers)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def one():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    for _ in range(3):
        one()
    best = float("inf")
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(10):
            one()
        best = min(best, (time.perf_counter() - start) / 10)
    return best


def _refresh_time(make, method, dense_layers) -> float:
    model = nms.sparsify_(make(), "2:4T", method=method, exclude=dense_layers)
    nms.update_masks_(model)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        nms.update_masks_(model)
        best = min(best, time.perf_counter() - start)
    return best


def bench_compile(quick: bool) -> list:
    rows = []
    data = load_digits_split(seed=0).flat()
    x, y = data.x_train[:256], data.y_train[:256]
    width = 512 if quick else 1024
    for label, pattern in (("dense", None), ("2:4T exact", "2:4T")):
        for mode in ("eager", "inductor"):
            model = mlp(hidden=(width, width, width), seed=0)
            if pattern:
                nms.sparsify_(model, pattern, update_every=100, exclude="fc4")
            run = torch.compile(model) if mode == "inductor" else model
            opt = torch.optim.SGD(model.parameters(), lr=0.01)
            loss_fn = nn.CrossEntropyLoss()

            def one():
                opt.zero_grad(set_to_none=True)
                loss_fn(run(x), y).backward()
                opt.step()

            start = time.perf_counter()
            one()
            first = time.perf_counter() - start
            for _ in range(5):
                one()
            n = 30 if quick else 100
            start = time.perf_counter()
            for _ in range(n):
                one()
            rows.append({"section": "compile", "model": f"MLP {width}x3", "run": label, "mode": mode,
                         "first_step_s": first, "step_ms": 1e3 * (time.perf_counter() - start) / n})
    base = {r["run"]: r["step_ms"] for r in rows if r["mode"] == "eager"}
    for r in rows:
        r["speedup_vs_eager"] = base[r["run"]] / r["step_ms"]
    print_table(rows, [("model", "model", ""), ("run", "run", ""), ("mode", "mode", ""),
                       ("first_step_s", "first step s (compile)", ".1f"), ("step_ms", "step ms", ".2f"),
                       ("speedup_vs_eager", "speedup vs eager", ".2f")])
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller shapes and fewer steps")
    parser.add_argument("--sections", nargs="+", default=["linear", "overhead", "compile"], choices=["linear", "overhead", "compile"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine()
    print(f"machine: {info}\n")
    for section in args.sections:
        print(f"## {section}\n")
        rows = {"linear": bench_linear, "overhead": bench_overhead, "compile": bench_compile}[section](args.quick)
        write_jsonl(OUT, [{**r, **info, "quick": args.quick} for r in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
