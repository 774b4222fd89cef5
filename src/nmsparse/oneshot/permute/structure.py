"""The vocabulary of permutation groups: a group's members (tensor axes that index its channels),
and how layers and the attention / MLP modules holding them are recognised. Shared by
:mod:`.groups` (the groups inside modules), :mod:`.residual` (the residual stream) and
:mod:`.interior` (what else sits inside a module)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from torch import nn
from torch.nn.utils import parametrize

from ...layout import is_hf_conv1d

__all__ = ["Member", "Group", "CONVS", "linear_like", "dims", "writes", "reads", "problem", "child",
           "attention_parts", "mlp_io", "norm_size"]

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Attention classes whose fused c_attn is q | k | v side by side. Others with the same names lay it
# out differently (GPTBigCode interleaves k and v per head; its multi-query form has one kv head).
QKV_SPLIT = ("GPT2Attention", "DecisionTransformerGPT2Attention", "ImageGPTAttention")

@dataclass(frozen=True)
class Member:
    """One tensor axis a group reorders: channels ``start .. start+C-1`` along ``dim`` of
    ``module.<tensor>``. ``role``: ``"in"`` (a layer's input columns), ``"out"`` (its output rows)
    or ``"param"`` (a bias, norm or running statistic)."""

    module_name: str
    module: nn.Module
    tensor: str
    dim: int
    start: int
    role: str

    @property
    def layer(self) -> bool:
        return self.tensor == "weight" and self.role in ("in", "out")


@dataclass
class Group:
    """C channels and every member that indexes them; ``name`` is the module that holds them."""

    name: str
    kind: str
    channels: int
    members: List[Member] = field(default_factory=list)

    def layers(self) -> List[str]:
        seen: List[str] = []
        for mb in self.members:
            if mb.layer and mb.module_name not in seen:
                seen.append(mb.module_name)
        return seen


def linear_like(mod) -> bool:
    return isinstance(mod, nn.Linear) or is_hf_conv1d(mod) or isinstance(mod, CONVS)


def dims(mod) -> Tuple[int, int, int, int]:
    """``(out_dim, in_dim, out_features, in_features)`` of a layer's stored weight."""
    w = mod.weight
    if is_hf_conv1d(mod):
        return 1, 0, w.shape[1], w.shape[0]
    return 0, 1, w.shape[0], w.shape[1]


def writes(mod, name: str, start: int) -> List[Member]:
    out_dim = dims(mod)[0]
    members = [Member(name, mod, "weight", out_dim, start, "out")]
    if getattr(mod, "bias", None) is not None:
        members.append(Member(name, mod, "bias", 0, start, "param"))
    return members


def reads(mod, name: str, start: int) -> List[Member]:
    return [Member(name, mod, "weight", dims(mod)[1], start, "in")]


def problem(mod, name: str) -> Optional[str]:
    if not linear_like(mod):
        return f"{name} is a {type(mod).__name__}, not a Linear/Conv layer"
    if getattr(mod, "weight", None) is None or mod.weight.is_meta:
        return f"{name} has no weight values (meta device or missing)"
    if parametrize.is_parametrized(mod):
        return f"{name} has a parametrization (a mask from sparsify_? squash_ it first)"
    if isinstance(mod, CONVS) and mod.groups != 1:
        return f"{name} is a grouped convolution"
    return None


def child(mod, path: str):
    for part in path.split("."):
        mod = getattr(mod, part, None)
        if mod is None or not isinstance(mod, nn.Module):
            return None
    return mod


def attention_parts(mod):
    """``(q, k, v, o, fused)`` of an attention module, or None."""
    for qn, kn, vn, on in (("q_proj", "k_proj", "v_proj", "o_proj"), ("q_proj", "k_proj", "v_proj", "out_proj"),
                           ("q", "k", "v", "out"), ("q", "k", "v", "o"), ("self.query", "self.key", "self.value", "output.dense"),
                           ("q_lin", "k_lin", "v_lin", "out_lin"),  # DistilBERT
                           ("q_proj", "k_proj", "v_proj", "dense")):  # Phi
        parts = [child(mod, p) for p in (qn, kn, vn, on)]
        if all(p is not None for p in parts):
            return (*parts, False)
    c_attn, c_proj = child(mod, "c_attn"), child(mod, "c_proj")
    if c_attn is not None and c_proj is not None and child(mod, "q_attn") is None and type(mod).__name__ in QKV_SPLIT:
        return c_attn, c_attn, c_attn, c_proj, True  # GPT-2: one fused q|k|v projection
    return None


def norm_size(mod) -> Optional[int]:
    if isinstance(mod, nn.LayerNorm):
        return mod.normalized_shape[0] if len(mod.normalized_shape) == 1 else None
    return mod.num_features


def mlp_io(mod) -> Optional[Tuple[List[nn.Module], List[nn.Module]]]:
    """``(layers writing the hidden channels, [the layer reading them])`` of an MLP module, or None:
    the first read the residual stream, the last writes it."""
    for gate, up, down in (("gate_proj", "up_proj", "down_proj"), ("w1", "w3", "w2"), ("wi_0", "wi_1", "wo")):
        g, u, d = (child(mod, p) for p in (gate, up, down))
        if g is not None and u is not None and d is not None:
            return [g, u], [d]
    for first, second in (("fc1", "fc2"), ("c_fc", "c_proj"), ("dense_h_to_4h", "dense_4h_to_h"), ("wi", "wo"),
                          ("lin1", "lin2")):
        a, b = child(mod, first), child(mod, second)
        if a is not None and b is not None and child(mod, "wi_0") is None:
            return [a], [b]
    a, b = child(mod, "intermediate.dense"), child(mod, "output.dense")
    if a is not None and b is not None and child(mod, "attention") is not None:
        return [a], [b]
    return None
