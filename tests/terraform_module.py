"""The Terraform module read with python-hcl2, for the tests that check its wiring: paths,
`Module` (all .tf files of one directory, indexed) and small readers of its blocks."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tools.terraform_hcl import load_hcl

REPO = Path(__file__).resolve().parents[1]
TERRAFORM = REPO / "terraform"
EXAMPLE = TERRAFORM / "examples" / "complete"
DEPLOY_TEMPLATES = [
    REPO / "deploy/ecs/task-definition.json",
    REPO / "deploy/ecs/metrics-sidecar.json",
    REPO / "deploy/ecs/task-definition-cpu.json",
]


class Module:
    """All .tf files of one directory, indexed: resources[type][name], data, locals, variables."""

    def __init__(self, directory: Path) -> None:
        self.files = {path.name: load_hcl(path) for path in sorted(directory.glob("*.tf"))}
        self.resources: dict[str, dict[str, dict[str, Any]]] = {}
        self.data: dict[str, dict[str, dict[str, Any]]] = {}
        self.locals: dict[str, Any] = {}
        self.variables: dict[str, dict[str, Any]] = {}
        self.outputs: dict[str, dict[str, Any]] = {}
        self.modules: dict[str, dict[str, Any]] = {}
        for content in self.files.values():
            for kind, target in (("resource", self.resources), ("data", self.data)):
                for block in content.get(kind, []):
                    for rtype, named in block.items():
                        for rname, body in named.items():
                            target.setdefault(rtype, {})[rname] = body
            for block in content.get("locals", []):
                self.locals.update(block)
            for block in content.get("variable", []):
                self.variables.update(block)
            for block in content.get("output", []):
                self.outputs.update(block)
            for block in content.get("module", []):
                self.modules.update(block)

    def resource(self, rtype: str, name: str) -> dict[str, Any]:
        assert name in self.resources.get(rtype, {}), f"terraform has no {rtype}.{name}"
        return self.resources[rtype][name]


def block(body: dict[str, Any], name: str) -> dict[str, Any]:
    """The single nested block `name` (python-hcl2 gives blocks as lists)."""
    value = body[name]
    if isinstance(value, list):
        assert len(value) == 1, f"expected one {name} block, got {len(value)}"
        value = value[0]
    assert isinstance(value, dict)
    return value


def blocks(body: dict[str, Any], name: str) -> list[dict[str, Any]]:
    value = body.get(name, [])
    return value if isinstance(value, list) else [value]


def policy_statements(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The statements of an aws_iam_policy_document, dynamic ones included."""
    yield from blocks(document, "statement")
    for dynamic in blocks(document, "dynamic"):
        yield from blocks(dynamic["statement"], "content")


def resolve(module: Module, value: Any) -> Any:
    """`value`, or the local it names when it is exactly `${local.NAME}`."""
    if isinstance(value, str) and (match := re.fullmatch(r"\$\{local\.(\w+)\}", value)):
        return module.locals[match.group(1)]
    return value
