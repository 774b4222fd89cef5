"""Atomic installation of a file or a folder: write beside the target, fsync, then rename.

A reader never sees a half-written OUT: the data goes to a temporary name in OUT's own folder
(same file system, so the final rename is atomic), is flushed to disk, and only then takes OUT's
name. If anything fails before that rename, the temporary is removed and OUT does not exist (or,
with ``force``, still holds its previous content).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from ..errors import CheckpointError

__all__ = ["atomic_write_file", "atomic_write_dir", "check_parent"]


def check_parent(out: Path) -> None:
    """Raise unless OUT's folder exists (we never create folders the user did not ask for)."""
    parent = out.parent
    if not parent.is_dir():
        raise CheckpointError(f"{out}: its folder {parent} does not exist; create it first or choose another -o.")


def atomic_write_file(out: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)``, fsync the file, then rename it onto ``out`` (replacing a previous OUT)."""
    out = Path(out)
    check_parent(out)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=str(out.parent))
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give OUT the permissions a plain open() would
        _fsync_file(tmp)
        _install(tmp, out)
    except BaseException:
        _remove(tmp)
        raise
    _fsync_dir(out.parent)


def atomic_write_dir(out: Path, fill: Callable[[Path], None]) -> None:
    """Call ``fill(tmp_dir)`` on a fresh temporary folder, fsync its files, then rename it onto ``out``."""
    out = Path(out)
    check_parent(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=str(out.parent)))
    try:
        fill(tmp)
        os.chmod(tmp, 0o777 & ~_umask())
        for path in sorted(tmp.rglob("*")):
            if path.is_file() and not path.is_symlink():
                _fsync_file(path)
        _fsync_dir(tmp)
        _install(tmp, out)
    except BaseException:
        _remove(tmp)
        raise
    _fsync_dir(out.parent)


def _install(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` onto ``out``. A file replacing a file is one atomic ``os.replace``; otherwise
    (a folder, or a kind change) the old OUT is first renamed aside and removed after the swap, and
    put back if the swap fails."""
    if not os.path.lexists(out) or (tmp.is_file() and out.is_file() and not out.is_symlink()):
        os.replace(tmp, out)
        return
    fd_dir = tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=str(out.parent))
    backup = Path(fd_dir) / "previous"
    os.replace(out, backup)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(backup, out)
        _remove(Path(fd_dir))
        raise
    _remove(Path(fd_dir))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            path.unlink()
    except OSError:
        pass


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; not every platform can open a folder (Windows), so best effort.
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
