"""Reading and writing checkpoints: safetensors files, Hugging Face model folders, PyTorch files.

Formats (detected from the content, not only the name):

* ``"safetensors"`` — one ``.safetensors`` file; its header metadata is kept.
* ``"hf-folder"`` — a Hugging Face model folder with ``model.safetensors``, or shards listed in
  ``model.safetensors.index.json``. Every other file (config, tokenizer, ...) is copied unchanged;
  weight files in other formats (``pytorch_model.bin``, ``*.pt``, ...) are *not* copied, since they
  would hold the dense weights (the result lists them under ``notes``).
* ``"torch"`` — a ``torch.save`` file, loaded with ``torch.load(weights_only=True)`` (no code runs).
  The state dict is the top-level dict if it holds tensors and no nested dicts; otherwise the
  first of ``state_dict, model_state_dict, model, module, net, network, weights, params`` that is
  one, or the only nested dict that is one. Everything else in the file (optimizer state, epoch,
  ...) is written back unchanged, in the same structure.

A checkpoint is held in memory whole while it is converted.

Example
-------
>>> ckpt = read_checkpoint("model.safetensors")            # doctest: +SKIP
>>> ckpt.tensors["fc.weight"] = new_weight                  # doctest: +SKIP
>>> write_checkpoint(ckpt, "pruned.safetensors")            # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch

from ._atomic import atomic_write_dir, atomic_write_file
from ..errors import CheckpointError

__all__ = ["Checkpoint", "read_checkpoint", "write_checkpoint", "detect_format", "FORMATS"]

FORMATS = ("safetensors", "hf-folder", "torch")
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "weights", "params")
_OTHER_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx", ".safetensors")
_SUPPORTED = "a .safetensors file, a Hugging Face model folder (model.safetensors or a sharded index), or a torch.save file"

PathLike = Union[str, os.PathLike]


@dataclass
class Checkpoint:
    """A checkpoint in memory.

    Attributes
    ----------
    path : Path
        Where it was read from.
    format : str
        One of ``FORMATS``.
    tensors : dict of str -> torch.Tensor
        The flat state dict (tensor entries only) that conversion reads and replaces.
    metadata : dict of str -> str
        Safetensors header metadata (single file), kept on write.
    shards : dict of str -> str
        ``hf-folder``: tensor name -> file name of the shard holding it.
    shard_metadata : dict of str -> dict
        ``hf-folder``: header metadata of each shard file.
    index : dict or None
        ``hf-folder`` sharded: the parsed index JSON (rewritten with the new ``total_size``).
    root : object
        ``torch``: the whole loaded object; ``key_path`` leads from it to the state dict.
    key_path : tuple of str
        ``torch``: keys of the nested state dict (``()`` when the file is the state dict itself).
    tied : dict of str -> list of str
        ``torch``: tensors sharing storage with others (tied weights).
    notes : list of str
        Remarks for the user (where the state dict was found, files not copied, ...).
    """

    path: Path
    format: str
    tensors: Dict[str, torch.Tensor]
    metadata: Dict[str, str] = field(default_factory=dict)
    shards: Dict[str, str] = field(default_factory=dict)
    shard_metadata: Dict[str, Dict[str, str]] = field(default_factory=dict)
    index: Optional[dict] = None
    root: object = None
    key_path: Tuple[str, ...] = ()
    tied: Dict[str, List[str]] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)


def detect_format(path: PathLike) -> str:
    """Name the format of ``path`` (see module docstring); raise :class:`CheckpointError` if unknown."""
    p = Path(path)
    if not os.path.lexists(p):
        raise CheckpointError(f"{p}: no such file or folder; check the path.")
    if p.is_dir():
        if (p / INDEX_NAME).is_file() or (p / SINGLE_NAME).is_file():
            return "hf-folder"
        found = sorted(x.name for x in p.iterdir() if x.suffix in (".bin", ".pt", ".pth", ".safetensors"))
        hint = f" It holds {', '.join(found[:3])}: pass that file itself." if found else ""
        raise CheckpointError(
            f"{p}: a folder, but not a Hugging Face model folder with {SINGLE_NAME} or {INDEX_NAME}.{hint} "
            f"Supported: {_SUPPORTED}."
        )
    try:
        with open(p, "rb") as fh:
            head = fh.read(9)
    except OSError as err:
        raise CheckpointError(f"{p}: cannot read it ({err.strerror}); check the path and permissions.") from None
    if len(head) == 0:
        raise CheckpointError(f"{p}: the file is empty; it is not a checkpoint. Re-save or re-download it.")
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "torch"  # torch.save's zip container, or the legacy pickle format
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"  # 8-byte little-endian header length, then the JSON header
    raise CheckpointError(f"{p}: unknown checkpoint format (not safetensors, not a torch.save file). Supported: {_SUPPORTED}.")


def read_checkpoint(path: PathLike) -> Checkpoint:
    """Read a checkpoint of any supported format into memory (tensors on CPU)."""
    p = Path(path)
    fmt = detect_format(p)
    if fmt == "safetensors":
        tensors, metadata = _load_safetensors(p)
        return Checkpoint(p, fmt, tensors, metadata=metadata)
    if fmt == "hf-folder":
        return _read_hf_folder(p)
    return _read_torch(p)


def write_checkpoint(ckpt: Checkpoint, out: PathLike, *, force: bool = False, extra_metadata: Optional[Dict[str, str]] = None) -> None:
    """Write ``ckpt`` to ``out`` in its own format, atomically.

    Parameters
    ----------
    ckpt : Checkpoint
        What to write; ``ckpt.tensors`` replaces the tensors that were read.
    out : path
        A file (``safetensors``, ``torch``) or a folder (``hf-folder``).
    force : bool
        Replace an existing ``out`` (also when it is the input). Without it, an existing ``out``
        is an error and nothing is written.
    extra_metadata : dict, optional
        Added to safetensors header metadata (e.g. the pattern the weights were pruned to).
    """
    out = Path(out)
    check_output(ckpt.path, out, force)
    metadata = {**ckpt.metadata, **(extra_metadata or {})}
    try:
        if ckpt.format == "safetensors":
            atomic_write_file(out, lambda tmp: _save_safetensors(ckpt.tensors, tmp, metadata))
        elif ckpt.format == "torch":
            obj = _rebuild_torch_root(ckpt)
            atomic_write_file(out, lambda tmp: _save_torch(obj, tmp))
        elif ckpt.format == "hf-folder":
            atomic_write_dir(out, lambda tmp: _fill_hf_folder(ckpt, tmp, extra_metadata or {}))
        else:
            raise CheckpointError(f"write_checkpoint: unknown format {ckpt.format!r}; expected one of {FORMATS}.")
    except OSError as err:
        raise CheckpointError(f"{out}: could not write it ({err}); nothing was written. Check the space and permissions.") from None


def check_output(src: PathLike, out: PathLike, force: bool) -> None:
    """Refuse to overwrite the input or an existing OUT unless ``force``."""
    src, out = Path(src), Path(out)
    if os.path.lexists(out) and not force:
        same = os.path.realpath(src) == os.path.realpath(out)
        what = "is the input checkpoint" if same else "already exists"
        raise CheckpointError(f"{out} {what}; choose another -o, or pass --force (force=True) to replace it.")


# --- safetensors -------------------------------------------------------------------------------


def _load_safetensors(p: Path) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    from safetensors import safe_open

    try:
        tensors = {}
        with safe_open(str(p), framework="pt", device="cpu") as fh:
            metadata = dict(fh.metadata() or {})
            for name in fh.keys():
                tensors[name] = fh.get_tensor(name)
    except Exception as err:  # safetensors raises its own error types for every kind of damage
        raise CheckpointError(
            f"{p}: not a readable safetensors file ({_first_line(err)}); it is corrupt or truncated. Re-save or re-download it."
        ) from None
    return tensors, metadata


def _save_safetensors(tensors: Dict[str, torch.Tensor], path: Path, metadata: Dict[str, str]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata or None)


# --- Hugging Face folders ----------------------------------------------------------------------


def _read_hf_folder(p: Path) -> Checkpoint:
    index = None
    if (p / INDEX_NAME).is_file():
        try:
            index = json.loads((p / INDEX_NAME).read_text(encoding="utf-8"))
            weight_map = dict(index["weight_map"])
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(
                f"{p / INDEX_NAME}: not a valid safetensors index ({_first_line(err)}); it needs a \"weight_map\" of "
                "tensor name -> shard file. Re-save the model with save_pretrained."
            ) from None
        files = sorted(set(weight_map.values()))
    else:
        weight_map, files = None, [SINGLE_NAME]
    tensors: Dict[str, torch.Tensor] = {}
    shards: Dict[str, str] = {}
    shard_metadata: Dict[str, Dict[str, str]] = {}
    for name in files:
        f = p / name
        if not f.is_file():
            raise CheckpointError(f"{f}: listed in {INDEX_NAME} but missing; re-download the model folder.")
        part, meta = _load_safetensors(f)
        shard_metadata[name] = meta
        for key, t in part.items():
            if key in tensors:
                raise CheckpointError(f"{f}: tensor {key!r} also appears in shard {shards[key]}; the folder is inconsistent.")
            tensors[key], shards[key] = t, name
    if weight_map is not None:
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise CheckpointError(f"{p / INDEX_NAME}: lists {missing[0]!r} but no shard holds it; re-download the model folder.")
        wrong = [k for k in tensors if weight_map.get(k) != shards[k]]
        if wrong:
            raise CheckpointError(
                f"{p / INDEX_NAME}: tensor {wrong[0]!r} is in {shards[wrong[0]]}, not where the index says; re-download the model folder."
            )
    skipped = _skipped_files(p, set(files))
    notes = [f"not copied (dense weights in another format): {', '.join(skipped)}"] if skipped else []
    return Checkpoint(p, "hf-folder", tensors, shards=shards, shard_metadata=shard_metadata, index=index, notes=notes)


def _skipped_files(p: Path, weight_files: set) -> List[str]:
    return sorted(
        x.name for x in p.iterdir()
        if x.name not in weight_files and x.name != INDEX_NAME and x.is_file() and _is_weight_file(x.name)
    )


def _is_weight_file(name: str) -> bool:
    return name.endswith(_OTHER_WEIGHT_SUFFIXES) or name.endswith(".index.json") and "model" in name


def _fill_hf_folder(ckpt: Checkpoint, tmp: Path, extra_metadata: Dict[str, str]) -> None:
    src = ckpt.path
    weight_files = set(ckpt.shard_metadata)
    for entry in sorted(src.iterdir()):
        if entry.name in weight_files or entry.name == INDEX_NAME or _is_weight_file(entry.name):
            continue
        if entry.is_dir():
            shutil.copytree(entry, tmp / entry.name, symlinks=True)
        else:
            shutil.copy2(entry, tmp / entry.name, follow_symlinks=True)
    by_file: Dict[str, Dict[str, torch.Tensor]] = {name: {} for name in weight_files}
    for key, t in ckpt.tensors.items():
        if key not in ckpt.shards:
            raise CheckpointError(f"write_checkpoint: tensor {key!r} was not in {src}; a folder's tensors cannot be added.")
        by_file[ckpt.shards[key]][key] = t
    for name in sorted(by_file):
        meta = {**ckpt.shard_metadata.get(name, {}), **extra_metadata}
        _save_safetensors(by_file[name], tmp / name, meta)
    if ckpt.index is not None:
        index = copy.deepcopy(ckpt.index)
        index.setdefault("metadata", {})["total_size"] = sum(t.numel() * t.element_size() for t in ckpt.tensors.values())
        (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# --- torch.save files --------------------------------------------------------------------------


def _read_torch(p: Path) -> Checkpoint:
    try:
        root = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types (UnpicklingError, RuntimeError, EOFError)
        text, full = _first_line(err), str(err)
        if "Weights only load failed" in full or "Unsupported global" in full:
            found = [ln.strip() for ln in full.splitlines() if "Unsupported global" in ln]
            detail = f" ({found[0][:160]})" if found else ""
            raise CheckpointError(
                f"{p}: torch.load(weights_only=True) refused it: it stores Python objects, not only tensors{detail}. "
                "Re-save just the weights: torch.save(model.state_dict(), path)."
            ) from None
        raise CheckpointError(f"{p}: not a readable torch.save file ({text[:160]}); it is corrupt or truncated. Re-save it.") from None
    key_path = _find_state_dict(root, p)
    state = _get(root, key_path)
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    notes = [f"state dict found under key {'/'.join(key_path)!r}; the rest of the file is kept unchanged"] if key_path else []
    return Checkpoint(p, "torch", tensors, root=root, key_path=key_path, tied=_tied(tensors), notes=notes)


def _is_state_dict(obj) -> bool:
    if not isinstance(obj, Mapping) or not obj:
        return False
    if not all(isinstance(k, str) for k in obj):
        return False
    values = list(obj.values())
    return any(isinstance(v, torch.Tensor) for v in values) and not any(isinstance(v, Mapping) for v in values)


def _find_state_dict(root, p: Path) -> Tuple[str, ...]:
    if _is_state_dict(root):
        return ()
    if isinstance(root, Mapping):
        for key in _STATE_DICT_KEYS:
            if _is_state_dict(root.get(key)):
                return (key,)
        found = [k for k, v in root.items() if isinstance(k, str) and _is_state_dict(v)]
        if len(found) == 1:
            return (found[0],)
        if len(found) > 1:
            raise CheckpointError(
                f"{p}: holds several state dicts ({', '.join(map(repr, found[:4]))}) and none under a standard key "
                f"({', '.join(_STATE_DICT_KEYS[:4])}, ...). Save the one to prune by itself: torch.save(ckpt[KEY], path)."
            )
    raise CheckpointError(
        f"{p}: found no state dict (a dict of name -> tensor) in it, at the top or under "
        f"{', '.join(_STATE_DICT_KEYS[:4])}, ... Save one with torch.save(model.state_dict(), path)."
    )


def _get(root, key_path):
    for key in key_path:
        root = root[key]
    return root


def _tied(tensors: Dict[str, torch.Tensor]) -> Dict[str, List[str]]:
    by_storage: Dict[int, List[str]] = {}
    for name, t in tensors.items():
        if t.numel():
            by_storage.setdefault(t.untyped_storage().data_ptr(), []).append(name)
    tied = {}
    for names in by_storage.values():
        if len(names) > 1:
            for name in names:
                tied[name] = [x for x in names if x != name]
    return tied


def _rebuild_torch_root(ckpt: Checkpoint):
    """The loaded object with the state dict at ``key_path`` replaced by one holding ``ckpt.tensors``."""

    def rebuild(node, path):
        if not path:
            new = copy.copy(node)  # keeps OrderedDict and its ``_metadata`` (module versions)
            for key, t in ckpt.tensors.items():
                new[key] = t
            return new
        new = copy.copy(node)
        new[path[0]] = rebuild(node[path[0]], path[1:])
        return new

    return rebuild(ckpt.root, ckpt.key_path)


def _save_torch(obj, path: Path) -> None:
    torch.save(obj, str(path))


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]
