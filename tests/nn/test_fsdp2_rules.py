"""Single-process pieces of the FSDP2 refresh: the bit packing of shard-local masks (lossless) and
the whole-tile rule against torch.chunk's split."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nmsparse.nn.distributed import _pack_rows, _unpack_rows, shards_hold_whole_tiles


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(0, 9), n=st.integers(1, 40), seed=st.integers(0, 2**31 - 1))
def test_pack_unpack_round_trip(rows, n, seed):
    mask = torch.rand(rows, n, generator=torch.Generator().manual_seed(seed)) > 0.5
    packed = _pack_rows(mask)
    assert packed.dtype == torch.uint8 and packed.shape == (rows, -(-n // 8))
    assert torch.equal(_unpack_rows(packed, n), mask)


def test_pack_bit_order_is_little_endian_per_byte():
    mask = torch.zeros(1, 10, dtype=torch.bool)
    mask[0, [0, 3, 9]] = True
    assert _pack_rows(mask).tolist() == [[1 + 8, 2]]


@settings(max_examples=200, deadline=None)
@given(rows=st.integers(1, 80), parts=st.integers(1, 9), m=st.sampled_from([2, 4, 8, 16]))
def test_whole_tile_rule_matches_torch_chunk(rows, parts, m):
    # Oracle: split the rows as FSDP2 does (torch.chunk) and look at every shard's row range.
    whole, start = True, 0
    for piece in torch.arange(rows).chunk(parts):
        end = start + len(piece)
        whole &= start % m == 0 and (end % m == 0 or end == rows)
        start = end
    assert shards_hold_whole_tiles(rows, parts, m) == whole
