"""The supervisor of the background loops: a crash is logged with its traceback and the loop is
restarted after an exponential backoff; a loop that keeps dying fails /healthz until it runs
stably again. Broken for real: the queue-stats loop against a PostgreSQL pool that is closed
under it (asyncpg raises an error the loop does not expect), served through the real health
server."""

from __future__ import annotations

import asyncio
import itertools
import time
import traceback
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from structlog.testing import capture_logs

from tests.conftest import Aws, worker_env
from tests.helpers import eventually, scrape
from worker.health import HealthServer, HealthState
from worker.metrics import WorkerMetrics
from worker.queue_stats import QueueStatsPoller
from worker.settings import Settings
from worker.supervisor import Supervisor


async def test_a_crashing_loop_is_logged_restarted_with_backoff_and_fails_health() -> None:
    metrics = WorkerMetrics()
    starts: list[float] = []

    async def always_crashes() -> None:
        starts.append(time.monotonic())
        await asyncio.sleep(0)
        raise RuntimeError(f"boom {len(starts)}")

    with capture_logs() as logs:
        async with Supervisor(
            metrics, backoff_base=0.05, backoff_max=0.2, stable_after=10, unhealthy_after=3
        ) as supervisor:
            supervisor.start("flaky", always_crashes)

            async def crashed_twice() -> bool:
                return len(starts) >= 2

            await eventually(crashed_twice, timeout=10, interval=0.01)
            assert supervisor.problem() is None  # one crash in a row is not yet "keeps dying"

            async def crashed_five_times() -> bool:
                return len(starts) >= 6  # a sixth start: the fifth crash was logged and counted

            await eventually(crashed_five_times, timeout=10, interval=0.01)
            problem = supervisor.problem()
            assert problem is not None
            assert "background loop flaky crashed" in problem
            assert "RuntimeError: boom" in problem

    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    # 0.05, 0.1, 0.2, then capped at 0.2 (the sleep never returns early)
    for gap, expected in zip(gaps, [0.05, 0.1, 0.2, 0.2], strict=False):
        assert gap >= expected * 0.95, gaps
    crashes = [e for e in logs if e["event"] == "background loop crashed; restarting"]
    assert len(crashes) >= 5
    assert all(e["log_level"] == "error" and e["loop"] == "flaky" for e in crashes)
    error = crashes[0]["exc_info"]
    assert isinstance(error, RuntimeError)
    assert "always_crashes" in "".join(traceback.format_tb(error.__traceback__))
    restarts = metrics.registry.get_sample_value(
        "image_worker_background_loop_restarts_total", {"loop": "flaky"}
    )
    assert restarts is not None
    assert restarts >= 5


async def test_a_loop_that_returns_is_restarted_and_health_recovers_after_a_stable_run() -> None:
    metrics = WorkerMetrics()
    runs = 0
    stable = asyncio.Event()

    async def returns_three_times_then_runs() -> None:
        nonlocal runs
        runs += 1
        if runs <= 3:
            return
        stable.set()
        await asyncio.Event().wait()

    with capture_logs() as logs:
        async with Supervisor(
            metrics, backoff_base=0.01, backoff_max=0.05, stable_after=0.3, unhealthy_after=3
        ) as supervisor:
            loop = supervisor.start("returner", returns_three_times_then_runs)
            await asyncio.wait_for(stable.wait(), timeout=10)
            assert loop.crashes_in_a_row == 3
            assert supervisor.problem() is not None  # running again, but not yet for long

            async def recovered() -> bool:
                return supervisor.problem() is None

            await eventually(recovered, timeout=10, interval=0.05)
            up = metrics.registry.get_sample_value(
                "image_worker_background_loop_up", {"loop": "returner"}
            )
            assert up == 1
        assert loop.task is not None
        assert loop.task.done()  # leaving the supervisor stopped it
    assert [e["event"] for e in logs].count("background loop returned; restarting") == 3


@pytest.fixture
async def health_server(aws: Aws) -> AsyncIterator[tuple[HealthServer, HealthState]]:
    metrics = WorkerMetrics()
    state = HealthState(stale_after=600)
    async with HealthServer("127.0.0.1", 0, metrics, state) as server:
        yield server, state


async def healthz(port: int) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/healthz") as response,
    ):
        body = await response.json()
        return response.status, body["detail"]


async def test_queue_stats_loop_broken_by_a_closed_pool_is_restarted_and_fails_healthz(
    health_server: tuple[HealthServer, HealthState],
    aws: Aws,
    database_url: str,
    model_home: Path,
) -> None:
    server, state = health_server
    metrics = server.metrics
    settings = Settings.from_env(
        worker_env(database_url, aws, model_home, QUEUE_STATS_INTERVAL_SECONDS="0.5")
    )
    closed = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    await closed.close()
    poller = QueueStatsPoller(settings, aws.sqs, closed, metrics)
    url = f"http://127.0.0.1:{server.port}"

    with capture_logs() as logs:
        async with Supervisor(
            metrics, backoff_base=0.05, backoff_max=0.2, stable_after=1.0, unhealthy_after=3
        ) as supervisor:
            state.checks.append(supervisor.problem)
            supervisor.start("queue_stats", poller.run)

            async def unhealthy() -> str | None:
                status, detail = await healthz(server.port)
                return detail if status == 503 else None

            detail = await eventually(unhealthy, timeout=20, interval=0.05)
            assert "background loop queue_stats crashed" in detail
            assert "InterfaceError" in detail
            sample = await scrape(url)
            assert sample['image_worker_background_loop_restarts_total{loop="queue_stats"}'] >= 3

            # The dependency comes back: the next restart runs, and health follows.
            async with asyncpg.create_pool(database_url, min_size=1, max_size=2) as fresh:
                await fresh.execute(
                    "INSERT INTO image_processing_jobs (id, source_bucket, source_key)"
                    " VALUES (gen_random_uuid(), 'b', 'k')"
                )
                poller.pool = fresh

                async def polled_again() -> bool:
                    values = await scrape(url)
                    return values.get('image_worker_open_jobs{status="pending"}') == 1

                await eventually(polled_again, timeout=20, interval=0.05)

                async def healthy() -> bool:
                    return (await healthz(server.port))[0] == 200

                await eventually(healthy, timeout=20, interval=0.1)
                sample = await scrape(url)
                assert sample['image_worker_background_loop_up{loop="queue_stats"}'] == 1

    crash = next(e for e in logs if e["event"] == "background loop crashed; restarting")
    assert crash["loop"] == "queue_stats"
    error = crash["exc_info"]
    assert isinstance(error, asyncpg.InterfaceError)
    assert "_poll_jobs" in "".join(traceback.format_tb(error.__traceback__))
