"""The harness itself: a case that raises the wrong thing or succeeds wrongly must fail."""

import pytest
import torch

import nmsparse as nms
from _harness import CLEAR, OTHER, OUTCOMES, RIGHT, Case, run_case


def _wrong(case):
    before = OUTCOMES[OTHER]
    with pytest.raises(BaseException):
        run_case(case)
    OUTCOMES[OTHER] = before  # these deliberate failures are not campaign outcomes


def test_harness_rejects_what_it_must():
    _wrong(Case("raw error", lambda: [][1], error=nms.ShapeError))
    _wrong(Case("wrong class", lambda: nms.find_mask(torch.randn(8, 6), "2:4"), error=nms.PatternError))
    _wrong(Case("no error", lambda: nms.find_mask(torch.randn(8, 8), "2:4"), error=nms.ShapeError))
    _wrong(Case("wrong text", lambda: nms.find_mask(torch.randn(8, 6), "2:4"), error=nms.ShapeError, match="zzz"))


def test_harness_accepts_right_outcomes():
    assert run_case(Case("ok", lambda: nms.find_mask(torch.randn(8, 8), "2:4"))) == RIGHT
    assert run_case(Case("clear", lambda: nms.find_mask(torch.randn(8, 6), "2:4"), error=nms.ShapeError, match="pad")) == CLEAR
