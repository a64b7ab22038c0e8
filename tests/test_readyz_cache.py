"""/readyz reuses its database check for READY_CACHE_SECONDS: probes cost one query per interval
(concurrent ones share it), and a failure is seen at the next interval."""

from __future__ import annotations

import asyncio

from worker.health import READY_CACHE_SECONDS, HealthState


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_readyz_pings_the_database_once_per_interval() -> None:
    pings: list[float] = []
    failing = False
    clock = Clock()

    async def ping() -> None:
        pings.append(clock.now)
        await asyncio.sleep(0)
        if failing:
            raise ConnectionError("gone")

    state = HealthState(stale_after=60, model_loaded=True, database_ping=ping, clock=clock)
    results = await asyncio.gather(*(state.ready() for _ in range(20)))
    assert all(ok for ok, _ in results)
    assert len(pings) == 1

    failing = True
    clock.now += READY_CACHE_SECONDS / 2
    assert (await state.ready())[0]  # still the cached answer
    assert len(pings) == 1
    clock.now += READY_CACHE_SECONDS
    ok, checks = await state.ready()
    assert not ok
    assert checks["database"] == "unreachable: ConnectionError"
    assert len(pings) == 2
