"""The dependency graph drawn in docs/architecture.md is the one the imports follow: every
module's imports are parsed (ast, nothing is imported), and an import between the repository's
packages that the graph does not draw fails, as does an arrow that no import uses."""

from __future__ import annotations

import ast
import re
import tomllib
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("worker", "api_client", "jobcore", "devstack", "deploy", "tools", "bench", "examples")
PACKAGES_AND_TESTS = (*PACKAGES, "tests")
SHIPPED = {"worker", "api_client", "jobcore"}
# Modules that only these may import: the worker's composition root.
COMPOSITION_ROOTS = {"worker.app": {"worker.cli", "devstack.__main__"}}

# Known violations, each named, to be removed when fixed (a stale one fails too).
Edge = tuple[str, str]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES_AND_TESTS:
        for path in sorted((REPO / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def imports(path: Path, name: str) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every import, nested ones included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                is_package = path.name == "__init__.py"
                base = name.split(".")[: len(name.split(".")) - node.level + is_package]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.append((module, [alias.name for alias in node.names]))
    return found


def actual_edges() -> dict[Edge, list[str]]:
    edges: dict[Edge, list[str]] = defaultdict(list)
    for name, path in modules().items():
        source = name.split(".")[0]
        for module, _ in imports(path, name):
            target = module.split(".")[0]
            if target in PACKAGES_AND_TESTS and target != source:
                edges[source, target].append(f"{path.relative_to(REPO)} imports {module}")
    return edges


def drawn_edges() -> set[Edge]:
    text = (REPO / "docs" / "architecture.md").read_text()
    block = re.search(r"```mermaid\n(.*?)```", text, re.DOTALL)
    assert block is not None, "docs/architecture.md has no mermaid graph"
    edges = set(re.findall(r"^\s*(\w+)\s*-->\s*(\w+)\s*$", block.group(1), re.MULTILINE))
    assert edges, "the mermaid graph draws no arrow"
    return edges


def test_every_import_between_packages_is_drawn_in_the_architecture_doc() -> None:
    drawn, actual = drawn_edges(), actual_edges()
    undrawn = {edge: where for edge, where in actual.items() if edge not in drawn}
    assert not undrawn, "imports the graph does not allow:\n" + "\n".join(
        line for where in undrawn.values() for line in where
    )
    unused = drawn - set(actual)
    assert not unused, f"arrows in docs/architecture.md that no import uses: {sorted(unused)}"


def test_the_graph_keeps_its_rules() -> None:
    drawn = drawn_edges()
    assert not {(a, b) for a, b in drawn if b == "tests"}, "nothing may import tests"
    assert ("worker", "api_client") not in drawn
    assert ("api_client", "worker") not in drawn
    for source, target in drawn:
        assert target in PACKAGES, f"{source} --> {target}: not a package of this repository"
        if source in SHIPPED:
            assert target in SHIPPED, f"shipped {source} may not import {target}, which never ships"


def test_no_module_imports_another_modules_private_names() -> None:
    found = []
    for name, path in modules().items():
        if name.split(".")[0] == "tests":
            continue
        for module, names in imports(path, name):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and module != name:
                found.append(f"{path.relative_to(REPO)}: from {module} import {', '.join(private)}")
    assert not found, "\n".join(found)


def test_only_the_entry_points_import_the_composition_root() -> None:
    found = []
    for name, path in modules().items():
        for module, names in imports(path, name):
            for root, allowed in COMPOSITION_ROOTS.items():
                package, _, leaf = root.rpartition(".")
                takes_root = module == root or (module == package and leaf in names)
                if takes_root and name not in allowed and name.split(".")[0] != "tests":
                    found.append(f"{path.relative_to(REPO)} imports {root}")
    assert not found, "\n".join(found)


def test_the_shipped_packages_are_the_ones_the_wheel_holds() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {pattern.rstrip("*") for pattern in include} == SHIPPED
