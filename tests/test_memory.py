"""The allocator settings applied at start: glibc's own variables, when set, are left alone."""

from __future__ import annotations

import sys

import pytest

from worker.memory import ARENAS, MMAP_THRESHOLD_BYTES, tune_malloc


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_tunes_malloc_unless_glibc_variables_say_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert tune_malloc() == {
        "MALLOC_ARENA_MAX": ARENAS,
        "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD_BYTES,
    }
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert tune_malloc() == {"MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD_BYTES}
