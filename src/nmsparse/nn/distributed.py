"""Mask refresh on weights sharded by FSDP2 (``torch.distributed.fsdp.fully_shard``).

FSDP2 keeps every parameter as a ``DTensor`` sharded along dim 0 (``Shard(0)``, chunks as
``torch.chunk``: ``ceil(rows / k)`` rows per rank, the last ranks shorter or empty). A
parametrized weight's dense ``original`` is such a parameter; before each layer's forward FSDP
all-gathers it, so :class:`~nmsparse.nn.NMMask` always masks the full, unsharded weight.

**Masks are replicated.** The mask is a plain persistent bool buffer, which FSDP2 leaves alone
(it shards parameters only), so every rank holds the whole mask: the forward needs it whole, the
state dict and DCP carry it as an ordinary tensor, and a checkpoint moves between FSDP2 and a
single process unchanged.

**Refresh.** Dim 0 of a 2-D or conv weight is the rows of its matrix view (``layout.py``): a
row-wise group lies inside one row and a transposable m x m tile inside m consecutive rows. So

* *shard-local* (row-wise always; transposable when ``ceil(rows / k)`` is a multiple of m or one
  rank holds every row, so no shard boundary cuts a tile): each rank solves the masks of its own rows from its local
  shard and the ranks all-gather the result, packed 8 entries per byte (1/32 of the bytes of
  gathering an fp32 weight, and 1/k of the solving work per rank). Tiles and groups are solved
  independently and deterministically, so the mask equals the single-process one.
* *gathered* (a shard boundary cuts a tile, unstructured per-tensor top-k, a 1-D weight, or a
  placement other than ``Shard(0)``): every rank all-gathers the weight (``full_tensor()``) and
  solves the whole mask; each layer warns once saying why.

Both paths are collectives: every rank of the mesh must refresh (training's forward pre-hook and
``update_masks_`` do, since every rank runs them). With HSDP (a 2-D mesh: ``Replicate`` plus
``Shard(0)``) the shard-local all-gather runs over the shard dimension's group only (not tested
here: two processes cannot make a useful 2-D mesh).
"""

from __future__ import annotations

import math
import sys
import warnings
import weakref
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from .. import errors
from ..pattern import NMPattern

__all__ = ["RefreshPlan", "plan_for", "is_dtensor", "sharded_mask", "full_weight", "refuse_sharded"]

SHARD_LOCAL = "shard-local"
GATHERED = "gathered"
UNSHARDED = "unsharded"

# Layers already warned about a gathered refresh (keyed by their NMMask, so a rebuilt model warns again).
_warned: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()
# Error classes a failing rank can name to the others through the status byte of the mask all-gather.
_ERROR_CODES = (
    errors.PatternError, errors.ShapeError, errors.ScoreError, errors.MethodError,
    errors.MaskError, errors.ArgumentError,
)


@dataclass(frozen=True)
class RefreshPlan:
    """How a weight's mask is refreshed: ``mode`` is ``"shard-local"``, ``"gathered"`` or
    ``"unsharded"`` (a plain tensor: solved directly); ``reason`` says why."""

    mode: str
    reason: str


def is_dtensor(tensor) -> bool:
    """True for a ``DTensor`` (checked without importing ``torch.distributed.tensor``: if it was
    never imported, no DTensor can exist)."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(tensor, module.DTensor)


def plan_for(weight: torch.Tensor, pattern, group_dim: Optional[int] = None) -> RefreshPlan:
    """The refresh plan of one weight; depends only on global facts (shape, placements, mesh
    sizes), so every rank reaches the same plan and joins the same collectives.

    ``group_dim=0`` (HF ``Conv1D``, stored ``(in, out)``): row-wise groups run along the sharded
    axis itself, so a shard boundary may cut a group; such weights are gathered. Transposable
    tiles are m x m either way, so the tile rule below still holds for them."""
    if not is_dtensor(weight):
        return RefreshPlan(UNSHARDED, "plain tensor (not sharded, or unsharded by FSDP right now)")
    if not isinstance(pattern, NMPattern):
        return RefreshPlan(GATHERED, "unstructured top-k ranks the whole tensor")
    shard = _row_shard(weight)
    if isinstance(shard, str):
        return RefreshPlan(GATHERED, shard)
    _, parts = shard
    if group_dim == 0 and not pattern.transposable:
        return RefreshPlan(GATHERED, "its groups run along dim 0 (HF Conv1D, stored (in, out)), the axis FSDP2 shards")
    rows = weight.shape[0]
    chunk = -(-rows // parts)
    if pattern.transposable and not shards_hold_whole_tiles(rows, parts, pattern.m):
        return RefreshPlan(
            GATHERED, f"shards of {chunk} rows ({rows} rows over {parts} ranks) cut its {pattern.m}x{pattern.m} tiles"
        )
    what = f"{chunk} rows per rank hold whole {pattern.m}x{pattern.m} tiles" if pattern.transposable else "row-wise groups lie within one row"
    return RefreshPlan(SHARD_LOCAL, what)


def shards_hold_whole_tiles(rows: int, parts: int, m: int) -> bool:
    """Whether every ``torch.chunk`` shard of ``rows`` rows over ``parts`` ranks (FSDP2's dim-0
    split: ``ceil(rows / parts)`` each, the last ones shorter or empty) starts on a tile boundary
    and ends on one or at the last row. Offsets are multiples of the chunk, so that is: the
    chunk is a multiple of m, or one shard holds every row."""
    chunk = -(-rows // parts)
    return chunk >= rows or chunk % m == 0


@torch.no_grad()
def sharded_mask(weight: torch.Tensor, owner: nn.Module, solve: Callable) -> torch.Tensor:
    """The full (replicated) mask of a sharded ``weight`` for the NMMask ``owner``; a collective.

    ``owner`` supplies ``pattern``, ``layer_name`` and the ``mask`` buffer; ``solve(tensor)``
    returns the mask of a plain tensor (the caller's solver call, passed in so that this module
    needs nothing above it). See the module docstring for the two paths.
    """
    weight = weight.detach()
    plan = plan_for(weight, owner.pattern, getattr(owner, "group_dim", None))
    if plan.mode == SHARD_LOCAL:
        return _shard_local_mask(weight, owner, solve)
    if owner not in _warned:
        _warned.add(owner)
        warnings.warn(
            f"nmsparse: layer {owner.layer_name!r}: mask refresh all-gathers the dense weight "
            f"({tuple(weight.shape)}) on every rank because {plan.reason}; shard-local refresh needs "
            f"FSDP2's Shard(0) with whole tiles per rank. Warned once per layer.",
            stacklevel=3,
        )
    return solve(weight.full_tensor())


def full_weight(weight: torch.Tensor) -> torch.Tensor:
    """The whole tensor: ``full_tensor()`` (a collective) for a DTensor, else ``weight`` itself."""
    return weight.full_tensor() if is_dtensor(weight) else weight


def refuse_sharded(model: nn.Module, where: str) -> None:
    """Raise if any parameter of ``model`` is a DTensor: ``where`` cannot run on a sharded model."""
    for name, param in model.named_parameters():
        if is_dtensor(param):
            raise errors.ShapeError(
                f"{where}: parameter {name!r} is sharded (a DTensor from FSDP2's fully_shard); "
                f"{where} needs whole weights. Gather a full state dict (get_model_state_dict with "
                f"StateDictOptions(full_state_dict=True)), load it into an unsharded sparsified copy, "
                f"and call {where} there."
            )


def _row_shard(weight):
    """(mesh dim, number of shards) of a weight sharded along dim 0 only, else why not."""
    if weight.ndim < 2:
        return "a 1-D weight is a single row: its shards cut the row's groups"
    sharded = [(i, p) for i, p in enumerate(weight.placements) if not p.is_replicate()]
    if len(sharded) != 1 or not sharded[0][1].is_shard(0) or type(sharded[0][1]).__name__ != "Shard":
        return f"placements {tuple(weight.placements)} are not one Shard(0) (plus Replicate)"
    mesh_dim = sharded[0][0]
    return mesh_dim, weight.device_mesh.size(mesh_dim)


def _shard_local_mask(weight, owner, solve) -> torch.Tensor:
    mesh_dim, parts = _row_shard(weight)
    mesh = weight.device_mesh
    rows, shape = weight.shape[0], tuple(weight.shape)
    row_len = math.prod(shape[1:])  # from the shape: indexing a DTensor row would all-gather it
    chunk = -(-rows // parts)
    index = mesh.get_local_rank(mesh_dim)
    local = weight.to_local()
    expected = max(0, min(chunk, rows - index * chunk))
    if local.shape[0] != expected:
        raise RuntimeError(
            f"nmsparse: layer {owner.layer_name!r}: rank {index} holds {local.shape[0]} rows of {rows}, "
            f"expected {expected} (torch.chunk sharding); please report this FSDP2 layout."
        )
    row_bytes = -(-row_len // 8)
    # One all-gather carries every rank's packed rows plus a status byte, so a rank whose solve
    # fails (NaN in its rows) stops the others instead of leaving them in a collective.
    # The buffers live with the mask (FSDP2 moves buffers to the mesh's device), which is where
    # the process group communicates even if the sharded weight is offloaded to the CPU.
    device = owner.mask.device
    send = torch.zeros(chunk * row_bytes + 1, dtype=torch.uint8, device=device)
    error = None
    if expected:
        try:
            part = solve(local)
            send[: expected * row_bytes] = _pack_rows(part.reshape(expected, row_len)).flatten().to(device)
        except Exception as err:  # any failure must still join the all-gather, or the others hang
            error = err
            send[-1] = 1 + _error_code(err)
    recv = torch.empty(parts * send.numel(), dtype=torch.uint8, device=device)
    torch.distributed.all_gather_single(recv, send, group=mesh.get_group(mesh_dim))
    recv = recv.view(parts, -1)
    status = recv[:, -1]
    if error is not None:
        raise error
    if bool(status.any()):
        bad = int(torch.nonzero(status)[0])
        code = int(status[bad]) - 1
        cls = _ERROR_CODES[code] if code < len(_ERROR_CODES) else RuntimeError
        raise cls(f"layer {owner.layer_name!r}: the mask refresh failed on rank {bad} of the shard group (see its error).")
    packed = recv[:, :-1].reshape(parts * chunk, row_bytes)[:rows]
    return _unpack_rows(packed, row_len).reshape(shape)


def _error_code(err: Exception) -> int:
    # The error's library class, else "other" (a RuntimeError on the other ranks).
    matches = [i for i, cls in enumerate(_ERROR_CODES) if isinstance(err, cls)]
    return matches[-1] if matches else len(_ERROR_CODES)


_BITS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def _pack_rows(mask: torch.Tensor) -> torch.Tensor:
    """(rows, n) bool -> (rows, ceil(n/8)) uint8, bit j of byte b = entry 8b + j."""
    rows, n = mask.shape
    nbytes = -(-n // 8)
    padded = torch.zeros(rows, nbytes * 8, dtype=torch.uint8, device=mask.device)
    padded[:, :n] = mask
    return (padded.view(rows, nbytes, 8) * _BITS.to(mask.device)).sum(-1, dtype=torch.uint8)


# Row b of the table: the 8 entries that byte value b stands for (bit j = entry j).
_UNPACK = ((torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1).bool()


def _unpack_rows(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`_pack_rows`, cropped to ``n`` entries per row (one table lookup per byte)."""
    table = _UNPACK.to(packed.device)
    bits = table.index_select(0, packed.reshape(-1).int())
    return bits.reshape(packed.shape[0], packed.shape[1] * 8)[:, :n]
