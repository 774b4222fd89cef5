"""The residual stream of a transformer as one permutation group (:func:`find_residual`).

One permutation of the stream's channels is shared by everything that indexes them: the columns
of every layer that reads the stream (q, k, v; gate/up or fc1; routers; an LM head, a classifier),
the rows and biases of every layer that writes it (o; down or fc2), the embedding tables' columns
and every norm on the stream. A norm normalises over all channels (order-free) and scales each
one; adds and embedding look-ups act channel by channel. Outside the blocks, a layer that maps the
stream's width to itself (an MLM head's transform, a pooler, a classification head's dense) reads
and writes: its output is permuted like the stream, so the norms and layers after it (all of them
members) stay consistent; a layer writing the stream's width from another width (OPT's
``project_in``) writes.

Left alone, with the reason: a model that returns the stream itself (a Hugging Face base model,
an encoder-decoder's ``encoder_last_hidden_state``, a model with no layer after its blocks), a
norm of the stream's width inside an attention or MLP module that is not on the stream (a q/k norm
spanning all heads is understood and left in place; anything else refuses), and any parameter of
the stream's width that none of these rules explains.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

from torch import nn

from .structure import Group, Member, attention_parts as _attention_parts, dims as _dims, linear_like as _linear_like, mlp_io as _mlp_io, problem as _problem, reads as _reads, writes as _writes
from .interior import QK_NORM, norm_like

__all__ = ["find_residual", "RESIDUAL_NOTE"]

RESIDUAL_NOTE = "residual stream: not permuted (residual=False)"
_WHY = "residual stream: not permuted: "


def find_residual(model: nn.Module, config=None) -> Tuple[Optional[Group], Optional[str]]:
    """The residual stream of ``model`` as one group, or ``(None, why not)`` (``(None, None)``
    for a model with no attention: no stream to speak of)."""
    config = config if config is not None else getattr(model, "config", None)
    names = {id(mod): n for n, mod in model.named_modules()}
    readers: List[nn.Module] = []
    writers: List[nn.Module] = []
    attentions, mlps = [], []
    for mod in model.modules():
        parts = _attention_parts(mod)
        if parts is not None:
            attentions.append(mod)
            _add(readers, parts[:3])
            _add(writers, parts[3:4])
            continue
        io = _mlp_io(mod)
        if io is not None:
            mlps.append(mod)
            _add(readers, io[0])
            _add(writers, io[1])
    if not attentions:
        return None, None
    if getattr(config, "is_encoder_decoder", False):
        return None, _WHY + ("an encoder-decoder returns its encoder's stream (encoder_last_hidden_state), which a "
                             "permutation of the stream would reorder")
    if getattr(model, "base_model", None) is model and getattr(model, "base_model_prefix", None) is not None:
        return None, _WHY + ("the model returns the stream itself (a base model without a head: load it with its "
                             "head, e.g. AutoModelForCausalLM, to permute the stream)")
    for mod in readers + writers:
        why = _problem(mod, names.get(id(mod), "?"))
        if why is not None:
            return None, _WHY + why
    widths = {_dims(r)[3] for r in readers} | {_dims(w)[2] for w in writers}
    if len(widths) != 1:
        return None, _WHY + f"its readers and writers disagree on its width ({sorted(widths)})"
    width = widths.pop()
    inside = {}  # id of every module inside an attention or MLP module -> that module
    for block in mlps + attentions:  # attention last: a module inside both is judged as attention's
        for sub in block.modules():
            inside[id(sub)] = block
    members: List[Member] = []
    known = {id(m) for m in readers + writers}
    head = False  # a layer after the blocks reads the stream (else the model returns it)
    for mod in model.modules():
        name = names[id(mod)]
        if id(mod) in known:
            continue
        if isinstance(mod, nn.Embedding) and mod.embedding_dim == width and id(mod) not in inside:
            members.append(Member(name, mod, "weight", 1, 0, "param"))
            known.add(id(mod))
        elif isinstance(mod, nn.GroupNorm) and width in (mod.num_channels,):
            return None, _WHY + f"{name} is a GroupNorm: it normalises channel groups, so channels may not change group"
        elif norm_like(mod):
            verdict = _norm_verdict(mod, name, inside.get(id(mod)), attentions, width, names)
            if verdict == "member":
                members += [Member(name, mod, t, 0, 0, "param") for t in ("weight", "bias")
                            if getattr(mod, t, None) is not None]
            elif verdict != "explained":
                return None, _WHY + verdict
            known.add(id(mod))
        elif _linear_like(mod) and getattr(mod, "weight", None) is not None:
            out_f, in_f = _dims(mod)[2:]
            if id(mod) in inside:
                block = inside[id(mod)]
                hidden = _mlp_io(block)[0][0] if _mlp_io(block) is not None else None
                if in_f == width and out_f != width and hidden is not None and _dims(hidden)[2] != width:
                    readers.append(mod)  # a router, a shared expert's gate: it can only read the (normed) stream
                    known.add(id(mod))
                continue  # anything else inside a block (an unknown layer in attention) is judged by the scan below
            if in_f == width:
                readers.append(mod)
                head = True
            if out_f == width:
                writers.append(mod)
            if width in (in_f, out_f):
                known.add(id(mod))
    if not head:
        return None, _WHY + "no layer reads the stream after the blocks: the model returns the stream itself"
    for mod in model.modules():
        if id(mod) in known:
            continue
        for t_name, t in mod._parameters.items():
            if t is not None and width in tuple(t.shape):
                return None, _WHY + (f"{names[id(mod)]}.{t_name} has the stream's width {width} and is not a "
                                     "recognised reader, writer, norm or embedding")
    for r in readers:
        members += _reads(r, names[id(r)], 0)
    for w in writers:
        members += _writes(w, names[id(w)], 0)
    return Group("residual stream", "residual", width, members), None


def _norm_verdict(mod, name: str, block, attentions, width: int, names) -> str:
    """``"member"`` (a norm on the stream), ``"explained"`` (it acts on something else and is left
    in place) or the reason the stream cannot be permuted."""
    weight = getattr(mod, "weight", None)
    if weight is None or tuple(weight.shape) != (width,):
        return "explained" if block is not None and _is_qk_norm(name, block, names) else _other_width(mod, width, name)
    if block is None:
        return "member"  # between blocks: the pre-/post-norms, the final norm, an embedding norm
    if _is_qk_norm(name, block, names):
        return "explained"  # it normalises a projection's output, which the stream's order does not touch
    if any(block is a for a in attentions):
        o = _attention_parts(block)[3]
        parent = _parent(block, mod)
        if parent is not None and parent is not block and any(c is o for c in parent.children()):
            return "member"  # BERT's attention.output.LayerNorm: on the stream, after o
    elif any(_attention_parts(c) is not None for c in block.modules()):
        return "member"  # a whole layer holding fc1/fc2 (OPT, BART, BERT): its norms are the stream's
    return (f"{name} is a norm of the stream's width inside {names[id(block)]} that is not on the stream "
            "(a norm of an attention or MLP's inner channels)")


def _other_width(mod, width: int, name: str) -> str:
    # A norm of another width: harmless unless one of its parameters still has the stream's width.
    for t_name, t in mod._parameters.items():
        if t is not None and width in tuple(t.shape):
            return f"{name}.{t_name} has the stream's width {width} and is not a recognised norm"
    return "explained"


def _is_qk_norm(name: str, block, names) -> bool:
    rel = name[len(names[id(block)]):].lstrip(".") if names[id(block)] else name
    return any(QK_NORM.fullmatch(part) for part in rel.split("."))


def _parent(root: nn.Module, target: nn.Module) -> Optional[nn.Module]:
    for mod in root.modules():
        if any(c is target for c in mod.children()):
            return mod
    return None


def _add(into: List[nn.Module], mods) -> None:
    for m in mods:
        if all(m is not x for x in into):
            into.append(m)
