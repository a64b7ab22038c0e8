"""Real worker processes: SIGTERM drains, an exhausted drain budget hands jobs straight back, a
second signal exits at once, and `kill -9` loses nothing."""

from __future__ import annotations

import signal
import time

import asyncpg
import pytest

from api_client.client import JobClient
from jobcore.jobs import Job, JobStatus
from tests.conftest import Aws, SpawnWorker, StartWorker
from tests.helpers import eventually, large_photo, synthetic_scene, wait_finished

pytestmark = pytest.mark.slow  # worker processes drained, signalled and killed


async def slow_jobs(producer: JobClient, aws: Aws, count: int) -> list[Job]:
    await aws.put("large.jpg", large_photo())
    return [await producer.create_job("large.jpg") for _ in range(count)]


async def rows_by_status(db: asyncpg.Pool) -> dict[str, int]:
    records = await db.fetch("SELECT status, count(*) AS n FROM image_processing_jobs GROUP BY 1")
    return {r["status"]: r["n"] for r in records}


async def test_sigterm_finishes_the_running_job_and_leaves_the_rest_queued(
    spawn_worker: SpawnWorker, producer: JobClient, aws: Aws, db: asyncpg.Pool, throttled_aws: str
) -> None:
    worker = await spawn_worker(
        AWS_ENDPOINT_URL=throttled_aws, WORKER_CONCURRENCY="1", DRAIN_SECONDS="60"
    )
    jobs = await slow_jobs(producer, aws, 3)
    await eventually(worker.in_flight, timeout=30, interval=0.05)

    worker.process.send_signal(signal.SIGTERM)
    assert await worker.wait_exit(60) == 0, worker.log.read_text()

    assert await rows_by_status(db) == {"completed": 1, "pending": 2}
    assert await aws.queue_counts() == (2, 0)  # the unstarted two are visible to other workers
    log = worker.log.read_text()
    assert "stop requested: draining" in log
    assert "worker stopped" in log
    assert len(await aws.keys("cutouts/")) == 1
    assert {j.id for j in jobs} >= {
        r["id"] for r in await db.fetch("SELECT id FROM image_processing_jobs")
    }


async def test_drain_budget_spent_hands_the_job_back_at_once(
    spawn_worker: SpawnWorker, producer: JobClient, aws: Aws, db: asyncpg.Pool, throttled_aws: str
) -> None:
    worker = await spawn_worker(
        AWS_ENDPOINT_URL=throttled_aws, WORKER_CONCURRENCY="1", DRAIN_SECONDS="0.5"
    )
    (job,) = await slow_jobs(producer, aws, 1)
    await eventually(worker.in_flight, timeout=30, interval=0.05)

    stopped_at = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    assert await worker.wait_exit(30) == 0, worker.log.read_text()
    assert time.monotonic() - stopped_at < 15

    row = await producer.get_job(job.id)
    assert row is not None
    assert row.status is JobStatus.PENDING
    assert row.claimed_by is None
    assert row.error == "worker stopped before finishing"
    assert await aws.queue_counts() == (1, 0)  # visible again now, not after the timeout


async def test_second_signal_exits_at_once(
    spawn_worker: SpawnWorker, producer: JobClient, aws: Aws, throttled_aws: str
) -> None:
    worker = await spawn_worker(
        AWS_ENDPOINT_URL=throttled_aws, WORKER_CONCURRENCY="1", DRAIN_SECONDS="120"
    )
    await slow_jobs(producer, aws, 1)
    await eventually(worker.in_flight, timeout=30, interval=0.05)
    worker.process.send_signal(signal.SIGTERM)

    async def first_signal_handled() -> bool:  # else both could land before the handler runs
        return "stop requested: draining" in worker.log.read_text()

    await eventually(first_signal_handled, timeout=30, interval=0.05)
    worker.process.send_signal(signal.SIGINT)
    assert await worker.wait_exit(10) == 1
    assert "second signal: exiting now" in worker.log.read_text()


async def test_kill_9_mid_backlog_loses_nothing_and_duplicates_nothing(
    spawn_worker: SpawnWorker,
    start_worker: StartWorker,
    producer: JobClient,
    aws: Aws,
    db: asyncpg.Pool,
) -> None:
    settings = {"VISIBILITY_TIMEOUT_SECONDS": "3", "HEARTBEAT_INTERVAL_SECONDS": "1"}
    victim = await spawn_worker(**settings)
    jobs = []
    for seed in range(8):
        scene, _ = synthetic_scene((800, 600), seed=seed)
        await aws.put(f"backlog/{seed}.jpg", scene)
        jobs.append(await producer.create_job(f"backlog/{seed}.jpg"))

    async def some_done_some_running() -> bool:
        counts = await rows_by_status(db)
        return counts.get("completed", 0) >= 2 and counts.get("processing", 0) >= 1

    await eventually(some_done_some_running, timeout=60, interval=0.05)
    victim.process.kill()
    assert await victim.wait_exit(10) == -signal.SIGKILL
    stranded = await rows_by_status(db)
    assert stranded.get("processing", 0) >= 1

    await start_worker(**settings)
    finished = await wait_finished(producer, [j.id for j in jobs], timeout=120)

    assert all(row.status is JobStatus.COMPLETED for row in finished.values())
    assert max(row.attempts for row in finished.values()) == 2  # the stranded ones, once more
    assert sorted(await aws.keys("cutouts/")) == sorted(f"cutouts/{j.id}.png" for j in jobs)

    async def queue_empty() -> bool:
        return await aws.queue_counts() == (0, 0)

    await eventually(queue_empty, timeout=30)
