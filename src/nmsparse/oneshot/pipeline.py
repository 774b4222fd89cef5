"""The calibration pipeline of :func:`nmsparse.prune_`: which forward passes feed each layer's statistics.

**Block-wise** (models with a stack of repeated blocks, :mod:`nmsparse.oneshot.blocks`): one
recording pass learns every block's arguments per calibration batch, then block by block: the
block's layers get their statistics from its cached inputs (with ``sequential``, layer group by
layer group in forward order, each group pruned before the next pass, SparseGPT's
true-sequential protocol), the pruned block computes the next block's inputs, and the block is
done. A Llama block (groups q/k/v, o, gate/up, down) costs 5 block forwards per batch, so a model
of B blocks costs about 5·B (2·B with ``sequential=False``), not the g·B(B+1)/2 of truncated
passes from the model's input.

**Truncated passes** from the model's input (:func:`nmsparse.oneshot.capture.iterate_runs`) serve everything else:
models without repeated blocks, lists whose blocks break the premise (the reason goes to the
report), layers before the first block, and layers after the last one (the LM head), where every
finished block list is replayed from its cached outputs, so no block runs again.

``on_block(event, blocks, k)`` (``"load"`` before block k's turn, ``"done"`` after it) lets a caller
keep only one block in memory (:mod:`nmsparse.oneshot.hf` streams them from the checkpoint).
``permuter(block, name, call, token_masks)`` runs at the start of a block's turn (channel
permutations, :mod:`nmsparse.oneshot.permute`): ``call(i)`` is the block on batch i's cached inputs;
``after_block(block, name, call)`` runs once the caller has pruned the block's layers (the
permutation guard's trial walk measures the pruned block there, :mod:`nmsparse.oneshot.permute.guard`).
"""

from __future__ import annotations

from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import ConvertError, NMSparseError, quote_error
from .blocks import BlockList, Capture, find_block_lists, output_hidden, output_like, record_blocks, stop_stub, stubbed
from .calibration import run_batch
from .capture import _StopPass, iterate_runs
from .hessian import InputStats, MatrixView, token_mask_of
from .report import PipelineInfo

__all__ = ["PipelineInfo", "iterate_pipeline"]

OnBlock = Callable[[str, BlockList, int], None]
Permuter = Callable[[nn.Module, str, Callable[[int], object], Sequence], None]
AfterBlock = Callable[[nn.Module, str, Callable[[int], object]], None]


def iterate_pipeline(
    model: nn.Module, views: Dict[str, MatrixView], batches: Sequence, *, sequential: bool, keep_samples: bool,
    where: str = "prune_", blocks=None, on_block: Optional[OnBlock] = None, info: Optional[PipelineInfo] = None,
    device=None, permuter: Optional[Permuter] = None, after_block: Optional[AfterBlock] = None,
) -> Iterator[Tuple[str, InputStats]]:
    """Yield ``(name, stats)`` per layer; the caller prunes the layer before resuming (as
    :func:`~nmsparse.oneshot.capture.iterate_runs`). ``blocks`` names the block lists (default:
    detected); ``blocks=()`` means truncated passes only."""
    info = info if info is not None else PipelineInfo()
    masks = [token_mask_of(b) for b in batches]
    count = len(batches)
    remaining: Dict[str, MatrixView] = dict(views)
    owner = {id(v.module): name for name, v in views.items()}
    holds = lambda block: any(id(m) in owner for m in block.modules())  # noqa: E731
    lists = [] if blocks == () else find_block_lists(model, holds, blocks, where)
    done: Dict[str, Tuple[BlockList, List[torch.Tensor], object]] = {}
    rejected = set()
    counter = _count_block_calls(lists, info)
    replay_state = {"batch": 0}

    def replay(bl: BlockList, k: int) -> Callable:
        _, final, example = done[bl.name]
        return lambda *a, **kw: output_like(example, final[replay_state["batch"]])

    def run_model(i: int) -> None:
        replay_state["batch"] = i
        run_batch(model, batches[i], i, where, passthrough=(_StopPass,))

    try:
        while remaining:
            todo = [bl for bl in lists if bl.name not in done and bl.name not in rejected and _holds_any(bl, remaining)]
            if not todo:
                break
            finished = [done[n][0] for n in done]
            seen = [0]
            early = _hook_outside(remaining, todo, seen)
            try:
                with stubbed(finished, replay):
                    caps = record_blocks(todo, count, run_model, lambda bl: _notify(on_block, "load", bl, 0), seen)
            finally:
                for h in early["handles"]:
                    h.remove()
            broken = [c for c in caps if c.problem is not None]
            for c in broken:
                rejected.add(c.blocks.name)
                info.fallbacks.append((c.blocks.name, c.problem))
            if broken:
                continue  # record the others again: a failed pass tells nothing about them
            if early["names"]:  # layers that run before every block: prune them first, then record again
                first = {n: remaining.pop(n) for n in early["names"]}
                with stubbed(finished, replay), stubbed(todo, stop_stub):
                    yield from iterate_runs(run_model, count, masks, first, sequential=sequential, keep_samples=keep_samples)
                continue
            cap = caps[0]
            cap.device = None if device is None else torch.device(device)
            if cap.order < 0:
                break  # no remaining block list runs on the calibration data
            info.mode = "block-wise"
            info.block_lists.append(f"{cap.blocks.name} ({len(cap.blocks)} blocks)")
            more = any(bl.name not in done and bl.name != cap.blocks.name and bl.name not in rejected for bl in todo)
            final = yield from _run_list(cap, remaining, masks, count, sequential, keep_samples, where, on_block, more,
                                         permuter, after_block)
            done[cap.blocks.name] = (cap.blocks, final, cap.example)
        if remaining:
            if info.mode == "none":
                info.mode = "truncated"
            finished = [done[n][0] for n in done]
            for bl in lists:  # blocks that truncated passes will run must be in memory
                if bl.name not in done:
                    for k in range(len(bl)):
                        _notify(on_block, "load", bl, k)
            with stubbed(finished, replay):
                yield from iterate_runs(run_model, count, masks, remaining, sequential=sequential, keep_samples=keep_samples)
    finally:
        for h in counter:
            h.remove()


def _run_list(cap: Capture, remaining, masks, count, sequential, keep_samples, where, on_block, more: bool, permuter=None,
              after_block=None):
    """Prune one block list block by block; returns the last block's outputs (None if nothing needs them)."""
    bl = cap.blocks
    hidden: List[torch.Tensor] = list(cap.hidden0)
    final = None
    for k, block in enumerate(bl.modules):
        _notify(on_block, "load", bl, k)
        home = next((t.device for t in [*block.parameters(), *block.buffers()]), None)
        if cap.device is not None:
            block.to(cap.device)  # its turn: the block alone on the device, activations stay where they are
        try:
            if permuter is not None:  # channel permutations of this block, before its statistics
                permuter(block, bl.block_name(k), _block_caller(cap, k, hidden, where), masks)
            outs = yield from _run_block(cap, k, block, hidden, remaining, masks, count, sequential, keep_samples,
                                         where, more)
            if after_block is not None:
                after_block(block, bl.block_name(k), _block_caller(cap, k, hidden, where))
        finally:
            if cap.device is not None and home is not None:
                block.to(home)
        _notify(on_block, "done", bl, k)
        if outs is not None:
            hidden = outs
        final = outs
    return final


def _run_block(cap, k, block, hidden, remaining, masks, count, sequential, keep_samples, where, more):
    """Statistics for block k's layers (yielded to the caller, who prunes them), then the block's outputs."""
    bl = cap.blocks
    mine = {id(m) for m in block.modules()}
    views = {n: v for n, v in remaining.items() if id(v.module) in mine}
    for n in views:
        del remaining[n]
    needed = k + 1 < len(bl) or bool(remaining) or more
    run = _block_runner(cap, k, hidden, where)
    if sequential:
        yield from iterate_runs(run, count, masks, views, sequential=True, keep_samples=keep_samples)
        outs = _outputs(cap, k, hidden, where) if needed else None
    else:  # every layer sees the dense model's activations: dense outputs before pruning
        stats, order = _collect(run, count, masks, views, keep_samples)
        outs = _outputs(cap, k, hidden, where) if needed else None
        for name in order:
            yield name, stats.pop(name)
    return outs




def _collect(run, count, masks, views, keep_samples):
    stats: Dict[str, InputStats] = {}
    order: List[str] = []
    for name, st in iterate_runs(run, count, masks, views, sequential=False, keep_samples=keep_samples):
        stats[name] = st
        order.append(name)
    return stats, order


def _block_caller(cap: Capture, k: int, hidden: List[torch.Tensor], where: str) -> Callable[[int], object]:
    """``call(i)``: block k on batch i's cached inputs, returning its output."""
    return lambda i: _guarded(lambda: cap.call(k, i, hidden[i]), cap.blocks.block_name(k), i, where)


def _block_runner(cap: Capture, k: int, hidden: List[torch.Tensor], where: str) -> Callable[[int], None]:
    def run(i: int) -> None:
        _guarded(lambda: cap.call(k, i, hidden[i]), cap.blocks.block_name(k), i, where)

    return run


@torch.no_grad()
def _outputs(cap: Capture, k: int, hidden: List[torch.Tensor], where: str) -> List[torch.Tensor]:
    outs = []
    for i in range(len(hidden)):
        out = _guarded(lambda: cap.call(k, i, hidden[i]), cap.blocks.block_name(k), i, where)
        h = output_hidden(out)
        if h is None:
            raise ConvertError(f"{where}: block {cap.blocks.block_name(k)} returned a {type(out).__name__} on batch {i}, "
                               "not a hidden-state tensor; pass blocks=() to prune with truncated passes.")
        outs.append(h.detach().to(hidden[i].device))
    return outs


def _guarded(fn: Callable, block: str, i: int, where: str):
    """Call the user's block; any exception from it becomes a ConvertError naming the block and the batch."""
    try:
        return fn()
    except (NMSparseError, _StopPass):
        raise
    except Exception as err:  # the user's code: one rule for every exception it raises (kept as __cause__)
        raise ConvertError(
            f"{where}: block {block} failed on calibration batch {i} ({quote_error(err)}); "
            "check the model on that batch, or pass blocks=() to prune with truncated passes."
        ) from err


def _notify(on_block: Optional[OnBlock], event: str, bl: BlockList, k: int) -> None:
    if on_block is not None:
        on_block(event, bl, k)


def _holds_any(bl: BlockList, remaining: Dict[str, MatrixView]) -> bool:
    ids = {id(m) for m in bl.modules.modules()}
    return any(id(v.module) in ids for v in remaining.values())


def _hook_outside(remaining: Dict[str, MatrixView], lists: List[BlockList], seen: List[int]):
    """Hooks on the remaining layers outside ``lists``: which of them run before any block."""
    inside = {id(m) for bl in lists for m in bl.modules.modules()}
    state = {"names": [], "handles": []}
    for name, v in remaining.items():
        if id(v.module) in inside:
            continue

        def hook(module, args, output, name=name):
            if seen[0] == 0 and name not in state["names"]:
                state["names"].append(name)

        state["handles"].append(v.module.register_forward_hook(hook))
    return state


def _count_block_calls(lists: List[BlockList], info: PipelineInfo):
    def hook(module, args):
        if not (args and isinstance(args[0], torch.Tensor) and args[0].is_meta):  # a meta call computes nothing
            info.block_forwards += 1

    return [b.register_forward_pre_hook(hook) for bl in lists for b in bl.modules]
