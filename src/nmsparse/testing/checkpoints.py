"""Writing small Hugging Face style checkpoint folders for tests (the reader's fixtures)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import torch

__all__ = ["write_hf_folder"]


def write_hf_folder(
    folder: Path,
    tensors: Dict[str, torch.Tensor],
    shards: int = 2,
    *,
    shard_names: Optional[Sequence[str]] = None,
    config: Optional[str] = '{"model_type": "toy"}',
    index_metadata: Optional[dict] = None,
    file_metadata: Optional[Dict[str, str]] = None,
    sort: bool = True,
    index_edit: Optional[Callable[[dict], dict]] = None,
) -> Path:
    """Create ``folder`` holding ``tensors`` the way ``save_pretrained`` lays them out.

    ``shards=0`` writes one ``model.safetensors`` and no index; otherwise the tensors (sorted by
    name unless ``sort=False``) are dealt round-robin over ``shards`` files named
    ``model-0000i-of-0000n.safetensors`` (or ``shard_names``) with a
    ``model.safetensors.index.json`` mapping each tensor to its file. ``index_edit`` may rewrite the
    index dict before it is written (hostile-index tests). ``config`` (None: none) is written as
    ``config.json``.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir()
    if config is not None:
        (folder / "config.json").write_text(config)
    if shards == 0:
        save_file(tensors, str(folder / "model.safetensors"), metadata=file_metadata)
        return folder
    names = sorted(tensors) if sort else list(tensors)
    files = list(shard_names) if shard_names else [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    weight_map: Dict[str, str] = {}
    for i in range(shards):
        part = {k: tensors[k] for k in names[i::shards]}
        save_file(part, str(folder / files[i]), metadata=file_metadata)
        weight_map.update({k: files[i] for k in part})
    index = {"weight_map": weight_map} if index_metadata is None else {"metadata": index_metadata, "weight_map": weight_map}
    if index_edit is not None:
        index = index_edit(index)
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder
