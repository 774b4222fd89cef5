"""Reading and writing checkpoints: safetensors files, Hugging Face model folders, PyTorch files.

Formats (detected from the content, not only the name):

* ``"safetensors"`` — one ``.safetensors`` file; its header metadata is kept.
* ``"hf-folder"`` — a Hugging Face model folder with ``model.safetensors``, or shards listed in
  ``model.safetensors.index.json`` (every shard name must resolve inside the folder, see
  :mod:`nmsparse.convert._hf`). Every other file (config, tokenizer, ...) is copied unchanged;
  weight files in other formats (``pytorch_model.bin``, ``*.pt``, ...) are *not* copied, since they
  would hold the dense weights (the result lists them under ``notes``).
* ``"torch"`` — a ``torch.save`` file, loaded with ``torch.load(weights_only=True)`` (no code runs).
  The state dict is the top-level dict if it holds tensors and no nested dicts; otherwise the
  first of ``state_dict, model_state_dict, model, module, net, network, weights, params`` that is
  one, or the only nested dict that is one. Everything else in the file (optimizer state, epoch,
  ...) is written back unchanged, in the same structure.

:func:`read_checkpoint` holds a checkpoint in memory; :func:`iter_tensors` (used by ``report``)
and :mod:`nmsparse.convert.stream` (used by ``prune``) go one tensor at a time.

Example
-------
>>> ckpt = read_checkpoint("model.safetensors")            # doctest: +SKIP
>>> ckpt.tensors["fc.weight"] = new_weight                  # doctest: +SKIP
>>> write_checkpoint(ckpt, "pruned.safetensors")            # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple, Union

import torch

from . import _safetensors as st
from ._atomic import atomic_write_dir, atomic_write_file, check_output
from ._hf import INDEX_NAME, SINGLE_NAME, copy_other_files, index_text, read_layout
from ._torchfile import find_state_dict, get_path, load_torch, rebuild_root, save_torch, tied_groups
from ..errors import CheckpointError

__all__ = ["Checkpoint", "read_checkpoint", "write_checkpoint", "detect_format", "iter_tensors", "TensorStream", "output_kind", "FORMATS"]

FORMATS = ("safetensors", "hf-folder", "torch")
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
        if os.path.lexists(p / INDEX_NAME) or os.path.lexists(p / SINGLE_NAME):
            return "hf-folder"
        found = sorted(x.name for x in p.iterdir() if x.suffix in (".bin", ".pt", ".pth", ".safetensors"))
        hint = f" It holds {', '.join(found[:3])}: pass that file itself." if found else ""
        raise CheckpointError(
            f"{p}: a folder, but not a Hugging Face model folder with {SINGLE_NAME} or {INDEX_NAME}.{hint} "
            f"Supported: {_SUPPORTED}."
        )
    if not p.is_file():
        raise CheckpointError(f"{p}: not a regular file or folder (a pipe, socket or device); pass a checkpoint file.")
    try:
        with open(p, "rb") as fh:
            head = fh.read(9)
    except OSError as err:
        raise CheckpointError(f"{p}: cannot read it ({err.strerror}); check the path and permissions.") from None
    if len(head) == 0:
        raise CheckpointError(f"{p}: the file is empty; it is not a checkpoint. Re-save or re-download it.")
    # safetensors first: its 8-byte little-endian header length may well start with 0x80 (e.g. 384)
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"  # 8-byte header length, then the JSON header
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "torch"  # torch.save's zip container, or the legacy pickle format
    raise CheckpointError(f"{p}: unknown checkpoint format (not safetensors, not a torch.save file). Supported: {_SUPPORTED}.")


def read_checkpoint(path: PathLike) -> Checkpoint:
    """Read a checkpoint of any supported format into memory (tensors on CPU)."""
    p = Path(path)
    fmt = detect_format(p)
    if fmt == "safetensors":
        tensors, metadata = _load_safetensors(p)
        return Checkpoint(p, fmt, tensors, metadata=metadata)
    if fmt == "hf-folder":
        layout = read_layout(p)
        tensors: Dict[str, torch.Tensor] = {}
        shard_metadata = {}
        for name in layout.files:
            part, shard_metadata[name] = _load_safetensors(p / name)
            tensors.update(part)
        return Checkpoint(p, fmt, tensors, shards=dict(layout.shard_of), shard_metadata=shard_metadata, index=layout.index, notes=layout.notes)
    root = load_torch(p, mmap=False)
    key_path = find_state_dict(root, p)
    tensors = {k: v for k, v in get_path(root, key_path).items() if isinstance(v, torch.Tensor)}
    notes = [f"state dict found under key {'/'.join(key_path)!r}; the rest of the file is kept unchanged"] if key_path else []
    return Checkpoint(p, fmt, tensors, root=root, key_path=key_path, tied=tied_groups(tensors), notes=notes)


class TensorStream(NamedTuple):
    """What :func:`iter_tensors` returns: ``tensors`` yields ``(name, tensor)`` pairs; ``tied``
    names the tensors sharing storage (torch files; tied weights stay dense)."""

    format: str
    notes: List[str]
    tensors: Iterator[Tuple[str, torch.Tensor]]
    tied: Dict[str, List[str]]


def iter_tensors(path: PathLike) -> TensorStream:
    """The tensors of a checkpoint one at a time, each read when asked for (safetensors, folders)
    or mapped from the file (torch), so memory does not grow with the checkpoint. Everything that
    can be checked without reading data (format, headers, shard names) is checked before this returns."""
    p = Path(path)
    fmt = detect_format(p)
    if fmt == "safetensors":
        header = st.read_header(p)
        return TensorStream(fmt, [], _iter_files([(p, header)]), {})
    if fmt == "hf-folder":
        layout = read_layout(p)
        return TensorStream(fmt, layout.notes, _iter_files([(p / name, layout.headers[name]) for name in layout.files]), {})
    root = load_torch(p, mmap=True)
    state = get_path(root, find_state_dict(root, p))
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    return TensorStream(fmt, [], iter(tensors.items()), tied_groups(tensors))


def _iter_files(files) -> Iterator[Tuple[str, torch.Tensor]]:
    for path, header in files:
        with open(path, "rb") as fh:
            for entry in header.entries:
                yield entry.name, st.read_tensor(fh, header, entry)


def output_kind(fmt: str) -> str:
    """What a checkpoint of this format is on disk: ``"dir"`` or ``"file"``."""
    return "dir" if fmt == "hf-folder" else "file"


def write_checkpoint(ckpt: Checkpoint, out: PathLike, *, force: bool = False, extra_metadata: Optional[Dict[str, str]] = None) -> None:
    """Write ``ckpt`` to ``out`` in its own format, atomically.

    Parameters
    ----------
    ckpt : Checkpoint
        What to write; ``ckpt.tensors`` replaces the tensors that were read.
    out : path
        A file (``safetensors``, ``torch``) or a folder (``hf-folder``).
    force : bool
        Replace an existing ``out`` of the same kind (also when it is the input). Without it, an
        existing ``out`` is an error and nothing is written. A folder is never replaced by a file
        or the reverse, a symbolic link is never written through, a folder holding the input is
        never replaced.
    extra_metadata : dict, optional
        Added to safetensors header metadata (e.g. the pattern the weights were pruned to).
    """
    if ckpt.format not in FORMATS:
        raise CheckpointError(f"write_checkpoint: unknown format {ckpt.format!r}; expected one of {FORMATS}.")
    out = check_output(ckpt.path, out, output_kind(ckpt.format), force)
    metadata = {**ckpt.metadata, **(extra_metadata or {})}
    if ckpt.format == "safetensors":
        atomic_write_file(out, lambda tmp: _save_safetensors(ckpt.tensors, tmp, metadata), force=force)
    elif ckpt.format == "torch":
        obj = rebuild_root(ckpt.root, ckpt.key_path, ckpt.tensors)
        atomic_write_file(out, lambda tmp: _save_torch(obj, tmp), force=force)
    else:
        atomic_write_dir(out, lambda tmp: _fill_hf_folder(ckpt, tmp, extra_metadata or {}), force=force)


# --- safetensors -------------------------------------------------------------------------------


def _load_safetensors(p: Path) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    header = st.read_header(p)
    with open(p, "rb") as fh:
        return {e.name: st.read_tensor(fh, header, e) for e in header.entries}, header.metadata


def _save_safetensors(tensors: Dict[str, torch.Tensor], path: Path, metadata: Dict[str, str]) -> None:
    bad = [k for k, v in tensors.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"write_checkpoint: entry {bad[0]!r} is a {type(tensors[bad[0]]).__name__}, not a tensor; safetensors stores tensors only.")
    entries = st.header_for((k, v.dtype, tuple(v.shape)) for k, v in tensors.items())
    with open(path, "wb") as fh:
        st.write_header(fh, entries, metadata)
        for e in entries:
            st.write_tensor(fh, e, tensors[e.name])


def _save_torch(obj, path: Path) -> None:
    save_torch(obj, path)


def _fill_hf_folder(ckpt: Checkpoint, tmp: Path, extra_metadata: Dict[str, str]) -> None:
    weight_files = set(ckpt.shard_metadata)
    copy_other_files(ckpt.path, tmp, weight_files)
    by_file: Dict[str, Dict[str, torch.Tensor]] = {name: {} for name in weight_files}
    for key, t in ckpt.tensors.items():
        if key not in ckpt.shards:
            raise CheckpointError(f"write_checkpoint: tensor {key!r} was not in {ckpt.path}; a folder's tensors cannot be added.")
        by_file[ckpt.shards[key]][key] = t
    for name in sorted(by_file):
        _save_safetensors(by_file[name], tmp / name, {**ckpt.shard_metadata.get(name, {}), **extra_metadata})
    if ckpt.index is not None:
        total = sum(t.numel() * t.element_size() for t in ckpt.tensors.values())
        (tmp / INDEX_NAME).write_text(index_text(ckpt.index, total), encoding="utf-8")
