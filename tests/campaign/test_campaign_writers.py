"""Campaign: every writer (safetensors file, Hugging Face folder, torch.save file) x every awkward OUT,
through `nmsparse prune`, with and without --force.

Each case: the right result or one clear line (exit 1), IN's bytes unchanged (unless OUT is IN with
--force), nothing written outside OUT, no partial OUT, no temporary left (_io_world.World.check).
Kill -9 mid-write and two concurrent writers need real processes: tests/convert/test_outputs.py.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from _harness import CliCase, parametrize, run_cli_case
from _io_world import World, hf_folder, st_file, torch_file
from nmsparse.convert import read_checkpoint, report_checkpoint

FORMATS = {
    "st": (lambda w, sd=None: st_file(w, sd), "out.safetensors"),
    "hf": (lambda w, sd=None: hf_folder(w, 2, sd), "out"),
    "torch": (lambda w, sd=None: torch_file(w, sd), "out.pt"),
}
BIG = {"a.weight": torch.randn(256, 256), "b.weight": torch.randn(256, 256)}  # 512 KiB: overflows a 128 KiB disk


def _try_mount(path: Path, options: str) -> bool:
    if os.geteuid() != 0:
        return False
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    return res.returncode == 0


class FullDisk:
    """OUT's folder is a 128 KiB tmpfs where mounting works (root); else a file-size limit of
    128 KiB for this process (SIGXFSZ ignored, so writes fail with EFBIG), restored afterwards."""

    def __init__(self, world: World):
        self.dir = world.root / "small"
        self.dir.mkdir()
        self.mounted = _try_mount(self.dir, "size=128k")

    _saved = None

    def limit(self):
        """From now until :meth:`release`, files of this process stop growing at 128 KiB."""
        if not self.mounted and FullDisk._saved is None:
            FullDisk._saved = (signal.signal(signal.SIGXFSZ, signal.SIG_IGN), resource.getrlimit(resource.RLIMIT_FSIZE))
            resource.setrlimit(resource.RLIMIT_FSIZE, (128 * 1024, FullDisk._saved[1][1]))

    @staticmethod
    def release():
        if FullDisk._saved is not None:
            handler, limit = FullDisk._saved
            resource.setrlimit(resource.RLIMIT_FSIZE, limit)
            signal.signal(signal.SIGXFSZ, handler)
            FullDisk._saved = None

    def unmount(self):
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.dir)], capture_output=True)


def _readonly_dir(world: World) -> Path:
    d = world.root / "ro"
    d.mkdir()
    if not _try_mount(d, "ro,size=64k"):
        if os.geteuid() == 0:
            pytest.skip("running as root without mount: permissions cannot make a folder read-only")
        os.chmod(d, 0o555)
    world.cleanup.append(lambda: subprocess.run(["umount", "-l", str(d)], capture_output=True))
    return d


def _scenarios(fmt):
    build, out_name = FORMATS[fmt]
    is_dir = fmt == "hf"
    exists = "already exists"
    s = {}
    s["new"] = (lambda w, src: w.root / out_name, False, None)
    s["new-unicode-name"] = (lambda w, src: w.root / ("выход-模型" + Path(out_name).suffix), False, None)
    s["out-is-in"] = (lambda w, src: src, False, "is the input checkpoint")
    s["out-is-in-force"] = (lambda w, src: src, True, None)
    s["out-is-in-spelled-differently"] = (lambda w, src: Path(str(src.parent) + "/./" + src.name), False, "is the input checkpoint")

    def link_to_in(w, src):
        os.symlink(src, w.root / "link")
        return w.root / "link"

    s["out-symlink-to-in"] = (link_to_in, False, "symbolic link")
    s["out-symlink-to-in-force"] = (link_to_in, True, "symbolic link")

    def link_to_other(w, src):
        other = w.root / "other.bin"
        other.write_bytes(b"keep")
        os.symlink(other, w.root / out_name)
        return w.root / out_name

    s["out-symlink-to-other"] = (link_to_other, False, "symbolic link")
    s["out-symlink-to-other-force"] = (link_to_other, True, "symbolic link")

    def dangling(w, src):
        os.symlink(w.root / "nowhere", w.root / out_name)
        return w.root / out_name

    s["out-dangling-symlink-force"] = (dangling, True, "symbolic link")

    def existing_file(w, src):
        (w.root / out_name).write_bytes(b"precious")
        return w.root / out_name

    s["out-existing-file"] = (existing_file, False, exists)
    s["out-existing-file-force"] = (existing_file, True, "is a file but a folder" if is_dir else None)

    def existing_dir(w, src):
        d = w.root / out_name
        d.mkdir()
        (d / "precious.txt").write_text("keep me")
        return d

    s["out-existing-folder"] = (existing_dir, False, exists)
    s["out-existing-folder-force"] = (existing_dir, True, None if is_dir else "is a folder but a file")

    def empty_dir(w, src):
        (w.root / out_name).mkdir()
        return w.root / out_name

    s["out-empty-folder-force"] = (empty_dir, True, None if is_dir else "is a folder but a file")

    def fifo(w, src):
        os.mkfifo(w.root / out_name)
        return w.root / out_name

    s["out-fifo-force"] = (fifo, True, "neither a file nor a folder")
    s["out-trailing-slash"] = (lambda w, src: str(w.root / out_name) + "/", False, None if is_dir else "ends with '/'")
    s["out-parent-missing"] = (lambda w, src: w.root / "no" / "such" / out_name, False, "does not exist")
    s["out-read-only-folder"] = (lambda w, src: _readonly_dir(w) / out_name, False, "could not write")

    def holds_in(w, src):
        return src.parent

    s["out-holds-in-force"] = (holds_in, True, "holds the input|is a folder but a file")

    def json_exists(w, src):
        (w.root / (out_name + ".prune.json")).write_text("{}")
        return w.root / out_name

    s["out-report-json-exists"] = (json_exists, False, exists)
    s["out-report-json-exists-force"] = (json_exists, True, None)
    if is_dir:
        s["out-inside-in"] = (lambda w, src: src / "pruned", False, "inside the input folder")
        s["out-inside-in-force"] = (lambda w, src: src / "pruned", True, "inside the input folder")
    else:
        s["out-under-in-file"] = (lambda w, src: src / "x", False, "does not exist")
    s["full-disk"] = ("full-disk", False, "could not write")
    return build, s


def _case(fmt, name, scenario, build):
    make_out, force, err = scenario
    box = {}

    def argv():
        world = box["world"] = World()
        src = box["src"] = build(world, BIG if make_out == "full-disk" else None)
        if make_out == "full-disk":
            box["disk"] = FullDisk(world)
            out = box["disk"].dir / FORMATS[fmt][1]
        else:
            out = make_out(world, src)
        box["out"] = Path(out)
        world.freeze(Path(os.path.abspath(os.fspath(out).rstrip("/"))) if os.path.realpath(out) != os.path.realpath(src) else src)
        if "disk" in box:
            box["disk"].limit()
        return ["prune", str(src), "-o", str(out), "--pattern", "2:4T", "--quiet"] + (["--force"] if force else [])

    def check():
        FullDisk.release()
        world = box["world"]
        try:
            world.check(succeeded=err is None)
            if err is None:
                out = Path(os.fspath(box["out"]).rstrip("/"))
                rep = report_checkpoint(out, "2:4T")
                assert rep.broken == [] and rep.checked, "OUT breaks 2:4T, or report checks no weight of it"
                assert read_checkpoint(out).format == read_checkpoint(box["src"]).format if out != box["src"] else True
        finally:
            if "disk" in box:
                box["disk"].unmount()
            world.close()

    return CliCase(f"{fmt}-{name}", argv, 1 if err else 0, err, check)


def _cases():
    cases = []
    for fmt in FORMATS:
        build, scenarios = _scenarios(fmt)
        for name, sc in scenarios.items():
            cases.append(_case(fmt, name, sc, build))
    return cases


@parametrize(_cases())
def test_writer_cli(case):
    try:
        run_cli_case(case)
    finally:
        FullDisk.release()  # never leave a lowered file-size limit behind a failed case
