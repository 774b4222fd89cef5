"""Stacks of repeated blocks: finding them, and capturing what the model feeds each block.

A *block list* is an ``nn.ModuleList`` of two or more modules of one class that hold layers to
prune (HF ``model.layers``, GPT-2's ``h``, BERT's ``encoder.layer``), outermost lists only (an MoE
block's experts are inside a block, not a stack). The block-wise pipeline
(:mod:`nmsparse.oneshot.pipeline`) needs to know, per calibration batch, what the model passes to
every block besides the hidden state (attention masks, position ids, rotary embeddings, encoder
states). One forward pass with every block replaced by a *recorder* tells it at almost no cost: a
recorder stores its arguments and hands its hidden-state input straight on, shaped like a real
block's output (learned from one real call of the first block). The same pass checks the premise:
each block is called exactly once per batch, in list order, and the hidden state passes between
consecutive blocks untouched; a list that breaks it is not pruned block-wise (the caller falls
back to truncated passes and says why).

KV caches are never replayed: a cache object among a block's arguments is replaced by ``None`` and
``use_cache`` by ``False``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.utils._pytree import tree_map

from ..errors import ArgumentError
from .capture import _StopPass

__all__ = ["BlockList", "find_block_lists", "Capture", "record_blocks", "stubbed", "hidden_of", "output_like"]


@dataclass
class BlockList:
    """A stack of repeated blocks: its qualified ``name`` and the ``nn.ModuleList`` itself."""

    name: str
    modules: nn.ModuleList

    def block_name(self, k: int) -> str:
        return f"{self.name}.{k}" if self.name else str(k)

    def __len__(self) -> int:
        return len(self.modules)


def find_block_lists(model: nn.Module, holds: Callable[[nn.Module], bool], blocks=None, where: str = "prune_") -> List[BlockList]:
    """The block lists of ``model`` whose blocks hold a layer to prune (``holds(block)``), in module order.

    ``blocks`` (a name or list of names of ``nn.ModuleList`` s) overrides the detection."""
    if blocks is not None:
        names = [blocks] if isinstance(blocks, str) else list(blocks) if isinstance(blocks, (list, tuple)) else None
        if not names or not all(isinstance(n, str) for n in names):
            raise ArgumentError(f"{where}: blocks= must name a ModuleList (e.g. 'model.layers') or list several, got {blocks!r}.")
        found = []
        for n in names:
            try:
                mod = model.get_submodule(n)
            except AttributeError:
                mod = None
            if not isinstance(mod, nn.ModuleList):
                known = [b.name for b in find_block_lists(model, holds, None, where)]
                raise ArgumentError(
                    f"{where}: blocks={n!r} is not an nn.ModuleList of the model; detected block lists: {known or 'none'}. "
                    "Name the ModuleList that the forward runs block by block."
                )
            found.append(BlockList(n, mod))
        return found
    lists: List[BlockList] = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) < 2:
            continue
        if len({type(b) for b in mod}) != 1 or not any(holds(b) for b in mod):
            continue
        if any(name.startswith(f"{bl.name}.") or not bl.name for bl in lists):
            continue  # inside a block of an outer stack (e.g. an MoE block's experts)
        lists.append(BlockList(name, mod))
    return lists


def _is_cache(value) -> bool:
    return any(c.__name__.endswith("Cache") for c in type(value).__mro__) and not isinstance(value, torch.Tensor)


def _sanitize(args: tuple, kwargs: dict) -> Tuple[tuple, dict]:
    args = tuple(None if _is_cache(a) else a for a in args)
    kwargs = {k: (None if _is_cache(v) else v) for k, v in kwargs.items()}
    if "use_cache" in kwargs:
        kwargs["use_cache"] = False
    return args, kwargs


def hidden_of(args: tuple, kwargs: dict) -> Tuple[Optional[torch.Tensor], Union[int, str, None]]:
    """A block's hidden-state input and where it sits: the first positional tensor, else ``hidden_states=``."""
    if args and isinstance(args[0], torch.Tensor):
        return args[0], 0
    h = kwargs.get("hidden_states")
    if isinstance(h, torch.Tensor):
        return h, "hidden_states"
    return None, None


def output_hidden(out) -> Optional[torch.Tensor]:
    """The hidden state a block returns: the output itself, or the first item of a tuple."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


def output_like(example, hidden: torch.Tensor):
    """``hidden`` in the shape of a real block's output ``example`` (a tensor, or a tuple led by it)."""
    if isinstance(example, torch.Tensor):
        return hidden
    return type(example)([hidden, *example[1:]]) if isinstance(example, list) else (hidden, *example[1:])


def format_problem(example) -> Optional[str]:
    """Why a block output cannot be stood in for (None if it can)."""
    if isinstance(example, torch.Tensor):
        return None
    if isinstance(example, (tuple, list)) and example and isinstance(example[0], torch.Tensor):
        extra = [type(x).__name__ for x in example[1:] if x is not None]
        if extra:
            return f"its blocks return extra state for the next block ({', '.join(extra)})"
        return None
    return f"its blocks return a {type(example).__name__}, not a tensor or a tuple led by one"


@dataclass
class Capture:
    """What one recording pass learned about one block list, per calibration batch ``i``:
    ``inputs[k][i]`` the ``(args, kwargs)`` block k received (caches removed), ``slot`` where the
    hidden state sits, ``hidden0[i]`` the first block's hidden input, ``example`` a real output of
    block 0 (its format), ``problem`` why the list cannot be pruned block-wise (None if it can)."""

    blocks: BlockList
    inputs: List[List[Tuple[tuple, dict]]] = field(default_factory=list)
    slot: Union[int, str, None] = None
    hidden0: List[torch.Tensor] = field(default_factory=list)
    example: object = None
    problem: Optional[str] = None
    order: int = -1  # position of the list's first call in the forward pass
    device: Optional[torch.device] = None  # where each block runs for its turn (None: where it is)

    def call(self, k: int, i: int, hidden: torch.Tensor):
        """Run block k on batch i's recorded arguments with ``hidden`` as its hidden state (moved to
        ``device`` first when the block runs elsewhere than the cached activations)."""
        args, kwargs = self.inputs[k][i]
        if self.device is not None:
            move = lambda t: t.to(self.device) if isinstance(t, torch.Tensor) else t  # noqa: E731
            args, kwargs, hidden = tree_map(move, args), tree_map(move, kwargs), hidden.to(self.device)
        if isinstance(self.slot, int):
            args = (hidden, *args[1:])
        else:
            kwargs = {**kwargs, self.slot: hidden}
        return self.blocks.modules[k](*args, **kwargs)


class _Stub(nn.Module):
    """Stands in for one block during a recording or replaying pass."""

    def __init__(self, fn: Callable):
        super().__init__()
        self._fn = fn

    def forward(self, *args, **kwargs):
        return self._fn(*args, **kwargs)


@contextlib.contextmanager
def stubbed(lists: Sequence[BlockList], make: Callable[[BlockList, int], Callable]) -> Iterator[None]:
    """Replace every block of ``lists`` by a stub calling ``make(list, k)``; restore them afterwards."""
    saved = [(bl, k, bl.modules[k]) for bl in lists for k in range(len(bl))]
    try:
        for bl, k, _ in saved:
            bl.modules[k] = _Stub(make(bl, k))
        yield
    finally:
        for bl, k, block in saved:
            bl.modules[k] = block


def stop_stub(bl: BlockList, k: int) -> Callable:
    def fn(*args, **kwargs):
        raise _StopPass

    return fn


def meta_call(block: nn.Module, args: tuple, kwargs: dict):
    """``block(*args, **kwargs)`` on the meta device (shapes only, no arithmetic), or None if some op
    of the block cannot run there. Tells the format of a block's output for free."""
    to_meta = lambda t: t.to("meta") if isinstance(t, torch.Tensor) else t  # noqa: E731
    state = {n: torch.empty_like(t, device="meta") for n, t in [*block.named_parameters(), *block.named_buffers()]}
    try:
        with torch.no_grad():
            return torch.func.functional_call(block, state, tree_map(to_meta, args), tree_map(to_meta, kwargs))
    except Exception:  # any failure just means: ask the real block
        return None


def record_blocks(
    lists: Sequence[BlockList], count: int, run_model: Callable[[int], None], probe: Callable[[BlockList], None],
    seen: Optional[List[int]] = None,
) -> List[Capture]:
    """One recording pass over the ``count`` calibration batches (``run_model(i)``) with every block
    of ``lists`` replaced by a recorder; ``probe(list)`` readies block 0 for the one real call that
    shows the output format. ``seen[0]`` counts the lists whose first block has been called (the
    caller's hooks read it to tell layers that run before every block). Returns the captures,
    the first-called list first (lists never called last, ``order`` -1)."""
    caps = {bl.name: Capture(bl, inputs=[[] for _ in range(len(bl))]) for bl in lists}
    seen = seen if seen is not None else [0]
    state = {"batch": 0, "last": {}}
    saved_blocks = {(bl.name, k): bl.modules[k] for bl in lists for k in range(len(bl))}

    def recorder(bl: BlockList, k: int) -> Callable:
        cap = caps[bl.name]

        def fn(*args, **kwargs):
            i = state["batch"]
            hidden, slot = hidden_of(args, kwargs)
            if cap.problem is None:
                prev = state["last"].get(bl.name)
                if hidden is None:
                    cap.problem = "a block is called without a hidden-state tensor (first argument or hidden_states=)"
                elif len(cap.inputs[k]) != i:
                    cap.problem = f"block {k} is called more than once per forward pass"
                elif k > 0 and (prev is None or prev[0] != k - 1 or prev[1] is not hidden):
                    cap.problem = (f"block {k} does not receive block {k - 1}'s output unchanged (blocks called out of order, "
                                   "or the model transforms the hidden state between blocks)")
                elif k == 0 and i > 0 and len(cap.inputs[-1]) != i:
                    cap.problem = "not every block of the list runs on every batch"
            if cap.problem is not None:
                raise _StopPass
            if cap.order < 0:
                cap.order = seen[0]
                seen[0] += 1
            cap.slot = slot
            a, kw = _sanitize(args, kwargs)
            cap.inputs[k].append((a, kw))
            if k == 0:
                cap.hidden0.append(hidden.detach())
            if cap.example is None:
                block = saved_blocks[(bl.name, k)]
                cap.example = meta_call(block, a, kw)
                if cap.example is None:  # an op without a meta kernel: one real call, block 0 on batch 0
                    probe(bl)
                    cap.example = block(*a, **kw)
                cap.problem = format_problem(cap.example)
                if cap.problem is not None:
                    raise _StopPass
            # A fresh tensor object (same storage), so the next block can tell it from its own input.
            out = output_like(cap.example, hidden.view_as(hidden))
            state["last"][bl.name] = (k, output_hidden(out))
            if k == len(bl) - 1:
                state["finished"].add(bl.name)
                if len(state["finished"]) == len(caps) and i > 0:
                    # Every list recorded: the rest of the model (an LM head) need not run. Batch 0 runs
                    # to the end, to see that no block is called again later.
                    raise _StopPass
            return out

        return fn

    with stubbed(lists, recorder):
        for i in range(count):
            state["batch"], state["last"], state["finished"] = i, {}, set()
            try:
                run_model(i)
            except _StopPass:
                pass
            except Exception as err:  # the model uses its blocks other than by calling them (b.mlp(x), ...)
                cause = err.__cause__ or err
                why = f"the forward pass fails with its blocks stood in for ({type(cause).__name__}: {str(cause)[:80]})"
                for cap in caps.values():
                    cap.problem = cap.problem or why
                break
    for cap in caps.values():
        if cap.problem is None and cap.order >= 0 and any(len(x) != count for x in cap.inputs):
            cap.problem = "not every block of the list runs on every batch"
    return sorted(caps.values(), key=lambda c: (c.order < 0, c.order))
