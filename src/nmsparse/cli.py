"""The ``nmsparse`` command: argument parsing and printing only."""

from __future__ import annotations

import argparse
import sys
from typing import Dict, List, Optional, Sequence

from . import __version__
from .demo import DEFAULT_PATTERNS
from .errors import NMSparseError


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


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import demo_weight, run_demo

    weight = demo_weight(args.size, args.size, seed=args.seed)
    print(
        f"nmsparse demo: masks for a {args.size}x{args.size} synthetic transformer-like weight "
        f"(heavy-tailed, outlier input channels; seed {args.seed}).\n"
        "n:m keeps n of every m; 'T' = transposable (every m x m tile keeps n per row AND column).\n"
        "kept = share of sum|W| the mask keeps; log10 masks = log10 of how many masks the structure allows.\n"
        "Solvers are loaded before timing; the very first run also compiles them (numba, cached on disk).\n"
    )
    columns = [
        ("pattern", "pattern", ""),
        ("method", "method", ""),
        ("density", "density", ".3f"),
        ("kept", "kept |W|", ".4f"),
        ("log10_masks", "log10 masks", ",.0f"),
        ("optimal", "optimal", ""),
        ("short_tiles", "short tiles", ""),
        ("seconds", "seconds", ".3f"),
    ]
    # Fixed widths so each row can be printed as soon as it is computed (progress on slow machines).
    widths = [16, 7, 7, 8, 11, 7, 11, 8]
    for i, row in enumerate(run_demo(weight, args.patterns, args.methods)):
        lines = format_table([row], columns, widths)
        for line in lines if i == 0 else lines[2:]:
            print(line, flush=True)
    return 0


def _cmd_diversity(args: argparse.Namespace) -> int:
    from .diversity import diversity_table, parse_shape

    shape = parse_shape(args.shape)
    rows = diversity_table(args.pattern, shape)
    print(f"Mask diversity for a {'x'.join(map(str, shape))} matrix (n:m = n kept of every m; groups along the last dim):")
    for row in rows:
        count = row.get("count")
        row["count_text"] = str(count) if count is not None and len(str(count)) <= 30 else "-"
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nmsparse",
        description="N:M and transposable N:M structured sparsity. n:m keeps n entries of every m; 'n:mT' is transposable.",
    )
    parser.add_argument("--version", action="version", version=f"nmsparse {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="find masks of several patterns on a realistic weight and print a table")
    demo.add_argument("--size", type=_positive_int, default=1024, help="matrix side (default 1024)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the synthetic weight (default 0)")
    demo.add_argument(
        "--patterns", nargs="+", default=list(DEFAULT_PATTERNS), metavar="P",
        help=f"patterns, e.g. 2:4 4:8T (default: {' '.join(DEFAULT_PATTERNS)})",
    )
    demo.add_argument(
        "--methods", nargs="+", default=["exact", "refine", "greedy"], metavar="M",
        help="transposable methods to compare (default: exact refine greedy)",
    )
    demo.set_defaults(func=_cmd_demo)

    div = sub.add_parser("diversity", help="count the masks a pattern allows (exact integers)")
    div.add_argument("pattern", help='pattern, e.g. "4:8T"')
    div.add_argument("--shape", default="64x64", help="matrix shape ROWSxCOLS (default 64x64)")
    div.set_defaults(func=_cmd_diversity)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except NMSparseError as err:
        print(f"nmsparse {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
