"""Which channel permutations a model allows exactly: permutation groups found from its structure.

A **group** is a set of C channels that one permutation may reorder, with every tensor axis that
indexes them (its *members*): the rows and biases of the layers that write the channels, the
columns of the layers that read them, and the per-channel tensors in between (BatchNorm's affine
parameters and running statistics, a LayerNorm's weight). Reordering all of them the same way
leaves the dense function unchanged, because every operation between the writers and the readers
acts on each channel alone (elementwise activations, gating products, per-channel norms, pooling).

Groups found (each only where the structure is recognised; :func:`find_groups`):

* **MLP hidden channels**: gated MLPs (``gate_proj``/``up_proj`` → ``down_proj``, Mixtral's
  ``w1``/``w3`` → ``w2``, T5's ``wi_0``/``wi_1`` → ``wo``), plain MLPs (``fc1`` → ``fc2``, GPT-2's
  ``c_fc`` → ``c_proj``, ``dense_h_to_4h`` → ``dense_4h_to_h``, T5's ``wi`` → ``wo``, BERT's
  ``intermediate.dense`` → ``output.dense``).
* **Attention value/output channels**, one group per key/value head: v's rows of that head and
  o's columns of every query head that reads it (grouped-query attention: ``heads / kv_heads``
  query heads per kv head), so channels never leave their head.
* **Attention query/key channels**, one group per kv head (q's rows of its query heads and k's
  rows), only where no rotary or relative position encoding is found: a rotary embedding rotates
  fixed channel pairs by channel-dependent angles, so no non-trivial reordering commutes with it.
* **Chains in ``nn.Sequential``**: a Linear/Conv whose outputs reach the next Linear/Conv only
  through channel-wise modules (activations, dropout, BatchNorm, pooling, 1-D LayerNorm).

* **The residual stream of a transformer** (:func:`find_residual`, in :mod:`.residual`): one
  permutation shared by the embeddings, every norm on the stream, the layers reading it and the
  layers writing it, in all blocks; refused where the model returns the stream itself.

Not permuted, with the reason in the report: layers with a parametrization or tied weights
(unless every holder is in the group, as a tied LM head and its embeddings), grouped
convolutions, groups whose channel count or offset is not a multiple of m (ragged groups), an
attention module holding a parameter its rules do not explain (a norm of v: v/o and q/k are left
alone), query/key channels under q/k norms, MLP hidden channels with a parameter of their width
between the layers, and fused projections in layouts not modelled (only GPT-2's q | k | v
``c_attn`` is).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from torch import nn

from .interior import attention_interior, mlp_extra
from .residual import RESIDUAL_NOTE, find_residual  # noqa: F401  (re-exported: the residual stream's group)
from .structure import CONVS as _CONVS
from .structure import Group, Member
from .structure import attention_parts as _attention_parts
from .structure import child as _child
from .structure import dims as _dims
from .structure import linear_like as _linear_like
from .structure import mlp_io as _mlp_io
from .structure import norm_size as _norm_size
from .structure import problem as _problem
from .structure import reads as _reads
from .structure import writes as _writes

__all__ = ["Member", "Group", "find_groups", "find_residual", "RESIDUAL_NOTE"]


_CHANNELWISE = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU,
                nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Mish, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout1d,
                nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
          nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
          nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_ROPE_KEYS = ("rope_theta", "rope_scaling", "rope_parameters", "rotary_dim", "rotary_pct", "rotary_emb_base",
              "partial_rotary_factor", "rotary_emb_fraction")


def find_groups(model: nn.Module, config=None, prefix: str = "") -> Tuple[List[Group], List[Tuple[str, str]]]:
    """The permutation groups of ``model`` and the structures left alone, as ``(groups, skipped)``
    with ``skipped`` a list of ``(name, reason)``. ``config`` (a Hugging Face config, default
    ``model.config``) tells whether attention uses a rotary or relative position encoding;
    ``prefix`` is prepended to module names (a block of a larger model)."""
    config = config if config is not None else getattr(model, "config", None)
    names = {id(mod): (f"{prefix}.{n}" if prefix and n else (n or prefix)) for n, mod in model.named_modules()}
    groups: List[Group] = []
    skipped: List[Tuple[str, str]] = []
    claimed: set = set()
    owners: Dict[int, set] = {}
    for mod in model.modules():
        for t in list(mod._parameters.values()) + list(mod._buffers.values()):
            if t is not None:
                owners.setdefault(id(t), set()).add(id(mod))
    for mod in model.modules():
        name = names[id(mod)]
        for finder in (_mlp, _attention, _sequential_chains):
            for item in finder(mod, name, names, config):
                if isinstance(item, Group):
                    ids = {(id(mb.module), mb.tensor, mb.dim, mb.start) for mb in item.members}
                    if ids & claimed:
                        continue  # found twice (a module matching two patterns): the first one wins
                    tied = _tied_member(item, owners, names)
                    if tied is not None:
                        skipped.append((item.name, f"{item.kind}: not permuted: {tied}"))
                        continue
                    claimed |= ids
                    groups.append(item)
                else:
                    skipped.append(item)
    return groups, skipped


def _tied_member(group: Group, owners: Dict[int, set], names) -> Optional[str]:
    """A member tensor also held by a module outside the group (tied weights) would move there too."""
    inside = {id(mb.module) for mb in group.members}
    for mb in group.members:
        t = getattr(mb.module, mb.tensor, None)
        others = owners.get(id(t), set()) - inside
        if others:
            return f"{mb.module_name}.{mb.tensor} is tied to a tensor of another module (untie it to permute)"
    return None


# --- members --------------------------------------------------------------------------------------


def _mlp_group(kind: str, name: str, names, writers: Sequence[nn.Module], reader: nn.Module, holder: nn.Module):
    """One hidden-channel group: ``writers`` produce the channels, ``reader`` consumes them."""
    mods = list(writers) + [reader]
    for mod in mods:
        why = _problem(mod, names.get(id(mod), "?"))
        if why is not None:
            yield (name, f"{kind}: not permuted: {why}")
            return
    width = _dims(writers[0])[2]
    if any(_dims(w)[2] != width for w in writers) or _dims(reader)[3] != width:
        yield (name, f"{kind}: not permuted: the writers' outputs and the reader's inputs differ in size")
        return
    extra = mlp_extra(holder, writers, reader, width)
    if extra is not None:
        yield (name, f"{kind}: not permuted: {extra} has the hidden width {width} and is not a writer or the reader "
                     "(a norm or scale of the hidden channels would have to move with them)")
        return
    members = [mb for w in writers for mb in _writes(w, names[id(w)], 0)] + _reads(reader, names[id(reader)], 0)
    yield Group(name, kind, width, members)


def _mlp(mod, name, names, config):
    io = _mlp_io(mod)
    if io is not None:
        writers, (reader,) = io
        yield from _mlp_group("mlp (gated)" if len(writers) == 2 else "mlp", name, names, writers, reader, mod)


# --- attention ------------------------------------------------------------------------------------


def _attention(mod, name, names, config):
    found = _attention_parts(mod)
    if found is None:
        return
    q, k, v, o, fused = found
    for part in {id(p): p for p in (q, k, v, o)}.values():
        why = _problem(part, names.get(id(part), "?"))
        if why is not None:
            yield (name, f"attention: not permuted: {why}")
            return
    heads, kv_heads, head_dim = _head_shape(mod, config, q, v, o, fused)
    if heads is None:
        yield (name, "attention: not permuted: its number of heads or head size could not be read from the module")
        return
    group_size = heads // kv_heads
    embed = heads * head_dim
    q_off, k_off, v_off = (0, embed, embed + kv_heads * head_dim) if fused else (0, 0, 0)
    qk_norms, extras = attention_interior(mod, (q, k, v, o))
    if extras:
        yield (name, f"attention: not permuted: {extras[0]} is a parameter between the projections that no rule "
                     "explains (a norm of v or of o's input would have to move with the channels)")
        return
    for h in range(kv_heads):
        members = [mb for mb in _writes(v, names[id(v)], v_off + h * head_dim)]
        for j in range(group_size):
            members += _reads(o, names[id(o)], (h * group_size + j) * head_dim)
        yield Group(f"{name}[kv head {h}]", "attention v/o", head_dim, members)
    position = _position_encoding(mod, config)
    if position is None and qk_norms:
        position = (f"{qk_norms[0]} normalises the query/key channels (its weight is shared by the heads or spans "
                    "them all, so a per-head reordering does not commute with it)")
    if position is not None:
        yield (name, f"attention q/k: not permuted: {position}")
        return
    for h in range(kv_heads):
        members = _writes(k, names[id(k)], k_off + h * head_dim)
        for j in range(group_size):
            members += _writes(q, names[id(q)], q_off + (h * group_size + j) * head_dim)
        yield Group(f"{name}[kv head {h}]", "attention q/k", head_dim, members)


def _head_shape(mod, config, q, v, o, fused) -> Tuple[Optional[int], Optional[int], Optional[int]]:
    inner = _child(mod, "self") if _child(mod, "self.query") is not None else mod
    o_in = _dims(o)[3]
    head_dim = next((int(getattr(inner, a)) for a in ("head_dim", "attention_head_size", "head_size")
                     if isinstance(getattr(inner, a, None), int)), None)
    heads = next((int(getattr(inner, a)) for a in ("num_heads", "n_heads", "num_attention_heads", "n_head")
                  if isinstance(getattr(inner, a, None), int)), None)
    if heads is None and config is not None and isinstance(getattr(config, "num_attention_heads", None), int):
        heads = config.num_attention_heads
    if head_dim is None and heads:
        head_dim = o_in // heads if o_in % heads == 0 else None
    if head_dim is None or head_dim <= 0 or o_in % head_dim:
        return None, None, None
    heads = o_in // head_dim
    v_rows = _dims(v)[2]
    if fused:
        kv_heads = heads if v_rows == 3 * o_in else None
    else:
        kv_heads = v_rows // head_dim if v_rows % head_dim == 0 else None
    if not kv_heads or heads % kv_heads or (not fused and _dims(q)[2] != o_in):
        return None, None, None
    return heads, kv_heads, head_dim


def _position_encoding(mod, config) -> Optional[str]:
    """Why q/k channels must stay in place (a rotary or relative position encoding), or None."""
    if config is not None:
        for key in _ROPE_KEYS:
            if getattr(config, key, None) is not None:
                return f"rotary position embedding ({key} in the config): rotary pairs turn by channel-dependent angles"
        kind = getattr(config, "position_embedding_type", None)
        if kind not in (None, "absolute"):
            return f"position_embedding_type {kind!r} acts on q/k channels"
    for n, sub in mod.named_modules():
        if "rotary" in n.lower() or "rope" in type(sub).__name__.lower() or "rotary" in type(sub).__name__.lower():
            return f"rotary position embedding ({n or type(sub).__name__})"
    if config is None and not _known_absolute(mod):
        return "no model config says how positions are encoded (a rotary encoding would not commute)"
    return None


def _known_absolute(mod) -> bool:
    # Attention classes whose q/k carry no position encoding (positions are added to the embeddings).
    return type(mod).__name__ in ("CausalSelfAttention", "GPT2Attention", "BertAttention", "OPTAttention")


# --- nn.Sequential chains --------------------------------------------------------------------------


def _sequential_chains(mod, name, names, config):
    if not isinstance(mod, nn.Sequential):
        return
    children = list(mod.named_children())
    for i, (_, first) in enumerate(children):
        if not _linear_like(first):
            continue
        between: List[nn.Module] = []
        reader = None
        for _, nxt in children[i + 1:]:
            if _linear_like(nxt):
                reader = nxt
                break
            if not _passes_channels(nxt, first):
                break
            between.append(nxt)
        if reader is None or isinstance(first, _CONVS) != isinstance(reader, _CONVS):
            continue
        label = f"{names[id(first)]} -> {names[id(reader)]}"
        why = _problem(first, names[id(first)]) or _problem(reader, names[id(reader)])
        width = _dims(first)[2]
        if why is None and _dims(reader)[3] != width:
            why = "the first layer's outputs and the next layer's inputs differ in size"
        if why is None and any(isinstance(b, (nn.LayerNorm, *_BATCHNORMS)) and _norm_size(b) != width for b in between):
            why = "a norm in between does not have one parameter per channel"
        if why is not None:
            yield (label, f"chain: not permuted: {why}")
            continue
        members = _writes(first, names[id(first)], 0)
        for b in between:
            for t in ("weight", "bias", "running_mean", "running_var"):
                if getattr(b, t, None) is not None:
                    members.append(Member(names[id(b)], b, t, 0, 0, "param"))
        members += _reads(reader, names[id(reader)], 0)
        yield Group(label, "chain", width, members)


def _passes_channels(mod, first) -> bool:
    """A module between two layers that acts on every channel alone (so channels may be reordered)."""
    if isinstance(mod, _CHANNELWISE) or isinstance(mod, _BATCHNORMS):
        return True
    if isinstance(mod, _POOLS):
        return isinstance(first, _CONVS)  # pooling a Linear's output would pool over its features
    if isinstance(mod, nn.LayerNorm):
        return not isinstance(first, _CONVS) and len(mod.normalized_shape) == 1
    return False


