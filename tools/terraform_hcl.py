"""Terraform files as Python data (python-hcl2), quotes stripped and hcl2's own `__` keys dropped:
what the Terraform tests and the autoscaling simulator (bench/scaling.py) read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hcl2


def _unquote(value: Any) -> Any:
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _normalise(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            _unquote(key): _normalise(value)
            for key, value in node.items()
            if not (isinstance(key, str) and key.startswith("__"))
        }
    if isinstance(node, list):
        return [_normalise(item) for item in node]
    return _unquote(node)


def parse_hcl(text: str) -> dict[str, Any]:
    options_class = getattr(getattr(hcl2, "utils", None), "SerializationOptions", None)
    if options_class is not None:
        options = options_class(
            with_comments=False, explicit_blocks=False, strip_string_quotes=True
        )
        data = hcl2.loads(text, serialization_options=options)
    else:  # python-hcl2 < 7
        data = hcl2.loads(text)
    result: dict[str, Any] = _normalise(data)
    return result


def load_hcl(path: Path) -> dict[str, Any]:
    return parse_hcl(path.read_text())
