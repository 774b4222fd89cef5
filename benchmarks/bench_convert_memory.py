"""Peak memory of `nmsparse prune` against checkpoint size: this checkout (streaming) and a baseline.

Generates sharded Hugging Face folders of bf16 4096x4096 weights (1 and 2 GiB by default; shards
of 16 weights = 512 MiB) in a temporary folder, prunes each to 2:4T with `nmsparse prune` in a
fresh process, and reads the child's peak resident memory (ru_maxrss via resource.getrusage, the
number `/usr/bin/time -v` prints as "Maximum resident set size"). The baseline is the library as
it was before streaming (commit 2ea89d0, exported with `git archive`; `--baseline-src PATH` to
use another source tree, `--no-baseline` to skip it). Both runs write their OUT and it is removed
after. Targets (issue 14): peak <= 900 MiB at 1 and 2 GiB, and the 2 GiB run <= 1.15x the 1 GiB run.

Run: ``python benchmarks/bench_convert_memory.py`` (about 10 minutes on 2 cores, 8 GiB of free
disk); ``--quick`` uses 0.125 and 0.25 GiB. Prints a table and appends JSON lines to
``bench-results/convert_memory.jsonl``.

``--calibrated``: peak RSS of *calibrated* pruning (``nmsparse prune --calibration``, SparseGPT 2:4,
blocks streamed from the shards) against the model's depth, on bf16 Llama folders (hidden 1024,
MLP 2816, 16 heads, 8 kv heads, vocab 32000, untied LM head; ``--depths``, default 6 12 24 48)
generated here with random weights, 16 calibration windows of 128 tokens. Target (issue 19): the
12-block run's peak <= 1.15x the 6-block run's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, print_table, write_jsonl  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BASELINE_REF = "2ea89d0"
MIB = 1024 * 1024
WEIGHT_BYTES = 4096 * 4096 * 2
# Runs the command given after it and prints its peak RSS in KiB (Linux ru_maxrss) on the last stderr line.
_MEASURE = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
    "print('maxrss_kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode, file=sys.stderr)"
)


def make_folder(folder: Path, gib: float, per_shard: int = 16) -> int:
    """A sharded HF folder of bf16 4096x4096 weights (``gib`` GiB), written one weight at a time."""
    import torch
    from safetensors.torch import save_file

    n = max(1, round(gib * 1024 * MIB / WEIGHT_BYTES))
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "bench"}')
    shards = [list(range(i, min(i + per_shard, n))) for i in range(0, n, per_shard)]
    weight_map = {}
    g = torch.Generator().manual_seed(0)
    for s, layers in enumerate(shards):
        name = f"model-{s + 1:05d}-of-{len(shards):05d}.safetensors"
        part = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(4096, 4096, generator=g).bfloat16() for i in layers}
        save_file(part, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
        del part
    index = {"metadata": {"total_size": n * WEIGHT_BYTES}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return n


def run_prune(src_tree: Path, folder: Path, out: Path, pattern: str, extra=()) -> dict:
    """``nmsparse prune FOLDER -o OUT --pattern P [extra]`` in a fresh process: its peak RSS and seconds."""
    env = dict(os.environ, PYTHONPATH=str(src_tree), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    cmd = [sys.executable, "-c", _MEASURE, sys.executable, "-m", "nmsparse", "prune", str(folder), "-o", str(out),
           "--pattern", pattern, "--quiet", *extra]
    start = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    last = res.stderr.strip().splitlines()[-1].split()
    if last[0] != "maxrss_kib" or last[2] != "0":
        raise SystemExit(f"prune failed ({src_tree}):\n{res.stderr[-2000:]}")
    shutil.rmtree(out, ignore_errors=True)
    for p in out.parent.glob(out.name + ".prune.json"):
        p.unlink()
    return {"rss_mib": int(last[1]) / 1024, "seconds": seconds}


def baseline_tree(args, work: Path):
    if args.no_baseline:
        return None
    if args.baseline_src:
        return Path(args.baseline_src).resolve()
    dest = work / "baseline"
    dest.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline_ref, "src"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest / "src"


def make_llama_folder(folder: Path, blocks: int) -> int:
    """A bf16 Llama folder of ``blocks`` blocks (hidden 1024, MLP 2816) with a word-level tokenizer; returns its bytes."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted(set(_calibration_text().split()))[:31990]
    vocab = {"[UNK]": 0, "[PAD]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    cfg = transformers.LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=blocks,
                                   num_attention_heads=16, num_key_value_heads=8, max_position_embeddings=512,
                                   tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(folder, max_shard_size="200MB")
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(folder)
    del model
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def _calibration_text() -> str:
    import sysconfig

    parts = []
    for name in ("argparse.py", "typing.py", "dataclasses.py", "inspect.py"):
        with open(os.path.join(sysconfig.get_paths()["stdlib"], name), encoding="utf-8") as fh:
            parts.append(fh.read())
    return "\n".join(parts)


def run_calibrated(args, work: Path) -> None:
    text = work / "calib.txt"
    text.write_text(_calibration_text(), encoding="utf-8")
    rows = []
    for blocks in args.depths:
        folder = work / f"llama-{blocks}"
        size = make_llama_folder(folder, blocks)
        run = run_prune(ROOT / "src", folder, work / "out", "2:4", ["--algorithm", "sparsegpt", "--calibration", str(text),
                                                                     "--samples", "16", "--seq-len", "128"])
        rows.append({"blocks": blocks, "folder_mib": size / MIB, **run})
        print(f"{blocks} blocks done: {rows[-1]}", file=sys.stderr, flush=True)
        shutil.rmtree(folder, ignore_errors=True)
    for r in rows:
        r["vs_first"] = r["rss_mib"] / rows[0]["rss_mib"]
    print_table(rows, [("blocks", "blocks", "d"), ("folder_mib", "bf16 folder MiB", ".0f"),
                       ("rss_mib", "peak RSS MiB", ".0f"), ("vs_first", f"vs {rows[0]['blocks']} blocks", ".2f"),
                       ("seconds", "seconds", ".0f")])
    by = {r["blocks"]: r for r in rows}
    if 6 in by and 12 in by:
        growth = by[12]["rss_mib"] / by[6]["rss_mib"]
        print(f"\n12-block / 6-block peak RSS = {growth:.2f}x (target <= 1.15x): {'held' if growth <= 1.15 else 'MISSED'}")
    write_jsonl(args.out, [dict(r, bench="calibrated_memory", machine=machine()) for r in rows])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[1.0, 2.0], help="checkpoint sizes in GiB (default 1 2)")
    ap.add_argument("--quick", action="store_true", help="sizes 0.125 and 0.25 GiB")
    ap.add_argument("--pattern", default="2:4T")
    ap.add_argument("--baseline-ref", default=BASELINE_REF, help=f"git ref of the baseline (default {BASELINE_REF}: before streaming)")
    ap.add_argument("--baseline-src", default=None, help="a source tree (the folder holding nmsparse/) to use as baseline")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--workdir", default=None, help="where to put the generated folders (default: a temporary folder)")
    ap.add_argument("--out", default=str(ROOT / "bench-results" / "convert_memory.jsonl"))
    ap.add_argument("--calibrated", action="store_true", help="peak RSS of calibrated pruning against depth instead")
    ap.add_argument("--depths", type=int, nargs="+", default=[6, 12, 24, 48], help="blocks per model for --calibrated")
    args = ap.parse_args(argv)
    if args.calibrated:
        work = Path(tempfile.mkdtemp(prefix="nms-cal-", dir=args.workdir))
        try:
            run_calibrated(args, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return 0
    sizes = [0.125, 0.25] if args.quick else args.sizes
    work = Path(tempfile.mkdtemp(prefix="nms-mem-", dir=args.workdir))
    try:
        base = baseline_tree(args, work)
        rows = []
        for gib in sizes:
            folder = work / f"model-{gib:g}GiB"
            n = make_folder(folder, gib)
            row = {"gib": gib, "weights": n, "pattern": args.pattern}
            if base is not None:
                before = run_prune(base, folder, work / "out-before", args.pattern)
                row.update(before_mib=before["rss_mib"], before_s=before["seconds"])
            after = run_prune(ROOT / "src", folder, work / "out-after", args.pattern)
            row.update(after_mib=after["rss_mib"], after_s=after["seconds"])
            if base is not None:
                row["ratio"] = row["after_mib"] / row["before_mib"]
            rows.append(row)
            shutil.rmtree(folder)
            print(f"{gib:g} GiB done: {row}", file=sys.stderr, flush=True)
        print_table(rows, [
            ("gib", "checkpoint GiB", "g"), ("weights", "bf16 4096x4096 weights", "d"),
            ("before_mib", "before: peak RSS MiB", ".0f"), ("after_mib", "after: peak RSS MiB", ".0f"),
            ("ratio", "after / before", ".2f"), ("before_s", "before s", ".1f"), ("after_s", "after s", ".1f"),
        ])
        if len(rows) >= 2:
            growth = rows[-1]["after_mib"] / rows[0]["after_mib"]
            print(f"\nafter: {rows[-1]['gib']:g} GiB run / {rows[0]['gib']:g} GiB run = {growth:.2f}x peak RSS (target <= 1.15x); "
                  f"max peak {max(r['after_mib'] for r in rows):.0f} MiB (target <= 900 MiB)")
        write_jsonl(args.out, [dict(r, bench="convert_memory", machine=machine()) for r in rows])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
