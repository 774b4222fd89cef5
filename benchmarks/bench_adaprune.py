"""AdaPrune on a small CNN trained on scikit-learn's digits: accuracy after converting to N:M.

Rows per pattern: magnitude (one-shot mask), magnitude + BatchNorm re-estimation, AdaPrune + BN
(layer-wise, Hubara et al. 2021 Sec. 5) and (for 2:4T and the narrow model) sequential AdaPrune + BN; plus a model trained with
unstructured 50 % sparsity converted to 2:4T. The first conv (1 input channel) and the classifier
stay dense, as is usual. A narrower model (width 4) with sparser patterns (1:4, 1:4T) makes the
gap to dense visible, since the default model barely loses accuracy at 50 %.

Run: ``python benchmarks/bench_adaprune.py`` (about 1-3 minutes on 2 cores). Prints a Markdown
table and appends JSON lines to ``bench-results/adaprune.jsonl``.
"""

from __future__ import annotations

import copy
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, print_table, write_jsonl  # noqa: E402

import nmsparse as nms  # noqa: E402
from nmsparse.oneshot import adaprune  # noqa: E402
from nmsparse.examples import evaluate, load_digits_split, small_cnn, train  # noqa: E402

KEEP_DENSE = ["conv1", "fc2"]
CALIB_IMAGES = 256
ITERATIONS = 1000


def convert(model, calib, pattern, *, iterations, batchnorm, sequential=False, scores=None):
    m = adaprune(
        copy.deepcopy(model), calib, pattern, exclude=KEEP_DENSE, iterations=iterations, batchnorm=batchnorm,
        sequential=sequential, scores=scores,
    )
    for fit in m.adaprune_report.layers:  # the benchmark also checks what it measures
        nms.check_mask(m.get_submodule(fit.name).weight != 0, pattern)
    return m


def rows_for(setting, model, data, calib, pattern, dense_acc, scores=None, start_label="", sequential=False):
    out = []
    configs = [
        ("magnitude", 0, False, False),
        ("magnitude + BN", 0, True, False),
        ("AdaPrune + BN", ITERATIONS, True, False),
    ] + ([("AdaPrune seq. + BN", ITERATIONS, True, True)] if sequential else [])
    for label, iterations, bn, seq in configs:
        t = time.perf_counter()
        m = convert(model, calib, pattern, iterations=iterations, batchnorm=bn, sequential=seq, scores=scores)
        seconds = time.perf_counter() - t
        acc = evaluate(m, data.x_test, data.y_test)
        errs = [f.error_after for f in m.adaprune_report.layers]
        out.append({
            "setting": setting, "pattern": start_label + pattern, "method": label, "accuracy": acc,
            "gap_closed": (acc - out[0]["accuracy"]) / (dense_acc - out[0]["accuracy"]) if out and dense_acc > out[0]["accuracy"] else None,
            "mean_layer_error": sum(errs) / len(errs), "seconds": seconds,
        })
        print(f"  {setting} {start_label}{pattern} {label}: {acc:.4f} ({seconds:.1f} s)", file=sys.stderr, flush=True)
    return out


def unstructured(model, data, density=0.5, epochs=5):
    """Magnitude-prune the eligible layers to 50 % unstructured and fine-tune with the masks fixed."""
    m = copy.deepcopy(model)
    layers = [mod for name, mod in m.named_modules() if name in ("conv2", "conv3", "fc1")]
    masks = [nms.unstructured_mask(mod.weight.detach(), density) for mod in layers]

    def apply(_model=None, _step=None):
        with torch.no_grad():
            for mod, mask in zip(layers, masks):
                mod.weight.copy_(torch.where(mask, mod.weight, torch.zeros((), dtype=mod.weight.dtype)))

    apply()
    res = train(m, data, epochs=epochs, lr=1e-3, seed=1, after_step=apply)
    return m, res.accuracy


def main() -> None:
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest and steadiest on a shared machine
    start = time.perf_counter()
    data = load_digits_split(seed=0)
    calib = [data.x_train[i : i + 64] for i in range(0, CALIB_IMAGES, 64)]
    rows = []
    for setting, width, patterns in (("width 16", 16, ("2:4", "2:4T", "4:8T")), ("width 4", 4, ("1:4", "1:4T"))):
        model = small_cnn(width=width, seed=0)
        dense_acc = train(model, data, epochs=15 if width < 16 else 10, seed=0).accuracy
        rows.append({"setting": setting, "pattern": "dense", "method": "-", "accuracy": dense_acc})
        for pattern in patterns:
            rows += rows_for(setting, model, data, calib, pattern, dense_acc, sequential=width < 16 or pattern == "2:4T")
        if width == 16:
            sparse, acc = unstructured(model, data)
            rows.append({"setting": setting, "pattern": "unstructured 50%", "method": "magnitude + fine-tune", "accuracy": acc})
            rows += rows_for(setting, sparse, data, calib, "2:4T", dense_acc, scores="support", start_label="unstr. 50% -> ")
    total = time.perf_counter() - start
    print(f"\nsmall_cnn on digits (test set of {len(data.y_test)}), {CALIB_IMAGES} calibration images, "
          f"{ITERATIONS} Adam steps per layer; conv1 and fc2 dense; total {total:.0f} s\n")
    print_table(rows, [
        ("setting", "model", ""), ("pattern", "pattern", ""), ("method", "method", ""),
        ("accuracy", "test acc.", ".4f"), ("gap_closed", "gap to dense closed", ".0%"),
        ("mean_layer_error", "mean layer rel. error", ".4f"), ("seconds", "seconds", ".1f"),
    ])
    env = machine()
    write_jsonl("bench-results/adaprune.jsonl", [{"bench": "adaprune", **r, **env} for r in rows])


if __name__ == "__main__":
    main()
