"""Hugging Face model folders: which files hold the weights, checked to stay inside the folder.

The index (``model.safetensors.index.json``) is untrusted input: a shard name like
``../../victim.safetensors`` or ``/etc/passwd``, or a shard that is a symbolic link leading out
of the folder, would make conversion read (and, in place, rewrite) files the user never named.
Every name is checked here, before any shard is opened: a plain file name, no ``..``, not
absolute, and its real path (links resolved) inside the folder's real path.

One layout is allowed to link out: the Hugging Face hub cache, where
``models--ORG--NAME/snapshots/REV/FILE`` is a link into ``models--ORG--NAME/blobs/``. A link from
such a snapshot folder may resolve into that same repository's ``blobs`` folder (and nowhere else),
so ``nmsparse prune ~/.cache/huggingface/hub/models--x--y/snapshots/REV -o OUT`` works as is.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from ..errors import CheckpointError, clip_text
from ._safetensors import Header, read_header

__all__ = ["INDEX_NAME", "SINGLE_NAME", "HFLayout", "read_layout", "inside_folder", "copy_other_files", "is_weight_file"]

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_OTHER_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx", ".safetensors")


@dataclass
class HFLayout:
    """A checked folder: ``files`` (shard names, sorted), their validated ``headers``, ``shard_of``
    (tensor name -> shard), the parsed ``index`` (None for a single ``model.safetensors``)."""

    folder: Path
    files: List[str]
    headers: Dict[str, Header]
    shard_of: Dict[str, str]
    index: Optional[dict] = None
    notes: List[str] = field(default_factory=list)

    def total_size(self) -> int:
        return sum(e.nbytes for h in self.headers.values() for e in h.entries)


def inside_folder(folder: Path, name: object, what: str) -> Path:
    """``folder / name`` if ``name`` is a plain file name that resolves inside ``folder``; else raise."""
    where = f"{folder}: {what} {name!r}"  # e.g. "...: model.safetensors.index.json names shard '../x'"
    if not isinstance(name, str) or not name or "\x00" in name:
        raise CheckpointError(f"{where}, which is not a file name; the folder is damaged or hostile. Re-download it.")
    if os.path.isabs(name) or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise CheckpointError(f"{where}, which is an absolute path; shard names must be plain file names inside the folder. Refused; nothing was read.")
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        raise CheckpointError(f"{where}, which contains '..'; shard names must stay inside the folder. Refused; nothing was read.")
    if len(parts) > 1 or name in (".",):
        raise CheckpointError(f"{where}, which is in a sub-folder; shard names must be plain file names in the folder. Refused; nothing was read.")
    path = folder / name
    real_folder = os.path.realpath(folder)
    real = os.path.realpath(path)
    blobs = hub_cache_blobs(real_folder)
    if not _within(real, real_folder) and not (blobs is not None and _within(real, blobs)):
        raise CheckpointError(
            f"{where}, which is a symbolic link leading out of the folder (to {real}); refused, nothing was read. "
            "Copy the real files into the folder (cp -rL) and retry."
        )
    return path


def _within(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip(os.sep) + os.sep)


def hub_cache_blobs(real_folder: str) -> Optional[str]:
    """The ``blobs`` folder of the Hugging Face hub cache repository that holds ``real_folder`` when
    ``real_folder`` is a snapshot (``.../models--ORG--NAME/snapshots/REV``), else ``None``."""
    snapshots = os.path.dirname(real_folder)
    repo = os.path.dirname(snapshots)
    if os.path.basename(snapshots) != "snapshots" or not os.path.basename(repo).startswith(("models--", "datasets--")):
        return None
    blobs = os.path.join(repo, "blobs")
    if os.path.islink(blobs) or not os.path.isdir(blobs):
        return None
    return blobs


def conv1d_rule(folder: Path) -> Optional[str]:
    """The ``dim0`` rule (:func:`nmsparse.convert.rules.default_dim0`) from the folder's
    ``config.json`` ``model_type``; None without a readable config or for other model types."""
    from .rules import default_dim0  # rules never imports this module; kept local to say so

    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # unreadable, not JSON, or nested too deeply to parse
        return None
    return default_dim0(config.get("model_type")) if isinstance(config, dict) else None


def read_layout(folder: Path) -> HFLayout:
    """Check the folder's index (or single file) and read every shard's header; no tensor data is read."""
    folder = Path(folder)
    index = None
    if os.path.lexists(folder / INDEX_NAME):
        index_path = inside_folder(folder, INDEX_NAME, "the index is")
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
            weight_map = index["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError("weight_map is not an object")
        except OSError as err:
            raise CheckpointError(f"{index_path}: cannot read it ({err.strerror}); check the permissions.") from None
        except RecursionError:
            raise CheckpointError(
                f"{index_path}: not a valid safetensors index (JSON nested too deeply to read); it needs a flat "
                "\"weight_map\" of tensor name -> shard file. Re-save the model with save_pretrained."
            ) from None
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(
                f"{index_path}: not a valid safetensors index ({clip_text(str(err).splitlines()[0], 100)}); it needs a \"weight_map\" of "
                "tensor name -> shard file. Re-save the model with save_pretrained."
            ) from None
        shard_paths = {}
        for tensor_name, shard in weight_map.items():  # every name is checked before any shard is read
            if not isinstance(shard, str) or shard not in shard_paths:
                shard_paths[shard] = inside_folder(folder, shard, f"{INDEX_NAME} names shard")
        files = sorted(shard_paths)
    else:
        weight_map = None
        shard_paths = {SINGLE_NAME: inside_folder(folder, SINGLE_NAME, "the weight file is")}
        files = [SINGLE_NAME]
    for name in files:
        try:
            present = shard_paths[name].is_file()
        except OSError as err:  # e.g. a name longer than the file system allows
            raise CheckpointError(f"{folder}: shard {clip_text(name, 80)!r} from {INDEX_NAME} cannot be opened ({err.strerror}); the index is damaged.") from None
        if not present:
            raise CheckpointError(f"{shard_paths[name]}: listed in {INDEX_NAME} but missing (or not a file); re-download the model folder.")
    headers = {name: read_header(shard_paths[name]) for name in files}
    shard_of: Dict[str, str] = {}
    for name in files:
        for key in headers[name].names():
            if key in shard_of:
                raise CheckpointError(f"{shard_paths[name]}: tensor {key!r} also appears in shard {shard_of[key]}; the folder is inconsistent.")
            shard_of[key] = name
    if weight_map is not None:
        missing = sorted(set(weight_map) - set(shard_of))
        if missing:
            raise CheckpointError(f"{folder / INDEX_NAME}: lists {missing[0]!r} but no shard holds it; re-download the model folder.")
        wrong = [k for k in shard_of if weight_map.get(k) != shard_of[k]]
        if wrong:
            raise CheckpointError(
                f"{folder / INDEX_NAME}: tensor {wrong[0]!r} is in {shard_of[wrong[0]]}, not where the index says; re-download the model folder."
            )
    skipped = sorted(
        x.name for x in folder.iterdir() if x.name not in headers and x.name != INDEX_NAME and is_weight_file(x.name)
    )
    notes = [f"not copied (dense weights in another format): {', '.join(skipped)}"] if skipped else []
    return HFLayout(folder, files, headers, shard_of, index, notes)


def is_weight_file(name: str) -> bool:
    return name.endswith(_OTHER_WEIGHT_SUFFIXES) or name.endswith(".index.json") and "model" in name


def copy_other_files(folder: Path, dest: Path, weight_files: set) -> List[str]:
    """Copy config, tokenizer and other non-weight entries of ``folder`` into ``dest``.

    A top-level link is followed only if it stays inside the folder; sub-folders are copied with
    their links as links (nothing outside is read). Sockets, pipes and devices are skipped, and
    their names returned.
    """
    skipped = []
    for entry in sorted(folder.iterdir()):
        if entry.name in weight_files or entry.name == INDEX_NAME or is_weight_file(entry.name):
            continue
        if entry.is_symlink():
            inside_folder(folder, entry.name, "the file is")
        if entry.is_dir():
            shutil.copytree(entry, dest / entry.name, symlinks=True)
        elif entry.is_file():
            shutil.copy2(entry, dest / entry.name, follow_symlinks=True)
        else:
            skipped.append(entry.name)
    return skipped


def index_text(index: dict, total_size: int) -> str:
    """The index written beside the new shards: the same, with ``metadata.total_size`` recomputed."""
    import copy

    new = copy.deepcopy(index)
    if not isinstance(new.get("metadata"), dict):
        new["metadata"] = {}
    new["metadata"]["total_size"] = total_size
    return json.dumps(new, indent=2, sort_keys=True) + "\n"
