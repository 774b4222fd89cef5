"""What else sits inside an attention or MLP module besides its projections, for
:mod:`.groups` and :mod:`.residual`: a reordering of a module's channels is exact only if every
parameter between its writers and its readers moves with them or acts on all channels alike."""

from __future__ import annotations

import re
from typing import List, Optional, Tuple

from torch import nn

from .structure import attention_parts as _attention_parts

__all__ = ["attention_interior", "mlp_extra", "QK_NORM", "norm_like"]

QK_NORM = re.compile(r"(q|k|query|key)_?(norm|layernorm|layer_norm|ln)", re.IGNORECASE)


def norm_like(mod) -> bool:
    return "norm" in type(mod).__name__.lower()


def attention_interior(mod: nn.Module, parts) -> Tuple[List[str], List[str]]:
    """``(query/key norms, unexplained parameters)`` inside an attention module besides its
    projections. Allowed without comment: a relative position bias (one value per head and
    distance, added to the scores) and a norm next to o in a sub-module of its own (BERT's
    ``output.LayerNorm``: it normalises the stream after o has written it)."""
    skip = {id(p) for p in parts}
    o = parts[3]
    qk: List[str] = []
    extras: List[str] = [n for n, t in mod._parameters.items() if t is not None]
    stack = [("", mod)]
    while stack:
        path, cur = stack.pop()
        for child_name, child in cur.named_children():
            if id(child) in skip:
                continue
            sub = f"{path}.{child_name}" if path else child_name
            if any(QK_NORM.fullmatch(part) for part in sub.split(".")):
                qk.append(sub)
                continue
            own = [n for n, t in child._parameters.items() if t is not None]
            if own and "relative_attention_bias" not in sub.split(".") and not \
                    (norm_like(child) and cur is not mod and any(c is o for c in cur.children())):
                extras += [f"{sub}.{n}" for n in own]
            stack.append((sub, child))
    return qk, extras


def mlp_extra(mod: nn.Module, writers, reader, width: int) -> Optional[str]:
    """A parameter of the hidden width inside an MLP module other than its writers' and reader's,
    or None. Attention sub-modules (a whole layer holding fc1/fc2) are not looked into; a norm in the
    reader's own sub-module (BERT's ``output.LayerNorm``, after the reader) is on the stream."""
    skip = {id(m) for m in list(writers) + [reader]}
    for n, t in mod._parameters.items():
        if t is not None and width in tuple(t.shape):
            return n
    stack = [("", mod)]
    while stack:
        path, cur = stack.pop()
        for child_name, child in cur.named_children():
            sub = f"{path}.{child_name}" if path else child_name
            if id(child) in skip or _attention_parts(child) is not None:
                continue
            after_reader = cur is not mod and any(c is reader for c in cur.children()) and norm_like(child)
            for n, t in child._parameters.items():
                if t is not None and width in tuple(t.shape) and not after_reader:
                    return f"{sub}.{n}"
            stack.append((sub, child))
    return None
