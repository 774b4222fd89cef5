"""A small character-level transformer language model on text every Python install carries.

The text is the running interpreter's own standard-library source: a fixed, sorted list of
:data:`STDLIB_FILES` (present in every CPython 3.10 - 3.14 install), read as UTF-8 bytes from
``sysconfig.get_paths()["stdlib"]``. Nothing is downloaded. Each file is split at 90 % of its
length: the head goes to training, the tail to validation, so both splits cover every file
(Python code, docstrings and comments: English plus code). The vocabulary is the 256 byte
values, so there is nothing to build and no unknown token. The files' content differs between
Python versions, so results are reproducible per interpreter version; :attr:`TextCorpus.sha256`
fingerprints the exact text used.

The model (:class:`CharTransformer`) is a GPT-style pre-norm transformer whose attention and MLP
projections are plain ``nn.Linear`` layers named ``blocks.<i>.attn.{q,k,v,out}`` and
``blocks.<i>.mlp.{fc1,fc2}``: the layers a sparsity recipe prunes. The token/position embeddings
and the output ``head`` are what recipes keep dense.

Example
-------
>>> import torch
>>> corpus = load_stdlib_corpus()                       # doctest: +SKIP
>>> model = CharTransformer(seed=0)
>>> x = torch.zeros(2, 16, dtype=torch.long)
>>> model(x).shape
torch.Size([2, 16, 256])
"""

from __future__ import annotations

import hashlib
import math
import os
import sysconfig
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .._progress import Progress
from ..errors import ArgumentError, ShapeError

#: Standard-library modules read for the corpus (sorted; single-file modules in CPython 3.10-3.14;
#: ``string``, ``pathlib`` and ``zipfile`` are avoided because they became packages).
STDLIB_FILES = (
    "abc.py", "argparse.py", "base64.py", "bisect.py", "calendar.py", "contextlib.py", "copy.py",
    "csv.py", "dataclasses.py", "difflib.py", "enum.py", "fractions.py", "functools.py", "glob.py",
    "heapq.py", "random.py", "shutil.py", "textwrap.py", "tokenize.py", "weakref.py",
)
#: A larger fixed corpus (about 3.2 MB on CPython 3.11) for the claims report's bigger LM:
#: :data:`STDLIB_FILES` plus 81 more single-file modules, none of them removed by PEP 594 nor turned
#: into packages up to 3.14 (a missing one raises a clear error naming it).
STDLIB_FILES_LARGE = tuple(sorted(STDLIB_FILES + tuple(f"{m}.py" for m in (
    "ast bdb cmd code codecs configparser copyreg dis doctest filecmp fileinput fnmatch ftplib getopt gettext "
    "gzip hashlib hmac imaplib inspect ipaddress keyword linecache locale mailbox mimetypes netrc ntpath numbers "
    "opcode operator optparse os pdb pickle pickletools pkgutil platform plistlib poplib posixpath pprint profile "
    "pstats py_compile pyclbr queue quopri reprlib rlcompleter runpy sched secrets selectors shelve shlex smtplib "
    "socket socketserver stat statistics struct subprocess symtable tabnanny tarfile tempfile threading timeit "
    "token trace traceback tracemalloc types typing uuid warnings wave webbrowser zipapp zipimport"
).split())))
VOCAB_SIZE = 256  # byte values


@dataclass(frozen=True)
class TextCorpus:
    """Byte tokens ``(N,)`` uint8 for training and validation, and what they were read from."""

    train: torch.Tensor
    valid: torch.Tensor
    files: tuple
    root: str
    sha256: str

    def describe(self) -> str:
        return (
            f"{len(self.files)} stdlib files from {self.root}: {len(self.train):,} train / "
            f"{len(self.valid):,} validation bytes (sha256 {self.sha256[:12]})"
        )


def load_stdlib_corpus(
    files: Sequence[str] = STDLIB_FILES, valid_fraction: float = 0.1, root: Optional[str] = None
) -> TextCorpus:
    """Read the fixed stdlib files and split each at ``1 - valid_fraction`` of its bytes.

    Parameters
    ----------
    files : sequence of str
        Paths relative to the stdlib folder. Read in the given order.
    valid_fraction : float
        Share of each file's tail held out for validation, in (0, 1).
    root : str, optional
        The stdlib folder; default ``sysconfig.get_paths()["stdlib"]`` of this interpreter.

    Raises
    ------
    ArgumentError
        If a file is missing or unreadable (e.g. a frozen or zip-only install without ``.py``
        sources), naming the files and the folder looked in.
    """
    if not 0.0 < valid_fraction < 1.0:
        raise ArgumentError(f"load_stdlib_corpus: valid_fraction must be in (0, 1), got {valid_fraction!r}; pass e.g. 0.1.")
    if not files:
        raise ArgumentError("load_stdlib_corpus: files must name at least one file, got an empty list; pass at least one stdlib .py path.")
    root = root if root is not None else sysconfig.get_paths()["stdlib"]
    missing = [f for f in files if not os.path.isfile(os.path.join(root, f))]
    if missing:
        raise ArgumentError(
            f"load_stdlib_corpus: the Python standard-library sources {missing} are not in {root!r}. "
            "This interpreter ships without .py sources (a frozen, embedded or zip-only install?); "
            "run the language-model benchmark with a regular CPython 3.10+ install, or pass root= "
            "a folder that holds these files."
        )
    train_parts, valid_parts = [], []
    digest = hashlib.sha256()
    for name in files:
        with open(os.path.join(root, name), "rb") as fh:
            # Normalise line endings so a Windows install reads the same bytes as a POSIX one.
            data = fh.read().replace(b"\r\n", b"\n")
        digest.update(name.encode() + b"\0" + data + b"\0")
        cut = int(len(data) * (1.0 - valid_fraction))
        train_parts.append(data[:cut])
        valid_parts.append(data[cut:])
    to_tensor = lambda parts: torch.frombuffer(bytearray(b"\n".join(parts)), dtype=torch.uint8).clone()
    return TextCorpus(to_tensor(train_parts), to_tensor(valid_parts), tuple(files), root, digest.hexdigest())


def sample_windows(tokens: torch.Tensor, count: int, length: int, *, seed: int = 0) -> torch.Tensor:
    """``count`` windows of ``length`` bytes ``(count, length)`` long, at offsets drawn with ``seed``.

    For calibration batches (one-shot pruning) and smoke tests: deterministic, independent of the
    training batch order (a separate generator).
    """
    if count < 1 or length < 1 or len(tokens) < length:
        raise ShapeError(f"sample_windows: need count >= 1 and 1 <= length <= len(tokens), got count={count}, length={length}, {len(tokens)} tokens; ask for fewer or shorter windows.")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(tokens) - length + 1, (count,), generator=g)
    return tokens[starts[:, None] + torch.arange(length)].long()


def count_parameters(model: nn.Module) -> int:
    """Number of parameter entries (dense count; a mask does not change it)."""
    return sum(p.numel() for p in model.parameters())


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with separate ``q, k, v, out`` projections ``(d, d)``."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        heads = lambda y: y.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)
        y = F.scaled_dot_product_attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)), is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    """``fc2(gelu(fc1(x)))`` with weights ``fc1: (d_ff, d)`` and ``fc2: (d, d_ff)``."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln1(x))`` then ``x + mlp(ln2(x))``."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, d_ff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class CharTransformer(nn.Module):
    """A small GPT-style byte-level language model.

    Parameters
    ----------
    d_model, n_layers, n_heads, d_ff : int
        Width, depth, attention heads and MLP hidden size. ``d_model`` must be divisible by
        ``n_heads``. Multiples of 16 for ``d_model`` and ``d_ff`` let every pattern up to 8:16T tile
        the projection weights exactly.
    context : int
        Longest input sequence (learned position embeddings).
    seed : int, optional
        Seeds ``torch.manual_seed`` before creating the weights.

    Input ``(B, T)`` long byte tokens with ``T <= context``; output logits ``(B, T, 256)``.
    Module names: ``tok, pos, blocks.<i>.{ln1, attn.q, attn.k, attn.v, attn.out, ln2, mlp.fc1,
    mlp.fc2}, ln_f, head``.
    """

    def __init__(
        self, d_model: int = 64, n_layers: int = 2, n_heads: int = 4, d_ff: int = 256, context: int = 64,
        seed: Optional[int] = 0,
    ):
        super().__init__()
        for name, value in (("d_model", d_model), ("n_layers", n_layers), ("n_heads", n_heads), ("d_ff", d_ff), ("context", context)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ArgumentError(f"CharTransformer: {name} must be a positive int, got {value!r}; pass e.g. 64.")
        if d_model % n_heads:
            raise ShapeError(f"CharTransformer: d_model must be divisible by n_heads, got d_model={d_model}, n_heads={n_heads}; change one of them.")
        if seed is not None:
            torch.manual_seed(seed)
        self.context = context
        self.tok = nn.Embedding(VOCAB_SIZE, d_model)
        self.pos = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, d_ff) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, VOCAB_SIZE)
        for module in self.modules():  # GPT-2 style init: small normal weights, zero biases
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        if t > self.context:
            raise ShapeError(f"CharTransformer: a sequence may be at most context={self.context} long, got length {t}; crop the input or build a longer context.")
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


@dataclass
class LMTrainResult:
    """What :func:`train_lm` returns: validation loss (nats per byte), perplexity, seconds."""

    val_loss: float
    seconds: float
    losses: List[float] = field(default_factory=list)
    steps: int = 0

    @property
    def val_ppl(self) -> float:
        return math.exp(self.val_loss)

    @property
    def val_bpc(self) -> float:
        """Bits per character (byte)."""
        return self.val_loss / math.log(2.0)


def train_lm(
    model: CharTransformer,
    corpus: TextCorpus,
    *,
    steps: int = 400,
    batch_size: int = 32,
    lr: float = 3e-3,
    warmup: int = 20,
    weight_decay: float = 0.0,
    clip: float = 1.0,
    seed: int = 0,
    eval_windows: int = 256,
    after_step: Optional[Callable[[nn.Module, int], None]] = None,
    progress: Optional[Progress] = None,
) -> LMTrainResult:
    """Train next-byte prediction with AdamW on random windows; return the validation loss.

    The learning rate warms up linearly for ``warmup`` steps, then follows a cosine to 10 % of
    ``lr``. Windows of ``model.context + 1`` bytes start at offsets drawn from a generator seeded
    by ``seed``. ``losses`` holds the mean training loss of each tenth of the run.
    """
    if steps < 1 or batch_size < 1:
        raise ArgumentError(f"train_lm: steps and batch_size must be >= 1, got steps={steps}, batch_size={batch_size}; pass positive ints.")
    t = model.context
    if len(corpus.train) <= t + 1:
        raise ShapeError(f"train_lm: the training text must be longer than one window ({t + 1} bytes), got {len(corpus.train)} bytes; use more text or a shorter context.")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = lambda s: min(1.0, (s + 1) / max(warmup, 1)) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / steps)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    g = torch.Generator().manual_seed(seed)
    offsets = torch.arange(t + 1)
    start = time.perf_counter()
    losses, chunk, chunk_n = [], 0.0, 0
    model.train()
    for step in range(1, steps + 1):
        starts = torch.randint(0, len(corpus.train) - t - 1, (batch_size,), generator=g)
        window = corpus.train[starts[:, None] + offsets].long()
        opt.zero_grad(set_to_none=True)
        logits = model(window[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), window[:, 1:].reshape(-1))
        loss.backward()
        if clip:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        sched.step()
        if after_step is not None:
            after_step(model, step)
        chunk += float(loss.detach())
        chunk_n += 1
        if step * 10 // steps != (step - 1) * 10 // steps or step == steps:
            losses.append(chunk / chunk_n)
            chunk, chunk_n = 0.0, 0
        if progress is not None:
            progress.advance()
    val = evaluate_lm(model, corpus.valid, max_windows=eval_windows)
    return LMTrainResult(val, time.perf_counter() - start, losses, steps)


@torch.no_grad()
def evaluate_lm(model: CharTransformer, tokens: torch.Tensor, *, max_windows: int = 256, batch_size: int = 64) -> float:
    """Mean next-byte cross-entropy (nats) over non-overlapping windows of ``tokens``.

    Uses up to ``max_windows`` windows of ``model.context + 1`` bytes spread evenly over the text
    (deterministic). Every position of a window is predicted, from 1 to ``context`` bytes of
    history. The model's train/eval mode is restored afterwards.
    """
    t = model.context
    total = (len(tokens) - 1) // t
    if total < 1:
        raise ShapeError(f"evaluate_lm: the text must hold at least one window ({t + 1} bytes), got {len(tokens)} bytes; use more text or a shorter context.")
    count = min(total, max_windows)
    starts = torch.div(torch.arange(count) * total, count, rounding_mode="floor") * t
    was_training = model.training
    model.eval()
    loss_sum, n = 0.0, 0
    offsets = torch.arange(t + 1)
    for i in range(0, count, batch_size):
        window = tokens[starts[i : i + batch_size, None] + offsets].long()
        logits = model(window[:, :-1])
        loss_sum += float(F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), window[:, 1:].reshape(-1), reduction="sum"))
        n += window[:, 1:].numel()
    model.train(was_training)
    return loss_sum / n
