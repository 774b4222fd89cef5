"""Calibrated pruning of a Hugging Face model folder: what ``nmsparse prune --calibration`` runs.

The model is loaded with ``transformers`` (the optional extra ``nmsparse[hf]``) in float32 from the
folder alone (``local_files_only``: nothing is downloaded), the text file is tokenized with the
folder's own tokenizer and cut into ``samples`` windows of ``seq_len`` tokens spread evenly over the
text, the model is pruned with :func:`nmsparse.prune_`, and OUT is written in IN's format through
:mod:`nmsparse.convert.formats`: every tensor not pruned is written exactly as read (byte-identical),
each pruned one in its own dtype with +0.0 where pruned, and the other files (config, tokenizer)
are copied. Tied weights (an ``lm_head`` tied to the token embeddings) are left dense with the
embeddings, and stay tied. Memory: the whole model in float32 plus the checkpoint as read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Tuple, Union

import torch
from torch import nn

from ..errors import CheckpointError, ConvertError
from ..convert._atomic import atomic_write_file, check_output
from ..convert.formats import read_checkpoint, write_checkpoint
from ..convert.prune import json_path_for
from .driver import prune_
from .report import PruneReport

__all__ = ["prune_hf_folder", "text_batches"]


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ConvertError(
            "prune --calibration loads the model with the transformers library, which is not installed; "
            "install the extra: pip install 'nmsparse[hf]'."
        ) from None
    return transformers


def text_batches(tokenizer, text: str, samples: int, seq_len: int, batch: int = 8) -> List[dict]:
    """``samples`` windows of ``seq_len`` tokens at evenly spaced offsets of the tokenized text, as
    dict batches ``{"input_ids", "attention_mask"}`` (a text shorter than one window gives one)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < 2:
        raise ConvertError(f"prune: the calibration text has {len(ids)} token(s); give a text file of at least a few sentences.")
    length = min(seq_len, len(ids))
    count = min(samples, len(ids) - length + 1)
    ids = torch.tensor(ids, dtype=torch.long)
    starts = torch.linspace(0, len(ids) - length, count).round().long() if count > 1 else torch.zeros(1, dtype=torch.long)
    windows = ids[starts[:, None] + torch.arange(length)]
    return [
        {"input_ids": w, "attention_mask": torch.ones_like(w)} for w in windows.split(batch)
    ]


def _load_model(src: Path):
    tf = _transformers()
    errors = []
    for cls in (tf.AutoModelForCausalLM, tf.AutoModel):
        for kw in ({"dtype": torch.float32}, {"torch_dtype": torch.float32}):
            try:
                return cls.from_pretrained(str(src), local_files_only=True, **kw)
            except TypeError as err:  # older/newer transformers name the dtype argument differently
                errors.append(str(err))
            except (ValueError, OSError, KeyError) as err:
                errors.append(str(err).splitlines()[0] if str(err) else type(err).__name__)
                break
    raise CheckpointError(f"{src}: transformers cannot load a model from this folder ({errors[-1][:200]}); check config.json.")


def _checkpoint_key(name: str, keys, model: nn.Module) -> Optional[str]:
    if name in keys:
        return name
    prefix = getattr(model, "base_model_prefix", "") or ""
    if prefix and name.startswith(prefix + ".") and name[len(prefix) + 1 :] in keys:
        return name[len(prefix) + 1 :]
    if prefix and f"{prefix}.{name}" in keys:
        return f"{prefix}.{name}"
    return None


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
    ragged: str = "error",
    force: bool = False,
    progress: bool = False,
) -> Tuple[PruneReport, List[str], str]:
    """Prune the model in folder ``src`` with calibration text and write ``out``; returns the
    report, notes for the user and the path of the JSON report (``OUT.prune.json``)."""
    src = Path(src)
    out = check_output(src, out, "dir" if src.is_dir() else "file", force)
    json_path = check_output(src, json_path_for(out), "file", force)
    ckpt = read_checkpoint(src)
    if ckpt.format != "hf-folder":
        raise ConvertError(
            f"prune: --calibration needs a Hugging Face model folder (config, tokenizer and safetensors weights); "
            f"{src} is a {ckpt.format} checkpoint. Drop --calibration for magnitude pruning."
        )
    try:
        text = Path(calibration_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{calibration_file}: cannot read the calibration text ({err}); pass a UTF-8 text file.") from None
    tf = _transformers()
    try:
        tokenizer = tf.AutoTokenizer.from_pretrained(str(src), local_files_only=True)
    except (ValueError, OSError, KeyError) as err:
        raise CheckpointError(f"{src}: no usable tokenizer in the folder ({str(err)[:200]}); --calibration tokenizes with the folder's own tokenizer.") from None
    batches = text_batches(tokenizer, text, samples, seq_len)
    model = _load_model(src)
    rep = PruneReport()
    prune_(model, pattern, calibration=batches, algorithm=algorithm, method=method if method is not None else "exact",
           include=include, exclude=exclude, ragged=ragged, attach_masks=False, report=rep, progress=progress, where="prune")
    modules = dict(model.named_modules())
    for row in rep.layers:
        key = _checkpoint_key(row.name, ckpt.tensors, model)
        if key is None:
            raise ConvertError(f"prune: layer {row.name} of the loaded model has no tensor in {src}; cannot write it back.")
        stored = ckpt.tensors[key]
        new = modules[row.module_name].weight.detach().to(stored.dtype)
        if tuple(new.shape) != tuple(stored.shape):
            raise ConvertError(f"prune: layer {row.name} has shape {tuple(new.shape)} in the model but {tuple(stored.shape)} in {src}.")
        ckpt.tensors[key] = torch.where(new != 0, new, torch.zeros((), dtype=new.dtype)).contiguous()
    write_checkpoint(ckpt, out, force=force, extra_metadata={"nmsparse_pattern": rep.pattern, "nmsparse_algorithm": rep.algorithm})
    text_out = json.dumps({"output": str(out), **rep.to_dict(), "notes": list(ckpt.notes)}, indent=1) + "\n"
    atomic_write_file(json_path, lambda tmp: tmp.write_text(text_out, encoding="utf-8"), force=True)
    return rep, list(ckpt.notes), str(json_path)
