"""A throw-away world for one checkpoint case: a folder holding IN (maybe hostile), a victim file
outside IN, and room for OUT; a snapshot of every byte before the case, checked after it.

The invariants every IO case must keep, whatever its outcome:
* IN's bytes, and everything outside OUT, are unchanged (nothing lost, nothing written outside OUT);
* on an error OUT is exactly as before (no partial OUT) and no temporary is left behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Dict, Optional

import torch
from safetensors.torch import save_file

from nmsparse.errors import NMSparseError
from nmsparse.testing import write_hf_folder


def state(seed: int = 0) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "layers.0.fc1.weight": torch.randn(8, 16, generator=g),
        "layers.0.fc1.bias": torch.randn(8, generator=g),
        "layers.0.fc2.weight": torch.randn(16, 8, generator=g).half(),
        "layers.1.proj.weight": torch.randn(8, 8, generator=g).bfloat16(),
        "embed.weight": torch.randn(12, 8, generator=g),
        "bn.num_batches_tracked": torch.tensor(3),
    }


def snapshot(root: Path) -> Dict[str, str]:
    """relative path -> content hash (files), 'dir', or 'link:TARGET'; links are not followed."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                found[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                found[rel] = "dir"
            elif not p.is_file():
                found[rel] = "special"  # a pipe or socket: reading it would block
            else:
                found[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return found


class World:
    """``root`` holds ``victim.safetensors`` (outside IN) and whatever the builder makes."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="nms-io-"))
        self.victim = self.root / "victim.safetensors"
        save_file({"victim.weight": torch.ones(8, 8)}, str(self.victim))
        self.out: Optional[Path] = None
        self.before: Dict[str, str] = {}
        self.cleanup: list = []  # callables run by close() first (e.g. unmount)

    def freeze(self, out: Optional[Path]) -> None:
        self.out = out
        self.before = snapshot(self.root)

    def _owned(self, rel: str) -> bool:
        if self.out is None:
            return False
        out_rel = os.path.relpath(os.path.abspath(self.out), self.root)
        return rel == out_rel or rel.startswith(out_rel + os.sep) or rel == out_rel + ".prune.json"

    def check(self, succeeded: bool) -> None:
        after = snapshot(self.root)
        for rel in sorted(set(self.before) | set(after)):
            if self.before.get(rel) == after.get(rel):
                continue
            if succeeded and self._owned(rel):
                continue
            raise AssertionError(f"{rel}: changed ({self.before.get(rel)} -> {after.get(rel)}); succeeded={succeeded}")

    def close(self) -> None:
        for fn in self.cleanup:
            fn()
        for dirpath, dirnames, _ in os.walk(self.root):
            for d in dirnames:
                try:
                    os.chmod(Path(dirpath) / d, 0o755)
                except OSError:
                    pass
        shutil.rmtree(self.root, ignore_errors=True)


def guarded(build: Callable[[World], Path], act: Callable[[World, Path], object], out_name: Optional[str] = None,
            check: Optional[Callable[[World, object], None]] = None):
    """A campaign ``call``: build IN in a fresh world, act, then check the invariants (also when the
    act raised a library error, which is then re-raised for the harness to judge)."""

    def call():
        world = World()
        try:
            src = build(world)
            world.freeze(world.root / out_name if out_name else None)
            try:
                result = act(world, src)
            except NMSparseError:
                world.check(succeeded=False)
                raise
            world.check(succeeded=True)
            if check is not None:
                check(world, result)
            return result
        finally:
            world.close()

    return call


# --- builders of IN: good ones and hostile ones -------------------------------------------------


def st_file(world: World, sd=None, name="m.safetensors", metadata=None) -> Path:
    p = world.root / name
    save_file(sd or state(), str(p), metadata=metadata)
    return p


def raw_st(world: World, header: dict, data: bytes, name="m.safetensors", pad: bytes = b"") -> Path:
    raw = json.dumps(header).encode() + pad
    p = world.root / name
    p.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    return p


def hf_folder(world: World, shards: int = 2, sd=None, name="model", index_edit=None, files: Optional[Dict[str, str]] = None) -> Path:
    folder = world.root / name
    edit = None if index_edit is None else (lambda index: index_edit(world, folder, index))
    return write_hf_folder(
        folder, sd or state(), shards, shard_names=(files or {}).get("names"), index_metadata={"total_size": 0},
        file_metadata={"format": "pt"}, sort=False, index_edit=edit,
    )


def torch_file(world: World, obj=None, name="m.pt", **kwargs) -> Path:
    p = world.root / name
    torch.save(state() if obj is None else obj, p, **kwargs)
    return p


class Boom:
    """A pickle that would run a shell command when loaded without ``weights_only``."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/nmsparse-pwned",))


def evil_pickle(world: World, name="evil.pt") -> Path:
    p = world.root / name
    torch.save({"w": torch.ones(4, 4), "x": Boom()}, p)
    return p


def raw_pickle(world: World, name="raw.pt") -> Path:
    p = world.root / name
    p.write_bytes(pickle.dumps({"w": Boom()}, protocol=2))
    return p
