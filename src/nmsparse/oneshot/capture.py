"""Run calibration batches through a forward (the whole model, or one block on its cached inputs,
:mod:`nmsparse.oneshot.pipeline`) and accumulate each target layer's input statistics with forward
pre-hooks (no activations of the whole model are kept).

``sequential=True`` (SparseGPT's protocol): a pass hooks every layer not yet pruned, takes the first
one the forward calls and the layers called right after it *on the very same input tensor*
(``q``/``k``/``v`` of one attention block, ``gate``/``up`` of one MLP), and stops the forward pass
at the next layer (from the second batch on, as soon as every member has its inputs). That group is pruned before the next pass, so every later layer sees the
outputs of the already-pruned layers before it. A model whose layers do not share inputs takes
one (truncated) pass per layer. ``sequential=False``: one pass over the calibration data with the
dense model collects every layer's statistics.

Padding tokens: for a dict batch with a 2-D ``attention_mask``, rows of a ``(B, T, ...)`` layer
input at masked positions are left out.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .calibration import run_batch
from .hessian import InputStats, MatrixView, select_tokens, token_mask_of

__all__ = ["iterate_runs", "dense_outputs"]


class _StopPass(BaseException):
    """Raised by a hook to end a forward pass once the wanted layers have run. A BaseException (as
    KeyboardInterrupt), so a model's own ``except Exception`` around its submodules cannot swallow it."""


def iterate_runs(
    run: Callable[[int], None], count: int, token_masks: Sequence[Optional[torch.Tensor]], views: Dict[str, MatrixView],
    *, sequential: bool, keep_samples: bool,
) -> Iterator[Tuple[str, InputStats]]:
    """Yield ``(name, stats)`` per layer, in the order the forward first calls them; a layer is pruned
    by the caller before the generator resumes, and layers never called are not yielded. ``run(i)``
    computes calibration batch ``i`` (the whole model, or one block on its cached inputs);
    ``token_masks[i]`` marks batch i's real tokens."""
    if not sequential:
        stats, order = _pass(run, count, token_masks, views, keep_samples, False)
        for name in order:
            yield name, stats.pop(name)
        return
    remaining = dict(views)
    while remaining:
        stats, order = _pass(run, count, token_masks, remaining, keep_samples, True)
        if not order:
            return
        for name in order:
            del remaining[name]
            yield name, stats.pop(name)


def _run(model, batch, i: int, where: str) -> None:
    run_batch(model, batch, i, where, passthrough=(_StopPass,))


@torch.no_grad()
def _pass(run, count, token_masks, views, keep_samples, group: bool) -> Tuple[Dict[str, InputStats], List[str]]:
    stats = {name: InputStats(view, keep_samples) for name, view in views.items()}
    order: List[str] = []
    state = {"x0": None, "members": None, "token_mask": None, "shared": {}, "seen": set()}

    def hook_for(name):
        # A pre-hook: the statistics need the layer's input only, so a pass can stop before the
        # last member of its group runs (once the group is known, from the second batch on).
        def hook(module, args):
            if not args or not isinstance(args[0], torch.Tensor):
                return
            x = args[0]
            members = state["members"]
            if group:
                if members is None:  # first batch: the group is the leader and its same-input siblings
                    if not order:
                        state["x0"] = x
                    elif x is not state["x0"] or name in order:
                        raise _StopPass
                elif name not in members:
                    raise _StopPass
            if name not in order:
                order.append(name)
            stats[name].add(x, state["token_mask"], state["shared"])
            if group and members is not None:
                state["seen"].add(name)
                if len(state["seen"]) == len(members):
                    raise _StopPass  # every member has its inputs: nothing after them is needed

        return hook

    handles = [view.module.register_forward_pre_hook(hook_for(name)) for name, view in views.items()]
    try:
        for i in range(count):
            state["token_mask"], state["shared"], state["seen"] = token_masks[i], {}, set()
            try:
                run(i)
            except _StopPass:
                pass
            if group and state["members"] is None:
                state["members"] = set(order)
                state["x0"] = None
                if not order:
                    break  # none of the layers runs on the calibration data
    finally:
        for h in handles:
            h.remove()
    if group:
        order = [n for n in order if stats[n].calls]
    return stats, order


@torch.no_grad()
def dense_outputs(dense: nn.Module, module_name: str, batches: Sequence, flatten: bool) -> List[torch.Tensor]:
    """Outputs of ``module_name`` in the dense copy ``dense`` of the model, one per call, aligned
    with the samples :class:`InputStats` keeps (padding tokens dropped and rows flattened when
    ``flatten``); each pass stops right after the module has run."""
    module = dense.get_submodule(module_name)
    outs: List[torch.Tensor] = []
    state = {"token_mask": None}

    def hook(mod, args, output):
        y = output.detach()
        if flatten:
            y = select_tokens(y, state["token_mask"])
            y = y.reshape(-1, y.shape[-1])
        outs.append(y.clone())
        raise _StopPass

    handle = module.register_forward_hook(hook)
    try:
        for i, batch in enumerate(batches):
            state["token_mask"] = token_mask_of(batch)
            try:
                _run(dense, batch, i, "adaprune")
            except _StopPass:
                pass
    finally:
        handle.remove()
    return outs
