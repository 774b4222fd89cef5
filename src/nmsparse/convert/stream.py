"""Pruning a checkpoint file or folder in bounded memory: read one tensor, prune it, write it, let it go.

For safetensors files and Hugging Face folders the output's header is known before any weight is
read (pruning keeps every shape and dtype), so each output file is written front to back: the
header (IN's own, with ``nmsparse_pattern`` added to its metadata), then each tensor at the same
offset as in IN — a pruned one solved and written, every other one copied byte for byte in chunks.
Peak memory is one tensor and its solver's work space, whatever the checkpoint's size.
``torch.save`` files are mapped (``mmap=True``); the pruned tensors are held until ``torch.save``
writes the file. Everything lands in a temporary beside OUT, installed atomically at the end.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict, List, Optional, Union

import torch

from .._progress import Progress
from . import _safetensors as st
from ._atomic import atomic_write_file, atomic_write_dir, check_output
from ._hf import conv1d_rule, copy_other_files, index_text, INDEX_NAME, read_layout
from ._torchfile import find_state_dict, get_path, load_torch, rebuild_root, save_torch, tied_groups
from .formats import detect_format, output_kind
from .prune import PrunePlan, PruneResult, json_path_for, plan_pruning
from ..pattern import PatternLike

__all__ = ["prune_checkpoint"]


def prune_checkpoint(
    src: Union[str, Path],
    out: Union[str, Path],
    pattern: PatternLike,
    *,
    method: Optional[str] = None,
    include: Optional[str] = None,
    exclude: Optional[str] = None,
    ragged: str = "error",
    force: bool = False,
    progress: bool = False,
    dim0: Optional[Union[str, List[str]]] = None,
) -> PruneResult:
    """Prune the checkpoint ``src`` to ``pattern`` and write ``out`` in the same format, atomically,
    one tensor at a time (see the module docstring).

    Also writes the per-layer table as JSON to ``OUT.prune.json`` beside OUT. Everything that can
    be checked without reading weights (format, headers, shard names, OUT, pattern, ragged layers)
    is checked before anything is written; on any error nothing is written. ``force`` allows
    replacing an existing OUT of the same kind (a file by a file, a folder by a folder), including
    the input itself. The result's ``tensors`` is empty: the pruned weights are in OUT.

    ``dim0`` (regexes, matched like ``include``) names 2-D tensors grouped along dim 0, Hugging
    Face ``Conv1D`` weights stored ``(in, out)``. Default: for a Hugging Face folder whose
    ``config.json`` ``model_type`` is a Conv1D family (GPT-2, ...), its Conv1D layers
    (:func:`nmsparse.convert.rules.default_dim0`, said in the notes); none for a bare file.

    Examples
    --------
    >>> res = prune_checkpoint("model.safetensors", "model-2to4T.safetensors", "2:4T")   # doctest: +SKIP
    >>> print(res.summary())                                                              # doctest: +SKIP
    """
    start = time.perf_counter()
    src = Path(src)
    fmt = detect_format(src)
    out = check_output(src, out, output_kind(fmt), force)
    json_path = check_output(src, json_path_for(out), "file", force)
    dim0, dim0_notes = resolve_dim0(src, fmt, dim0)
    options = dict(method=method, include=include, exclude=exclude, ragged=ragged, dim0=dim0)
    if fmt == "safetensors":
        header = st.read_header(src)
        plan = plan_pruning({e.name: (e.shape, e.dtype) for e in header.entries}, pattern, **options)
        extra = {"nmsparse_pattern": str(plan.pattern)}
        with Progress(len(plan.todo), f"pruning to {plan.pattern}", enabled=progress) as bar:
            stale = atomic_write_file(out, lambda tmp: _stream_file(src, header, tmp, plan, extra, bar), force=force)
        notes: List[str] = []
    elif fmt == "hf-folder":
        layout = read_layout(src)
        specs = {e.name: (e.shape, e.dtype) for name in layout.files for e in layout.headers[name].entries}
        plan = plan_pruning(specs, pattern, **options)
        extra = {"nmsparse_pattern": str(plan.pattern)}

        def fill(tmp: Path) -> None:
            skipped = copy_other_files(src, tmp, set(layout.files))
            if skipped:
                layout.notes.append(f"not copied (not a regular file): {', '.join(skipped)}")
            for name in layout.files:
                _stream_file(src / name, layout.headers[name], tmp / name, plan, extra, bar)
            if layout.index is not None:
                (tmp / INDEX_NAME).write_text(index_text(layout.index, layout.total_size()), encoding="utf-8")

        with Progress(len(plan.todo), f"pruning to {plan.pattern}", enabled=progress) as bar:
            stale = atomic_write_dir(out, fill, force=force)
        notes = layout.notes + dim0_notes
    else:
        plan, notes, stale = _prune_torch_file(src, out, pattern, options, force, progress)
    if stale:
        notes.append(f"removed {len(stale)} temporary file(s) left beside OUT by an interrupted run")
    result = PruneResult({}, plan.layers(), str(plan.pattern), plan.method, time.perf_counter() - start, notes=notes)
    result.output = str(out)
    text = json.dumps(result.to_json(), indent=1) + "\n"
    atomic_write_file(json_path, lambda tmp: tmp.write_text(text, encoding="utf-8"), force=True)
    result.json_path = str(json_path)
    return result


def resolve_dim0(src: Path, fmt: str, dim0):
    """``(dim0, notes)``: the caller's rule, else a Hugging Face Conv1D family's (see prune_checkpoint)."""
    if dim0 is not None or fmt != "hf-folder":
        return dim0, []
    rule = conv1d_rule(src)
    if rule is None:
        return None, []
    return rule, [f"config.json model_type is a Conv1D family: tensors matching '{rule}' (HF Conv1D, stored "
                  "(in, out)) are grouped along dim 0, their input features"]


def _stream_file(src: Path, header: st.Header, dest: Path, plan: PrunePlan, extra: Dict[str, str], bar) -> None:
    """Write ``dest``: IN's header (metadata plus ``extra``), then each tensor at its own offset."""
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        st.write_header(fout, header.entries, {**header.metadata, **extra})
        for entry in header.entries:
            if entry.name in plan.todo:
                weight = st.read_tensor(fin, header, entry)
                st.write_tensor(fout, entry, plan.prune(entry.name, weight))
                del weight  # let it go before the next one is read
                bar.advance()
            else:
                st.copy_bytes(fin, header, entry, fout)


def _prune_torch_file(src: Path, out: Path, pattern, options, force: bool, progress: bool):
    root = load_torch(src, mmap=True)
    key_path = find_state_dict(root, src)
    state = get_path(root, key_path)
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    plan = plan_pruning({k: (tuple(v.shape), v.dtype) for k, v in tensors.items()}, pattern, tied=tied_groups(tensors), **options)
    pruned: Dict[str, torch.Tensor] = {}
    with Progress(len(plan.todo), f"pruning to {plan.pattern}", enabled=progress) as bar:
        for name in plan.todo:
            pruned[name] = plan.prune(name, tensors[name])
            bar.advance()
    obj = rebuild_root(root, key_path, pruned)
    stale = atomic_write_file(out, lambda tmp: save_torch(obj, tmp), force=force)
    notes = [f"state dict found under key {'/'.join(key_path)!r}; the rest of the file is kept unchanged"] if key_path else []
    return plan, notes, stale
