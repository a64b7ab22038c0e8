"""Cancel on the real stack (PostgreSQL, moto S3/SQS, the u2netp model): the shared SQL's four
answers, a job not yet claimed cancelled at once, a running job ending as `cancelled` with no
object left behind (stopped before its upload, and stopped after it), the worker's other endings
of a job whose cancel was asked, and no way back: claims, retry-failed, the sweep, late messages."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import aioboto3
import asyncpg
import pytest

from api_client.client import JobClient
from api_client.recovery import SweepSettings
from jobcore.cancel_queries import CancelOutcome, cancel_job
from jobcore.event_outbox import single_output
from jobcore.jobs import JobStatus, encode_message
from tests.conftest import Aws, StartWorker, worker_env
from tests.helpers import eventually, large_photo, scrape, synthetic_scene
from worker.job_table import ClaimOutcome, Completion, JobStore
from worker.metrics import WorkerMetrics
from worker.models import ModelRegistry
from worker.pipeline import Action, JobProcessor
from worker.settings import Settings

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client


async def insert_job(db: asyncpg.Pool, status: str = "pending", **columns: Any) -> uuid.UUID:
    job_id = uuid.uuid4()
    names = ["id", "source_bucket", "source_key", "status", *columns]
    values = [job_id, "photos", "sources/a.jpg", status, *columns.values()]
    marks = ", ".join(f"${i}" for i in range(1, len(values) + 1))
    await db.execute(
        f"INSERT INTO image_processing_jobs ({', '.join(names)}) VALUES ({marks})", *values
    )
    return job_id


async def row(db: asyncpg.Pool, job_id: uuid.UUID) -> asyncpg.Record:
    record = await db.fetchrow("SELECT * FROM image_processing_jobs WHERE id = $1", job_id)
    assert record is not None
    return record


@pytest.mark.parametrize("status", ["pending", "queue_failed"])
async def test_a_job_not_yet_claimed_is_cancelled_at_once(db: asyncpg.Pool, status: str) -> None:
    job_id = await insert_job(db, status)
    result = await cancel_job(db, job_id, "book deleted")
    assert result.outcome is CancelOutcome.CANCELLED
    assert result.job is not None
    assert result.job.status is JobStatus.CANCELLED
    assert result.job.status.finished
    after = await row(db, job_id)
    assert after["status"] == "cancelled"
    assert after["error"] == "book deleted"
    assert after["cancel_reason"] == "book deleted"
    assert after["completed_at"] is not None
    assert after["event_pending"]  # only the sweep publishes the event of such a cancel


async def test_a_running_job_gets_a_request_and_a_finished_one_is_left_alone(
    db: asyncpg.Pool,
) -> None:
    running = await insert_job(db, "processing", claimed_by="w1")
    first = await cancel_job(db, running, "first")
    assert first.outcome is CancelOutcome.REQUESTED
    assert first.job is not None
    assert first.job.status is JobStatus.PROCESSING
    assert first.job.cancel_reason == "first"
    requested_at = first.job.cancel_requested_at
    assert requested_at is not None
    again = await cancel_job(db, running, "second")
    assert again.outcome is CancelOutcome.REQUESTED
    assert again.job is not None
    assert (again.job.cancel_reason, again.job.cancel_requested_at) == ("first", requested_at)
    assert not (await row(db, running))["event_pending"]

    for status in ("completed", "failed", "cancelled"):
        extra = {"result_bucket": "b", "result_key": "k"} if status == "completed" else {}
        done = await insert_job(db, status, error="old", **extra)
        before = await row(db, done)
        result = await cancel_job(db, done)
        assert result.outcome is CancelOutcome.ALREADY_FINISHED
        assert result.job is not None
        assert result.job.status.value == status
        assert dict(await row(db, done)) == dict(before)

    missing = await cancel_job(db, uuid.uuid4())
    assert (missing.outcome, missing.job) == (CancelOutcome.NOT_FOUND, None)
    default = await cancel_job(db, await insert_job(db), "  ")
    assert default.job is not None
    assert default.job.error == "cancelled"


async def test_the_worker_store_never_revives_or_completes_a_cancelled_job(
    db: asyncpg.Pool,
) -> None:
    store = JobStore(db, "w1")
    cancelled = await insert_job(db)
    await cancel_job(db, cancelled, "stop")
    claim = await store.claim(cancelled, model="u2netp", lease_seconds=30)
    assert claim.outcome is ClaimOutcome.FINISHED  # its late message is dropped

    # A cancel asked while running: completing is refused, failing or releasing ends it cancelled.
    for ending in ("complete", "fail", "release"):
        job_id = await insert_job(db)
        assert (await store.claim(job_id, model="u2netp", lease_seconds=30)).job is not None
        await cancel_job(db, job_id, f"stop before {ending}")
        if ending == "complete":
            outputs = single_output("b", "k")
            assert await store.complete(job_id, "b", "k", outputs) is Completion.CANCEL_REQUESTED
            assert (await row(db, job_id))["status"] == "processing"
            assert await store.cancel(job_id)
        elif ending == "fail":
            assert await store.fail(job_id, "not an image") is JobStatus.CANCELLED
        else:
            assert await store.release(job_id, "s3 hiccup") is JobStatus.CANCELLED
        after = await row(db, job_id)
        assert (after["status"], after["error"]) == ("cancelled", f"stop before {ending}")
        assert after["result_key"] is None

    # A worker that died holding a job whose cancel was asked: the next claim ends it.
    abandoned = await insert_job(db)
    assert (await store.claim(abandoned, model="u2netp", lease_seconds=0.001)).job is not None
    await cancel_job(db, abandoned, "stop")
    await asyncio.sleep(0.01)  # the lease (1 ms) has run out
    claim = await JobStore(db, "w2").claim(abandoned, model="u2netp", lease_seconds=30)
    assert claim.outcome is ClaimOutcome.CANCELLED
    assert claim.job is not None
    assert claim.job.status is JobStatus.CANCELLED
    assert claim.job.claimed_by == "w1"


async def test_retry_failed_and_the_sweep_leave_cancelled_jobs_cancelled(
    producer: JobClient, db: asyncpg.Pool, aws: Aws
) -> None:
    jobs = [await producer.create_job(f"sources/{n}.jpg") for n in range(2)]
    await aws.receive_all()  # the messages are consumed; the rows stay open
    for job in jobs:
        assert (await cancel_job(db, job.id, "book deleted")).outcome is CancelOutcome.CANCELLED
    await db.execute("UPDATE image_processing_jobs SET updated_at = now() - interval '1 day'")

    named = await producer.retry_failed([jobs[0].id])
    assert named.sent == []
    assert named.skipped == {jobs[0].id: "status is cancelled, not failed"}
    every = await producer.retry_failed()
    assert (every.sent, every.failed) == ([], {})
    report = await producer.sweep(SweepSettings(grace_seconds=1, pending_after_seconds=2))
    assert report.queue_failed_sent == []
    assert report.pending_resent == []
    assert await aws.receive_all() == []  # nothing was sent
    assert {r["status"] for r in await db.fetch("SELECT status FROM image_processing_jobs")} == {
        "cancelled"
    }


async def test_a_late_message_of_a_cancelled_job_is_dropped(
    start_worker: StartWorker, producer: JobClient, aws: Aws, db: asyncpg.Pool
) -> None:
    scene, _ = synthetic_scene((320, 240))
    await aws.put("sources/scene.jpg", scene)
    job = await producer.create_job("sources/scene.jpg")
    await cancel_job(db, job.id, "changed my mind")
    await aws.sqs.send_message(QueueUrl=aws.queue_url, MessageBody=encode_message(job.id))
    worker = await start_worker()

    async def dropped() -> bool:
        metrics = await scrape(worker.url)
        return metrics['image_worker_jobs_total{outcome="skipped"}'] == 2

    await eventually(dropped, timeout=60)
    assert (await row(db, job.id))["status"] == "cancelled"
    assert await aws.keys("cutouts/") == []
    assert await aws.queue_counts() == (0, 0)


@pytest.mark.slow  # a throttled download
async def test_cancel_while_running_ends_cancelled_with_no_object(
    start_worker: StartWorker,
    producer: JobClient,
    aws: Aws,
    db: asyncpg.Pool,
    throttled_aws: str,
) -> None:
    """The download is slow (throttled link): the cancel lands while the job runs, and the check
    before the upload stops it."""
    await aws.put("large.jpg", large_photo())
    worker = await start_worker(AWS_ENDPOINT_URL=throttled_aws, WORKER_CONCURRENCY="1")
    job = await producer.create_job("large.jpg", book_id="b-1")

    async def running() -> bool:
        return bool((await row(db, job.id))["status"] == "processing")

    await eventually(running, timeout=30, interval=0.05)
    result = await cancel_job(db, job.id, "book deleted")
    assert result.outcome is CancelOutcome.REQUESTED

    async def ended() -> dict[str, float] | None:
        metrics = await scrape(worker.url)
        outcomes = ("cancelled", "completed", "failed")
        done = sum(metrics[f'image_worker_jobs_total{{outcome="{o}"}}'] for o in outcomes)
        return metrics if done else None

    metrics = await eventually(ended, timeout=120)
    assert metrics['image_worker_jobs_total{outcome="cancelled"}'] == 1
    assert metrics['image_worker_jobs_total{outcome="failed"}'] == 0
    done = await row(db, job.id)
    assert done["status"] == "cancelled"
    assert done["error"] == "book deleted"
    assert done["result_key"] is None
    assert await aws.keys("cutouts/") == []
    assert not any(
        value for name, value in metrics.items() if name.startswith("image_worker_job_failures")
    )

    async def message_deleted() -> bool:
        return await aws.queue_counts() == (0, 0)

    await eventually(message_deleted, timeout=30)


async def test_a_cancelled_job_whose_worker_died_after_its_upload_leaves_no_object(
    start_worker: StartWorker, producer: JobClient, aws: Aws, db: asyncpg.Pool
) -> None:
    """The state a worker killed after its upload leaves: `processing`, its lease run out, the
    object written; the app cancels; the message comes back to another worker."""
    await aws.put("sources/scene.jpg", synthetic_scene((320, 240))[0])
    job = await producer.create_job("sources/scene.jpg")
    await aws.receive_all()  # the dead worker's delivery: invisible for now
    dead = JobStore(db, "dead-worker")
    assert (await dead.claim(job.id, model="u2netp", lease_seconds=0.001)).job is not None
    await aws.put(f"cutouts/{job.id}.png", b"a cut-out nobody will complete")
    assert (await cancel_job(db, job.id, "book deleted")).outcome is CancelOutcome.REQUESTED
    await aws.sqs.send_message(QueueUrl=aws.queue_url, MessageBody=encode_message(job.id))
    worker = await start_worker()

    async def cancelled() -> dict[str, float] | None:
        metrics = await scrape(worker.url)  # counted once the objects are deleted
        return metrics if metrics['image_worker_jobs_total{outcome="cancelled"}'] == 1 else None

    metrics = await eventually(cancelled, timeout=60)
    assert metrics['image_worker_jobs_total{outcome="failed"}'] == 0
    assert await aws.keys("cutouts/") == []
    done = await row(db, job.id)
    assert (done["status"], done["error"]) == ("cancelled", "book deleted")


class AfterUpload:
    """The real S3 client, with the app acting right after the result's upload returns (the
    window between the upload and the completing UPDATE): it cancels the job or deletes its row."""

    def __init__(self, s3: Any, db: asyncpg.Pool, app_does: str) -> None:
        self.s3 = s3
        self.db = db
        self.app_does = app_does
        self.uploaded: list[str] = []

    async def put_object(self, **kwargs: Any) -> Any:
        response = await self.s3.put_object(**kwargs)
        self.uploaded.append(kwargs["Key"])
        job_id = uuid.UUID(kwargs["Metadata"]["job-id"])
        if self.app_does == "cancel":
            assert (await cancel_job(self.db, job_id, "too late")).outcome is (
                CancelOutcome.REQUESTED
            )
        else:
            await self.db.execute("DELETE FROM image_processing_jobs WHERE id = $1", job_id)
        return response

    def __getattr__(self, name: str) -> Any:
        return getattr(self.s3, name)


@pytest.fixture
async def processor_parts(
    database_url: str, aws: Aws, model_home: Path, db: asyncpg.Pool
) -> AsyncIterator[tuple[Settings, ModelRegistry, ThreadPoolExecutor]]:
    settings = Settings.from_env(worker_env(database_url, aws, model_home))
    with ThreadPoolExecutor(2) as cpu_pool:
        models = ModelRegistry(settings, WorkerMetrics())
        await models.preload((settings.model_name,))
        try:
            yield settings, models, cpu_pool
        finally:
            models.close()


@pytest.mark.parametrize(
    "app_does",
    ["cancel", pytest.param("delete", marks=pytest.mark.slow)],  # one in the fast lane
)
async def test_a_cancel_or_delete_after_the_upload_removes_the_uploaded_object(
    processor_parts: tuple[Settings, ModelRegistry, ThreadPoolExecutor],
    producer: JobClient,
    aws: Aws,
    db: asyncpg.Pool,
    app_does: str,
) -> None:
    settings, model, cpu_pool = processor_parts
    scene, _ = synthetic_scene((320, 240))
    await aws.put("sources/scene.jpg", scene)
    job = await producer.create_job("sources/scene.jpg")
    metrics = WorkerMetrics()
    async with aioboto3.Session().client(
        "s3", endpoint_url=aws.endpoint, region_name="us-east-1"
    ) as s3:
        app_after_upload = AfterUpload(s3, db, app_does)
        store = JobStore(db, settings.worker_id)
        # AfterUpload stands in for the S3 client (it forwards everything but put_object).
        s3_client = cast("S3Client", app_after_upload)
        processor = JobProcessor(settings, store, s3_client, model, cpu_pool, metrics)
        outcome = await processor.process(job.id, 1, None, time.monotonic() + 60)

    assert outcome.action is Action.DELETE
    assert app_after_upload.uploaded == [f"cutouts/{job.id}.png"]  # it was there
    assert await aws.keys("cutouts/") == []  # and is gone
    assert metrics.jobs.labels("completed")._value.get() == 0
    if app_does == "cancel":
        done = await row(db, job.id)
        assert (done["status"], done["error"], done["result_key"]) == (
            "cancelled", "too late", None
        )  # fmt: skip
        assert metrics.jobs.labels("cancelled")._value.get() == 1
    else:
        assert await db.fetchval("SELECT count(*) FROM image_processing_jobs") == 0
