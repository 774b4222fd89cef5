"""The command line: demo, masks and diversity print their tables; bad input is one clear line, exit 1."""

import subprocess
import sys

import pytest

from nmsparse.cli import main


def test_masks_prints_a_row_per_pattern_and_method(capsys):
    assert main(["masks", "--size", "64", "--patterns", "2:4", "4:8T", "--methods", "exact", "greedy"]) == 0
    out = capsys.readouterr().out
    lines = [l for l in out.splitlines() if l.strip()]
    table = lines[lines.index(next(l for l in lines if l.startswith("pattern"))) + 2 :]
    assert [l.split()[0] for l in table] == ["unstructured", "2:4", "4:8T", "4:8T"]
    assert "exact" in table[2] and "greedy" in table[3]


def test_demo_trains_and_prints_a_row_per_run(capsys):
    runs = ["dense", "2:4T@greedy", "4:8T", "25%"]
    assert main(["demo", "--epochs", "1", "--runs", *runs, "--no-progress", "--width", "8"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    table = lines[lines.index(next(l for l in lines if l.startswith("run "))) + 2 :]
    assert [l.split("  ")[0].strip() for l in table] == ["dense", "2:4T (greedy)", "4:8T (exact)", "unstructured 25%"]
    accuracy = [float(l.split()[-5]) for l in table]
    assert accuracy[0] > 0.7 and all(0.2 < a <= 1.0 for a in accuracy)  # chance is 0.1
    density = [float(l.split()[-2]) for l in table]
    assert density[0] == 1.0 and density[2] == 0.5 and density[3] == 0.25 and density[1] <= 0.5


def test_demo_diversity_column_closed_forms():
    from math import comb, log10

    from nmsparse.apps.demo import RunSpec, diversity_per_64

    assert diversity_per_64(RunSpec.parse("dense")) == 0.0
    assert diversity_per_64(RunSpec.parse("2:4")) == pytest.approx(16 * log10(6))  # C(4,2) per group, 16 groups
    assert diversity_per_64(RunSpec.parse("2:4T@greedy")) == pytest.approx(4 * log10(90))  # 90 valid 4x4 tiles
    assert diversity_per_64(RunSpec.parse("50%")) == pytest.approx(log10(comb(64, 32)))


def test_diversity_prints_exact_counts(capsys):
    assert main(["diversity", "4:8T", "--shape", "8x8"]) == 0
    out = capsys.readouterr().out
    assert "116963796250" in out  # one 8x8 tile at 4 per row and column
    assert "4:8T" in out and "4:8" in out and "unstructured" in out


@pytest.mark.parametrize(
    "argv, text",
    [
        (["diversity", "5:4"], "1 <= n <= m"),
        (["diversity", "2:4", "--shape", "banana"], "shape"),
        (["masks", "--size", "64", "--patterns", "2:3:4"], "accepted forms"),
        (["masks", "--size", "6", "--patterns", "2:4"], "multiple of 4"),
        (["demo", "--runs", "120%"], "kept share strictly between 0% and 100%"),
        (["demo", "--runs", "2:4T@fastest"], "unknown method"),
        (["demo", "--runs", "3:2"], "1 <= n <= m"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(argv, text, capsys):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert text in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_diversity_notes_a_structure_that_does_not_fit(capsys):
    assert main(["diversity", "2:4T", "--shape", "6x8"]) == 0
    out = capsys.readouterr().out
    transposable = next(l for l in out.splitlines() if l.startswith("transposable"))
    assert "multiple of 4" in transposable or "6" in transposable.split("2:4T", 1)[1]


def test_argument_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["masks", "--size", "0"])
    assert exc.value.code == 2


def test_python_dash_m_runs_the_same_command():
    out = subprocess.run([sys.executable, "-m", "nmsparse", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("nmsparse ")


def _subcommand_paths(parser, prefix=()):
    """Every sub-command path of the parser (["demo"], ["bench"], ["bench", "claims"], ...), found by walking argparse."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,)
                yield from _subcommand_paths(sub, prefix + (name,))


def test_help_works_for_every_subcommand(capsys):
    # argparse %-formats help strings: one stray '%' (e.g. '50%' in a default) crashed `demo --help`.
    from nmsparse.cli import build_parser

    paths = list(_subcommand_paths(build_parser()))
    assert {("demo",), ("masks",), ("bench", "claims"), ("diversity",), ("prune",), ("report",)} <= set(paths)
    for path in [()] + paths:
        with pytest.raises(SystemExit) as exc:
            main([*path, "--help"])
        assert exc.value.code == 0, path
        out = capsys.readouterr().out
        assert out.startswith("usage: nmsparse"), path
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "50%" in capsys.readouterr().out
