"""How the test suite is laid out: test modules share helpers through tests/helpers.py (and the
other non-test modules of tests/), never by importing each other; and nothing the suite or the
build runs reads git history, so `make test` passes on a shallow clone or a tarball."""

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
