"""Channel permutations for N:M and transposable N:M masks, folded into the model (same dense
function, more score kept by the masks): :func:`permute_`. ``groups`` finds what a model lets be
reordered exactly, ``search`` finds the reordering, ``fold`` applies it."""

from .api import SCORES, permute_
from .groups import Group, Member, find_groups
from .report import GroupPermute, LayerPermute, PermuteReport

__all__ = ["permute_", "PermuteReport", "GroupPermute", "LayerPermute", "SCORES", "find_groups", "Group", "Member"]
