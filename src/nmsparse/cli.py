"""The ``nmsparse`` command: argument parsing and printing only."""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Dict, List, Optional, Sequence

from ._version import __version__
from .apps.demo import DEFAULT_RUNS
from .apps.mask_tour import DEFAULT_PATTERNS
from .errors import NMSparseError, allocation_text, is_out_of_memory


def format_table(
    rows: Sequence[Dict[str, object]], columns: Sequence[tuple], min_widths: Optional[Sequence[int]] = None
) -> List[str]:
    """Format rows as aligned text lines. ``columns`` is a sequence of (key, header, format)."""
    cells = [[_cell(row.get(key), fmt) for key, _, fmt in columns] for row in rows]
    headers = [header for _, header, _ in columns]
    floor = min_widths or [0] * len(headers)
    widths = [max([len(h), floor[i]] + [len(c[i]) for c in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells]
    return [line.rstrip() for line in lines]


def _cell(value, fmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format(value, fmt) if fmt else str(value)


# The library's messages serve Python callers and name keyword arguments (force=True, include=);
# the command says its own flags instead. Longest first; "--force (force=True)" becomes "--force".
_FLAG_FOR = (
    ("include=/exclude=", "--include/--exclude"),
    ("force=True", "--force"),
    ("allow_short=True", "--allow-short"),
    ("permute=True", "--permute"),
    ("ragged='skip'", "--ragged skip"), ("ragged='pad'", "--ragged pad"), ("ragged='error'", "--ragged error"),
    ("algorithm='magnitude'", "--algorithm magnitude"),
    ("but prune_ prunes", "but prune prunes"),
    (" (sparsify_ takes any parameter)", ""),
)
_KEYWORD = re.compile(r"\b(include|exclude|calibration|method|dim0|samples|seq_len|device)=(\S?)")
_SAID_TWICE = re.compile(r"(--[a-z0-9-]+(?: [a-z]+)?) \(\1\)")
# A message that starts with the library function that raised it: the command says its own name.
_API_WHERE = re.compile(
    r"^(?:log10_count_masks|count_masks|find_mask|solve_mask|check_mask|unstructured_mask|prune_state_dict|"
    r"prune_checkpoint|report_checkpoint|report_state_dict|read_checkpoint|write_checkpoint|prune_|sparsify_): "
)


def cli_text(message: str) -> str:
    """A library message as the command says it: its flags instead of keyword arguments."""
    for api, flag in _FLAG_FOR:
        message = message.replace(api, flag)

    def flag(m: "re.Match") -> str:
        name = "--" + m.group(1).replace("_", "-")
        return name + (" " + m.group(2) if m.group(2) and m.group(2) not in ",.;:)/" else m.group(2))

    return _SAID_TWICE.sub(r"\1", _KEYWORD.sub(flag, _API_WHERE.sub("", message)))


def _cmd_demo(args: argparse.Namespace) -> int:
    from ._progress import Progress
    from .apps.demo import run_demo
    from .examples import load_digits_split, steps_per_epoch

    print(
        f"nmsparse demo: a small CNN on scikit-learn's digits (8x8 images, 10 classes), {args.epochs} epochs, seed {args.seed},\n"
        "trained dense and with each sparsity structure (same initial weights and batches). Sparse runs recompute\n"
        f"masks from the dense weights every {args.update_every} steps (straight-through gradients); conv1 and fc2 stay dense.\n"
        "n:m keeps n of every m along input channels; 'T' = transposable (every m x m tile keeps n per row AND column).\n"
        "log10 masks/64 = log10 of how many masks the structure allows on 64 weights (8x8); kept = share of sum|W| kept.\n"
        "Solvers are loaded before timing; the very first run also compiles them (numba, cached on disk).\n"
    )
    columns = [
        ("run", "run", ""),
        ("accuracy", "test acc", ".4f"),
        ("log10_masks_64", "log10 masks/64", ".2f"),
        ("kept", "kept |W|", ".4f"),
        ("density", "density", ".3f"),
        ("seconds", "seconds", ".1f"),
    ]
    widths = [20, 8, 14, 8, 7, 7]
    total = len(args.runs) * args.epochs * steps_per_epoch(load_digits_split(seed=args.seed))
    with Progress(total, "training", enabled=not args.no_progress) as bar:
        for i, row in enumerate(
            run_demo(args.runs, epochs=args.epochs, seed=args.seed, width=args.width, update_every=args.update_every, progress=bar)
        ):
            bar.close()
            lines = format_table([row], columns, widths)
            for line in lines if i == 0 else lines[2:]:
                print(line, flush=True)
    return 0


def _cmd_masks(args: argparse.Namespace) -> int:
    from .apps.mask_tour import demo_weight, run_demo

    weight = demo_weight(args.size, args.size, seed=args.seed)
    print(
        f"nmsparse masks: masks for a {args.size}x{args.size} synthetic transformer-like weight "
        f"(heavy-tailed, outlier input channels; seed {args.seed}).\n"
        "n:m keeps n of every m; 'T' = transposable (every m x m tile keeps n per row AND column).\n"
        "kept = share of sum|W| the mask keeps; log10 masks = log10 of how many masks the structure allows\n"
        "on the whole matrix; masks/64 = the same per 64 weights (an 8x8 block), as `nmsparse demo` prints it.\n"
        "Solvers are loaded before timing; the very first run also compiles them (numba, cached on disk).\n"
    )
    columns = [
        ("pattern", "pattern", ""),
        ("method", "method", ""),
        ("density", "density", ".3f"),
        ("kept", "kept |W|", ".4f"),
        ("log10_masks", "log10 masks", ",.0f"),
        ("log10_masks_64", "masks/64", ".2f"),
        ("optimal", "optimal", ""),
        ("short_tiles", "short tiles", ""),
        ("seconds", "seconds", ".3f"),
    ]
    # Fixed widths so each row can be printed as soon as it is computed (progress on slow machines).
    widths = [16, 7, 7, 8, 11, 8, 7, 11, 8]
    for i, row in enumerate(run_demo(weight, args.patterns, args.methods)):
        lines = format_table([row], columns, widths)
        for line in lines if i == 0 else lines[2:]:
            print(line, flush=True)
    return 0


def _cmd_bench_claims(args: argparse.Namespace) -> int:
    from .apps.claims import main as run_claims_report

    run_claims_report(quick=args.quick, seeds=args.seeds, out=args.out, plot_path=args.plot, threads=args.threads, jobs=args.jobs)
    return 0


def _cmd_diversity(args: argparse.Namespace) -> int:
    from .diversity import diversity_table, parse_shape

    shape = parse_shape(args.shape)
    rows = diversity_table(args.pattern, shape)
    print(f"Mask diversity for a {'x'.join(map(str, shape))} matrix (n:m = n kept of every m; groups along the last dim):")
    for row in rows:
        count = row.get("count")
        row["count_text"] = str(count) if count is not None and len(str(count)) <= 30 else "-"
        row["note"] = cli_text(row.get("note") or "")
    columns = [
        ("structure", "structure", ""),
        ("pattern", "pattern", ""),
        ("log10_count", "log10 masks", ",.2f"),
        ("log10_vs_unstructured", "log10 vs unstructured", ",.2f"),
        ("count_text", "exact count", ""),
        ("note", "note", ""),
    ]
    for line in format_table(rows, columns):
        print(line)
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    if args.calibration is not None and args.dim0:
        print("nmsparse prune: error: --calibration finds Conv1D layers by type; drop --dim0.", file=sys.stderr)
        return 2
    if args.calibration is not None:
        return _cmd_prune_calibrated(args)
    if args.permute:
        print("nmsparse prune: error: --permute runs the model (to find the permutations and check that its outputs do not "
              "move), which needs --calibration FILE and a Hugging Face folder.", file=sys.stderr)
        return 2
    if args.algorithm != "magnitude":
        print(f"nmsparse prune: error: --algorithm {args.algorithm} needs --calibration FILE (a text file to tokenize); "
              "without it prune does magnitude pruning.", file=sys.stderr)
        return 2
    from .convert import prune_checkpoint

    if args.eval is not None:
        print("nmsparse prune: error: --eval runs the model, which needs --calibration (a Hugging Face folder); "
              "use `nmsparse eval` on a folder instead.", file=sys.stderr)
        return 2
    res = prune_checkpoint(
        args.input, args.output, _pattern_arg(args.pattern), method=args.method, include=args.include, exclude=args.exclude,
        ragged=args.ragged, force=args.force, progress=not args.quiet, dim0=args.dim0,
    )
    # 1-D and non-float tensors (biases, norms, counters) are counted in the summary; all rows are in the JSON.
    rows = [r.to_dict() for r in res.layers if r.pruned or len(r.shape) >= 2 and "not floating" not in (r.reason or "")]
    for row in rows:
        row["shape"] = "x".join(map(str, row["shape"]))
        row["note"] = cli_text(row["reason"] or "")
    columns = [
        ("name", "name", ""), ("shape", "shape", ""), ("dtype", "dtype", ""), ("pattern", "pattern", ""),
        ("kept_fraction", "kept |W|", ".4f"), ("density", "density", ".3f"), ("seconds", "seconds", ".3f"),
        ("note", "note", ""),
    ]
    for line in format_table(rows, columns):
        print(line)
    print(f"\n{res.summary()}.")
    for note in res.notes + _unmatched_selection(args, [r.name for r in res.layers]):
        print(f"note: {cli_text(note)}")
    print(f"wrote {res.output} and {res.json_path}")
    if not res.pruned:
        print(f"nmsparse prune: error: no tensor of {args.input} was pruned (see the table for why); OUT is a copy. "
              "Check --pattern, --include/--exclude and --ragged.", file=sys.stderr)
        return 1
    return 0


def _cmd_prune_calibrated(args: argparse.Namespace) -> int:
    from .oneshot.hf import left_dense, prune_hf_folder

    if args.eval is not None:
        _print_eval("IN", args.input, args.eval, args)
    from .apps.hf_eval import quiet_transformers

    with quiet_transformers(args.quiet):  # --quiet silences transformers' progress bars too
        rep, notes, json_path = prune_hf_folder(
            args.input, args.output, _pattern_arg(args.pattern), calibration_file=args.calibration, algorithm=args.algorithm,
            method=args.method, include=args.include, exclude=args.exclude, samples=args.samples, seq_len=args.seq_len,
            allow_short=args.allow_short, ragged=args.ragged, device=args.device, force=args.force, progress=not args.quiet,
            permute=args.permute,
        )
    for line in rep.format_table():
        print(cli_text(line))
    pipe = rep.pipeline
    how = f"block-wise over {', '.join(pipe.block_lists)}" if pipe.mode == "block-wise" else "with truncated passes"
    print(f"\npruned {len(rep.layers)} weights to {rep.pattern} with {rep.algorithm} in {rep.seconds:.1f} s, {how} "
          f"({pipe.block_forwards} block forwards); {_dense_text(*left_dense(args.input, rep))}.")
    if rep.permute is not None:
        print(rep.permute.summary())
    for name, why in pipe.fallbacks:
        print(f"note: {name} was not pruned block-wise: {cli_text(why)}")
    for note in notes + _unmatched_selection(args, [r.name for r in rep.layers] + [n for n, _ in rep.skipped]):
        print(f"note: {cli_text(note)}")
    print(f"wrote {args.output} and {json_path}")
    if args.eval is not None:
        _print_eval("OUT", args.output, args.eval, args)
    return 0


def _dense_text(matrices: List[str], others: int) -> str:
    """What stayed dense in OUT, counted from its tensors (so an embedding counts, a tied head does not)."""
    named = f" ({', '.join(matrices)})" if 0 < len(matrices) <= 3 else ""
    return (f"left dense: {len(matrices)} weight{'s' if len(matrices) != 1 else ''} of 2 or more dimensions{named} "
            f"and {others} 1-D tensor{'s' if others != 1 else ''} (biases, norms)")


def _print_eval(label: str, folder, text, args) -> None:
    from .apps.hf_eval import evaluate_folder

    res = evaluate_folder(folder, text, seq_len=args.seq_len, windows=args.eval_windows, allow_short=True, where="prune")
    print(f"{label} perplexity {res['perplexity']:.3f} on {res['tokens']} tokens of {text} ({res['windows']} windows x "
          f"{res['seq_len']}, {res['seconds']:.1f} s)")


def _unmatched_selection(args, names) -> list:
    """A note for every --include/--exclude regex that matches no tensor (a typo prunes what you did not mean)."""
    import re

    out = []
    for flag, regexes in (("--include", args.include), ("--exclude", args.exclude)):
        for rx in regexes or []:
            try:
                compiled = re.compile(rx)
            except re.error:
                continue
            modules = [n[: -len(".weight")] if n.endswith(".weight") else n for n in names]
            if not any(compiled.fullmatch(n) for n in list(names) + modules):
                out.append(f"{flag} {rx!r} matched no tensor (regexes match the whole name, e.g. 'model.layers.0.mlp.up_proj' "
                           "or '.*up_proj')")
    return out


def _pattern_arg(text: str):
    """--pattern: an n:m pattern string, or a density ('50%', '0.5') for unstructured pruning."""
    from .pattern import parse_density_text

    density = parse_density_text(text, "prune")
    return text if density is None else density


def _cmd_eval(args: argparse.Namespace) -> int:
    from .apps.hf_eval import evaluate_folder

    res = evaluate_folder(args.folder, args.text, seq_len=args.seq_len, windows=args.windows, allow_short=args.allow_short,
                          progress=not args.quiet)
    print(f"{args.folder}: perplexity {res['perplexity']:.3f} on {res['tokens']} tokens ({res['windows']} windows x "
          f"{res['seq_len']} tokens of {args.text}) in {res['seconds']:.1f} s")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .convert import report_checkpoint

    rep = report_checkpoint(args.checkpoint, args.pattern, include=args.include, exclude=args.exclude,
                            ragged=args.ragged, dim0=args.dim0)
    rows = []
    shown = [w for w in rep.weights if w.checked or len(w.shape) >= 2 and "not floating" not in (w.reason or "")]
    for w in shown:
        row = {"name": w.name, "shape": "x".join(map(str, w.shape)), "dtype": w.dtype, "sparsity": w.sparsity}
        row.update({f"m{m}": text for m, text in w.densest.items()})
        row["obeys"] = w.obeys
        row["note"] = cli_text(w.reason or ("groups along dim 0 (HF Conv1D)" if w.group_dim == 0 else ""))
        rows.append(row)
    columns = [("name", "name", ""), ("shape", "shape", ""), ("dtype", "dtype", ""), ("sparsity", "sparsity", ".3f")]
    if rep.pattern is None:
        columns += [("m4", "densest m=4", ""), ("m8", "densest m=8", ""), ("m16", "densest m=16", "")]
    else:
        columns += [("obeys", f"obeys {rep.pattern}", "")]
    columns.append(("note", "note", ""))
    print(f"{rep.source} ({rep.format}): n:m = at most n non-zeros in every group of m; T = also in every column of each m x m tile.")
    for line in format_table(rows, columns):
        print(line)
    if len(shown) < len(rep.weights):
        print(f"({len(rep.weights) - len(shown)} 1-D or non-float tensors not shown: biases, norms, counters.)")
    if rep.pattern is None:
        return 0
    if rep.broken:
        first = rep.broken[0]
        # The verdict is the command's failure: one line on stderr (the table above is on stdout).
        print(f"nmsparse report: {len(rep.broken)} of {len(rep.checked)} checked weights break {rep.pattern}; "
              f"first: {first.name}: {cli_text(first.problem)}", file=sys.stderr)
        return 1
    print(f"\nall {len(rep.checked)} checked weights obey {rep.pattern}.")
    return 0


# argparse %-formats help strings: a literal percent sign must be written %%.
_INCLUDE_HELP = (
    "{verb} only tensors whose name (fc1.weight) or module name (fc1) the regex matches IN FULL "
    "(replaces the name rules); repeat for several"
)
_DIM0_HELP = ("group along dim 0 the 2-D tensors the regex matches in full (HF Conv1D stores (in, out)); repeatable; "
              "default: c_attn, q_attn, c_proj, c_fc of a GPT-2-family Hugging Face folder (config.json), none for a file")
_EXCLUDE_HELP = (
    "{verb} tensors whose name or module name the regex matches in full (fc2 spares fc2, not fc20; "
    "fc2.* for a prefix); repeat for several"
)


def _literal(text: str) -> str:
    """``text`` as an argparse help string: argparse %-formats help, so a literal '%' ('50%') is doubled."""
    return text.replace("%", "%%")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nmsparse",
        description="N:M and transposable N:M structured sparsity. n:m keeps n entries of every m; 'n:mT' is transposable.",
    )
    parser.add_argument("--version", action="version", version=f"nmsparse {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="train a small CNN on bundled digits: dense vs unstructured vs N:M vs transposable N:M",
        description=(
            "Train the same small CNN on scikit-learn's bundled digits once per run and print test accuracy, "
            "mask diversity, kept |W| and time. Runs: 'dense', an unstructured density like '50%', a row-wise "
            "pattern like '2:4' (n kept of every m), or a transposable pattern with its solver like '2:4T@greedy' "
            "(solvers: exact, greedy, refine)."
        ),
    )
    demo.add_argument("--epochs", type=_positive_int, default=15, help="training epochs per run (default 15)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the split, initial weights and batches (default 0)")
    demo.add_argument(
        "--runs", "--patterns", nargs="+", default=list(DEFAULT_RUNS), metavar="RUN", dest="runs",
        help=_literal(f"runs to compare (default: {' '.join(DEFAULT_RUNS)})"),
    )
    demo.add_argument("--width", type=_positive_int, default=16, help="channels of the first conv (default 16)")
    demo.add_argument("--update-every", type=_positive_int, default=20, help="mask refresh interval in steps (default 20)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    demo.set_defaults(func=_cmd_demo)

    masks = sub.add_parser(
        "masks", help="compare mask solvers of several patterns on a realistic weight matrix",
        description=(
            "Build a synthetic transformer-like weight (heavy-tailed, with outlier input channels), find its mask "
            "for each pattern with each transposable method, and print the share of sum|W| kept, how many masks the "
            "structure allows, whether the mask is optimal, tiles that keep fewer than n, and the time taken."
        ),
    )
    masks.add_argument("--size", type=_mask_tour_size, default=1024,
                       help=f"matrix side, at most {MAX_MASKS_SIZE} (default 1024)")
    masks.add_argument("--seed", type=int, default=0, help="seed of the synthetic weight (default 0)")
    masks.add_argument(
        "--patterns", nargs="+", default=list(DEFAULT_PATTERNS), metavar="P",
        help=_literal(f"patterns, e.g. 2:4 4:8T (default: {' '.join(DEFAULT_PATTERNS)})"),
    )
    masks.add_argument(
        "--methods", nargs="+", default=["exact", "refine", "greedy"], metavar="M",
        help="transposable methods to compare (default: exact refine greedy)",
    )
    masks.set_defaults(func=_cmd_masks)

    bench = sub.add_parser(
        "bench", help="reproduce the papers' claims at CPU scale (training report)",
        description="Benchmarks that train models on this machine. 'nmsparse bench claims' tests the papers' claims "
        "at CPU scale and writes a report with tables and plots.",
    )
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="BENCH", required=True)
    claims = bench_sub.add_parser(
        "claims",
        help="test the papers' claims on a digits CNN and a byte-level LM, two protocols, several seeds; tables + plots",
        description=(
            "Train a small CNN on bundled digits and a transformer LM on the Python standard library's own sources. "
            "Protocol 1: train dense once per seed, prune it one-shot (magnitude, Wanda, SparseGPT) to unstructured, "
            "row-wise and transposable N:M structures, fine-tune with the masks fixed. Protocol 2: sparse from "
            "scratch, masks refreshed on a fixed or a growing interval, with the flip rate at every refresh. "
            "Prints tables with 95% intervals over seeds and Spearman rho of mask diversity with quality; writes "
            "JSON lines, a Markdown report and two PNG plots."
        ),
    )
    claims.add_argument("--quick", action="store_true", help="a smoke run (about a minute) whose numbers mean nothing")
    claims.add_argument("--seeds", type=_positive_int, default=None, help="seeds per configuration (default 3)")
    claims.add_argument("--out", default="bench-results", help="folder for claims.jsonl / claims.md (default bench-results)")
    claims.add_argument("--plot", default=None, help="PNG path of the plot (default OUT/claims.png; the flip-rate plot goes next to it as *_flips.png)")
    claims.add_argument("--threads", type=_positive_int, default=1, help="torch threads per run (default 1)")
    claims.add_argument("--jobs", type=_positive_int, default=None, help="runs in parallel (default 2; 1 with --quick)")
    claims.set_defaults(func=_cmd_bench_claims)

    div = sub.add_parser(
        "diversity", help="count the masks a pattern allows (exact integers)",
        description="Count the masks PATTERN allows on a matrix of --shape, next to unstructured masks of the same "
        "density and the row-wise and transposable structures of that n:m: log10 always, the exact integer where it "
        "fits on a line. n:m keeps n of every m along the last dimension; 'n:mT' is transposable.",
    )
    div.add_argument("pattern", help='pattern, e.g. "4:8T"')
    div.add_argument("--shape", default="64x64", help="matrix shape ROWSxCOLS (default 64x64)")
    div.set_defaults(func=_cmd_diversity)

    prune = sub.add_parser(
        "prune", help="prune a checkpoint (safetensors, Hugging Face folder, torch.save) to an N:M pattern",
        description="Prune every eligible weight (2-D matrices, conv kernels) of IN to PATTERN and write OUT in the "
        "same format, atomically. Embeddings, norms, biases and 1-D tensors stay dense by default.",
    )
    prune.add_argument("input", metavar="IN", help="a .safetensors file, a Hugging Face model folder, or a torch.save file")
    prune.add_argument("-o", "--output", required=True, metavar="OUT", help="where to write the pruned checkpoint")
    prune.add_argument("--pattern", required=True,
                       help=_literal('e.g. "2:4" (row-wise) or "4:8T" (transposable), n KEPT of every m; or a density '
                                     'kept per tensor, unstructured: "50%" or 0.5'))
    prune.add_argument("--method", default=None, help="mask method (default: the optimal one; transposable: exact)")
    prune.add_argument("--include", metavar="REGEX", action="append", help=_INCLUDE_HELP.format(verb="prune"))
    prune.add_argument("--exclude", metavar="REGEX", action="append", help=_EXCLUDE_HELP.format(verb="leave dense"))
    prune.add_argument(
        "--ragged", choices=("error", "skip", "pad"), default="error",
        help="a weight whose shape does not fit the pattern: error (default), skip (leave dense) or pad",
    )
    prune.add_argument("--dim0", metavar="REGEX", action="append", help=_DIM0_HELP)
    prune.add_argument(
        "--algorithm", default="magnitude",
        help="magnitude (default), wanda, sparsegpt, adaprune, or a chain such as sparsegpt+adaprune or sparsegpt+lsq; "
        "all but magnitude need --calibration",
    )
    prune.add_argument(
        "--calibration", metavar="FILE", default=None,
        help="a UTF-8 text file: load the Hugging Face folder IN with transformers (pip install 'nmsparse[hf]'), "
        "tokenize FILE with its tokenizer and prune with calibration",
    )
    prune.add_argument("--samples", type=_positive_int, default=128, help="calibration windows (default 128)")
    prune.add_argument("--seq-len", type=_positive_int, default=512,
                       help="tokens per calibration window (default 512; at most the model's context)")
    prune.add_argument("--allow-short", action="store_true",
                       help="a calibration text shorter than samples x seq-len tokens: use what there is (said in the "
                       "output) instead of stopping")
    prune.add_argument("--device", default=None,
                       help="with --calibration: run each block on this torch device for its turn (e.g. cuda); "
                       "the cached activations stay in CPU memory")
    prune.add_argument("--eval", metavar="FILE", default=None,
                       help="with --calibration: print the perplexity of IN and OUT on this text file")
    prune.add_argument("--eval-windows", type=_positive_int, default=32, metavar="N",
                       help="windows of --seq-len tokens that --eval scores (default 32)")
    prune.add_argument("--permute", action="store_true",
                       help="with --calibration: first reorder channels (MLP hidden, attention value/output, "
                       "query/key without rotary embeddings) so that the masks keep more; the dense model computes "
                       "the same function, and OUT is a plain checkpoint")
    prune.add_argument("--force", action="store_true", help="replace an existing OUT (even IN itself)")
    prune.add_argument("--quiet", action="store_true", help="no progress bar")
    prune.set_defaults(func=_cmd_prune)

    ev = sub.add_parser(
        "eval", help="perplexity of a Hugging Face causal LM folder (dense or pruned) on a text file",
        description="Load the model in folder FOLDER with transformers (pip install 'nmsparse[hf]'), tokenize TEXT with "
        "its tokenizer, and print the perplexity over non-overlapping windows of --seq-len tokens, with the tokens "
        "scored and the time taken: what pruning cost, without writing code.",
    )
    ev.add_argument("folder", metavar="FOLDER", help="a Hugging Face model folder (config.json, tokenizer, safetensors)")
    ev.add_argument("--text", required=True, metavar="FILE", help="a UTF-8 text file to score")
    ev.add_argument("--seq-len", type=_positive_int, default=512, help="tokens per window (default 512; at most the model's context)")
    ev.add_argument("--windows", type=_positive_int, default=32, help="windows to score (default 32)")
    ev.add_argument("--allow-short", action="store_true", help="a text shorter than windows x seq-len tokens: score what there is")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(func=_cmd_eval)

    report = sub.add_parser(
        "report", help="per-layer sparsity of a checkpoint; check a claimed pattern or find the one each weight obeys",
        description="Read CKPT one tensor at a time and print each weight's sparsity. With --pattern, check that every "
        "eligible weight obeys it (exit status 1 if one breaks it); without, show the densest n:m each weight "
        "obeys for m = 4, 8 and 16.",
    )
    report.add_argument("checkpoint", metavar="CKPT", help="a .safetensors file, a Hugging Face model folder, or a torch.save file")
    report.add_argument("--pattern", help="claimed pattern; exit status 1 if an eligible weight breaks it")
    report.add_argument("--include", metavar="REGEX", action="append", help=_INCLUDE_HELP.format(verb="check"))
    report.add_argument("--exclude", metavar="REGEX", action="append", help=_EXCLUDE_HELP.format(verb="do not check"))
    report.add_argument(
        "--ragged", choices=("error", "skip", "pad"), default="error",
        help="a weight whose shape does not fit PATTERN, as in prune: error (default: it breaks PATTERN), "
        "skip (not checked) or pad (partial groups may keep at most n)",
    )
    report.add_argument("--dim0", metavar="REGEX", action="append", help=_DIM0_HELP)
    report.set_defaults(func=_cmd_report)
    return parser


MAX_MASKS_SIZE = 16384
"""Largest ``masks --size``: a 16384 x 16384 float32 weight is 1 GiB, and the solvers need a few copies."""


def _mask_tour_size(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_MASKS_SIZE:
        raise argparse.ArgumentTypeError(
            f"at most {MAX_MASKS_SIZE} (a {text}x{text} weight needs {4 * value * value / 2**30:,.0f} GiB before "
            "the solvers' copies), got " + text)
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command; a failure is one line on stderr and exit status 1 (argparse's usage errors: 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except NMSparseError as err:
        return _fail(args, str(err))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        return _fail(args, "out of memory; try a smaller input, or a machine with more memory")
    except RecursionError:
        return _fail(args, "an input is nested too deeply to read (e.g. a JSON file nested thousands of levels); check the files passed")
    except RuntimeError as err:
        if not is_out_of_memory(err):
            return _internal(args, err)
        return _fail(args, f"out of memory ({allocation_text(err)}); try a smaller input, or a machine with more memory")
    except OSError as err:
        # File trouble the library did not wrap (e.g. an unwritable --out): the OS says what and where.
        where = f": {err.filename}" if getattr(err, "filename", None) else ""
        return _fail(args, f"{err.strerror or err}{where}")
    except Exception as err:  # noqa: BLE001 - the promise is one line, never a traceback
        return _internal(args, err)


def _internal(args: argparse.Namespace, err: Exception) -> int:
    if os.environ.get("NMSPARSE_DEBUG"):
        raise err
    return _fail(args, f"internal error ({type(err).__name__}: {err}); this is a bug, please report it "
                 "(set NMSPARSE_DEBUG=1 for the traceback)")


# A message that starts with a command's name (the apps and the CLI-facing library paths say where they
# are, e.g. "prune: --calibration needs ..."): the error line already names the command once.
_COMMAND_WHERE = re.compile(r"^(?:nmsparse )?(?:demo|masks|bench(?: claims)?|diversity|prune|eval|report): ")


def error_line(command: str, message: str) -> str:
    """The one line a failure prints: ``nmsparse COMMAND: error: MESSAGE``, the command named once (a leading
    ``prune:`` / ``prune_:`` / ``nmsparse prune:`` of the message is dropped) and the message in flags."""
    text = " ".join(str(message).split())
    while True:
        stripped = _API_WHERE.sub("", _COMMAND_WHERE.sub("", text))
        if stripped == text:
            break
        text = stripped
    return f"nmsparse {command}: error: {cli_text(text)}"


def _fail(args: argparse.Namespace, message: str) -> int:
    command = " ".join(c for c in (args.command, getattr(args, "bench_command", None)) if c)
    print(error_line(command, message), file=sys.stderr)
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
