"""Memory admission as a unit: estimates from headers, first come first served within the
budget, a job larger than the budget alone, cancellation (the job deadline) leaves nothing
reserved."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from worker.admission import (
    MIB,
    WORKING_BYTES_PER_PIXEL,
    MemoryAdmission,
    cgroup_limit_bytes,
    estimate_bytes,
)
from worker.app import memory_budget_bytes
from worker.settings import Settings, SettingsError


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(("mode", "fmt", "per_pixel"), [("F", "TIFF", 4), ("RGB", "PNG", 3),
                         ("RGBA", "PNG", 4), ("L", "PNG", 1), ("CMYK", "JPEG", 4)])  # fmt: skip
def test_estimate_reads_size_and_mode_from_the_header(mode: str, fmt: str, per_pixel: int) -> None:
    data = _encoded(Image.new(mode, (300, 200)), fmt)
    assert estimate_bytes(data) == len(data) + 300 * 200 * (per_pixel + WORKING_BYTES_PER_PIXEL)


def test_estimate_of_an_unreadable_body_is_its_size() -> None:
    assert estimate_bytes(b"not an image") == len(b"not an image")


def test_estimate_does_not_decode_pixels() -> None:
    # A 64 MP float TIFF whose pixels are a fraction of a megabyte: the header says 64 MP.
    row = np.linspace(0, 1, 8000, dtype=np.float32)
    data = _encoded(Image.fromarray(np.tile(row, (8000, 1)), mode="F"), "TIFF")
    assert estimate_bytes(data) >= 64_000_000 * 4


async def _hold(admission: MemoryAdmission, need: int, log: list[str], name: str,
                release: asyncio.Event) -> None:  # fmt: skip
    async with admission.reserve(need):
        log.append(name)
        await release.wait()


async def test_jobs_wait_for_room_first_come_first_served() -> None:
    admission = MemoryAdmission(100 * MIB)
    started: list[str] = []
    releases = {name: asyncio.Event() for name in "abcd"}
    needs = {"a": 60 * MIB, "b": 50 * MIB, "c": 10 * MIB, "d": 30 * MIB}
    tasks = {}
    for name in "abcd":
        tasks[name] = asyncio.create_task(_hold(admission, needs[name], started, name,
                                                releases[name]))  # fmt: skip
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    # b does not fit beside a; c would, but waits its turn behind b.
    assert started == ["a"]
    assert admission.waiting == 3
    releases["a"].set()
    await tasks["a"]
    await asyncio.sleep(0)
    assert started == ["a", "b", "c", "d"]
    assert admission.reserved == 90 * MIB
    for name in "bcd":
        releases[name].set()
    await asyncio.gather(*tasks.values())
    assert (admission.reserved, admission.running, admission.waiting) == (0, 0, 0)


async def test_a_job_larger_than_the_budget_runs_alone() -> None:
    admission = MemoryAdmission(100 * MIB)
    started: list[str] = []
    small, big = asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(_hold(admission, 10 * MIB, started, "small", small))
    await asyncio.sleep(0)
    second = asyncio.create_task(_hold(admission, 500 * MIB, started, "big", big))
    await asyncio.sleep(0)
    assert started == ["small"]
    small.set()
    await first
    await asyncio.sleep(0)
    assert started == ["small", "big"]
    third = asyncio.create_task(_hold(admission, 1, started, "tiny", asyncio.Event()))
    await asyncio.sleep(0)
    assert started == ["small", "big"]  # nothing beside the big one
    big.set()
    await second
    await asyncio.sleep(0)
    assert started[-1] == "tiny"
    third.cancel()


async def test_a_waiter_given_up_at_its_deadline_reserves_nothing() -> None:
    admission = MemoryAdmission(100 * MIB)
    release = asyncio.Event()
    holder = asyncio.create_task(_hold(admission, 80 * MIB, [], "holder", release))
    await asyncio.sleep(0)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05), admission.reserve(50 * MIB):
            raise AssertionError("admitted beyond the budget")
    assert admission.waiting == 0
    release.set()
    await holder
    assert (admission.reserved, admission.running) == (0, 0)


async def test_no_budget_admits_everything_at_once() -> None:
    admission = MemoryAdmission(None)
    async with admission.reserve(10**12), admission.reserve(10**12):
        assert admission.running == 2


def test_memory_budget_setting() -> None:
    base = {"DATABASE_URL": "postgresql://x/y", "SQS_QUEUE_URL": "http://q"}
    assert Settings.from_env(base).memory_budget_mb is None
    assert memory_budget_bytes(Settings.from_env({**base, "MEMORY_BUDGET_MB": "0"})) is None
    assert memory_budget_bytes(Settings.from_env({**base, "MEMORY_BUDGET_MB": "3000"})) == (
        3000 * MIB
    )
    default = memory_budget_bytes(Settings.from_env(base))
    assert default is not None
    with pytest.raises(SettingsError, match="MEMORY_BUDGET_MB='lots' is not an integer"):
        Settings.from_env({**base, "MEMORY_BUDGET_MB": "lots"})
    with pytest.raises(SettingsError, match="MEMORY_BUDGET_MB=-5 is out of range"):
        Settings.from_env({**base, "MEMORY_BUDGET_MB": "-5"})


def _cgroups(tmp_path: Path, membership: str, files: dict[str, str]) -> int | None:
    tmp_path.mkdir()
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "cgroup").write_text(membership)
    return cgroup_limit_bytes(tmp_path, tmp_path / "cgroup")


def test_cgroup_limit_v2_then_v1(tmp_path: Path) -> None:
    four_gib = str(4 << 30)
    assert _cgroups(tmp_path / "a", "0::/task\n", {"task/memory.max": four_gib}) == 4 << 30
    assert _cgroups(tmp_path / "b", "0::/task\n", {"task/memory.max": "max"}) is None
    v1 = {"memory/ecs/task/memory.limit_in_bytes": four_gib}
    assert _cgroups(tmp_path / "c", "4:memory:/ecs/task\n0::/\n", v1) == 4 << 30
    unlimited = {"memory/memory.limit_in_bytes": "9223372036854771712"}
    assert _cgroups(tmp_path / "d", "4:memory:/\n", unlimited) is None
    assert _cgroups(tmp_path / "e", "", {}) is None
