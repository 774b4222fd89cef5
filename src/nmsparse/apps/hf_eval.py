"""``nmsparse eval``: perplexity of a Hugging Face causal LM folder on a text file (and ``prune --eval``).

The text is tokenized with the folder's own tokenizer and cut into non-overlapping windows of
``seq_len`` tokens at evenly spaced offsets (:func:`nmsparse.oneshot.calibration_text.text_windows`,
the same rule as the calibration windows); each window is scored on its own (no context carried
over), and the perplexity is ``exp`` of the mean next-token negative log-likelihood over every
predicted token (``seq_len - 1`` per window).
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Iterator, Union

import torch

from .._progress import Progress
from ..errors import CheckpointError, clip_text
from ..oneshot.calibration_text import context_length, load_calibration, transformers_module

__all__ = ["evaluate_folder", "perplexity", "quiet_transformers"]


@contextlib.contextmanager
def quiet_transformers(enabled: bool = True) -> Iterator[None]:
    """Silence transformers' progress bars inside (``--quiet``), restoring its setting afterwards."""
    tf = transformers_module()
    logging = tf.utils.logging
    was_disabled = not logging.is_progress_bar_enabled()
    if enabled:
        logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled and not was_disabled:
            logging.enable_progress_bar()


@torch.no_grad()
def perplexity(model, batches, progress: bool = False) -> dict:
    """``{"perplexity", "nll", "predicted"}`` of a causal LM over dict batches of ``input_ids``."""
    total, count = 0.0, 0
    with Progress(len(batches), "scoring", enabled=progress) as bar:
        for batch in batches:
            ids = batch["input_ids"]
            logits = model(input_ids=ids).logits.double()
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum")
            total += float(nll)
            count += ids[:, 1:].numel()
            bar.advance()
    mean = total / max(count, 1)
    return {"perplexity": math.exp(mean) if mean < 700 else float("inf"), "nll": mean, "predicted": count}


def evaluate_folder(folder: Union[str, Path], text, *, seq_len: int = 512, windows: int = 32, allow_short: bool = False,
                    progress: bool = False, where: str = "eval") -> dict:
    """Perplexity of the causal LM in ``folder`` on the UTF-8 text file ``text`` (see the module docstring).

    Returns ``{"perplexity", "tokens", "windows", "seq_len", "seconds", "short"}``; ``tokens`` counts
    the predicted tokens."""
    start = time.perf_counter()
    folder = Path(folder)
    tf = transformers_module()
    with quiet_transformers(not progress):
        try:
            config = tf.AutoConfig.from_pretrained(str(folder), local_files_only=True)
        except (ValueError, OSError, KeyError, TypeError) as err:
            raise CheckpointError(f"{folder}: transformers cannot read a model config here ({clip_text(str(err).splitlines()[0], 200) if str(err) else type(err).__name__}); "
                                  "pass a Hugging Face model folder.") from None
        calib = load_calibration(folder, text, windows, seq_len, allow_short, context_length(config), where=where)
        model = _load_causal_lm(tf, folder)
    res = perplexity(model, calib.batches, progress=progress)
    return {"perplexity": res["perplexity"], "tokens": res["predicted"], "windows": calib.windows, "seq_len": calib.seq_len,
            "seconds": time.perf_counter() - start, "short": calib.short}


def _load_causal_lm(tf, folder: Path):
    last = ""
    for kw in ({"dtype": torch.float32}, {"torch_dtype": torch.float32}):
        try:
            return tf.AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, **kw).eval()
        except TypeError as err:  # the dtype argument's name differs between transformers versions
            last = str(err)
        except (ValueError, OSError, KeyError) as err:
            last = str(err).splitlines()[0] if str(err) else type(err).__name__
            break
    raise CheckpointError(f"{folder}: transformers cannot load a causal LM from this folder ({clip_text(last, 200)}); eval scores causal LMs.")
