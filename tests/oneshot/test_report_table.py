"""The per-layer table ``prune_``'s report prints (and ``nmsparse prune --algorithm sparsegpt`` shows): every
row has the same column boundaries, and each column one precision."""

from __future__ import annotations

import re

import torch
from torch import nn

import nmsparse as nms
from nmsparse.oneshot import PruneReport


def _columns(line: str):
    """(start, end) of each cell: runs of non-blank text separated by two or more blanks."""
    return [(m.start(), m.end()) for m in re.finditer(r"\S+(?: \S+)*", line)]


def _table(seconds=None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8), nn.Linear(8, 6),
                          nn.Linear(6, 4))  # 4.weight: in_features=6 does not fit 2:4, skipped
    rep = PruneReport()
    nms.prune_(model, "2:4", calibration=[torch.randn(4, 16)], algorithm="sparsegpt", report=rep, ragged="skip")
    if seconds is not None:
        rep.layers[1].seconds = seconds
    return rep, rep.format_table()


def test_every_row_has_the_same_column_boundaries():
    for seconds in (None, 12345.678):  # a slow layer widens its column, not one row
        rep, lines = _table(seconds)
        header, rows = lines[1], lines[2:2 + len(rep.layers)]
        ends = [e for _, e in _columns(header)]
        assert len(ends) == 7
        for row in rows:
            cells = _columns(row)
            assert len(cells) == 7, row
            # Column 0 is left-aligned (same start); the numeric columns right-aligned (same end).
            assert cells[0][0] == 0 and [e for _, e in cells[1:]] == ends[1:], (header, row)
        assert lines[-1].startswith("4.weight") and "dense: in_features=6" in lines[-1]


def test_one_precision_per_column():
    rep, lines = _table()
    rows = [line.split() for line in lines[2:2 + len(rep.layers)]]
    assert all(re.fullmatch(r"\d\.\d{4}", r[2]) for r in rows)  # kept |W|
    assert all(re.fullmatch(r"\d\.\d{3}e[+-]\d\d", c) for r in rows for c in r[3:6])  # errors
    assert all(re.fullmatch(r"\d+\.\d{2}", r[6]) for r in rows)  # seconds
