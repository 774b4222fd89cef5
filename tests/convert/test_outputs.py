"""Safe outputs with real processes: kill -9 mid-write, two writers at once, stale temporaries; the
atomic claim of OUT; shard names refused before anything is read."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import nmsparse
from nmsparse.convert import _atomic, _hf, prune_checkpoint, read_checkpoint, report_checkpoint
from nmsparse.errors import CheckpointError
from nmsparse.testing import write_hf_folder

SRC = str(Path(nmsparse.__file__).resolve().parents[1])


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted([path] if path.is_file() else path.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def _big_state(n=16, size=256):
    g = torch.Generator().manual_seed(0)
    return {f"layers.{i}.fc.weight": torch.randn(size, size, generator=g) for i in range(n)}


def _write(kind, folder: Path, sd) -> Path:
    if kind == "file":
        save_file(sd, str(folder / "in.safetensors"))
        return folder / "in.safetensors"
    names = [f"model-{i + 1}-of-2.safetensors" for i in range(2)]
    return write_hf_folder(folder / "model", sd, 2, shard_names=names, config=None)


def _prune_process(src: Path, out: Path, *extra):
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "nmsparse", "prune", str(src), "-o", str(out), "--pattern", "2:4T", "--quiet", *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _temporaries(folder: Path, out: Path):
    return sorted(p for p in folder.iterdir() if p.name.startswith(f".{out.name}{_atomic.TMP_TAG}"))


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_kill_9_mid_write_leaves_in_intact_no_out_and_next_run_cleans_up(tmp_path, kind):
    src = _write(kind, tmp_path, _big_state())
    before = _digest(src)
    out = tmp_path / ("out.safetensors" if kind == "file" else "out")
    proc = _prune_process(src, out)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        tmps = _temporaries(tmp_path, out)
        written = [p for p in tmps if (p.is_file() and p.stat().st_size > 0) or (p.is_dir() and any(p.iterdir()))]
        if written:
            break
        time.sleep(0.002)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _digest(src) == before  # IN intact
    assert not os.path.lexists(out)  # no partial OUT
    left = _temporaries(tmp_path, out)
    assert len(left) == 1 and f"{_atomic.TMP_TAG}{proc.pid}-" in left[0].name  # one recognisable temporary
    res = prune_checkpoint(src, out, "2:4T")  # the next run for the same OUT removes it
    assert _temporaries(tmp_path, out) == [] and any("interrupted run" in n for n in res.notes)
    assert report_checkpoint(out, "2:4T").broken == []


def test_stale_cleanup_spares_live_runs_and_other_names(tmp_path):
    out = tmp_path / "o.safetensors"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".o.safetensors{_atomic.TMP_TAG}{dead_pid}-abcd1234"
    stale_dir = tmp_path / f".o.safetensors{_atomic.OLD_TAG}{dead_pid}-abcd1235"
    live = tmp_path / f".o.safetensors{_atomic.TMP_TAG}{os.getppid()}-abcd1236"
    other = tmp_path / f".p.safetensors{_atomic.TMP_TAG}{dead_pid}-abcd1237"
    user = tmp_path / ".o.safetensors.tmp"
    for p in (stale, live, other, user, out):
        p.write_bytes(b"x")
    stale_dir.mkdir()
    removed = _atomic.clean_stale(out)
    assert sorted(removed) == sorted([stale, stale_dir])
    assert live.exists() and other.exists() and user.exists() and out.read_bytes() == b"x"


def test_a_run_killed_mid_swap_gets_its_previous_out_back(tmp_path):
    """--force on a folder without an atomic exchange: OUT is renamed aside first; if the run dies
    right then, the next run restores it rather than deleting it."""
    out = tmp_path / "out"
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)
    aside = tmp_path / f".out{_atomic.OLD_TAG}{dead}-abcd1234"
    aside.mkdir()
    (aside / "weights").write_text("previous")
    assert _atomic.clean_stale(out) == []
    assert (out / "weights").read_text() == "previous" and not aside.exists()


@pytest.fixture(params=["renameat2", "portable"])
def rename_impl(request, monkeypatch):
    """Both ways of claiming OUT: renameat2 (Linux) and the link/mkdir fallback (other systems)."""
    if request.param == "portable":
        monkeypatch.setattr(_atomic, "_renameat2", lambda: None)
    elif _atomic._renameat2() is None:
        pytest.skip("no renameat2 here")
    return request.param


@pytest.mark.parametrize("is_dir", [False, True])
def test_force_replaces_same_kind_with_either_rename(tmp_path, rename_impl, is_dir):
    out = tmp_path / "out"
    fn = _atomic.atomic_write_dir if is_dir else _atomic.atomic_write_file
    fill = (lambda tmp: (tmp / "f").write_text("one")) if is_dir else (lambda tmp: tmp.write_text("one"))
    fn(out, fill)
    fill2 = (lambda tmp: (tmp / "g").write_text("two")) if is_dir else (lambda tmp: tmp.write_text("two"))
    fn(out, fill2, force=True)
    assert ((out / "g") if is_dir else out).read_text() == "two"
    assert not is_dir or not (out / "f").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_full_disk_in_a_subprocess_is_one_line_and_leaves_nothing(tmp_path, kind):
    """A real short write: the child may not grow a file past 256 KiB (RLIMIT_FSIZE, SIGXFSZ
    ignored, so write() fails with EFBIG) - works without privileges, unlike a small mount."""
    import resource

    src = _write(kind, tmp_path, _big_state(n=4, size=256))  # 1 MiB
    before = _digest(src)
    out = tmp_path / ("out.safetensors" if kind == "file" else "out")

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, resource.RLIM_INFINITY))

    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "nmsparse", "prune", str(src), "-o", str(out), "--pattern", "2:4T", "--quiet"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, preexec_fn=limit, timeout=300)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 1 and len(lines) == 1, res.stderr
    assert "disk is full or the file is too large" in lines[0] and "nothing was written" in lines[0]
    assert _digest(src) == before and not os.path.lexists(out) and _temporaries(tmp_path, out) == []


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_two_writers_at_once_exactly_one_wins(tmp_path, kind):
    src = _write(kind, tmp_path, _big_state(n=4, size=128))
    out = tmp_path / ("out.safetensors" if kind == "file" else "out")
    procs = [_prune_process(src, out) for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 1], results
    loser = [r for r in results if r[0] == 1][0]
    lines = [ln for ln in loser[2].splitlines() if ln.strip()]
    assert len(lines) == 1 and ("appeared while this run was writing" in lines[0] or "already exists" in lines[0]), loser[2]
    assert report_checkpoint(out, "2:4T").broken == [] and _temporaries(tmp_path, out) == []


@pytest.mark.parametrize("is_dir", [False, True])
def test_claim_never_replaces_an_out_that_appears_mid_write(tmp_path, rename_impl, is_dir):
    """Deterministic version of the race: OUT is created by someone else while we write."""
    out = tmp_path / "out"

    def write(tmp):
        if is_dir:
            (tmp / "a").write_text("ours")
            out.mkdir()
            (out / "theirs").write_text("theirs")
        else:
            tmp.write_text("ours")
            out.write_text("theirs")

    fn = _atomic.atomic_write_dir if is_dir else _atomic.atomic_write_file
    with pytest.raises(CheckpointError, match="appeared while this run was writing"):
        fn(out, write)
    assert (out / "theirs" if is_dir else out).read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # our temporary is gone


def test_force_never_swaps_kinds_or_writes_through_links(tmp_path):
    src = tmp_path / "m.safetensors"
    save_file({"fc.weight": torch.randn(8, 8)}, str(src))
    folder = tmp_path / "adir"
    folder.mkdir()
    (folder / "keep.txt").write_text("keep")
    with pytest.raises(CheckpointError, match="is a folder but a file"):
        prune_checkpoint(src, folder, "2:4", force=True)
    assert (folder / "keep.txt").read_text() == "keep"
    target = tmp_path / "target.safetensors"
    target.write_bytes(b"precious")
    os.symlink(target, tmp_path / "link.safetensors")
    with pytest.raises(CheckpointError, match="symbolic link"):
        prune_checkpoint(src, tmp_path / "link.safetensors", "2:4", force=True)
    assert target.read_bytes() == b"precious"


def test_index_traversal_is_refused_before_any_shard_is_read(tmp_path, monkeypatch):
    victim = tmp_path / "victim.safetensors"
    save_file({"v.weight": torch.ones(4, 4)}, str(victim))
    model = tmp_path / "model"
    model.mkdir()
    save_file({"a.weight": torch.ones(4, 4)}, str(model / "a.safetensors"))
    index = {"weight_map": {"a.weight": "a.safetensors", "v.weight": "../victim.safetensors"}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    opened = []
    real = _hf.read_header
    monkeypatch.setattr(_hf, "read_header", lambda p, *a: opened.append(p) or real(p, *a))
    before = victim.read_bytes()
    for call in (lambda: read_checkpoint(model), lambda: report_checkpoint(model),
                 lambda: prune_checkpoint(model, model, "2:4", force=True)):
        with pytest.raises(CheckpointError, match=r"'\.\./victim\.safetensors', which contains '\.\.'"):
            call()
    assert opened == [] and victim.read_bytes() == before
    assert sorted(p.name for p in model.iterdir()) == ["a.safetensors", "model.safetensors.index.json"]


def test_weights_only_loading_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"w": torch.ones(4, 4), "evil": Evil()}, tmp_path / "evil.pt")
    for call in (lambda: read_checkpoint(tmp_path / "evil.pt"), lambda: report_checkpoint(tmp_path / "evil.pt"),
                 lambda: prune_checkpoint(tmp_path / "evil.pt", tmp_path / "o.pt", "2:4")):
        with pytest.raises(CheckpointError, match="weights_only=True"):
            call()
    assert not marker.exists() and not (tmp_path / "o.pt").exists()


@pytest.mark.parametrize("command", ["prune", "report"])
def test_cli_turns_an_unforeseen_oserror_into_one_line(tmp_path, monkeypatch, capsys, command):
    import nmsparse.convert as convert
    from nmsparse.cli import main

    def fail(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "in" / "config.json"))

    monkeypatch.setattr(convert, "prune_checkpoint", fail)
    monkeypatch.setattr(convert, "report_checkpoint", fail)
    argv = ["prune", "in", "-o", "out", "--pattern", "2:4"] if command == "prune" else ["report", "in"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "Permission denied" in err and "config.json" in err


def test_torch_warnings_about_damaged_files_stay_off_stderr(tmp_path):
    """`nmsparse report` must print one line, not torch's UserWarning about an odd pickle protocol."""
    import warnings

    torch.save({"w": torch.ones(4, 4)}, tmp_path / "m.pt", _use_new_zipfile_serialization=False)
    data = bytearray((tmp_path / "m.pt").read_bytes())
    data[1] = 0xF3
    (tmp_path / "m.pt").write_bytes(bytes(data))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        read_checkpoint(tmp_path / "m.pt")
        report_checkpoint(tmp_path / "m.pt")
    assert [str(w.message) for w in seen] == []


def test_calibrated_prune_refuses_a_traversal_index_before_loading_anything(tmp_path, capsys):
    """`prune --calibration` goes through the same checked reader before transformers sees the folder."""
    from nmsparse.cli import main

    victim = tmp_path / "victim.safetensors"
    save_file({"v.weight": torch.ones(4, 4)}, str(victim))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"v.weight": "../victim.safetensors"}}))
    (tmp_path / "calib.txt").write_text("some text " * 50)
    before = victim.read_bytes()
    argv = ["prune", str(model), "-o", str(tmp_path / "out"), "--pattern", "2:4", "--calibration", str(tmp_path / "calib.txt"), "--quiet"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "contains '..'" in err
    assert victim.read_bytes() == before and not (tmp_path / "out").exists()
