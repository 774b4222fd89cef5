"""Calibration (and evaluation) windows from a text file, tokenized with a model folder's own tokenizer.

Windows never overlap: ``samples`` windows of ``seq_len`` tokens need ``samples × seq_len`` tokens of
text, taken at evenly spaced offsets. A text that gives fewer is an error unless the caller opts
in (``allow_short``), and then what was used is reported, never hidden. A window longer than the
model's context (``max_position_embeddings``) is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch

from ..errors import ArgumentError, CheckpointError, ConvertError, clip_text

__all__ = ["Calibration", "load_calibration", "text_windows", "context_length", "transformers_module", "load_tokenizer"]


def transformers_module():
    try:
        import transformers
    except ImportError:
        raise ConvertError(
            "this command loads the model with the transformers library, which is not installed; "
            "install the extra: pip install 'nmsparse[hf]'."
        ) from None
    return transformers


def context_length(config) -> Optional[int]:
    """The longest sequence the model takes, from its config (None if it does not say)."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


@dataclass
class Calibration:
    """The windows used: ``batches`` of ``{"input_ids", "attention_mask"}``; ``windows`` × ``seq_len``
    tokens out of ``text_tokens``, against ``asked`` windows."""

    batches: List[dict]
    windows: int
    seq_len: int
    asked: int
    asked_seq_len: int
    text_tokens: int

    @property
    def tokens(self) -> int:
        return self.windows * self.seq_len

    @property
    def short(self) -> bool:
        return self.windows < self.asked or self.seq_len < self.asked_seq_len

    def to_dict(self) -> dict:
        return {"windows": self.windows, "seq_len": self.seq_len, "tokens": self.tokens, "asked_windows": self.asked,
                "asked_seq_len": self.asked_seq_len, "text_tokens": self.text_tokens, "short": self.short}

    def describe(self) -> str:
        text = f"{self.windows} windows x {self.seq_len} tokens = {self.tokens} tokens of calibration text"
        if self.short:
            text += f" (asked for {self.asked} x {self.asked_seq_len}; the text has {self.text_tokens} tokens)"
        return text

    def notes(self) -> List[str]:
        return [f"used {self.describe()}"]


def text_windows(ids: List[int], samples: int, seq_len: int, allow_short: bool, where: str, source: str, batch: int = 8):
    """Non-overlapping windows of ``ids`` at evenly spaced offsets, as a :class:`Calibration`."""
    for name, value in (("samples", samples), ("seq_len", seq_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ArgumentError(f"{where}: {name} must be a positive integer, got {value!r}.")
    n = len(ids)
    if n < 2:
        raise ConvertError(f"{where}: {source} has {n} token(s); give a text file of at least a few sentences.")
    need = samples * seq_len
    if n < need and not allow_short:
        raise ConvertError(
            f"{where}: {source} has {n} tokens, fewer than the {samples} windows x {seq_len} tokens = {need} asked for; "
            "give a longer text, lower --samples/--seq-len, or pass --allow-short to use what there is."
        )
    length = min(seq_len, n)
    count = max(1, min(samples, n // length))
    t = torch.tensor(ids, dtype=torch.long)
    # Evenly spaced, non-overlapping: window j starts at j·stride with stride >= length.
    stride = (n - length) // (count - 1) if count > 1 else 0
    starts = torch.arange(count) * stride
    windows = t[starts[:, None] + torch.arange(length)]
    batches = [{"input_ids": w, "attention_mask": torch.ones_like(w)} for w in windows.split(batch)]
    return Calibration(batches, count, length, samples, seq_len, n)


def load_tokenizer(folder: Path):
    tf = transformers_module()
    try:
        return tf.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (ValueError, OSError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"{folder}: no usable tokenizer in the folder ({clip_text(str(err).splitlines()[0], 200) if str(err) else type(err).__name__}); "
            "the text is tokenized with the folder's own tokenizer."
        ) from None


def read_text(path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: cannot read the text file ({err}); pass a UTF-8 text file.") from None


def load_calibration(folder: Path, text_file, samples: int, seq_len: int, allow_short: bool, context: Optional[int],
                     where: str = "prune") -> Calibration:
    """Check the window length against the model's ``context``, tokenize ``text_file`` and cut the windows."""
    if context is not None and isinstance(seq_len, int) and seq_len > context:
        raise ArgumentError(
            f"{where}: --seq-len {seq_len} is longer than the model's context ({context} positions, "
            f"max_position_embeddings in config.json); use --seq-len {context} or less."
        )
    text = read_text(text_file)
    tokenizer = load_tokenizer(folder)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text_windows(list(ids), samples, seq_len, allow_short, where, str(text_file))
