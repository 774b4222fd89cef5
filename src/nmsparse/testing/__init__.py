"""Slow, obviously-correct reference implementations and assertion helpers for tests.

Library code never imports this package. scipy is needed for the LP oracle (dev extra).
"""

from .checkpoints import write_hf_folder
from .comm import CollectiveBytes
from .oracles import (
    brute_force_rowwise,
    brute_force_transposable,
    lp_transposable_objective,
    transposable_tile_patterns,
)

__all__ = [
    "CollectiveBytes",
    "brute_force_rowwise",
    "brute_force_transposable",
    "lp_transposable_objective",
    "transposable_tile_patterns",
    "write_hf_folder",
]
