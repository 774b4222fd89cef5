"""Docs that run: every ```python block in README.md and docs/ (any depth), executed verbatim.

Each block runs on its own (its imports included; nothing carries over from the blocks before it)
in a fresh subprocess whose working directory is an empty temporary folder, so files a block
writes go nowhere and no block changes this process's state. New blocks are picked up
automatically. A block that cannot run here (one needing several processes) is preceded by

    <!-- docs-test: skip (run by tests/<path>.py) -->

and the named test file must exist: the block is then run verbatim by that test instead.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\s*\((?P<reason>[^)]*)\)\s*-->")
TEST_PATH = re.compile(r"tests/[\w/]+\.py")
SECONDS = 120  # generous for a busy 2-core machine; blocks are kept to a few seconds each


def _blocks():
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            # A skip marker counts only in the lines right before the fence (other markers, such
            # as a recipe's start marker, may sit between them).
            before = "\n".join(text[: match.start()].splitlines()[-3:])
            skip = SKIP.search(before)
            found.append((f"{doc.relative_to(ROOT)}:{line}", match.group(1), skip.group("reason") if skip else None))
    return found


BLOCKS = _blocks()


def test_the_docs_have_python_blocks():
    assert len(BLOCKS) >= 10, [b[0] for b in BLOCKS]


@pytest.mark.parametrize("where, source, skip", BLOCKS, ids=[b[0] for b in BLOCKS])
def test_block_runs_verbatim(where, source, skip, tmp_path):
    if skip is not None:
        named = TEST_PATH.findall(skip)
        assert named, f"{where}: a docs-test skip must name the test that runs the block, got {skip!r}"
        missing = [n for n in named if not (ROOT / n).is_file()]
        assert not missing, f"{where}: the skip reason names {missing}, which do not exist"
        pytest.skip(f"{where}: {skip}")
    script = tmp_path / "block.py"
    script.write_text(source, encoding="utf-8")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # tiny models: one thread avoids oversubscription on a busy machine
    env["MPLBACKEND"] = "Agg"
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=SECONDS)
    assert done.returncode == 0, f"{where} failed:\n{source}\n--- stderr ---\n{done.stderr[-4000:]}"
