"""Safe outputs: check OUT, build it under a temporary name we own, fsync, then claim OUT atomically.

Rules (``docs/security.md`` names the test behind each):

* A reader never sees a half-written OUT: data goes to ``.OUTNAME.nmsparse-tmp-<pid>-<random>`` in
  OUT's own folder (same file system, so the final rename is atomic), is fsynced, then renamed.
* Without ``force`` OUT is claimed with a rename that cannot replace (``renameat2`` with
  ``RENAME_NOREPLACE``; else ``link`` for a file, an exclusive ``mkdir`` for a folder), so of two
  runs writing the same OUT exactly one wins and the other gets a :class:`CheckpointError`.
* With ``force`` a file replaces a file and a folder a folder; never a folder by a file or the
  reverse, never through a symbolic link, never a folder that holds IN.
* A run killed with SIGKILL leaves only its temporary; the next run for the same OUT removes
  temporaries whose process is gone (``clean_stale``).
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Callable, List, Optional, Union

from ..errors import CheckpointError

__all__ = ["atomic_write_file", "atomic_write_dir", "check_output", "clean_stale", "temp_path", "TMP_TAG"]

TMP_TAG = ".nmsparse-tmp-"
OLD_TAG = ".nmsparse-old-"
PathLike = Union[str, os.PathLike]


def temp_path(out: Path, tag: str = TMP_TAG) -> Path:
    """Our temporary's name for ``out``: hidden, recognisable, and carrying our pid."""
    return out.parent / f".{out.name}{tag}{os.getpid()}-{secrets.token_hex(4)}"


def clean_stale(out: Path) -> List[Path]:
    """Remove temporaries for ``out`` left by runs that are no longer alive; return what went."""
    out = Path(out)
    pattern = re.compile(re.escape(f".{out.name}") + f"({re.escape(TMP_TAG)}|{re.escape(OLD_TAG)})" + r"(\d+)-[0-9a-f]+")
    removed = []
    try:
        names = os.listdir(out.parent)
    except OSError:
        return removed
    for name in names:
        found = pattern.fullmatch(name)
        if found and not _alive(int(found.group(2))):
            if found.group(1) == OLD_TAG and not os.path.lexists(out):
                os.rename(out.parent / name, out)  # killed mid-swap: the previous OUT goes back
                continue
            _remove(out.parent / name)
            removed.append(out.parent / name)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def check_output(src: Optional[PathLike], out: PathLike, kind: str, force: bool) -> Path:
    """Refuse an OUT that would lose data or is of the wrong kind; return it as a Path.

    ``kind`` is ``"file"`` or ``"dir"``: what will be written. ``src`` is the input (file or folder).
    """
    text = os.fspath(out)
    out = Path(text)
    if kind == "file" and text.endswith((os.sep, "/")):
        raise CheckpointError(f"{text}: ends with '/', which names a folder, but a file is being written; drop the slash.")
    if out.is_symlink():
        raise CheckpointError(
            f"{out} is a symbolic link (to {os.readlink(out)}); nmsparse never writes through or replaces a link. "
            "Remove the link or choose another -o."
        )
    real_out = os.path.realpath(out)
    if src is not None:
        real_src = os.path.realpath(src)
        if real_out == real_src:
            if not force:
                raise CheckpointError(f"{out} is the input checkpoint; choose another -o, or pass --force (force=True) to replace it.")
        elif os.path.isdir(real_src) and _inside(real_out, real_src):
            raise CheckpointError(f"{out} is inside the input folder {src}; writing there would change the input. Choose -o outside it.")
        elif _inside(real_src, real_out):
            raise CheckpointError(f"{out} holds the input {src}; replacing it would delete the input. Choose another -o.")
    if not out.parent.is_dir():
        raise CheckpointError(f"{out}: its folder {out.parent} does not exist; create it first or choose another -o.")
    if os.path.lexists(out):
        have = "dir" if out.is_dir() else "file" if out.is_file() else "other"
        if not force:
            raise CheckpointError(f"{out} already exists; choose another -o, or pass --force (force=True) to replace it.")
        if have != kind:
            names = {"dir": "a folder", "file": "a file", "other": "neither a file nor a folder"}
            raise CheckpointError(
                f"{out} is {names[have]} but {names[kind]} is being written; --force replaces a file by a file and a "
                "folder by a folder, never one kind by another. Remove it or choose another -o."
            )
    return out


def _inside(path: str, folder: str) -> bool:
    return path != folder and path.startswith(folder.rstrip(os.sep) + os.sep)


def atomic_write_file(out: PathLike, write: Callable[[Path], None], *, force: bool = False) -> List[Path]:
    """Call ``write(tmp_path)``, fsync, then install the file as ``out``; return stale temporaries removed."""
    out = Path(out)
    stale = clean_stale(out)
    tmp = temp_path(out)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
    except OSError as err:
        raise _write_error(out, err) from None
    os.close(fd)
    try:
        write(tmp)
        _fsync(tmp)
        _install(tmp, out, force, is_dir=False)
    except BaseException as err:
        _remove(tmp)
        if isinstance(err, OSError) and not isinstance(err, CheckpointError):
            raise _write_error(out, err) from None
        raise
    _fsync(out.parent)
    return stale


def atomic_write_dir(out: PathLike, fill: Callable[[Path], None], *, force: bool = False) -> List[Path]:
    """Call ``fill(tmp_dir)`` on a fresh folder, fsync its files, then install it as ``out``."""
    out = Path(out)
    stale = clean_stale(out)
    tmp = temp_path(out)
    try:
        os.mkdir(tmp)  # 0o777 less the umask, as for mkdir
    except OSError as err:
        raise _write_error(out, err) from None
    try:
        fill(tmp)
        for path in sorted(tmp.rglob("*")):
            if path.is_file() and not path.is_symlink():
                _fsync(path)
        _fsync(tmp)
        _install(tmp, out, force, is_dir=True)
    except BaseException as err:
        _remove(tmp)
        if isinstance(err, OSError) and not isinstance(err, CheckpointError):
            raise _write_error(out, err) from None
        raise
    _fsync(out.parent)
    return stale


def _write_error(out: Path, err: OSError) -> CheckpointError:
    if err.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        why = "the disk is full or the file is too large"
    elif err.errno == errno.EROFS:
        why = f"{out.parent} is on a read-only file system"
    elif err.errno in (errno.EACCES, errno.EPERM):
        why = f"permission denied on {err.filename or out.parent}"
    else:
        why = err.strerror or str(err)
    return CheckpointError(f"{out}: could not write it ({why}); nothing was written. Free space or fix the permissions, then rerun.")


def _install(tmp: Path, out: Path, force: bool, is_dir: bool) -> None:
    """Rename ``tmp`` onto ``out``: never replacing without ``force``, never changing OUT's kind."""
    try:
        _rename_noreplace(tmp, out, is_dir)
        return
    except FileExistsError:
        if not force:
            raise CheckpointError(
                f"{out} appeared while this run was writing it (another run?); it was left as it is and nothing "
                "was written. Choose another -o, or pass --force to replace it."
            ) from None
    if out.is_symlink() or out.is_dir() != is_dir:
        raise CheckpointError(f"{out} changed kind while this run was writing it; nothing was written. Rerun.")
    if not is_dir:
        os.replace(tmp, out)  # a file onto a file: one atomic step
        return
    if _exchange(tmp, out):  # one atomic swap; ``tmp`` now holds the previous OUT
        _remove(tmp)
        return
    old = temp_path(out, OLD_TAG)
    os.rename(out, old)  # if killed before the next line, clean_stale puts ``old`` back
    try:
        _rename_noreplace(tmp, out, True)
    except BaseException:
        os.rename(old, out)
        raise
    _remove(old)


_libc = None
_AT_FDCWD, _RENAME_NOREPLACE, _RENAME_EXCHANGE = -100, 1, 2


def _renameat2():
    """glibc's ``renameat2`` (Linux, glibc >= 2.28), or None."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.renameat2  # noqa: B018 - probe
        except (OSError, AttributeError):
            _libc = False
    return _libc.renameat2 if _libc else None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (``RENAME_EXCHANGE``); False where the system cannot."""
    fn = _renameat2()
    return bool(fn) and fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _rename_noreplace(src: Path, dst: Path, is_dir: bool) -> None:
    """Rename that raises FileExistsError instead of replacing ``dst``."""
    fn = _renameat2()
    if fn:
        if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            raise FileExistsError(code, os.strerror(code), str(dst))
        if code not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), str(dst))
    # No renameat2 (another OS or file system): a hard link cannot replace; a folder claims OUT by mkdir.
    if not is_dir:
        os.link(src, dst)
        os.unlink(src)
        return
    os.mkdir(dst)
    os.rename(src, dst)  # onto the empty folder this process just created


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            path.unlink()
    except OSError:
        pass


def _fsync(path: Path) -> None:
    # Folders cannot be opened on every platform (Windows): best effort there.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
