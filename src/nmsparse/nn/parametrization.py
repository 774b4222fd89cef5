"""``NMMask``: the one mask container of the library.

Every mask nmsparse attaches - from :func:`nmsparse.sparsify_`, the Sparse-IFT transforms, the
one-shot pruners or :func:`nmsparse.nn.attach_mask_` - is an ``NMMask`` parametrization
(``torch.nn.utils.parametrize``). The dense weight lives at
``<layer>.parametrizations.<name>.original`` and ``<layer>.<name>`` is computed through the mask.

State-dict keys under ``<layer>.parametrizations.<name>.0.`` (one layout for every entry point):

* ``mask`` - bool, the weight's shape;
* ``last_refresh`` - the training pass (step) of the last mask change;
* ``step_count`` - the training-pass counter that drives the update schedule, so a resumed run
  continues its schedule instead of restarting at 0;
* ``pattern_code`` - the pattern, int64 ``(n, m, transposable)`` (unstructured: the density as a fraction).

All are tensors (no ``_extra_state``), so state dicts stay tensor-only.

Loading checks the checkpoint against the model: a mask made for another pattern (a 4:8T
checkpoint into a 2:4T model) raises :class:`~nmsparse.errors.CheckpointError` naming both
patterns, and a loaded mask must obey the model's pattern.
"""

from __future__ import annotations

from fractions import Fraction
from typing import List, Optional, Union

import torch
from torch import nn

from ..diversity import kept_count
from ..errors import CheckpointError, NMSparseError, ShapeError
from ..masks import find_mask, is_valid_mask
from ..masks._inputs import prepare_scores
from ..masks.methods import resolve_method
from ..masks.topk import topk_mask
from ..pattern import MAX_GROUP, NMPattern
from . import distributed
from .ste import masked, masked_weight_ste

GRADIENTS = ("ste", "srste", "masked")
UPDATES = ("refresh", "static", "set", "rigl")


def resolve_solver(pattern: Union[NMPattern, float], method: Optional[str], where: str) -> str:
    """The solver that actually runs: ``resolve_method`` for N:M ("exact" on row-wise → "topn"),
    ``"topk"`` for an unstructured density."""
    if isinstance(pattern, NMPattern):
        return resolve_method(pattern, method, where)
    if method not in (None, "exact", "topk"):  # as prune_ and prune_state_dict: top-k is the exact method here
        from ..errors import MethodError

        raise MethodError(f"{where}: unstructured densities keep the top-k per tensor (method None, 'exact' or 'topk'), "
                          f"got {method!r}; drop method= or pass 'topk'.")
    return "topk"


def describe(pattern: Union[NMPattern, float]) -> str:
    """``"2:4T"`` or ``"unstructured 50%"`` (the unstructured form keeps full float precision)."""
    return str(pattern) if isinstance(pattern, NMPattern) else f"unstructured {float(pattern)!r}"


class NMMask(nn.Module):
    """Apply an N:M, transposable N:M or unstructured mask to a weight.

    Parameters
    ----------
    pattern : NMPattern or float
        The N:M pattern (n KEPT per group of m), or a density in (0, 1] for an unstructured mask.
    method : str or None
        Solver for refreshes; stored resolved (``"exact"`` on a row-wise pattern is ``"topn"``).
    mask : torch.Tensor
        Initial bool mask, the weight's shape.
    gradient : {"ste", "srste", "masked"}
        ``"ste"``: the gradient of ``W ⊙ S`` goes straight to the dense W (pruned weights keep
        learning and can come back at a refresh). ``"srste"``: plus ``srste_decay · (1 − S) ⊙ W``
        (Zhou et al. 2021). ``"masked"``: pruned weights get no gradient (static and RigL/SET
        sparse training).
    update : {"refresh", "static", "set", "rigl"}
        How the mask changes during training; see :mod:`nmsparse.nn.policies`.
    update_every : int
        Training passes between updates (ΔT).
    total_steps, drop_fraction, stop_fraction : SET/RigL schedule (cosine-annealed drop fraction).
    name : str
        The parameter's name in the model (error messages, ``summary``).
    group_dim : int or None
        The axis groups run along: None = the default layout (:mod:`nmsparse.layout`), ``0`` for a
        Hugging Face ``Conv1D`` weight stored ``(in, out)`` (:func:`nmsparse.layout.group_dim_of`).
        Every solve, check and refresh of this mask uses it.

    Attributes
    ----------
    steps : int
        Training forward passes counted (saved in the state dict).
    capture_dense_grad : bool
        Record ``∂L/∂(W ⊙ S)`` at every position into ``dense_grad`` during backward (RigL).
    history : list of dict
        SET/RigL updates of this mask: step, fraction, regrown.
    """

    def __init__(
        self,
        pattern: Union[NMPattern, float],
        method: Optional[str],
        mask: torch.Tensor,
        *,
        gradient: str = "ste",
        srste_decay: float = 2e-4,
        update: str = "refresh",
        update_every: int = 100,
        total_steps: Optional[int] = None,
        drop_fraction: float = 0.3,
        stop_fraction: float = 0.75,
        name: str = "",
        group_dim: Optional[int] = None,
    ):
        super().__init__()
        self.pattern = pattern
        self.layer_name = name
        self.group_dim = group_dim
        self.method = resolve_solver(pattern, method, f"layer {name!r}")
        self.gradient = gradient
        self.srste_decay = float(srste_decay)
        self.update = update
        self.update_every = int(update_every)
        self.total_steps = total_steps
        self.drop_fraction = float(drop_fraction)
        self.stop_fraction = float(stop_fraction)
        self.register_buffer("mask", mask.to(torch.bool).clone(), persistent=True)
        self.register_buffer("last_refresh", torch.zeros((), dtype=torch.long, device=mask.device), persistent=True)
        self.register_buffer("step_count", torch.zeros((), dtype=torch.long, device=mask.device), persistent=True)
        self.register_buffer("pattern_code", encode_pattern(pattern), persistent=True)
        self.steps = 0
        self.refreshes = 0
        self.last_changed = 0
        self.capture_dense_grad = False
        self.dense_grad: Optional[torch.Tensor] = None
        self.history: List[dict] = []
        self.driver_key: Optional[int] = None  # which MaskDriver counts this mask's passes

    @property
    def decay(self) -> float:
        """The SR-STE decay the backward pass applies: ``srste_decay`` under ``gradient="srste"``, else 0."""
        return self.srste_decay if self.gradient == "srste" else 0.0

    # -- forward -------------------------------------------------------------------------------
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.gradient == "masked":
            out = masked(weight, self.mask)
        else:
            out = masked_weight_ste(weight, self.mask, self.decay)
        if self.capture_dense_grad and out.requires_grad:
            out.register_hook(self._store_dense_grad)
        return out

    def _store_dense_grad(self, grad: torch.Tensor) -> None:
        # A weight used twice in one pass (tied, or read twice by its layer) gets the sum: the
        # gradient of the loss w.r.t. the one masked weight. The driver clears it before each pass.
        g = grad.detach()
        self.dense_grad = g.clone() if self.dense_grad is None else self.dense_grad + g

    # -- the one refresh -----------------------------------------------------------------------
    @torch.no_grad()
    def solve(self, source: torch.Tensor, *, keep: Optional[int] = None, method: Optional[str] = None) -> torch.Tensor:
        """The mask keeping the largest ``|source|`` under this mask's pattern (:func:`compute_mask`).

        Unstructured masks keep ``keep`` entries (default: as many as now, so the count never drifts).
        """
        if keep is None and not isinstance(self.pattern, NMPattern):
            keep = int(self.mask.sum())

        def solve(tensor: torch.Tensor) -> torch.Tensor:
            return compute_mask(tensor.detach(), self.pattern, method or self.method, self.layer_name, keep=keep,
                                dim=self.group_dim)

        # --- FSDP2 seam: a DTensor shard is solved shard-locally or gathered (nn/distributed.py).
        if distributed.is_dtensor(source):
            return distributed.sharded_mask(source, self, solve)
        # --- end FSDP2 seam
        return solve(source)

    @torch.no_grad()
    def refresh_(self, source: torch.Tensor, step: Optional[int] = None, *, keep: Optional[int] = None,
                 method: Optional[str] = None) -> int:
        """Recompute the mask from ``source`` (the dense weight, or SET/RigL's regrow scores) and
        install it in place; return how many entries changed.

        Every mask change in the library goes through here (refresh from dense, SET, RigL,
        ``update_masks_``), so a distributed or compiled variant needs to wrap this one method.
        """
        new = self.solve(source, keep=keep, method=method).to(self.mask.device)
        changed = int(torch.count_nonzero(new != self.mask))
        self.mask.copy_(new)  # in place: the buffer's identity (and torch.compile's view of it) stays
        self.last_refresh.fill_(self.steps if step is None else int(step))
        self.refreshes += 1
        self.last_changed = changed
        return changed

    # -- checkpoints ---------------------------------------------------------------------------
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        # The pass counter is a Python int during training (no device op per pass); it is written
        # to its buffer only when a state dict is taken.
        self.step_count.fill_(int(self.steps))
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # Checked before this mask's tensors are copied: a refused mask is never installed. Models
        # masked by sparsify_ / transform / attach_mask_ also check every mask before anything loads
        # (a load pre-hook, nn.entries.guard_loads), so a refused checkpoint leaves them untouched.
        self.check_incoming(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        self.steps = int(self.step_count)

    def check_incoming(self, state_dict, prefix: str) -> None:
        """Raise :class:`CheckpointError` (one line, naming the key and the fix) unless every entry of
        ``state_dict`` under ``prefix`` fits this mask: tensors of this mask's shapes and dtypes, a
        ``pattern_code`` that decodes to this mask's pattern, a bool mask that obeys it, and
        non-negative integer counters. Runs before any tensor is copied."""
        where = f"load_state_dict: layer {self.layer_name!r}"
        shapes = {"pattern_code": (3,), "mask": tuple(self.mask.shape), "last_refresh": (), "step_count": ()}
        for name, shape in shapes.items():
            if prefix + name in state_dict:
                check_tensor_entry(state_dict[prefix + name], prefix + name, shape, where)
        code = state_dict.get(prefix + "pattern_code")
        if code is not None:
            theirs = decode_checked(code, prefix + "pattern_code", where)
            if not _same_pattern(theirs, code, self.pattern):
                raise CheckpointError(
                    f"{where}: the checkpoint's mask was made for pattern {describe(theirs)}, but this model's mask "
                    f"is {describe(self.pattern)}; sparsify the model with that pattern before loading, or {PLAIN_FIX}."
                )
        for name in ("last_refresh", "step_count"):
            value = state_dict.get(prefix + name)
            if value is None:
                continue
            if not _is_integer(value):
                raise CheckpointError(f"{where}: {prefix + name!r} is a training-pass count, an integer tensor, but got "
                                      f"dtype {value.dtype}; the checkpoint was edited. Restore the saved value, or {PLAIN_FIX}.")
            if int(value) < 0:
                raise CheckpointError(f"{where}: {prefix + name!r} is a training-pass count (>= 0), got {int(value)}; the "
                                      f"checkpoint was edited. Restore the saved value, or {PLAIN_FIX}.")
        mask = state_dict.get(prefix + "mask")
        if mask is None:
            return
        if mask.dtype != torch.bool:
            raise CheckpointError(f"{where}: {prefix + 'mask'!r} must be a bool tensor, got dtype {mask.dtype}; it was "
                                  f"edited or converted. Save masks as they are (model.state_dict()), or {PLAIN_FIX}.")
        if isinstance(self.pattern, NMPattern) and not is_valid_mask(mask, self.pattern, dim=self.group_dim):
            raise CheckpointError(
                f"{where}: the checkpoint's mask ({prefix + 'mask'!r}) does not obey this model's pattern {self.pattern}; "
                f"it was made for another pattern or edited. Load it into a model sparsified with the checkpoint's "
                f"pattern, or {PLAIN_FIX}."
            )

    def describe_pattern(self) -> str:
        if isinstance(self.pattern, NMPattern):
            return str(self.pattern)
        return f"unstructured {self.pattern:.0%}"

    def extra_repr(self) -> str:
        return (f"pattern={self.describe_pattern()}, method={self.method}, gradient={self.gradient}, "
                f"update={self.update}" + ("" if self.group_dim is None else f", group_dim={self.group_dim}"))


def encode_pattern(pattern: Union[NMPattern, float]) -> torch.Tensor:
    """The pattern as an int64 (3,) tensor for the state dict: ``(n, m, transposable)`` for N:M,
    ``(numerator, denominator, 2)`` of the density for unstructured masks.

    A tensor rather than ``_extra_state``, so every state dict stays tensors only (safetensors,
    ``torch.load(weights_only=True)``, tools that iterate tensors); integer, so ``model.half()``
    leaves it exact.
    """
    if isinstance(pattern, NMPattern):
        return torch.tensor([pattern.n, pattern.m, int(pattern.transposable)], dtype=torch.long)
    frac = Fraction(float(pattern)).limit_denominator(2**40)
    return torch.tensor([frac.numerator, frac.denominator, 2], dtype=torch.long)


def decode_pattern(code: torch.Tensor) -> Union[NMPattern, float]:
    a, b, kind = (int(v) for v in code.reshape(-1)[:3].tolist())
    if kind == 2:
        return a / b
    return NMPattern(a, b, transposable=bool(kind))


PLAIN_FIX = ("load the checkpoint's plain weights (nmsparse.nn.plain_state_dict + load_plain_state_dict_) and let the "
             "masks be recomputed")
_INTEGERS = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _is_integer(t: torch.Tensor) -> bool:
    return t.dtype in _INTEGERS


def check_tensor_entry(value, key: str, shape: tuple, where: str) -> None:
    """A checkpoint entry must be a tensor with values and the model's shape (before anything is copied)."""
    if not torch.is_tensor(value):
        raise CheckpointError(f"{where}: {key!r} must be a tensor, got {type(value).__name__}; the checkpoint was edited "
                              f"or built by hand. Load a state dict saved with model.state_dict(), or {PLAIN_FIX}.")
    if value.device.type == "meta":
        raise CheckpointError(f"{where}: {key!r} is a meta tensor, which holds no values; load a checkpoint with real "
                              f"tensors (torch.load(path, weights_only=True)).")
    if tuple(value.shape) != tuple(shape):
        raise CheckpointError(f"{where}: {key!r} has shape {tuple(value.shape)}, but this model's has shape {tuple(shape)}; "
                              f"the checkpoint was saved from another model or edited. Load it into the model it was saved "
                              f"from, or {PLAIN_FIX}.")


def decode_checked(code: torch.Tensor, key: str, where: str) -> Union[NMPattern, float]:
    """:func:`decode_pattern` of a checkpoint's ``pattern_code`` (3 entries), or a one-line CheckpointError saying why it is
    not a pattern: integers ``(n, m, kind)`` with kind 0 (row-wise) / 1 (transposable) and 1 <= n <= m, or kind 2
    (unstructured) with a density ``n / m`` in [0, 1]."""
    fix = f"the checkpoint was edited or damaged. Restore it, or {PLAIN_FIX}"
    if not _is_integer(code):
        raise CheckpointError(f"{where}: {key!r} must hold integers (n, m, kind), got dtype {code.dtype}; {fix}.")
    a, b, kind = (int(v) for v in code.reshape(-1).tolist())
    shown = [a, b, kind] if max(abs(a), abs(b), abs(kind)) < 10**20 else "huge values"
    if kind not in (0, 1, 2):
        raise CheckpointError(f"{where}: {key!r} = {shown}: its kind {kind} is not 0 (row-wise), 1 (transposable) or "
                              f"2 (unstructured); {fix}.")
    if kind == 2 and not (b >= 1 and 0 <= a <= b):
        raise CheckpointError(f"{where}: {key!r} = {shown} is not an unstructured density: need 0 <= numerator <= "
                              f"denominator, denominator >= 1; {fix}.")
    if kind != 2 and not (1 <= a <= b <= MAX_GROUP):
        raise CheckpointError(f"{where}: {key!r} = {shown} is not an N:M pattern: need 1 <= n <= m <= 2**63 - 1; {fix}.")
    return a / b if kind == 2 else NMPattern(a, b, transposable=bool(kind))


def _same_pattern(theirs: Union[NMPattern, float], code: torch.Tensor, ours: Union[NMPattern, float]) -> bool:
    if isinstance(theirs, NMPattern) or isinstance(ours, NMPattern):
        return theirs == ours
    return torch.equal(code.cpu().long().reshape(-1), encode_pattern(ours))  # densities: the exact fraction


def compute_mask(
    weight: torch.Tensor, pattern: Union[NMPattern, float], method: Optional[str], name: str, *,
    keep: Optional[int] = None, dim: Optional[int] = None,
) -> torch.Tensor:
    """The one mask solver call of ``nn``: keep the largest ``|weight|`` under ``pattern``.

    N:M patterns run ``find_mask`` (ragged edges padded: a partial group keeps at most n).
    ``dim`` is the grouped axis (None: the default layout; 0 for HF ``Conv1D``).
    Unstructured densities keep ``keep`` entries (default ``floor(density·numel + 1/2)``), ties to
    the lower flat index as in :func:`nmsparse.unstructured_mask`. Errors name the layer.
    """
    if distributed.is_dtensor(weight):  # FSDP2 seam: sparsify_ after fully_shard
        raise ShapeError(
            f"layer {name!r}: the weight is a DTensor (sharded by FSDP2's fully_shard, or by distribute_tensor / "
            "parallelize_module); call sparsify_ on the plain model, then fully_shard (or distribute) it."
        )
    try:
        if isinstance(pattern, NMPattern):
            return find_mask(weight, pattern, method=method, dim=dim, pad=True)
        k = kept_count(weight.numel(), float(pattern)) if keep is None else int(keep)
        return topk_mask(prepare_scores(weight.detach(), None, "unstructured mask"), k)
    except NMSparseError as err:
        raise type(err)(f"layer {name!r}: {err}") from None
