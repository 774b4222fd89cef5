"""Which weights get pruned, and what happens to a weight whose shape does not fit the pattern.

Default rules (both for checkpoints and for :func:`nmsparse.oneshot.adaprune`):

* pruned: floating-point tensors with 2 dimensions (``nn.Linear``, ``(out, in)``) or 3-5
  dimensions (conv kernels ``(out, in, k...)``);
* left dense: 1-D tensors (biases, norm scales), integer/bool tensors (counters, masks), and
  by name embedding tables and patch-embedding stems (:func:`is_embedding_name`) and
  normalisation layers (``norm``, ``ln_``, ``bn``).

Embedding tables are recognised by the *module that owns the tensor* (the name's component before
``weight``/``bias``), matched in full, never by substring: ``embed_tokens``, ``embed_positions``,
``embed_in``, ``embed``, ``embeddings``/``embedding``, ``wte``, ``wpe``, ``shared`` (T5),
``relative_attention_bias`` (T5), and any ``*_embedding(s)`` (``word_embeddings``,
``position_embeddings``, ``token_type_embeddings``, ``tok_embeddings``, ``token_embedding``, ...),
plus a tensor held directly by such a module (ViT ``embeddings.cls_token``) or named like one
(timm ``pos_embed``). A ``patch_embed*`` module anywhere in the path is an input stem and left
dense too. Projections that merely sit near an embedding stay prunable: MoE shared experts
(``mlp.shared_expert.up_proj``, ``shared_experts.down_proj``), ALBERT's
``embedding_hidden_mapping_in``, GPT-NeoX's output ``embed_out``, diffusers'
``time_embedding.linear_1``, and ``lm_head``.

``include`` and ``exclude`` follow the library's one selection rule (:mod:`nmsparse.selection`): a
regex or a list of regexes, each matched **in full** against the tensor's full name
(``"encoder.0.fc1.weight"``) and against its module name (the same without a final ``.weight`` /
``.bias``: ``"encoder.0.fc1"``). ``exclude="fc2"`` leaves ``fc2.weight`` dense but not
``fc20.weight``; write ``"fc2.*"`` for a prefix. ``include`` replaces the name rules: every
2-D..5-D float tensor it matches is pruned, embeddings included. ``exclude`` then leaves matching
names dense. A tensor whose dimensions do not fit the
pattern (``ragged``: the grouped axis, or for transposable patterns the row count, is not a
multiple of m) is handled by ``ragged``: ``"error"`` (default; nothing is written, and the
message names the layer and the fixes), ``"skip"`` (left dense, reason in the table) or ``"pad"``
(pruned with padding: a partial group keeps at most n, see :func:`nmsparse.find_mask`).

Where groups run: along the last axis of a 2-D weight (``nn.Linear`` stores ``(out, in)``), except
for tensors named by ``dim0`` (regexes, matched like ``include``), grouped along dim 0: Hugging
Face's ``Conv1D`` (GPT-2 family) stores ``(in, out)``. A checkpoint carries no module types, so
for a Hugging Face folder whose ``config.json`` ``model_type`` is a Conv1D family
(:data:`CONV1D_FAMILIES`) the default is :data:`CONV1D_NAMES`; a bare file needs ``dim0`` given.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Tuple

import torch

from ..errors import ShapeError
from ..layout import matrix_layout
from ..pattern import NMPattern
from ..errors import ConvertError
from ..selection import NameFilter, Patterns

__all__ = ["Selector", "RAGGED_CHOICES", "ragged_problem", "is_embedding_name", "WeightPlan", "plan_weight",
           "CONV1D_FAMILIES", "CONV1D_NAMES", "default_dim0"]

# transformers model types whose projections are Conv1D (stored (in, out)); in each of them every
# Conv1D is one of these modules and no other layer has these names (checked in transformers' sources).
CONV1D_FAMILIES = ("gpt2", "openai-gpt", "imagegpt", "decision_transformer")
CONV1D_NAMES = r"(.*\.)?(c_attn|q_attn|c_proj|c_fc)"


def default_dim0(model_type: Optional[str]) -> Optional[str]:
    """The ``dim0`` rule for a Hugging Face ``model_type``: :data:`CONV1D_NAMES` for a Conv1D family."""
    return CONV1D_NAMES if model_type in CONV1D_FAMILIES else None

RAGGED_CHOICES = ("error", "skip", "pad")
# Full-match on one name component (see the module docstring); never a substring of the whole name.
_EMBEDDING_OWNER = re.compile(
    r"embed|embed_tokens|embed_positions|embed_in|embeddings?|wte|wpe|shared|relative_attention_bias|\w+_embeddings?",
    re.I,
)
_EMBEDDING_PARAM = re.compile(r"(\w+_)?(pos|position|tok|token|cls|class)_?embed(ding)?s?", re.I)
_PATCH_STEM = re.compile(r"patch_embed\w*", re.I)
_PARAM_LEAVES = ("weight", "bias")
_NORM = re.compile(r"(norm|(^|[._])ln(_\w*|\d*)([._]|$)|(^|[._])bn\d*([._]|$))", re.I)
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class Selector:
    """Decide, per tensor name and shape, whether it is pruned (``None``) or why it is left dense.

    Parameters
    ----------
    include, exclude : str or list of str, optional
        Regular expressions matched in full against the tensor name and its module name (see the
        module docstring); an invalid one raises :class:`~nmsparse.errors.PatternError` naming ``where``.
    where : str
        Caller's name for error messages.
    dim0 : str or list of str, optional
        Tensors (or their modules) grouped along dim 0 instead of the last axis (HF ``Conv1D``).
    """

    def __init__(self, include: Patterns = None, exclude: Patterns = None, where: str = "prune", dim0: Patterns = None):
        self._filter = NameFilter(include, exclude, where=where)
        self._dim0 = NameFilter(dim0, None, where=f"{where} (dim0)")

    def group_dim(self, name: str, shape: Sequence[int]) -> Optional[int]:
        """``0`` for a 2-D tensor named by ``dim0``, else ``None`` (the default layout)."""
        return 0 if len(shape) == 2 and self._dim0.include and self._dim0.included(module_name(name), name) else None

    def skip_reason(self, name: str, shape: Sequence[int], dtype: torch.dtype) -> Optional[str]:
        """``None`` if the tensor is to be pruned, else a short reason it stays dense."""
        nd = len(shape)
        if dtype not in _FLOATS:
            return f"dense: {str(dtype).replace('torch.', '')} tensor (not floating point)"
        if nd < 2:
            return "dense: 1-D (bias / norm / scale), left dense by default"
        if nd > 5:
            return f"dense: {nd}-D, neither a matrix nor a conv kernel"
        if any(s == 0 for s in shape):
            return "dense: empty tensor"
        module = module_name(name)
        if self._filter.include:
            if not self._filter.included(module, name):
                return "dense: not matched by --include"
        elif is_embedding_name(name):
            return "dense: embedding, left dense by default (prune it with --include)"
        elif _NORM.search(name):
            return "dense: normalisation layer, left dense by default"
        if self._filter.excluded(module, name):
            return "dense: matched by --exclude"
        return None


def module_name(tensor_name: str) -> str:
    """A checkpoint tensor's module name: its name without a final ``.weight`` / ``.bias``."""
    for suffix in (".weight", ".bias"):
        if tensor_name.endswith(suffix):
            return tensor_name[: -len(suffix)]
    return tensor_name


def is_embedding_name(name: str) -> bool:
    """True if the tensor ``name`` is an embedding table or a patch-embedding stem (left dense by default).

    Examples
    --------
    >>> is_embedding_name("model.embed_tokens.weight"), is_embedding_name("model.layers.0.mlp.shared_expert.up_proj.weight")
    (True, False)
    """
    parts = name.split(".")
    if "parametrizations" in parts:  # "fc.parametrizations.weight.original" is fc's weight
        parts = parts[: parts.index("parametrizations")] + ["weight"]
    leaf, owner = parts[-1], (parts[-2] if len(parts) > 1 else "")
    if leaf.lower() not in _PARAM_LEAVES and (_EMBEDDING_PARAM.fullmatch(leaf) or _EMBEDDING_OWNER.fullmatch(leaf)):
        return True  # a bare parameter named like a table (timm "pos_embed")
    if owner and _EMBEDDING_OWNER.fullmatch(owner):
        return True  # the owning module is a table, or holds the table parameters (ViT "embeddings")
    return any(_PATCH_STEM.fullmatch(part) for part in parts[:-1])


def ragged_problem(name: str, shape: Tuple[int, ...], pattern: NMPattern, dim: Optional[int] = None) -> Optional[str]:
    """Why ``pattern`` does not fit a weight of ``shape`` grouped along ``dim`` (the grouped axis or,
    if transposable, the row count is not a multiple of m), or ``None`` if it fits."""
    layout = matrix_layout(shape, dim, where=name)
    if not layout.is_ragged(pattern.m, pattern.transposable):
        return None
    if layout.group_len % pattern.m:
        return (
            f"pattern {pattern} groups it {layout.describe()} in chunks of {pattern.m}, "
            f"but it has {layout.group_len} there"
        )
    return (
        f"pattern {pattern} cuts its {layout.rows}x{layout.cols} matrix view into {pattern.m}x{pattern.m} tiles, "
        f"but {layout.rows} rows is not a multiple of {pattern.m}"
    )


@dataclass(frozen=True)
class WeightPlan:
    """What happens to one tensor under a pattern; the one decision shared by ``prune`` and ``report``.

    ``reason`` is why it stays dense (``None``: it is pruned / checked); ``problem`` is why its
    shape does not fit the pattern (:func:`ragged_problem`; ``None``: it fits); ``pad`` says it is
    solved padded (``ragged="pad"`` and a problem); ``dim`` is the grouped axis (``0`` for a
    ``dim0`` tensor such as HF ``Conv1D``, ``None``: the default layout).
    """

    reason: Optional[str]
    problem: Optional[str] = None
    pad: bool = False
    dim: Optional[int] = None


def plan_weight(
    selector: "Selector", name: str, shape: Tuple[int, ...], dtype: torch.dtype, pattern: NMPattern,
    ragged: str = "error", tied: Optional[dict] = None,
) -> WeightPlan:
    """Decide whether tensor ``name`` is pruned (by ``prune``) and checked (by ``report``), and how.

    Selection first (:meth:`Selector.skip_reason`), then tied storage, then the fit of its shape:
    under ``ragged="skip"`` a weight that does not fit stays dense; under ``"pad"`` it is padded;
    under ``"error"`` the plan carries the problem and the caller raises (``prune``) or reports the
    weight as breaking the pattern (``report``).
    """
    reason = selector.skip_reason(name, shape, dtype)
    if reason is None and tied and name in tied:
        reason = f"dense: tied weights: shares storage with {tied[name][0]} (pruning one copy would untie them)"
    if reason is not None:
        return WeightPlan(reason)
    dim = selector.group_dim(name, shape)
    if not isinstance(pattern, NMPattern):  # an unstructured density: top-k of the tensor, any shape fits
        return WeightPlan(None, None, False, dim)
    problem = ragged_problem(name, shape, pattern, dim)
    if problem is not None and ragged == "skip":
        return WeightPlan(f"dense: shape does not fit {pattern} (--ragged skip): {problem}", problem, dim=dim)
    return WeightPlan(None, problem, problem is not None and ragged == "pad", dim)


def ragged_error(where: str, name: str, shape: Tuple[int, ...], problem: str, pattern: NMPattern) -> ShapeError:
    """The error for a ragged layer under ``ragged="error"``: the layer, the rule and three fixes."""
    return ShapeError(
        f"layer {name} of shape {tuple(shape)}: {problem}. Leave it dense with "
        f"--exclude '{re.escape(name)}' or --ragged skip (ragged='skip'), or prune it padded with --ragged pad "
        f"(partial groups then keep at most {pattern.n})."
    )


def check_state_dict(tensors, where: str) -> dict:
    """``tensors`` if it maps string names to tensors, else a :class:`ConvertError` naming the first bad key.

    Non-tensor values are refused rather than passed through: a pruned or reported checkpoint is a
    mapping of tensors, and a silently dropped or rewritten entry would lose the user's data.
    """
    if not isinstance(tensors, Mapping):
        raise ConvertError(
            f"{where}: expected a state dict (a mapping of names to tensors, e.g. model.state_dict()), "
            f"got {type(tensors).__name__}."
        )
    for key, value in tensors.items():
        if not isinstance(key, str):
            raise ConvertError(f"{where}: state dict keys must be strings (tensor names), got {key!r} ({type(key).__name__}).")
        if not isinstance(value, torch.Tensor):
            raise ConvertError(
                f"{where}: state dict entry {key!r} holds a value of type {type(value).__name__}, not a torch.Tensor; "
                f"a state dict maps names to tensors. Remove the entry (or pass model.state_dict())."
            )
        if value.device.type == "meta":
            raise ConvertError(
                f"{where}: state dict entry {key!r} is a meta tensor (shape {tuple(value.shape)}), which holds no values; "
                f"load the real weights first."
            )
    return tensors


def check_ragged_choice(ragged: str, where: str) -> None:
    if not isinstance(ragged, str) or ragged not in RAGGED_CHOICES:
        raise ConvertError(f"{where}: ragged must be one of {', '.join(RAGGED_CHOICES)}, got {ragged!r}.")

