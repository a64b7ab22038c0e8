"""README's settings tables name every environment variable the settings classes read, and the
relative links in README and docs/ lead to files that exist (a clone has nothing outside it)."""

from __future__ import annotations

import re
from pathlib import Path

from api_client.recovery import SweepSettings
from api_client.settings import ClientSettings
from tests.helpers import setting_names
from worker.settings import Settings

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def table_names(text: str) -> set[str]:
    """Every `UPPER_CASE` name in the first column of a Markdown table row."""
    names: set[str] = set()
    for line in text.splitlines():
        cells = line.split("|")
        if line.startswith("|") and len(cells) > 2:
            names |= set(re.findall(r"`([A-Z][A-Z0-9_]*)`", cells[1]))
    return names


def test_readme_tables_name_every_worker_setting() -> None:
    missing = setting_names(Settings.from_env) - table_names(README.read_text())
    assert not missing, f"worker settings missing from README's tables: {sorted(missing)}"


def test_readme_tables_name_every_producer_and_sweep_setting() -> None:
    read = setting_names(ClientSettings.from_env, SweepSettings.from_env)
    missing = read - table_names(README.read_text())
    assert not missing, f"producer settings missing from README's tables: {sorted(missing)}"


def test_table_names_reads_only_the_first_column() -> None:
    text = "| `A_B` / `C` | `D_E` |\n|---|---|\nnot `F` a row\n"
    assert table_names(text) == {"A_B", "C"}


def documents() -> list[Path]:
    """Every Markdown file of the checkout, outside hidden and build folders."""
    skipped = {"build", "node_modules", "out"}
    return sorted(
        path
        for path in REPO.rglob("*.md")
        if not any(part.startswith(".") or part in skipped for part in path.relative_to(REPO).parts)
    )


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in LINK.findall(path.read_text()):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor in the same page
        file = (path.parent / target.split("#")[0]).resolve()
        if not file.exists() or not file.is_relative_to(REPO):
            broken.append(target)
    return broken


def test_relative_links_in_readme_and_docs_resolve_inside_the_repository() -> None:
    assert README in documents()
    assert REPO / "docs" / "changelog.md" in documents()
    broken = {str(p.relative_to(REPO)): b for p in documents() if (b := broken_links(p))}
    assert not broken, f"links to files that do not exist in a clone: {broken}"


def test_a_link_outside_the_repository_counts_as_broken(tmp_path: Path) -> None:
    page = REPO / "docs" / "architecture.md"
    assert broken_links(page) == []
    outside = tmp_path / "page.md"
    outside.write_text("[design](../shared/DESIGN.md) [ok](https://example.com) [a](#x)\n")
    assert broken_links(outside) == ["../shared/DESIGN.md"]


def test_readme_starts_with_the_two_commands_and_links_the_architecture() -> None:
    text = README.read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.DOTALL)
    assert block is not None
    assert text.index(block.group(0)) < text.index("\n## ")
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    assert {"make dev", "make test"} <= set(commands)
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^dev:", makefile, re.MULTILINE)
    assert re.search(r"^test:", makefile, re.M)
    assert "(docs/architecture.md)" in text
