"""The one stable top-k (masks/topk.py) against the stated rule: the k largest scores, equal scores
to the lower flat index; and every unstructured mask of the library is that function's mask."""

from __future__ import annotations

import torch
from hypothesis import given, strategies as st

import nmsparse as nms
from nmsparse.masks.topk import topk_mask


def _rule(values, k):
    """The rule written out: order by (score descending, flat index ascending), keep the first k."""
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    return {i for i in order[:k]}


@given(st.lists(st.integers(0, 3), min_size=1, max_size=24), st.data())
def test_topk_mask_follows_the_tie_rule(values, data):
    k = data.draw(st.integers(0, len(values)))
    got = topk_mask(torch.tensor(values, dtype=torch.float64), k)
    assert set(torch.nonzero(got).flatten().tolist()) == _rule(values, k)


def test_topk_mask_keeps_shape_and_device_and_k():
    s = torch.tensor([[1.0, 2.0, 2.0], [0.0, 2.0, 1.0]])
    got = topk_mask(s, 3)
    assert got.shape == s.shape and got.dtype == torch.bool
    assert got.tolist() == [[False, True, True], [False, True, False]]
    assert not topk_mask(s, 0).any() and topk_mask(s, 6).all()


def test_unstructured_callers_share_it():
    w = torch.tensor([[0.5, -1.0, 1.0, 0.5], [1.0, 0.0, -0.5, 1.0]])
    want = topk_mask(w.abs(), 4)
    assert torch.equal(nms.unstructured_mask(w, 0.5), want)
    from nmsparse.nn.parametrization import compute_mask

    assert torch.equal(compute_mask(w, 0.5, None, "layer"), want)
