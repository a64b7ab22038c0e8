"""The producer library on real services: PostgreSQL, moto's SQS/S3 server, and a real worker for
the DLQ round trip. No mocks: an unreachable queue is a closed loopback port or a queue that does
not exist, a refused batch entry is one SQS itself refuses."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from datetime import timedelta

import asyncpg
import pytest

from api_client.client import (
    ClientConfigError,
    JobClient,
    JobNotFound,
    JobWaitTimeout,
    NewJob,
)
from devstack.stack import create_queue_pair
from jobcore.jobs import JobStatus
from jobcore.sqs import entry_outcomes
from tests.conftest import Aws, StartWorker
from tests.helpers import (
    capture_logs,
    client_for,
    drain,
    eventually,
    insert_job,
    missing_queue_url,
    settings_for,
    synthetic_scene,
    unused_port,
)

# -- create_job ------------------------------------------------------------------------------------


@pytest.mark.parametrize("outage", ["closed port", "missing queue"])
async def test_create_job_with_queue_unreachable_keeps_a_queue_failed_row(
    outage: str, database_url: str, aws: Aws, producer: JobClient, caplog: pytest.LogCaptureFixture
) -> None:
    change = (
        {"aws_endpoint_url": f"http://127.0.0.1:{unused_port()}"}
        if outage == "closed port"
        else {"queue_url": missing_queue_url(aws)}
    )
    async with client_for(database_url, aws, **change) as broken:
        with capture_logs(caplog) as logs:
            job = await broken.create_job("sources/a.jpg", book_id="book-1")
    assert job.status is JobStatus.QUEUE_FAILED
    assert job.error is not None
    assert job.error.startswith("send failed:")
    stored = await producer.get_job(job.id)
    assert stored == job
    assert stored.book_id == "book-1"
    errors = [r for r in logs.records if r.levelno == logging.ERROR]
    assert errors[0].job_id == str(job.id)  # type: ignore[attr-defined]
    assert errors[0].exc_info is not None  # logged with its stack trace

    result = await producer.retry_queue_failed()
    assert result.sent == [job.id]
    assert not result.failed
    again = await producer.get_job(job.id)
    assert again is not None
    assert again.status is JobStatus.PENDING
    assert again.error is None
    assert await drain(aws) == [job.id]


async def test_concurrent_retries_send_each_queue_failed_row_exactly_once(
    database_url: str, aws: Aws, producer: JobClient
) -> None:
    async with client_for(database_url, aws, queue_url=missing_queue_url(aws)) as broken:
        jobs = await broken.create_jobs([f"sources/{n}.jpg" for n in range(27)])
    assert {job.status for job in jobs} == {JobStatus.QUEUE_FAILED}

    async with client_for(database_url, aws) as one, client_for(database_url, aws) as two:
        first, second = await asyncio.gather(
            one.retry_queue_failed(limit=100, batch_size=5),
            two.retry_queue_failed(limit=100, batch_size=5),
        )
    assert not first.failed
    assert not second.failed
    assert not set(first.sent) & set(second.sent)
    assert sorted(first.sent + second.sent) == sorted(job.id for job in jobs)
    queued = await drain(aws)
    assert len(queued) == 27  # every row once, none twice
    assert set(queued) == {job.id for job in jobs}
    assert {j.status for j in await producer.list_jobs(limit=100)} == {JobStatus.PENDING}
    assert (await producer.retry_queue_failed()).sent == []


async def test_retry_queue_failed_is_oldest_first_and_bounded(
    db: asyncpg.Pool, aws: Aws, producer: JobClient
) -> None:
    old = await insert_job(db, "queue_failed", age=timedelta(hours=2), error="send failed: x")
    middle = await insert_job(db, "queue_failed", age=timedelta(hours=1), error="send failed: x")
    new = await insert_job(db, "queue_failed", error="send failed: x")
    result = await producer.retry_queue_failed(limit=2)
    assert result.sent == [old, middle]
    assert (await producer.get_job(new)).status is JobStatus.QUEUE_FAILED  # type: ignore[union-attr]
    assert sorted(await drain(aws)) == sorted([old, middle])


async def test_retry_queue_failed_while_the_queue_is_still_down_keeps_rows(
    db: asyncpg.Pool, database_url: str, aws: Aws
) -> None:
    job_id = await insert_job(db, "queue_failed", error="send failed: first")
    async with client_for(database_url, aws, queue_url=missing_queue_url(aws)) as broken:
        result = await broken.retry_queue_failed()
    assert result.sent == []
    assert list(result.failed) == [job_id]
    row = await db.fetchrow("SELECT status, error FROM image_processing_jobs WHERE id = $1", job_id)
    assert row["status"] == "queue_failed"
    assert "NonExistentQueue" in row["error"] or "QueueDoesNotExist" in row["error"]


async def test_create_job_in_a_transaction_it_did_not_open_is_refused(
    db: asyncpg.Pool, aws: Aws, producer: JobClient
) -> None:
    """Its commit could not be seen, so the message would go out before it: refused, nothing
    written or sent (client.transaction(conn) is the way; tests/test_producer_create.py)."""
    async with db.acquire() as conn:
        with pytest.raises(ClientConfigError, match=r"client\.transaction"):
            async with conn.transaction():
                await producer.create_job("sources/kept.jpg", connection=conn)
        outside = await producer.create_job("sources/own.jpg", connection=conn)
    assert outside.status is JobStatus.PENDING
    assert await db.fetchval("SELECT count(*) FROM image_processing_jobs") == 1
    assert await drain(aws) == [outside.id]


async def test_create_job_without_a_bucket_is_a_config_error(database_url: str, aws: Aws) -> None:
    async with client_for(database_url, aws, source_bucket=None) as client:
        with pytest.raises(ClientConfigError, match="source bucket"):
            await client.create_job("sources/a.jpg")


async def test_a_client_on_the_callers_pool_and_clients_leaves_them_open(
    database_url: str, db: asyncpg.Pool, aws: Aws
) -> None:
    settings = settings_for(database_url, aws)
    async with JobClient.connect(settings, pool=db, sqs=aws.sqs, s3=aws.s3) as client:
        assert (client.pool, client.sqs, client.s3) == (db, aws.sqs, aws.s3)
        job = await client.create_job("sources/a.jpg")
    plain = JobClient(settings, db, aws.sqs)  # opens nothing, closes nothing
    assert (await plain.get_job(job.id)) == job
    assert await db.fetchval("SELECT count(*) FROM image_processing_jobs") == 1
    assert await drain(aws) == [job.id]
    with pytest.raises(ClientConfigError, match="no S3 client"):
        await plain.upload_source("k", b"x")


# -- create_jobs ----------------------------------------------------------------------------------


async def test_create_jobs_sends_in_batches_of_ten_in_input_order(
    aws: Aws, producer: JobClient
) -> None:
    specs = [NewJob(f"sources/{n}.jpg", book_id=f"book-{n}") for n in range(23)]
    jobs = await producer.create_jobs(specs)
    assert [job.source_key for job in jobs] == [spec.source_key for spec in specs]
    assert [job.book_id for job in jobs] == [spec.book_id for spec in specs]
    assert {job.status for job in jobs} == {JobStatus.PENDING}
    assert {job.source_bucket for job in jobs} == {aws.bucket}
    queued = await drain(aws)
    assert sorted(queued) == sorted(job.id for job in jobs)
    assert await producer.create_jobs([]) == []


async def test_create_jobs_with_one_entry_refused_marks_only_that_row(
    aws: Aws, producer: JobClient
) -> None:
    """SQS refuses a batch entry with DelaySeconds over 900 on its own (SenderFault), while the
    other entries of the same SendMessageBatch call go through."""
    specs = [NewJob(f"sources/{n}.jpg") for n in range(12)]
    specs[4] = NewJob("sources/refused.jpg", delay_seconds=901)
    jobs = await producer.create_jobs(specs)
    refused = jobs[4]
    assert refused.status is JobStatus.QUEUE_FAILED
    assert refused.error is not None
    assert "InvalidParameterValue" in refused.error
    others = [job for n, job in enumerate(jobs) if n != 4]
    assert {job.status for job in others} == {JobStatus.PENDING}
    assert sorted(await drain(aws)) == sorted(job.id for job in others)

    assert (await producer.retry_queue_failed()).sent == [refused.id]
    assert await drain(aws) == [refused.id]


async def test_create_jobs_when_whole_batches_fail_keeps_every_row(
    database_url: str, aws: Aws, producer: JobClient
) -> None:
    async with client_for(database_url, aws, queue_url=missing_queue_url(aws)) as broken:
        jobs = await broken.create_jobs(["sources/a.jpg", NewJob("sources/b.jpg", "other")])
    assert [job.status for job in jobs] == [JobStatus.QUEUE_FAILED] * 2
    assert jobs[1].source_bucket == "other"
    stored = await producer.list_jobs(status=JobStatus.QUEUE_FAILED)
    assert {job.id for job in stored} == {job.id for job in jobs}


def test_batch_response_entries_map_back_to_their_jobs() -> None:
    keys = [uuid.uuid4() for _ in range(4)]
    outcome = entry_outcomes(
        {
            "Successful": [{"Id": "0"}, {"Id": "2"}],
            "Failed": [{"Id": "1", "Code": "InternalError", "Message": "try again"}],
        },
        keys,
    )
    assert outcome.sent == [keys[0], keys[2]]
    assert outcome.failed[keys[1]] == "send failed: InternalError: try again"
    assert outcome.failed[keys[3]] == "send failed: no answer for this entry"


# -- reading -------------------------------------------------------------------------------------


async def test_get_wait_and_list_jobs(db: asyncpg.Pool, producer: JobClient) -> None:
    assert await producer.get_job(uuid.uuid4()) is None
    with pytest.raises(JobNotFound):
        await producer.wait_for_job(uuid.uuid4(), timeout=1)

    pending = await insert_job(db, "pending")
    with pytest.raises(JobWaitTimeout) as waited:
        await producer.wait_for_job(pending, timeout=0.3, interval=0.1)
    assert waited.value.job.status is JobStatus.PENDING

    async def finish_later() -> None:
        # Once the wait is listening (its LISTEN connection is open), not after a guessed pause.
        async def listening() -> bool:
            return bool(
                await db.fetchval(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND query ILIKE 'LISTEN%'"
                )
            )

        await eventually(listening, timeout=10, interval=0.02)
        await db.execute(
            """UPDATE image_processing_jobs SET status = 'failed', error = 'broken'
                WHERE id = $1""",
            pending,
        )

    finisher = asyncio.create_task(finish_later())
    done = await producer.wait_for_job(pending, timeout=10, interval=0.1)
    await finisher
    assert done.status is JobStatus.FAILED

    old_failed = await insert_job(db, "failed", age=timedelta(hours=3), error="x")
    old_pending = await insert_job(db, "pending", age=timedelta(hours=2))
    await db.execute("UPDATE image_processing_jobs SET book_id = 'b-7' WHERE id = $1", old_pending)

    ids = [job.id for job in await producer.list_jobs()]
    assert ids == [pending, old_pending, old_failed]  # newest first
    oldest_first = await producer.list_jobs(oldest_first=True, limit=2)
    assert [job.id for job in oldest_first] == [old_failed, old_pending]
    assert [j.id for j in await producer.list_jobs(status="failed")] == [pending, old_failed]
    assert [j.id for j in await producer.list_jobs(status=[JobStatus.PENDING])] == [old_pending]
    aged = await producer.list_jobs(older_than=timedelta(hours=1))
    assert [job.id for job in aged] == [old_pending, old_failed]
    recent = await producer.list_jobs(newer_than=timedelta(minutes=5))
    assert [job.id for job in recent] == [pending]
    assert [j.id for j in await producer.list_jobs(book_id="b-7")] == [old_pending]


# -- retry_failed ----------------------------------------------------------------------------------


async def test_retry_failed_resets_chosen_jobs_and_requeues_them(
    db: asyncpg.Pool, aws: Aws, producer: JobClient
) -> None:
    chosen = await insert_job(db, "failed", attempts=5, error="gave up after 5 attempts: S3 down")
    other = await insert_job(db, "failed", attempts=1, error="not a supported image")
    pending = await insert_job(db, "pending")
    unknown = uuid.uuid4()

    result = await producer.retry_failed([chosen, pending, unknown])
    assert result.sent == [chosen]
    assert result.skipped == {pending: "status is pending, not failed", unknown: "not found"}
    job = await producer.get_job(chosen)
    assert job is not None
    assert (job.status, job.attempts, job.error, job.completed_at) == (
        JobStatus.PENDING, 0, None, None
    )  # fmt: skip
    untouched = await producer.get_job(other)
    assert untouched is not None
    assert untouched.status is JobStatus.FAILED
    assert await drain(aws) == [chosen]

    by_error = await producer.retry_failed(error_contains="supported image")
    assert by_error.sent == [other]
    assert await drain(aws) == [other]


# -- stats ---------------------------------------------------------------------------------------


async def test_stats_counts_ages_and_queue_depths(
    db: asyncpg.Pool, aws: Aws, producer: JobClient
) -> None:
    empty = await producer.stats()
    assert empty.counts == {s.value: 0 for s in JobStatus}
    assert empty.oldest_pending_age_seconds is None
    assert empty.queue is not None
    assert empty.queue.visible == 0

    await insert_job(db, "pending", age=timedelta(minutes=10))
    await insert_job(db, "pending")
    await insert_job(db, "failed")
    await insert_job(db, "completed")
    await producer.create_job("sources/new.jpg")
    await aws.sqs.send_message(QueueUrl=aws.dlq_url, MessageBody="{}")
    await aws.sqs.send_message(QueueUrl=aws.dlq_url, MessageBody="{}")

    stats = await producer.stats()
    assert stats.counts == {
        "pending": 3, "queue_failed": 0, "processing": 0, "completed": 1, "failed": 1,
        "cancelled": 0,
    }  # fmt: skip
    assert stats.oldest_pending_age_seconds is not None
    assert 590 < stats.oldest_pending_age_seconds < 700
    assert stats.queue is not None
    assert stats.dlq is not None
    assert (stats.queue.visible, stats.dlq.visible) == (1, 2)
    assert stats.queue_error is None
    assert json.loads(json.dumps(stats.to_dict()))["dlq"]["visible"] == 2


async def test_stats_with_sqs_down_still_reports_the_table(database_url: str, aws: Aws) -> None:
    async with client_for(
        database_url, aws, aws_endpoint_url=f"http://127.0.0.1:{unused_port()}"
    ) as c:
        stats = await c.stats()
    assert stats.counts["pending"] == 0
    assert stats.queue is None
    assert stats.queue_error


# -- redrive_dlq ---------------------------------------------------------------------------------


async def test_redrive_dlq_moves_messages_and_resets_failed_rows(
    db: asyncpg.Pool, aws: Aws, producer: JobClient
) -> None:
    failed = await insert_job(db, "failed", attempts=5, error="gave up after 5 attempts: x")
    completed = await insert_job(db, "completed")
    bodies = [
        json.dumps({"job_id": str(failed), "v": 1}),
        json.dumps({"job_id": str(completed), "v": 1}),
        "not json at all",
        *[json.dumps({"job_id": str(uuid.uuid4())}) for _ in range(11)],
    ]
    for body in bodies:
        await aws.sqs.send_message(QueueUrl=aws.dlq_url, MessageBody=body)

    result = await producer.redrive_dlq()  # DLQ found through the queue's RedrivePolicy
    assert result.dlq_url == aws.dlq_url
    assert result.moved == len(bodies)
    assert result.reset == [failed]
    assert result.unknown == 12  # the malformed body and the eleven unknown job ids
    assert not result.failed
    assert await aws.queue_counts(aws.dlq_url) == (0, 0)
    assert await aws.queue_counts() == (len(bodies), 0)
    job = await producer.get_job(failed)
    assert job is not None
    assert (job.status, job.attempts, job.error) == (JobStatus.PENDING, 0, None)
    stays = await producer.get_job(completed)
    assert stays is not None
    assert stays.status is JobStatus.COMPLETED


async def test_redrive_dlq_respects_its_limit_and_needs_a_dlq(
    database_url: str, aws: Aws, producer: JobClient
) -> None:
    for _ in range(5):
        await aws.sqs.send_message(QueueUrl=aws.dlq_url, MessageBody="{}")
    assert (await producer.redrive_dlq(limit=3)).moved == 3
    assert await eventually(lambda: _visible(aws, aws.dlq_url, 2), timeout=5)

    plain = (await aws.sqs.create_queue(QueueName=f"plain-{uuid.uuid4().hex[:8]}"))["QueueUrl"]
    async with client_for(database_url, aws, queue_url=plain) as client:
        with pytest.raises(ClientConfigError, match="no DLQ"):
            await client.redrive_dlq()
        explicit = await client.redrive_dlq(dlq_url=aws.dlq_url)
    assert explicit.moved == 2


async def _visible(aws: Aws, url: str, expected: int) -> bool:
    return (await aws.queue_counts(url))[0] == expected


@pytest.mark.slow  # a job failed through every attempt to the DLQ
async def test_dlq_redrive_end_to_end_with_a_real_worker(
    start_worker: StartWorker, database_url: str, aws: Aws
) -> None:
    """A job fails until fixed (its result bucket is missing), lands in the DLQ after
    MAX_ATTEMPTS receives, is redriven after the bucket exists, and completes."""
    pair = await create_queue_pair(
        aws.sqs, f"redrive-{uuid.uuid4().hex[:8]}", max_receive_count=2, visibility=10
    )
    results = f"results-{uuid.uuid4().hex[:8]}"
    await start_worker(SQS_QUEUE_URL=pair.queue_url, MAX_ATTEMPTS="2", RESULT_BUCKET=results)
    scene, _ = synthetic_scene(seed=5)
    await aws.put("sources/fixme.jpg", scene)
    async with client_for(database_url, aws, queue_url=pair.queue_url) as client:
        job = await client.create_job("sources/fixme.jpg", book_id="fix-me")

        async def failed_into_dlq() -> bool:
            current = await client.get_job(job.id)
            in_dlq = (await aws.queue_counts(pair.dlq_url))[0] == 1
            return in_dlq and current is not None and current.status is JobStatus.FAILED

        await eventually(failed_into_dlq, timeout=60)
        given_up = await client.get_job(job.id)
        assert given_up is not None
        assert given_up.error is not None
        assert given_up.error.startswith("gave up after 2 attempts")

        await aws.s3.create_bucket(Bucket=results)  # the fix
        result = await client.redrive_dlq()
        assert result.dlq_url == pair.dlq_url
        assert (result.moved, result.reset) == (1, [job.id])

        done = await client.wait_for_job(job.id, timeout=60)
        assert done.status is JobStatus.COMPLETED, done.error
        assert done.attempts == 1
        assert done.error is None
        assert done.result_bucket == results
        assert (await aws.get(f"cutouts/{job.id}.png", bucket=results)).startswith(b"\x89PNG")
        stats = await client.stats()
        assert stats.dlq is not None
        assert stats.dlq.visible == 0
        assert stats.counts["completed"] == 1
