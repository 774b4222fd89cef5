"""The package's import graph: no cycles, the layer order of DESIGN.md (a lower layer never imports
a higher one), and the library proper never imports apps/examples/testing.

Every ``import`` in src/nmsparse is read from the source (module level and inside functions, so
lazy imports count too) and resolved to the most specific nmsparse module it loads; importing a
package runs its ``__init__``, so that is an edge to the package.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest

import nmsparse

ROOT = Path(nmsparse.__file__).parent
# Only the command line may reach the applications; only applications and the command line may
# reach the example models (DESIGN: convert -> examples -> apps -> cli).
APPS_ALLOWED = ("nmsparse.apps", "nmsparse.cli", "nmsparse.__main__")
EXAMPLES_ALLOWED = APPS_ALLOWED + ("nmsparse.examples",)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> Dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(name: str, known: Set[str]) -> str:
    """The longest prefix of dotted ``name`` that is a module of the package."""
    parts = name.split(".")
    while parts and ".".join(parts) not in known:
        parts.pop()
    return ".".join(parts)


def import_graph() -> Dict[str, Set[str]]:
    modules = _modules()
    known = set(modules)
    graph: Dict[str, Set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: List[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                # "from pkg import sub" loads pkg.sub when sub is a module, else just pkg.
                targets = [f"{prefix}.{a.name}" for a in node.names]
            for t in targets:
                if t.split(".")[0] == "nmsparse":
                    dep = _resolve(t, known)
                    if dep and dep != mod:
                        graph[mod].add(dep)
    return graph


def _cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import cycle as a path [a, b, ..., a], or [] if there is none (iterative DFS)."""
    colour = {m: 0 for m in graph}  # 0 new, 1 on the stack, 2 done
    for start in sorted(graph):
        if colour[start]:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        colour[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour[child] == 1:
                return path[path.index(child):] + [child]
            elif colour[child] == 0:
                colour[child] = 1
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child)
    return []


def _is_under(mod: str, roots) -> bool:
    return any(mod == r or mod.startswith(r + ".") for r in roots)


def test_the_graph_sees_known_edges():
    # A walker that missed imports would pass everything; pin a few edges that must be there.
    g = import_graph()
    assert "nmsparse.errors" in g["nmsparse.pattern"]
    assert "nmsparse.apps.demo" in g["nmsparse.cli"]
    assert "nmsparse.apps.claims_plot" in g["nmsparse.apps.claims"]  # a lazy import inside main()
    assert "nmsparse.selection" in g["nmsparse.convert.rules"]


def test_no_import_cycles():
    cycle = _cycle(import_graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_planted_cycle():
    g = import_graph()
    g["nmsparse.errors"] = g["nmsparse.errors"] | {"nmsparse.apps.claims"}
    assert _cycle(g)[0] == _cycle(g)[-1]


@pytest.mark.parametrize(
    "target, allowed",
    [("nmsparse.apps", APPS_ALLOWED), ("nmsparse.examples", EXAMPLES_ALLOWED), ("nmsparse.testing", ("nmsparse.testing",))],
)
def test_library_never_imports_applications_examples_or_testing(target, allowed):
    bad = sorted(
        f"{mod} imports {dep}"
        for mod, deps in import_graph().items()
        for dep in deps
        if _is_under(dep, (target,)) and not _is_under(mod, allowed)
    )
    assert not bad, "; ".join(bad)


# DESIGN.md's dependency direction, lowest first: errors -> pattern -> layout, diversity -> masks ->
# regularizers, nn -> sift, convert -> oneshot -> examples -> apps -> cli. A module may import modules
# of its own part and of strictly lower layers only; parts on one layer (layout and diversity,
# regularizers and nn, sift and convert) never import each other. Private top-level helpers belong to
# the part they serve (PART_OF); the package root is the facade over the library (above oneshot, below examples);
# testing sits above everything, so nothing in the library may import it.
LAYERS = {
    "errors": 0, "_version": 0, "_progress": 0,
    "pattern": 1, "selection": 1,
    "layout": 2, "diversity": 2,
    "masks": 3,
    "regularizers": 4, "nn": 4,
    "sift": 5, "convert": 5,
    "oneshot": 6,  # oneshot/permute/ included
    "nmsparse": 6.5,  # the package root: public names only
    "examples": 7,
    "apps": 8,
    "cli": 9,
    "testing": 10,
}

PART_OF = {"_diversity_args": "diversity", "_tile_count": "diversity", "__main__": "cli"}


def _part(mod: str) -> str:
    """The part of the layout a module belongs to: ``nmsparse.masks.api`` -> ``masks``."""
    parts = mod.split(".")
    part = parts[1] if len(parts) > 1 else parts[0]
    return PART_OF.get(part, part)


def _layer_violations(graph: Dict[str, Set[str]]) -> List[str]:
    bad = []
    for mod, deps in sorted(graph.items()):
        for dep in sorted(deps):
            a, b = _part(mod), _part(dep)
            if a != b and LAYERS[b] >= LAYERS[a]:
                bad.append(f"{mod} (layer {a}) imports {dep} (layer {b}, not below it)")
    return bad


def test_every_module_has_a_layer():
    missing = sorted({_part(m) for m in import_graph()} - set(LAYERS))
    assert not missing, f"give these parts of src/nmsparse a layer in LAYERS (see DESIGN.md): {missing}"


def test_a_lower_layer_never_imports_a_higher_one():
    bad = _layer_violations(import_graph())
    assert not bad, "; ".join(bad)


@pytest.mark.parametrize(
    "mod, dep",
    [
        ("nmsparse.masks.api", "nmsparse.nn.attach"),  # masks -> nn
        ("nmsparse.masks.rowwise", "nmsparse.oneshot.driver"),  # masks -> oneshot
        ("nmsparse.convert.prune", "nmsparse.oneshot.driver"),  # convert -> oneshot
        ("nmsparse.oneshot.driver", "nmsparse.examples.digits"),  # oneshot -> examples
        ("nmsparse.oneshot.permute.api", "nmsparse.cli"),  # permute is oneshot: oneshot -> cli
        ("nmsparse.nn.attach", "nmsparse.regularizers.groups"),  # siblings on one layer
        ("nmsparse.sift.transforms", "nmsparse.convert.rules"),  # siblings on one layer
        ("nmsparse.errors", "nmsparse.pattern"),  # the bottom imports nothing above it
        ("nmsparse.apps.demo", "nmsparse.cli"),  # apps -> cli
        ("nmsparse.examples.digits", "nmsparse.testing.oracles"),  # anything -> testing
    ],
)
def test_layer_check_finds_a_planted_upward_import(mod, dep):
    g = import_graph()
    assert not any(mod in v for v in _layer_violations(g))
    g[mod] = g[mod] | {dep}
    assert any(v.startswith(f"{mod} ") and dep in v for v in _layer_violations(g))


def test_version_leaf_module_matches_pyproject():
    # __version__ lives in nmsparse/_version.py so convert/cli need not import the package root.
    import re

    text = (ROOT.parent.parent / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^version = "([^"]+)"', text, re.M).group(1) == nmsparse.__version__
