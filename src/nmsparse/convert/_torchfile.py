"""``torch.save`` files: weights-only loading (no code runs), finding the state dict inside, writing back.

Files in torch's zip format are loaded with ``mmap=True``: tensors stay in the file's pages until
used, so a file larger than memory can be converted (the pruned tensors are new memory until the
file is written). Legacy (pre-1.6 pickle) files cannot be mapped and are read whole.
"""

from __future__ import annotations

import copy
import errno
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from ..errors import CheckpointError, clip_text

__all__ = ["load_torch", "find_state_dict", "get_path", "tied_groups", "rebuild_root", "save_torch"]

_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "weights", "params")


def load_torch(p: Path, mmap: bool = True):
    """``torch.load(p, weights_only=True)``; any failure is a one-line :class:`CheckpointError`."""
    try:
        # torch warns about odd pickle protocols of damaged files; the error below says it in one line
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            try:
                return torch.load(str(p), map_location="cpu", weights_only=True, mmap=mmap)
            except RuntimeError as err:
                if mmap and "mmap" in str(err):  # legacy format: cannot be mapped, read it whole
                    return torch.load(str(p), map_location="cpu", weights_only=True)
                raise
    except IsADirectoryError:
        raise CheckpointError(f"{p}: a folder where a torch.save file was expected; pass the file itself.") from None
    except Exception as err:  # unpickling errors come in many types (UnpicklingError, RuntimeError, EOFError)
        full = str(err)
        text = (full.strip() or type(err).__name__).splitlines()[0]
        if "Weights only load failed" in full or "Unsupported global" in full:
            found = [ln.strip() for ln in full.splitlines() if "Unsupported global" in ln]
            detail = f" ({clip_text(found[0], 160)})" if found else ""
            raise CheckpointError(
                f"{p}: torch.load(weights_only=True) refused it: it stores Python objects, not only tensors{detail}. "
                "Re-save just the weights: torch.save(model.state_dict(), path)."
            ) from None
        raise CheckpointError(f"{p}: not a readable torch.save file ({clip_text(text, 160)}); it is corrupt or truncated. Re-save it.") from None


def _is_state_dict(obj) -> bool:
    if not isinstance(obj, Mapping) or not obj:
        return False
    if not all(isinstance(k, str) for k in obj):
        return False
    values = list(obj.values())
    return any(isinstance(v, torch.Tensor) for v in values) and not any(isinstance(v, Mapping) for v in values)


def find_state_dict(root, p: Path) -> Tuple[str, ...]:
    """Keys leading from the loaded object to its state dict (``()`` when it is one)."""
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


def get_path(root, key_path):
    for key in key_path:
        root = root[key]
    return root


def tied_groups(tensors: Dict[str, torch.Tensor]) -> Dict[str, List[str]]:
    """Tensors sharing storage with others (tied weights): name -> the other names."""
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


def rebuild_root(root, key_path, tensors: Dict[str, torch.Tensor]):
    """The loaded object with the state dict at ``key_path`` replaced by one holding ``tensors``."""

    def rebuild(node, path):
        new = copy.copy(node)  # keeps OrderedDict and its ``_metadata`` (module versions)
        if not path:
            for key, t in tensors.items():
                new[key] = t
            return new
        new[path[0]] = rebuild(node[path[0]], path[1:])
        return new

    return rebuild(root, key_path)


def save_torch(obj, path: Path) -> None:
    """``torch.save`` into ``path``; a failed write (full disk: torch's "unexpected pos") is an OSError."""
    try:
        torch.save(obj, str(path))
    except RuntimeError as err:
        text = str(err)
        if "unexpected pos" in text:  # torch's zip writer on a short write
            raise OSError(errno.ENOSPC, "the write stopped short: the disk is full or the file is too large") from None
        raise OSError(errno.EIO, f"torch.save failed: {clip_text(text.strip().splitlines()[0], 160)}") from None
