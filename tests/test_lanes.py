"""How the test suite is laid out: test modules share helpers through tests/helpers.py (and the
other non-test modules of tests/), never by importing each other; nothing the suite or the build
runs reads git history, so `make test` passes on a shallow clone or a tarball; and the fast lane
keeps a real-stack test of each area."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import TypeGuard

REPO = Path(__file__).resolve().parents[1]
PYTHON_TREES = ("worker", "api_client", "jobcore", "devstack", "deploy", "examples", "tools",
                "tests", "bench")  # fmt: skip
GIT = "git"
# A shell command line that runs git: at the start, after ; & | ( or a backtick, or in $(...).
SHELL_GIT = re.compile(rf"(^|[;&|(`]|\$\()\s*{GIT}\s")


def imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


def test_no_test_module_imports_another() -> None:
    offenders = {
        f"{path.name} imports {module}"
        for path in sorted((REPO / "tests").glob("*.py"))
        for module in imported_modules(path)
        if module.startswith("tests.test_")
    }
    assert not offenders, "move shared helpers to tests/helpers.py: " + ", ".join(offenders)


def runs_git(node: ast.AST) -> TypeGuard[ast.Constant]:
    """A string that starts a git command line: "git" alone (an argv's first item) or "git ..."."""
    return (
        isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and re.fullmatch(rf"{GIT}(\s.*)?", node.value, re.S) is not None
    )


def test_no_python_code_runs_git() -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{node.lineno}"
        for tree in PYTHON_TREES
        for path in sorted((REPO / tree).rglob("*.py"))
        if path != Path(__file__).resolve()  # its own samples
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
        if runs_git(node)
    ]
    assert not offenders, offenders


def test_no_script_or_build_step_runs_git() -> None:
    scripts = [REPO / "Makefile", REPO / "Dockerfile", REPO / ".ci" / "run"]
    for tree in ("bench", "deploy", "devstack", "tools", "terraform", "examples"):
        scripts += sorted((REPO / tree).rglob("*.sh"))
    offenders = [
        f"{path.relative_to(REPO)}:{number}"
        for path in scripts
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if not line.lstrip().startswith("#") and SHELL_GIT.search(line)
    ]
    assert not offenders, offenders


def test_the_git_check_sees_a_git_command() -> None:
    """The two checks above find what they look for (no test that cannot fail)."""
    sample = ast.parse(f'subprocess.run(["{GIT}", "show", "0197c11:terraform/main.tf"])')
    assert any(runs_git(node) for node in ast.walk(sample))
    assert not any(runs_git(node) for node in ast.walk(ast.parse('"a gitignored file"')))
    assert SHELL_GIT.search(f"\ttag=$({GIT} rev-parse HEAD)")
    assert SHELL_GIT.search(f"cd out && {GIT} log -1")
    assert not SHELL_GIT.search("\tcp .gitignore out/")


# The fast lane (`make check`: not `slow`, not `image`) keeps a real-stack test of each area.
FAST_AREAS = {
    "worker end to end": "test_worker_end_to_end.py",
    "producer": "test_api_client.py",
    "recovery": "test_recovery.py",
    "terraform": "test_deploy_terraform.py",
}


def marked(decorators: list[ast.expr], names: set[str]) -> bool:
    """Whether a decorator or pytestmark value names pytest.mark.<one of names>."""
    return any(
        isinstance(node, ast.Attribute) and node.attr in names
        for decorator in decorators
        for node in ast.walk(decorator)
    )


def fast_tests(path: Path) -> list[str]:
    module = ast.parse(path.read_text(), filename=str(path))
    lane_markers = {"slow", "image"}
    for node in module.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in targets):
            assert isinstance(node, ast.Assign)
            if marked([node.value], lane_markers):
                return []
    return [
        node.name
        for node in module.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test_")
        and not marked(node.decorator_list, lane_markers)
    ]


def test_the_fast_lane_keeps_a_real_stack_test_of_each_area() -> None:
    empty = [area for area, name in FAST_AREAS.items() if not fast_tests(REPO / "tests" / name)]
    assert not empty, f"every test of {empty} is marked slow: keep one in the fast lane"
    assert fast_tests(REPO / "tests" / "test_database_tls.py") == []  # the check sees pytestmark
