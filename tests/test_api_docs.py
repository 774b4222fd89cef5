"""The API reference (mkdocs.yml, docs/api/): it builds with warnings as errors and lists every
public name of nmsparse and of its public sub-packages."""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# module -> its page under docs/api/
PAGES = {
    "nmsparse": "nmsparse",
    "nmsparse.masks": "masks",
    "nmsparse.nn": "nn",
    "nmsparse.convert": "convert",
    "nmsparse.oneshot": "oneshot",
    "nmsparse.sift": "sift",
    "nmsparse.regularizers": "regularizers",
}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return out


def _ids(site, page):
    html = (site / "api" / page / "index.html").read_text(encoding="utf-8")
    return set(re.findall(r'id="([^"]+)"', html)), html


def test_every_public_module_has_a_page():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for module, page in PAGES.items():
        source = (ROOT / "docs" / "api" / f"{page}.md").read_text(encoding="utf-8")
        assert f"::: {module}\n" in source, f"docs/api/{page}.md does not render {module}"
        assert f"api/{page}.md" in nav, f"mkdocs.yml's nav lacks api/{page}.md"


@pytest.mark.parametrize("module", list(PAGES))
def test_every_name_in_all_is_documented(site, module):
    mod = importlib.import_module(module)
    ids, html = _ids(site, PAGES[module])
    missing = []
    for name in mod.__all__:
        obj = getattr(mod, name)
        if inspect.ismodule(obj):  # a sub-package in __all__: it has its own page
            if obj.__name__ not in PAGES:
                missing.append(name)
            continue
        if f"{module}.{name}" in ids or any(i.endswith(f".{name}") for i in ids):
            continue
        if not (inspect.isclass(obj) or callable(obj)) and f"{module}.{name}" in html:  # a constant named in the text
            continue
        missing.append(name)
    assert not missing, f"{module}: not in docs/api/{PAGES[module]}.md's page: {missing}"


def test_readme_links_the_reference_and_says_how_to_build_it():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "docs/api/" in readme and "mkdocs build --strict" in readme and "mkdocs serve" in readme
