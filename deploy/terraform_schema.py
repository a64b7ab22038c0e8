"""Terraform checked against the AWS provider's published schema.

The npm package `@cdktf/provider-aws` is generated from the provider's own schema and carries it
as a jsii assembly (its `.jsii` JSON file): one `<Name>Config` interface per resource and data
source, whose properties are the arguments (not `optional`: required), nested blocks as interfaces
of their own (summary "<name> block."; a bare interface type: at most one block; an array of them:
a list or set), and types as jsii primitives and collections. The Terraform names are the anchors of
the registry links in each property's docs. The assembly carries no deprecation marks (cdktf drops
them), so the few deprecated attributes this project has met are listed in DEPRECATED.

`python -m deploy.terraform_schema [DIR ...]` parses every `.tf` file of terraform/ and of each
terraform/examples/* (or of the directories named) with python-hcl2 and prints one line per
unknown argument or block (dynamic blocks included), missing required argument, literal of the
wrong type, reference to an unknown or deprecated attribute, unknown/missing module variable or
unknown module output; exit status 1 if there is any.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hcl2

REPO = Path(__file__).resolve().parents[1]
PACKAGE_VERSION = "21.22.1"  # @cdktf/provider-aws, generated from hashicorp/aws 6.25.0
PACKAGE_DIR = REPO / ".tools" / "provider-aws" / PACKAGE_VERSION
JSII_FILE = PACKAGE_DIR / "package" / ".jsii"
CACHE_FILE = PACKAGE_DIR / "schema.json"

# Attributes deprecated in hashicorp/aws 6.x that the assembly cannot tell: (kind, type) -> {name:
# what to use instead}.
DEPRECATED: dict[tuple[str, str], dict[str, str]] = {
    ("data", "aws_region"): {"name": "region"},
}

# Meta-arguments Terraform itself takes in every resource / data block (blocks and arguments).
META_ARGUMENTS = {"count", "for_each", "depends_on", "provider"}
META_BLOCKS = {"lifecycle", "provisioner", "connection"}
MODULE_META_ARGUMENTS = {"source", "version", "count", "for_each", "providers", "depends_on"}

_REGISTRY_ANCHOR = re.compile(r"registry\.terraform\.io/providers/\S+#([a-z0-9_]+)\s")
_TYPE_NAME = re.compile(r"docs/(resources|data-sources)/\S+ (aws_[a-z0-9_]+)\}")
_IS_BLOCK = "__is_block__"

# A type: "string" | "number" | "bool" | "any" | ["list" | "map", <type>].
Type = Any


@dataclass
class Nested:
    block: Block
    required: bool
    max_one: bool  # a single block (jsii: the interface itself, not an array of it)


@dataclass
class Block:
    attributes: dict[str, tuple[Type, bool]] = field(
        default_factory=dict
    )  # name -> (type, required)
    blocks: dict[str, Nested] = field(default_factory=dict)
    computed: set[str] = field(default_factory=set)  # every readable attribute (references)


@dataclass
class Schema:
    resources: dict[str, Block]
    data_sources: dict[str, Block]
    provider: Block = field(default_factory=Block)  # the `provider "aws"` block

    def lookup(self, kind: str, type_name: str) -> Block | None:
        return (self.resources if kind == "resource" else self.data_sources).get(type_name)


@dataclass(frozen=True)
class Problem:
    path: Path
    address: str  # resource.aws_x.y, data.aws_x.y, module.z, with a nested block path
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.address}: {self.message}"


# ---------------------------------------------------------------------------------------------
# The jsii assembly -> a compact schema (cached as JSON next to the package)
# ---------------------------------------------------------------------------------------------
def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def _tf_name(prop: dict[str, Any]) -> str:
    docs = prop.get("docs", {})
    found = _REGISTRY_ANCHOR.search(f"{docs.get('summary', '')} {docs.get('remarks', '')} ")
    return found.group(1) if found else _snake(prop["name"])


def _strip_resolvable(jtype: dict[str, Any]) -> dict[str, Any] | None:
    """The one real member of a union with cdktf.IResolvable (None: an `any`-like union)."""
    if "union" not in jtype:
        return jtype
    members = [t for t in jtype["union"]["types"] if t.get("fqn") != "cdktf.IResolvable"]
    return members[0] if len(members) == 1 else None


def _type(jtype: dict[str, Any] | None) -> Type:
    jtype = _strip_resolvable(jtype) if jtype is not None else None
    if jtype is None:
        return "any"
    if "primitive" in jtype:
        return {"string": "string", "number": "number", "boolean": "bool"}.get(
            jtype["primitive"], "any"
        )
    if "collection" in jtype:
        kind = "list" if jtype["collection"]["kind"] == "array" else "map"
        return [kind, _type(jtype["collection"]["elementtype"])]
    return "any"


def _nested_fqn(jtype: dict[str, Any]) -> tuple[str, bool] | None:
    """(interface fqn, max_one) when the property is a nested block or nested object attribute."""
    jtype = _strip_resolvable(jtype) or {}
    if jtype.get("fqn", "").startswith("@cdktf/provider-aws."):
        return jtype["fqn"], True
    collection = jtype.get("collection", {})
    element = collection.get("elementtype", {})
    if collection.get("kind") == "array" and element.get("fqn", "").startswith("@cdktf/"):
        return element["fqn"], False
    return None


def _block(types: dict[str, Any], fqn: str, depth: int = 0) -> Block:
    block = Block()
    for prop in types[fqn].get("properties", []):
        name, required = _tf_name(prop), not prop.get("optional", False)
        nested = _nested_fqn(prop["type"]) if depth < 12 else None
        if nested is not None and nested[0] in types:
            inner = _block(types, nested[0], depth + 1)
            block.blocks[name] = Nested(inner, required, nested[1])
        else:
            block.attributes[name] = (_type(prop["type"]), required)
    return block


def _readable(types: dict[str, Any], class_fqn: str) -> set[str]:
    names = set()
    for prop in types[class_fqn].get("properties", []):
        if prop.get("static") or prop.get("protected") or prop["name"].endswith("Input"):
            continue
        names.add(_snake(prop["name"]))
    return names


def extract(jsii_path: Path) -> Schema:
    types: dict[str, Any] = json.loads(jsii_path.read_bytes())["types"]
    schema = Schema(resources={}, data_sources={})
    for fqn, spec in types.items():
        base = spec.get("base")
        if base == "cdktf.TerraformProvider":
            schema.provider = _block(types, spec["initializer"]["parameters"][-1]["type"]["fqn"])
        if base not in ("cdktf.TerraformResource", "cdktf.TerraformDataSource"):
            continue
        found = _TYPE_NAME.search(spec.get("docs", {}).get("summary", ""))
        config = next(
            (p["type"]["fqn"] for p in spec["initializer"]["parameters"] if p["name"] == "config"),
            None,
        )
        if found is None or config is None:
            continue
        block = _block(types, config)
        block.computed = _readable(types, fqn) | set(block.attributes) | set(block.blocks)
        target = schema.resources if found.group(1) == "resources" else schema.data_sources
        target[found.group(2)] = block
    return schema


def _to_json(block: Block) -> dict[str, Any]:
    return {
        "a": {name: [t, req] for name, (t, req) in block.attributes.items()},
        "b": {n: [_to_json(b.block), b.required, b.max_one] for n, b in block.blocks.items()},
        "c": sorted(block.computed),
    }


def _from_json(data: dict[str, Any]) -> Block:
    return Block(
        attributes={name: (t, req) for name, (t, req) in data["a"].items()},
        blocks={n: Nested(_from_json(b), req, one) for n, (b, req, one) in data["b"].items()},
        computed=set(data["c"]),
    )


_CACHE_FORMAT = 2  # bump when the cached shape changes


def load_schema(jsii_path: Path = JSII_FILE, cache_path: Path = CACHE_FILE) -> Schema:
    """The schema from the cache, made from the assembly on first use (written atomically)."""
    if not jsii_path.exists():
        raise FileNotFoundError(
            f"{jsii_path} is missing: `make tools` fetches @cdktf/provider-aws@{PACKAGE_VERSION}"
        )
    if cache_path.exists() and cache_path.stat().st_mtime >= jsii_path.stat().st_mtime:
        data = json.loads(cache_path.read_text())
        if data.get("format") == _CACHE_FORMAT:
            return Schema(
                resources={k: _from_json(v) for k, v in data["resource"].items()},
                data_sources={k: _from_json(v) for k, v in data["data"].items()},
                provider=_from_json(data["provider"]),
            )
    schema = extract(jsii_path)
    payload = {
        "format": _CACHE_FORMAT,
        "resource": {k: _to_json(v) for k, v in schema.resources.items()},
        "data": {k: _to_json(v) for k, v in schema.data_sources.items()},
        "provider": _to_json(schema.provider),
    }
    fd, tmp = tempfile.mkstemp(dir=cache_path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as out:
        json.dump(payload, out, separators=(",", ":"))
    os.chmod(tmp, 0o644)
    os.replace(tmp, cache_path)
    return schema


# ---------------------------------------------------------------------------------------------
# Checking parsed HCL
# ---------------------------------------------------------------------------------------------
def _parse(path: Path) -> dict[str, Any]:
    """The file as python-hcl2 data (blocks marked, quotes kept); parsed once per version."""
    return _parse_text(path.read_text())


@functools.lru_cache(maxsize=256)
def _parse_text(text: str) -> dict[str, Any]:
    options = hcl2.utils.SerializationOptions(
        with_comments=False, explicit_blocks=True, strip_string_quotes=False
    )
    data: dict[str, Any] = hcl2.loads(text, serialization_options=options)
    return data


def _label(key: str) -> str:
    return key[1:-1] if len(key) >= 2 and key[0] == key[-1] == '"' else key


def _is_expression(value: Any) -> bool:
    """A reference, call or operator expression (python-hcl2 writes those as "${...}")."""
    return isinstance(value, str) and value.startswith("${")


def _literal_type_error(value: Any, expected: Type) -> str | None:
    """Why a literal cannot convert to `expected` (Terraform converts "5" -> 5, 5 -> "5", ...)."""
    if value is None or _is_expression(value) or expected == "any":
        return None
    if isinstance(expected, list):
        kind, element = expected
        if kind == "list" and isinstance(value, list):
            return next((e for e in (_literal_type_error(v, element) for v in value) if e), None)
        if kind == "map" and isinstance(value, dict):
            items = (v for k, v in value.items() if k != _IS_BLOCK)
            return next((e for e in (_literal_type_error(v, element) for v in items) if e), None)
        return f"a {kind} is expected, got {_describe(value)}"
    if isinstance(value, (list, dict)):
        return f"a {expected} is expected, got {_describe(value)}"
    if expected == "string":
        return None
    text = _label(value) if isinstance(value, str) else None
    if text is not None and "${" in text:
        return None  # a template: its value is known only at plan time
    if expected == "number":
        if isinstance(value, bool) or (text is not None and not _is_number(text)):
            return f"a number is expected, got {_describe(value)}"
        return None
    # bool
    if isinstance(value, bool) or text in ("true", "false"):
        return None
    return f"a bool is expected, got {_describe(value)}"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"the bool {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value[:40]}"
    return "a list" if isinstance(value, list) else "an object"


def _instances(value: Any) -> list[dict[str, Any]]:
    items = value if isinstance(value, list) else [value]
    return [item for item in items if isinstance(item, dict)]


def check_body(body: dict[str, Any], block: Block, where: str, meta: bool = False) -> list[str]:
    """Messages for one block body against its schema (`meta`: a resource/data top level)."""
    messages: list[str] = []
    for key, value in body.items():
        if key == _IS_BLOCK:
            continue
        if meta and (key in META_ARGUMENTS or key in META_BLOCKS):
            continue
        if key == "dynamic":
            for dynamic in _instances(value):
                for label, spec in dynamic.items():
                    if label == _IS_BLOCK:
                        continue
                    name = _label(label)
                    nested = block.blocks.get(name)
                    if nested is None:
                        messages.append(f"{where}: unknown block {name!r} (dynamic)")
                        continue
                    for content in _instances(spec.get("content", [])):
                        messages += check_body(content, nested.block, f"{where}.{name}")
            continue
        if key in block.attributes:
            problem = _literal_type_error(value, block.attributes[key][0])
            if problem:
                messages.append(f"{where}: argument {key!r}: {problem}")
        elif key in block.blocks:
            for instance in _instances(value):
                messages += check_body(instance, block.blocks[key].block, f"{where}.{key}")
        else:
            messages.append(f"{where}: unknown argument or block {key!r}")
    present = set(body) | {_label(k) for d in _instances(body.get("dynamic", [])) for k in d}
    for name, (_, required) in block.attributes.items():
        if required and name not in present:
            messages.append(f"{where}: missing required argument {name!r}")
    for name, nested in block.blocks.items():
        if nested.required and name not in present:
            messages.append(f"{where}: missing required block {name!r}")
    return messages


_REFERENCE = re.compile(
    r"(?<![\w.])(data\.)?(aws_[a-z0-9_]+)\.([A-Za-z_][\w-]*)(?:\[[^\]]*\])?\.([a-z_][a-z0-9_]*)"
)


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def check_references(content: dict[str, Any], schema: Schema) -> list[tuple[str, str]]:
    """(address, message) for every `aws_x.name.attr` / `data.aws_x.name.attr` in expressions
    whose attribute the type does not have, or has deprecated."""
    found: list[tuple[str, str]] = []
    for text in _strings(content):
        if "${" not in text:
            continue
        for data, type_name, name, attribute in _REFERENCE.findall(text):
            kind = "data" if data else "resource"
            block = schema.lookup(kind, type_name)
            address = f"{'data.' if data else ''}{type_name}.{name}.{attribute}"
            if block is None:
                continue  # reported where the block is declared
            replacement = DEPRECATED.get((kind, type_name), {}).get(attribute)
            if replacement is not None:
                found.append((address, f"deprecated attribute: use .{replacement}"))
            elif attribute not in block.computed:
                found.append((address, f"{type_name} has no attribute {attribute!r}"))
    return found


def _module_variables(directory: Path) -> dict[str, bool] | None:
    """variable name -> required (no default) of a local module, None if not a directory."""
    if not directory.is_dir():
        return None
    variables: dict[str, bool] = {}
    for path in sorted(directory.glob("*.tf")):
        for declared in _parse(path).get("variable", []):
            for label, body in declared.items():
                variables[_label(label)] = "default" not in body
    return variables


def _declared(content: dict[str, Any]) -> Iterator[tuple[str, str, str, dict[str, Any]]]:
    """(kind, type, name, body) of every resource, data source and module ("" type) block."""
    for kind in ("resource", "data"):
        for declared in content.get(kind, []):
            for type_label, named in declared.items():
                for name_label, body in named.items():
                    if name_label != _IS_BLOCK:
                        yield kind, _label(type_label), _label(name_label), body
    for declared in content.get("module", []):
        for name_label, body in declared.items():
            if name_label != _IS_BLOCK:
                yield "module", "", _label(name_label), body


def _check_module(path: Path, address: str, body: dict[str, Any]) -> list[Problem]:
    source = _label(str(body.get("source", "")))
    if not source.startswith("."):
        return []  # a registry module: its variables are not here
    variables = _module_variables((path.parent / source).resolve())
    if variables is None:
        return [Problem(path, address, f"source {source!r} is not a directory")]
    problems = [
        Problem(path, address, f"unknown module variable {key!r}")
        for key in body
        if key not in MODULE_META_ARGUMENTS and key != _IS_BLOCK and key not in variables
    ]
    problems += [
        Problem(path, address, f"missing required variable {name!r}")
        for name, required in variables.items()
        if required and name not in body
    ]
    return problems


def check_file(path: Path, schema: Schema) -> tuple[int, list[Problem]]:
    """(aws resource, data and module blocks checked, problems) of one .tf file."""
    content = _parse(path)
    problems: list[Problem] = []
    checked = 0
    for kind, type_name, name, body in _declared(content):
        if kind == "module":
            checked += 1
            problems += _check_module(path, f"module.{name}", body)
            continue
        if not type_name.startswith("aws_"):
            continue  # built in (terraform_data) or another provider
        checked += 1
        address = f"{'data.' if kind == 'data' else ''}{type_name}.{name}"
        block = schema.lookup(kind, type_name)
        if block is None:
            problems.append(Problem(path, address, f"unknown {kind} type"))
            continue
        for message in check_body(body, block, address, meta=True):
            problems.append(Problem(path, address, message.removeprefix(address + ": ")))
    for declared in content.get("provider", []):
        for label, body in declared.items():
            if _label(label) == "aws":
                for message in check_body(body, schema.provider, 'provider "aws"'):
                    message = message.removeprefix('provider "aws": ')
                    problems.append(Problem(path, 'provider "aws"', message))
    for address, message in check_references(content, schema):
        problems.append(Problem(path, address, message))
    return checked, problems


def tree_directories(root: Path) -> list[Path]:
    """terraform/ and each of its examples."""
    examples = root / "examples"
    extra = sorted(p for p in examples.iterdir() if p.is_dir()) if examples.is_dir() else []
    return [root, *extra]


_MODULE_REFERENCE = re.compile(r"(?<![\w.])module\.([A-Za-z_][\w-]*)(?:\[[^\]]*\])?\.([a-z_]\w*)")


def _module_outputs(directory: Path) -> set[str]:
    return {
        _label(label)
        for path in sorted(directory.glob("*.tf"))
        for declared in _parse(path).get("output", [])
        for label in declared
    }


def check_module_references(directory: Path) -> list[Problem]:
    """`module.<name>.<output>` references to outputs a local module does not declare."""
    contents = {path: _parse(path) for path in sorted(directory.glob("*.tf"))}
    outputs: dict[str, set[str]] = {}
    for content in contents.values():
        for kind, _, name, body in _declared(content):
            source = _label(str(body.get("source", "")))
            if kind == "module" and source.startswith(".") and (directory / source).is_dir():
                outputs[name] = _module_outputs((directory / source).resolve())
    problems: list[Problem] = []
    for path, content in contents.items():
        for text in _strings(content):
            for name, output in _MODULE_REFERENCE.findall(text) if "${" in text else []:
                if name in outputs and output not in outputs[name]:
                    message = f"the module has no output {output!r}"
                    problems.append(Problem(path, f"module.{name}.{output}", message))
    return problems


def check_directories(directories: list[Path], schema: Schema) -> tuple[int, list[Problem]]:
    """(blocks checked, problems) for every .tf file of the directories."""
    problems: list[Problem] = []
    checked = 0
    for directory in directories:
        for path in sorted(directory.glob("*.tf")):
            count, found = check_file(path, schema)
            checked += count
            problems += found
        problems += check_module_references(directory)
    return checked, problems


def main(argv: list[str]) -> int:
    dirs = [Path(a).resolve() for a in argv] or tree_directories(REPO / "terraform")
    checked, problems = check_directories(dirs, load_schema())
    for problem in problems:
        print(problem)
    names = ", ".join(str(d.relative_to(REPO) if d.is_relative_to(REPO) else d) for d in dirs)
    print(
        f"{checked} aws resource/data/module blocks in {names} against @cdktf/provider-aws "
        f"{PACKAGE_VERSION} (hashicorp/aws 6.25.0): {len(problems)} problem(s)"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
