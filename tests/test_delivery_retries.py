"""At-least-once delivery turned into exactly-once outcomes: duplicates, jobs that outlive the
visibility timeout, transient failures with a measured backoff, and exhausted attempts going to
the DLQ."""

from __future__ import annotations

import uuid
from datetime import datetime
from urllib.parse import urlsplit

import asyncpg
import pytest

from api_client.client import JobClient
from devstack.stack import create_queue_pair
from jobcore.jobs import JobStatus, encode_message
from tests.conftest import Aws, StartWorker
from tests.faults import FaultProxy
from tests.helpers import eventually, large_photo, scrape, synthetic_scene, wait_finished
from worker.metrics import WorkerMetrics
from worker.pipeline import JobProcessor
from worker.settings import Settings


@pytest.mark.slow  # visibility timeouts run out twice before the one completion
async def test_three_copies_of_a_message_give_one_completion(
    start_worker: StartWorker, producer: JobClient, aws: Aws
) -> None:
    workers = [await start_worker(VISIBILITY_TIMEOUT_SECONDS="4") for _ in range(2)]
    scene, _ = synthetic_scene(seed=8)
    await aws.put("dup.jpg", scene)
    job = await producer.create_job("dup.jpg")
    for _ in range(2):
        await aws.sqs.send_message(QueueUrl=aws.queue_url, MessageBody=encode_message(job.id))

    row = (await wait_finished(producer, [job.id]))[job.id]
    assert row.status is JobStatus.COMPLETED

    async def all_copies_settled() -> bool:
        return await aws.queue_counts() == (0, 0)

    await eventually(all_copies_settled, timeout=30)
    final = await producer.get_job(job.id)
    assert final is not None
    assert final.attempts == 1
    assert final.completed_at == row.completed_at
    assert await aws.keys("cutouts/") == [f"cutouts/{job.id}.png"]
    totals = [await scrape(w.url) for w in workers]
    assert sum(m["image_worker_inference_seconds_count"] for m in totals) == 1
    assert sum(m['image_worker_jobs_total{outcome="completed"}'] for m in totals) == 1
    assert sum(m["image_worker_messages_received_total"] for m in totals) >= 3


@pytest.mark.slow  # a throttled download held past the visibility timeout
async def test_job_longer_than_visibility_timeout_is_not_redelivered(
    start_worker: StartWorker, producer: JobClient, aws: Aws
) -> None:
    endpoint = urlsplit(aws.endpoint)
    async with FaultProxy(endpoint.hostname or "127.0.0.1", endpoint.port or 80) as proxy:
        proxy.delay = 0.1  # per 64 KiB chunk: the download alone takes several seconds
        data = large_photo()
        await aws.put("large.jpg", data)
        slow = await start_worker(
            AWS_ENDPOINT_URL=f"http://127.0.0.1:{proxy.port}",
            VISIBILITY_TIMEOUT_SECONDS="2",
            HEARTBEAT_INTERVAL_SECONDS="0.5",
            WAIT_TIME_SECONDS="0",
        )
        job = await producer.create_job("large.jpg")

        async def slow_worker_has_it() -> bool:
            return (await scrape(slow.url))["image_worker_jobs_in_flight"] == 1

        await eventually(slow_worker_has_it, timeout=30)
        rival = await start_worker(VISIBILITY_TIMEOUT_SECONDS="2", HEARTBEAT_INTERVAL_SECONDS="0.5")
        row = (await wait_finished(producer, [job.id], timeout=120))[job.id]

    assert row.status is JobStatus.COMPLETED, row.error
    assert row.attempts == 1
    assert row.started_at is not None
    assert row.completed_at is not None
    assert (row.completed_at - row.started_at).total_seconds() > 4  # outlived 2 visibility timeouts
    slow_metrics, rival_metrics = await scrape(slow.url), await scrape(rival.url)
    assert slow_metrics["image_worker_visibility_extensions_total"] >= 3
    assert rival_metrics["image_worker_messages_received_total"] == 0
    assert await aws.keys("cutouts/") == [f"cutouts/{job.id}.png"]


@pytest.mark.slow  # every retry waits out its backoff
async def test_transient_failures_back_off_then_exhausted_jobs_fail_and_go_to_the_dlq(
    start_worker: StartWorker, producer: JobClient, aws: Aws, db: asyncpg.Pool
) -> None:
    queues = await create_queue_pair(aws.sqs, f"{aws.bucket}-short", max_receive_count=3)
    worker = await start_worker(
        SQS_QUEUE_URL=queues.queue_url,
        MAX_ATTEMPTS="3",
        RESULT_BUCKET="bucket-not-created-yet",
        BACKOFF_BASE_SECONDS="2",
        BACKOFF_MAX_SECONDS="3",
    )
    scene, _ = synthetic_scene(seed=9)
    await aws.put("retry.jpg", scene)
    job_id = uuid.uuid4()
    await db.execute(
        "INSERT INTO image_processing_jobs (id, source_bucket, source_key) VALUES ($1, $2, $3)",
        job_id,
        aws.bucket,
        "retry.jpg",
    )
    await aws.sqs.send_message(QueueUrl=queues.queue_url, MessageBody=encode_message(job_id))

    # Each attempt's claim (started_at) and release (updated_at) as the row passes through them.
    started: dict[int, datetime] = {}
    released: dict[int, datetime] = {}
    errors: dict[int, str] = {}

    async def attempts_recorded() -> bool:
        row = await db.fetchrow("SELECT * FROM image_processing_jobs WHERE id = $1", job_id)
        assert row is not None
        if row["attempts"]:
            started[row["attempts"]] = row["started_at"]
        if row["status"] == "pending" and row["attempts"]:
            released[row["attempts"]] = row["updated_at"]
            errors[row["attempts"]] = row["error"]
        return bool(row["status"] == "failed")

    await eventually(attempts_recorded, timeout=60, interval=0.02)
    assert sorted(started) == [1, 2, 3]
    assert sorted(released) == [1, 2]
    assert "upload" in errors[1]
    assert "NoSuchBucket" in errors[1]
    # The message came back after the backoff, not at once and not after the visibility
    # timeout: ceiling min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2**(n-1)), jittered to
    # [ceiling/2, ceiling] and rounded: 1-2 s after the first attempt, 2-3 s after the second.
    # The upper margin covers the receive after the message becomes visible.
    gaps = [(started[n + 1] - released[n]).total_seconds() for n in (1, 2)]
    assert 1 - 0.25 <= gaps[0] <= 2 + 2.5, gaps
    assert 2 - 0.25 <= gaps[1] <= 3 + 2.5, gaps

    row = (await wait_finished(producer, [job_id]))[job_id]
    assert row.status is JobStatus.FAILED
    assert row.attempts == 3
    assert row.error is not None
    assert row.error.startswith("gave up after 3 attempts: upload")

    async def in_dlq() -> bool:
        return await aws.queue_counts(queues.dlq_url) == (1, 0)

    await eventually(in_dlq, timeout=30)
    assert await aws.queue_counts(queues.queue_url) == (0, 0)
    metrics = await scrape(worker.url)
    assert metrics['image_worker_jobs_total{outcome="retried"}'] == 2
    assert metrics['image_worker_jobs_total{outcome="failed"}'] == 1
    assert metrics['image_worker_job_failures_total{kind="transient",reason="s3_error"}'] == 3
    assert metrics['image_worker_dependency_up{dependency="s3"}'] == 0


@pytest.mark.parametrize(("base", "cap"), [(2.0, 300.0), (1.0, 5.0), (0.0, 10.0)])
def test_backoff_doubles_per_attempt_within_jitter_and_stops_at_the_cap(
    base: float, cap: float
) -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://u@h/db",
            "SQS_QUEUE_URL": "http://127.0.0.1:1/q",
            "BACKOFF_BASE_SECONDS": str(base),
            "BACKOFF_MAX_SECONDS": str(cap),
        }
    )
    processor = JobProcessor(settings, None, None, None, None, WorkerMetrics())  # type: ignore[arg-type]
    for receive_count in range(1, 15):
        ceiling = min(cap, base * 2 ** (receive_count - 1))
        delays = {processor.backoff(receive_count) for _ in range(200)}
        assert min(delays) >= int(ceiling / 2 + 0.5), (receive_count, delays)
        assert max(delays) <= int(ceiling + 0.5), (receive_count, delays)
        if ceiling >= 4:
            assert len(delays) > 1  # jittered, so a fleet's retries spread out
    assert processor.backoff(100) <= cap + 0.5


async def test_a_job_delivered_past_its_last_attempt_is_failed_without_running(
    start_worker: StartWorker, producer: JobClient, aws: Aws
) -> None:
    scene, _ = synthetic_scene(seed=10)
    await aws.put("killer.jpg", scene)
    job = await producer.create_job("killer.jpg")
    for _ in range(2):  # two deliveries whose worker "died": received, never settled
        response = await aws.sqs.receive_message(QueueUrl=aws.queue_url, VisibilityTimeout=0)
        assert len(response["Messages"]) == 1
    worker = await start_worker(MAX_ATTEMPTS="2")

    row = (await wait_finished(producer, [job.id]))[job.id]
    assert row.status is JobStatus.FAILED
    assert row.error is not None
    assert row.error.startswith("gave up after 2 attempts: no attempt finished")
    metrics = await scrape(worker.url)
    assert metrics["image_worker_inference_seconds_count"] == 0
    assert await aws.keys("cutouts/") == []
