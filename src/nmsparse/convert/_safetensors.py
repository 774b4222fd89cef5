"""A validating safetensors reader and an incremental writer, one tensor at a time.

Why our own: the ``safetensors`` package maps whole files (their pages count towards the
process's resident memory while a checkpoint is converted) and its writer needs every tensor in
memory at once. The format is small (https://huggingface.co/docs/safetensors): an 8-byte
little-endian header length N, N bytes of JSON (``{name: {"dtype", "shape", "data_offsets":
[begin, end]}, "__metadata__": {str: str}}``, padded with spaces), then the data; offsets are
relative to the data's start, and the tensors cover the data exactly, without gaps or overlap.

Every rule of the format is checked before a byte of data is trusted, so a header that lies
about sizes or offsets is a :class:`CheckpointError`, not a crash or a silent misread.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Dict, Iterator, List, Optional, Tuple

import torch

from ..errors import CheckpointError, clip_text

__all__ = ["Entry", "Header", "read_header", "read_tensor", "copy_bytes", "write_header", "write_tensor", "header_for"]

# The limit the safetensors package itself enforces; a larger header is damage, not a model.
MAX_HEADER = 100 * 1024 * 1024
_CHUNK = 16 * 1024 * 1024
_DTYPES: Dict[str, torch.dtype] = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32,
    "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
    "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
_NAMES = {v: k for k, v in _DTYPES.items()}


@dataclass(frozen=True)
class Entry:
    """One tensor of a safetensors file: ``begin``/``end`` are byte offsets into the data section."""

    name: str
    dtype: torch.dtype
    shape: Tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class Header:
    """A validated header: ``entries`` in data order, ``data_start`` the file offset of the data."""

    path: Path
    entries: List[Entry]
    metadata: Dict[str, str]
    data_start: int

    def names(self) -> List[str]:
        return [e.name for e in self.entries]


def _bad(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: not a valid safetensors file: {what}; it is corrupt or truncated. Re-save or re-download it.")


def read_header(path: Path, fh: Optional[BinaryIO] = None) -> Header:
    """Parse and check the header of the safetensors file at ``path`` (reads only the header)."""
    path = Path(path)
    try:
        own = fh is None
        fh = open(path, "rb") if own else fh
    except IsADirectoryError:
        raise CheckpointError(f"{path}: a folder where a safetensors file was expected; pass the file, or the model folder.") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read it ({err.strerror}); check the path and permissions.") from None
    try:
        size = os.fstat(fh.fileno()).st_size
        fh.seek(0)
        head = fh.read(8)
        if len(head) < 8:
            raise _bad(path, f"{size} bytes, shorter than the 8-byte header length")
        n = int.from_bytes(head, "little")
        if n > MAX_HEADER or 8 + n > size:
            raise _bad(path, f"header length {n} does not fit the file's {size} bytes")
        raw = fh.read(n)
    finally:
        if own:
            fh.close()
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise _bad(path, f"header is not JSON ({clip_text(str(err).splitlines()[0], 80)})") from None
    except RecursionError:  # JSON nested thousands deep: Python's parser recurses per level
        raise _bad(path, "header JSON is nested too deeply to read (a header is one flat object)") from None
    if not isinstance(doc, dict):
        raise _bad(path, "header is not a JSON object")
    metadata = doc.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise _bad(path, "__metadata__ must map strings to strings")
    entries = sorted((_entry(path, name, spec) for name, spec in doc.items()), key=lambda e: (e.begin, e.end))
    data_len = size - 8 - n
    expected = 0
    for e in entries:
        if e.begin != expected:
            what = "overlaps the tensor before it" if e.begin < expected else "leaves a gap before it"
            raise _bad(path, f"tensor {e.name!r} starts at data offset {e.begin}, which {what} (expected {expected})")
        expected = e.end
    if expected != data_len:
        raise _bad(path, f"the tensors cover {expected} bytes of data but the file holds {data_len}")
    return Header(path, entries, dict(metadata), 8 + n)


def _entry(path: Path, name: str, spec) -> Entry:
    if not isinstance(spec, dict):
        raise _bad(path, f"entry {name!r} is not an object")
    dtype = _DTYPES.get(spec.get("dtype")) if isinstance(spec.get("dtype"), str) else None
    if dtype is None:
        raise _bad(path, f"tensor {name!r} has unsupported dtype {spec.get('dtype')!r}")
    shape, offsets = spec.get("shape"), spec.get("data_offsets")
    if not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape):
        raise _bad(path, f"tensor {name!r} has shape {shape!r}, not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int and o >= 0 for o in offsets)):
        raise _bad(path, f"tensor {name!r} has data_offsets {offsets!r}, not [begin, end]")
    begin, end = offsets
    need = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if end - begin != need:
        raise _bad(path, f"tensor {name!r} of shape {shape} and dtype {spec['dtype']} needs {need} bytes, its offsets span {end - begin}")
    return Entry(name, dtype, tuple(shape), begin, end)


def read_tensor(fh: BinaryIO, header: Header, entry: Entry) -> torch.Tensor:
    """Read one tensor into fresh memory (not a map of the file)."""
    if entry.nbytes == 0:
        return torch.empty(entry.shape, dtype=entry.dtype)
    buf = bytearray(entry.nbytes)
    fh.seek(header.data_start + entry.begin)
    got = fh.readinto(buf)
    if got != entry.nbytes:
        raise _bad(header.path, f"tensor {entry.name!r} is cut short ({got} of {entry.nbytes} bytes)")
    return torch.frombuffer(buf, dtype=entry.dtype).reshape(entry.shape)


def copy_bytes(src: BinaryIO, header: Header, entry: Entry, dst: BinaryIO) -> None:
    """Copy one tensor's bytes unchanged, in bounded chunks."""
    src.seek(header.data_start + entry.begin)
    left = entry.nbytes
    while left:
        chunk = src.read(min(left, _CHUNK))
        if not chunk:
            raise _bad(header.path, f"tensor {entry.name!r} is cut short")
        dst.write(chunk)
        left -= len(chunk)


def header_for(tensors: Iterator[Tuple[str, torch.dtype, Tuple[int, ...]]]) -> List[Entry]:
    """Lay tensors out back to back, in the order given."""
    entries, at = [], 0
    for name, dtype, shape in tensors:
        if dtype not in _NAMES:
            raise CheckpointError(f"tensor {name!r}: dtype {dtype} cannot be stored in safetensors; convert it first.")
        n = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        entries.append(Entry(name, dtype, tuple(shape), at, at + n))
        at += n
    return entries


def write_header(fh: BinaryIO, entries: List[Entry], metadata: Dict[str, str]) -> int:
    """Write the length and JSON header (padded with spaces to 8 bytes, as the reference writer
    does, so the data that follows is aligned); return where the data starts."""
    doc: Dict[str, object] = {}
    if metadata:
        doc["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for e in entries:
        doc[e.name] = {"dtype": _NAMES[e.dtype], "shape": list(e.shape), "data_offsets": [e.begin, e.end]}
    raw = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-(8 + len(raw)) % 8)
    fh.write(len(raw).to_bytes(8, "little"))
    fh.write(raw)
    return 8 + len(raw)


def write_tensor(fh: BinaryIO, entry: Entry, tensor: torch.Tensor) -> None:
    """Write one tensor's bytes; it must match the entry the header announced."""
    if tensor.dtype != entry.dtype or tuple(tensor.shape) != entry.shape:
        raise CheckpointError(
            f"tensor {entry.name!r}: got {tensor.dtype} {tuple(tensor.shape)}, the header announced {entry.dtype} {entry.shape}."
        )
    if entry.nbytes:
        flat = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        fh.write(memoryview(flat.numpy()))
