"""Calibrated pruning of a Hugging Face model folder in bounded memory: what ``nmsparse prune
--calibration`` runs.

The model's skeleton is built from ``config.json`` with every parameter on the meta device (no
memory; buffers such as rotary frequencies are computed as usual). Everything outside the stack
of repeated blocks (embeddings, final norm, LM head) is loaded from the shards once; each block's
tensors are loaded only when the block-wise pipeline (:mod:`nmsparse.oneshot.pipeline`) reaches
it, pruned, written into OUT's shards and freed. Peak memory is about the non-block weights plus
one block (in float32), the cached hidden states of the calibration windows and one layer's
statistics: flat in the model's depth. A model without a stack of blocks is loaded whole.

OUT is IN's layout: the same shards with the same headers (``nmsparse_pattern`` /
``nmsparse_algorithm`` added to the metadata), every tensor not pruned byte-identical, each pruned
one in its own dtype with +0.0 where pruned; the other files (config, tokenizer) are copied. It is
written in a temporary folder and installed atomically; on any error nothing is written.

Tied weights (an ``lm_head`` tied to the token embeddings) stay dense with the embeddings.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple, Union

import torch
from torch import nn

from ..errors import CheckpointError, ConvertError, clip_text
from ..convert import _safetensors as st
from ..convert._atomic import atomic_write_dir, atomic_write_file, check_output
from ..convert._hf import INDEX_NAME, copy_other_files, index_text, read_layout
from ..convert.formats import detect_format
from ..convert.prune import json_path_for
from ..layout import is_hf_conv1d
from .blocks import BlockList, find_block_lists
from .select import PRUNABLE_TYPES
from .calibration_text import Calibration, context_length, load_calibration, transformers_module
from .driver import _check_device, check_permute, check_prune_arguments, prune_
from .report import PruneReport

__all__ = ["prune_hf_folder", "build_skeleton", "ShardReader", "left_dense"]


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Every parameter registered inside goes to the meta device; buffers stay real."""
    original = nn.Module.register_parameter

    def register(module, name, param):
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def build_skeleton(folder: Path):
    """The model of ``folder`` (``AutoModelForCausalLM``, else ``AutoModel``) with meta parameters, in eval mode."""
    tf = transformers_module()
    try:
        config = tf.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (ValueError, OSError, KeyError, TypeError) as err:
        raise CheckpointError(f"{folder}: transformers cannot read config.json ({clip_text(str(err).splitlines()[0], 200) if str(err) else type(err).__name__}); check the file.") from None
    errors = []
    for cls in (tf.AutoModelForCausalLM, tf.AutoModel):
        for kw in ({"dtype": torch.float32}, {"torch_dtype": torch.float32}):
            try:
                with _parameters_on_meta():
                    model = cls.from_config(config, **kw)
                return model.eval(), config
            except TypeError as err:  # older/newer transformers name the dtype argument differently
                errors.append(str(err))
            except (ValueError, KeyError, AttributeError) as err:
                errors.append(str(err).splitlines()[0] if str(err) else type(err).__name__)
                break
    raise CheckpointError(f"{folder}: transformers cannot build a model from config.json ({clip_text(errors[-1], 200)}); check the file.")


class ShardReader:
    """Reads single tensors from a folder's shards (headers checked once, data read on demand)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.layout = read_layout(folder)

    def has(self, key: str) -> bool:
        return key in self.layout.shard_of

    def entry(self, key: str) -> Tuple[st.Header, st.Entry]:
        header = self.layout.headers[self.layout.shard_of[key]]
        return header, next(e for e in header.entries if e.name == key)

    def read(self, key: str) -> torch.Tensor:
        header, entry = self.entry(key)
        with open(header.path, "rb") as fh:
            return st.read_tensor(fh, header, entry)


def _checkpoint_key(name: str, reader: ShardReader, prefix: str) -> Optional[str]:
    if reader.has(name):
        return name
    if prefix and name.startswith(prefix + ".") and reader.has(name[len(prefix) + 1:]):
        return name[len(prefix) + 1:]
    if prefix and reader.has(f"{prefix}.{name}"):
        return f"{prefix}.{name}"
    return None


class _Loader:
    """Materialises parameters of the skeleton from the shards, and frees them again."""

    def __init__(self, model: nn.Module, reader: ShardReader):
        self.model, self.reader = model, reader
        self.prefix = getattr(model, "base_model_prefix", "") or ""
        self.holders: Dict[int, List[Tuple[nn.Module, str, str]]] = {}
        for mname, module in model.named_modules(remove_duplicate=False):
            for pname, p in module._parameters.items():
                if p is not None:
                    full = f"{mname}.{pname}" if mname else pname
                    self.holders.setdefault(id(p), []).append((module, pname, full))

    def load(self, modules: List[nn.Module]) -> None:
        for p in {id(p): p for m in modules for p in m.parameters()}.values():
            if not p.is_meta:
                continue
            holders = self.holders[id(p)]
            key = next((k for k in (_checkpoint_key(h[2], self.reader, self.prefix) for h in holders) if k), None)
            if key is None:
                raise CheckpointError(f"{self.reader.folder}: no tensor for {holders[0][2]} in the shards; the folder does not "
                                      "match its config.json. Re-save the model with save_pretrained.")
            value = self.reader.read(key)
            if tuple(value.shape) != tuple(p.shape):
                raise CheckpointError(f"{self.reader.folder}: tensor {key} has shape {tuple(value.shape)}, the model expects "
                                      f"{tuple(p.shape)}; the folder does not match its config.json.")
            new = nn.Parameter(value.to(torch.float32), requires_grad=False)
            for module, pname, _ in holders:
                module._parameters[pname] = new
            self.holders[id(new)] = holders

    def free(self, module: nn.Module) -> None:
        self._release(module)
        _return_freed_memory()

    def _release(self, module: nn.Module) -> None:
        for sub in module.modules():
            for pname, p in list(sub._parameters.items()):
                if p is not None and not p.is_meta:
                    holders = self.holders.pop(id(p))
                    meta = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=False)
                    for mod, name, _ in holders:
                        mod._parameters[name] = meta
                    self.holders[id(meta)] = holders


def _return_freed_memory() -> None:
    """Hand the freed block's memory back to the OS (glibc keeps freed heap pages otherwise, and the
    resident size creeps up block by block although no tensor of an old block is alive)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


class _ShardWriter:
    """OUT's shards: IN's headers and bytes first, then each pruned tensor written over its own bytes."""

    def __init__(self, reader: ShardReader, tmp: Path, extra: Dict[str, str]):
        self.reader, self.tmp = reader, tmp
        self.data_start: Dict[str, int] = {}
        for name in reader.layout.files:
            header = reader.layout.headers[name]
            with open(header.path, "rb") as fin, open(tmp / name, "wb") as fout:
                self.data_start[name] = st.write_header(fout, header.entries, {**header.metadata, **extra})
                for entry in header.entries:
                    st.copy_bytes(fin, header, entry, fout)

    def write(self, key: str, tensor: torch.Tensor) -> None:
        header, entry = self.reader.entry(key)
        shard = self.reader.layout.shard_of[key]
        value = tensor.detach().to(entry.dtype)
        value = torch.where(value != 0, value, torch.zeros((), dtype=value.dtype)).contiguous()  # +0.0, never -0.0
        with open(self.tmp / shard, "r+b") as fh:
            fh.seek(self.data_start[shard] + entry.begin)
            st.write_tensor(fh, entry, value)


def prune_hf_folder(
    src: Union[str, Path],
    out: Union[str, Path],
    pattern,
    *,
    calibration_file: Union[str, Path],
    algorithm: str = "sparsegpt",
    method: Optional[str] = None,
    include=None,
    exclude=None,
    samples: int = 128,
    seq_len: int = 512,
    allow_short: bool = False,
    ragged: str = "error",
    blocks=None,
    device=None,
    permute: bool = False,
    force: bool = False,
    progress: bool = False,
) -> Tuple[PruneReport, List[str], str]:
    """Prune the model in folder ``src`` with calibration text and write ``out`` (see the module
    docstring); returns the report, notes for the user and the path of ``OUT.prune.json``.

    Every argument is checked before any weight is read: the pattern or density, the algorithm,
    the method, OUT, the folder's layout, and the calibration text, which must give ``samples``
    windows of ``seq_len`` tokens without overlap (``allow_short``: use what there is, said in the
    report); ``seq_len`` must fit the model's context (``max_position_embeddings``)."""
    src = Path(src)
    spec, _, _ = check_prune_arguments(pattern, algorithm, method, ragged, where="prune")
    check_permute(permute, spec, "prune")
    _check_device(device, "prune")
    if detect_format(src) != "hf-folder":
        raise ConvertError(
            f"prune: --calibration needs a Hugging Face model folder (config.json, tokenizer and safetensors weights); "
            f"{src} is not one. Drop --calibration for magnitude pruning."
        )
    out = check_output(src, out, "dir", force)
    json_path = check_output(src, json_path_for(out), "file", force)
    reader = ShardReader(src)
    model, config = build_skeleton(src)
    calib = load_calibration(src, calibration_file, samples, seq_len, allow_short, context_length(config), where="prune")
    rep = PruneReport()
    rep.calibration = calib.to_dict()
    notes: List[str] = list(reader.layout.notes) + calib.notes()
    extra = {"nmsparse_pattern": str(pattern), "nmsparse_algorithm": str(algorithm)}

    def fill(tmp: Path) -> None:
        skipped = copy_other_files(src, tmp, set(reader.layout.files))
        if skipped:
            notes.append(f"not copied (not a regular file): {', '.join(skipped)}")
        writer = _ShardWriter(reader, tmp, extra)
        _prune_streamed(model, reader, writer, calib, rep, notes, pattern=pattern, algorithm=algorithm, method=method,
                        include=include, exclude=exclude, ragged=ragged, blocks=blocks, device=device, progress=progress,
                        permute=permute)
        if reader.layout.index is not None:
            (tmp / INDEX_NAME).write_text(index_text(reader.layout.index, reader.layout.total_size()), encoding="utf-8")

    atomic_write_dir(out, fill, force=force)
    text_out = json.dumps({"output": str(out), **rep.to_dict(), "notes": notes}, indent=1) + "\n"
    atomic_write_file(json_path, lambda tmp: tmp.write_text(text_out, encoding="utf-8"), force=True)
    return rep, notes, str(json_path)


def left_dense(folder: Union[str, Path], rep: PruneReport) -> Tuple[List[str], int]:
    """What a run left dense in the checkpoint folder: the names of its tensors of 2 or more
    dimensions that ``rep`` did not prune (embeddings, a head that fits no pattern, excluded
    layers; a tied head has no tensor of its own), and the count of its other tensors (biases,
    norms, scales). Reads the headers only."""
    pruned = {r.name for r in rep.layers}
    pruned |= {name.partition(".")[2] for name in pruned}  # a checkpoint saved without the model's prefix
    matrices, others = [], 0
    for header in read_layout(Path(folder)).headers.values():
        for e in header.entries:
            if len(e.shape) < 2:
                others += 1
            elif e.name not in pruned and e.name.partition(".")[2] not in pruned:
                matrices.append(e.name)
    return sorted(matrices), others


def _prune_streamed(model, reader: ShardReader, writer: _ShardWriter, calib: Calibration, rep: PruneReport, notes, *,
                    pattern, algorithm, method, include, exclude, ragged, blocks, device, progress, permute=False) -> None:
    loader = _Loader(model, reader)
    prunable = lambda block: any(isinstance(m, PRUNABLE_TYPES) or is_hf_conv1d(m) for m in block.modules())  # noqa: E731
    lists: List[BlockList] = [] if blocks == () else find_block_lists(model, prunable, blocks, "prune")
    in_blocks = {id(m) for bl in lists for m in bl.modules.modules()}
    outside = [m for m in model.modules() if id(m) not in in_blocks and m._parameters]
    loader.load(outside)
    if not lists:
        loader.load([model])
        notes.append("no stack of repeated blocks found: the whole model was loaded in memory")
    written = set()

    def write_layers(module: nn.Module) -> None:
        for row in rep.layers:
            layer = model.get_submodule(row.module_name)
            if row.name in written or not any(layer is m for m in module.modules()):
                continue
            key = _checkpoint_key(row.name, reader, loader.prefix)
            if key is None:
                raise ConvertError(f"prune: layer {row.name} of the model has no tensor in {reader.folder}; cannot write it back.")
            writer.write(key, layer.weight)
            written.add(row.name)
        for full in sorted(rep.permuted_tensors - written):  # reordered by permute=True, pruned or not
            owner_name, _, tensor = full.rpartition(".")
            owner = model.get_submodule(owner_name)
            if not any(owner is m for m in module.modules()):
                continue
            key = _checkpoint_key(full, reader, loader.prefix)
            if key is None:
                raise ConvertError(f"prune: tensor {full} of the model has no tensor in {reader.folder}; cannot write it back.")
            writer.write(key, getattr(owner, tensor))
            written.add(full)

    def on_block(event: str, bl: BlockList, k: int) -> None:
        block = bl.modules[k]
        if event == "load":
            loader.load([block])
        else:
            write_layers(block)
            loader.free(block)

    prune_(model, pattern, calibration=calib.batches, algorithm=algorithm, method=method if method is not None else "exact",
           include=include, exclude=exclude, ragged=ragged, report=rep, progress=progress, where="prune",
           blocks=[bl.name for bl in lists] if lists else (), _on_block=on_block if lists else None, device=device,
           permute=permute)
    write_layers(model)  # layers outside the blocks (an untied LM head), or every layer of a model loaded whole
