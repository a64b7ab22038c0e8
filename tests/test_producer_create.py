"""Creating jobs the way a web API does, on the real stack (PostgreSQL, moto's SQS server):
primary-image jobs, idempotency keys under real concurrency, and sending only after the
caller's transaction commits. Outages are real: a closed port, a queue that does not exist, an
endpoint that accepts connections and never answers."""

from __future__ import annotations

import asyncio
import logging
import uuid
from urllib.parse import urlsplit

import asyncpg
import pytest

from api_client import ClientConfigError, IdempotencyConflict, ImageCopy, JobClient, NewJob
from devstack.stack import drop_database, recreate_database
from jobcore.jobs import Job, JobStatus
from tests.conftest import Aws, StartWorker
from tests.faults import FaultProxy
from tests.helpers import (
    RollBack,
    capture_logs,
    client_for,
    drain,
    eventually,
    missing_queue_url,
    settings_for,
    synthetic_scene,
    unused_port,
    wait_finished,
)
from worker.migrate import bundled_migrations, migrate_url


async def rows(db: asyncpg.Pool) -> list[asyncpg.Record]:
    return list(
        await db.fetch(
            "SELECT id, status, error, source_key, idempotency_key FROM image_processing_jobs"
        )
    )


# -- primary-image jobs ----------------------------------------------------------------------------


async def test_primary_image_job_is_for_the_first_image_copied(
    db: asyncpg.Pool, aws: Aws, producer: JobClient
) -> None:
    images = [
        ImageCopy.failed("books/b1/0.jpg", TimeoutError("copy timed out")),
        ImageCopy("books/b1/1.jpg"),
        ImageCopy("books/b1/2.jpg"),
    ]
    result = await producer.create_primary_image_job("b1", images)
    assert result.queued
    assert (result.index, result.key) == (1, "books/b1/1.jpg")
    assert result.skipped == {0: "TimeoutError: copy timed out"}
    assert not result.repeat
    assert result.job is not None
    assert result.job.status is JobStatus.PENDING
    assert (result.job.book_id, result.job.source_bucket) == ("b1", aws.bucket)
    assert [(r["id"], r["source_key"]) for r in await rows(db)] == [
        (result.job.id, "books/b1/1.jpg")
    ]
    assert await drain(aws) == [result.job.id]


async def test_primary_image_with_no_image_copied_makes_no_job(
    db: asyncpg.Pool, aws: Aws, producer: JobClient, caplog: pytest.LogCaptureFixture
) -> None:
    images = [ImageCopy.failed("a.jpg", "403 Forbidden"), ImageCopy("b.jpg", copied=False)]
    with capture_logs(caplog) as logs:
        result = await producer.create_primary_image_job("b2", images)
    assert not result.queued
    assert (result.job, result.index, result.key) == (None, None, None)
    assert result.skipped == {0: "403 Forbidden", 1: "not copied"}
    assert [r.getMessage() for r in logs.records if r.levelno == logging.WARNING] == [
        "no image of book b2 was copied; no job ({0: '403 Forbidden', 1: 'not copied'})"
    ]
    assert await rows(db) == []
    assert await drain(aws) == []


@pytest.mark.parametrize("outage", ["closed port", "missing queue"])
async def test_primary_image_with_the_queue_down_keeps_a_queue_failed_job(
    outage: str,
    database_url: str,
    db: asyncpg.Pool,
    aws: Aws,
    producer: JobClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    change = (
        {"aws_endpoint_url": f"http://127.0.0.1:{unused_port()}"}
        if outage == "closed port"
        else {"queue_url": missing_queue_url(aws)}
    )
    async with client_for(database_url, aws, **change) as broken:
        with capture_logs(caplog) as logs:
            result = await broken.create_primary_image_job(
                "b3", [ImageCopy.failed("0.jpg", "gone"), ImageCopy("1.jpg")]
            )
    assert result.job is not None
    assert result.index == 1
    assert result.job.status is JobStatus.QUEUE_FAILED
    assert result.job.error is not None
    assert result.job.error.startswith("send failed:")
    errors = [r for r in logs.records if r.levelno == logging.ERROR]
    assert [r.job_id for r in errors] == [str(result.job.id)]  # type: ignore[attr-defined]
    assert errors[0].exc_info is not None  # with its stack trace
    assert (await producer.retry_queue_failed()).sent == [result.job.id]
    assert await drain(aws) == [result.job.id]


async def test_primary_image_repeat_returns_the_books_job_even_if_its_first_copy_now_worked(
    db: asyncpg.Pool, aws: Aws, producer: JobClient
) -> None:
    first = await producer.create_primary_image_job(
        "b4", [ImageCopy.failed("0.jpg", "timeout"), "1.jpg"], idempotency_key="import-b4"
    )
    again = await producer.create_primary_image_job(
        "b4", ["0.jpg", "1.jpg"], idempotency_key="import-b4"
    )
    assert again.repeat
    assert again.job is not None
    assert first.job is not None
    assert again.job.id == first.job.id
    assert (again.index, again.key) == (1, "1.jpg")  # the image the job is for
    assert len(await rows(db)) == 1
    assert await drain(aws) == [first.job.id]
    with pytest.raises(IdempotencyConflict, match="import-b4"):  # not one of this book's images
        await producer.create_primary_image_job("b4", ["other.jpg"], idempotency_key="import-b4")


# -- idempotency -----------------------------------------------------------------------------------


async def test_a_repeated_key_returns_the_existing_job_and_sends_nothing_more(
    db: asyncpg.Pool, aws: Aws, producer: JobClient
) -> None:
    first = await producer.create_job("sources/a.jpg", book_id="b", idempotency_key="req-1")
    assert first.idempotency_key == "req-1"
    assert first.status is JobStatus.PENDING
    again = await producer.create_job("sources/a.jpg", book_id="b", idempotency_key="req-1")
    assert again.id == first.id
    assert again.status is JobStatus.PENDING
    listed = await producer.create_jobs(
        [NewJob("sources/a.jpg", book_id="b", idempotency_key="req-1"), "sources/new.jpg"]
    )
    assert listed[0].id == first.id
    assert len(await rows(db)) == 2
    assert sorted(await drain(aws)) == sorted([first.id, listed[1].id])


async def test_a_caller_chosen_job_id_is_idempotent(
    db: asyncpg.Pool, aws: Aws, producer: JobClient
) -> None:
    job_id = uuid.uuid4()
    first = await producer.create_job("sources/a.jpg", job_id=job_id)
    again = await producer.create_job("sources/a.jpg", job_id=job_id)
    assert first.id == again.id == job_id
    assert len(await rows(db)) == 1
    assert await drain(aws) == [job_id]


async def test_a_repeat_of_a_queue_failed_job_sends_it_once(
    database_url: str, db: asyncpg.Pool, aws: Aws, producer: JobClient
) -> None:
    async with client_for(database_url, aws, queue_url=missing_queue_url(aws)) as broken:
        failed = await broken.create_job("sources/a.jpg", idempotency_key="req-2")
    assert failed.status is JobStatus.QUEUE_FAILED
    again = await producer.create_job("sources/a.jpg", idempotency_key="req-2")
    assert again.id == failed.id
    assert again.status is JobStatus.PENDING
    assert again.error is None
    third = await producer.create_job("sources/a.jpg", idempotency_key="req-2")
    assert third.status is JobStatus.PENDING
    assert await drain(aws) == [failed.id]  # sent by the first repeat only


async def test_a_repeat_for_another_image_is_refused_and_its_batch_written_nowhere(
    db: asyncpg.Pool, aws: Aws, producer: JobClient
) -> None:
    first = await producer.create_job("sources/a.jpg", idempotency_key="req-3")
    with pytest.raises(IdempotencyConflict) as conflict:
        await producer.create_jobs(
            [NewJob("sources/c.jpg"), NewJob("sources/b.jpg", idempotency_key="req-3")]
        )
    assert conflict.value.existing.id == first.id
    assert "source (s3://" in str(conflict.value)
    assert [r["source_key"] for r in await rows(db)] == ["sources/a.jpg"]  # c.jpg rolled back
    assert await drain(aws) == [first.id]


@pytest.mark.parametrize("first_send", ["ok", "queue down"])
async def test_twenty_concurrent_repeats_make_one_row_and_one_message(
    first_send: str, database_url: str, db: asyncpg.Pool, aws: Aws
) -> None:
    """20 calls with one key at once, each on its own connection (a pool of 20). With the queue
    down for the first try, the 20 repeats all find the row `queue_failed` and race to send it:
    the row lock lets one of them send."""
    if first_send == "queue down":
        async with client_for(database_url, aws, queue_url=missing_queue_url(aws)) as broken:
            seed = await broken.create_job("sources/a.jpg", idempotency_key="same")
        assert seed.status is JobStatus.QUEUE_FAILED
    pool = await asyncpg.create_pool(database_url, min_size=20, max_size=20)
    try:
        client = JobClient(settings_for(database_url, aws), pool, aws.sqs)
        jobs = await asyncio.gather(
            *(client.create_job("sources/a.jpg", idempotency_key="same") for _ in range(20))
        )
    finally:
        await pool.close()
    assert len({job.id for job in jobs}) == 1
    assert {job.status for job in jobs} == {JobStatus.PENDING}
    assert len(await rows(db)) == 1
    assert await drain(aws) == [jobs[0].id]


async def test_concurrent_migrations_add_the_key_column_once(pg_admin_url: str) -> None:
    name = f"iw_migrate_{uuid.uuid4().hex[:10]}"
    url = await recreate_database(pg_admin_url, name)
    try:
        applied = await asyncio.gather(*(migrate_url(url) for _ in range(4)))
        everything = [migration.version for migration in bundled_migrations()]
        assert "0002_idempotency_key" in everything
        assert sorted(applied, key=len) == [[], [], [], everything]  # one task applied them all
        connection = await asyncpg.connect(url)
        try:
            unique = await connection.fetchval(
                """SELECT indisunique FROM pg_index
                    WHERE indexrelid = 'image_processing_jobs_idempotency_key_idx'::regclass"""
            )
        finally:
            await connection.close()
        assert unique is True
    finally:
        await drop_database(pg_admin_url, name)


# -- send after commit ----------------------------------------------------------------------------


async def test_rollback_leaves_no_row_and_sends_nothing(
    db: asyncpg.Pool, aws: Aws, producer: JobClient
) -> None:
    async def import_then_fail() -> None:
        async with producer.transaction() as batch:
            job = await batch.create_job("sources/a.jpg")
            primary = await batch.create_primary_image_job("b", ["0.jpg"])
            assert primary.job is not None
            raise RollBack(job.id)

    with pytest.raises(RollBack):
        await import_then_fail()
    assert await rows(db) == []
    assert await aws.queue_counts() == (0, 0)


async def test_the_message_goes_out_only_after_the_callers_commit(
    db: asyncpg.Pool, aws: Aws, producer: JobClient
) -> None:
    await db.execute("CREATE TABLE books (id text PRIMARY KEY, title text NOT NULL)")
    async with db.acquire() as conn:
        async with producer.transaction(conn) as batch:
            await conn.execute("INSERT INTO books VALUES ('b1', 'Moby Dick')")
            result = await batch.create_primary_image_job("b1", ["covers/b1.jpg"])
            assert result.job is not None
            assert result.job.status is JobStatus.QUEUE_FAILED  # written, not sent yet
            assert result.job.error is None
            assert await producer.get_job(result.job.id) is None  # not committed
            assert await aws.queue_counts() == (0, 0)  # and not on the queue
        assert [job.id for job in batch.jobs] == [result.job.id]
        assert batch.jobs[0].status is JobStatus.PENDING
    assert await db.fetchval("SELECT title FROM books WHERE id = 'b1'") == "Moby Dick"
    stored = await producer.get_job(result.job.id)
    assert stored is not None
    assert stored.status is JobStatus.PENDING
    assert await drain(aws) == [result.job.id]


async def test_a_crash_between_commit_and_send_leaves_a_queue_failed_row(
    database_url: str, db: asyncpg.Pool, aws: Aws, producer: JobClient
) -> None:
    """The process dies while the send after commit is under way (here: the task is cancelled
    while SQS does not answer). The committed row stays `queue_failed` with no error, which the
    sweeper re-sends."""
    moto = urlsplit(aws.endpoint)
    async with FaultProxy(moto.hostname or "127.0.0.1", moto.port or 80) as proxy:
        proxy.stall()
        endpoint = f"http://127.0.0.1:{proxy.port}"
        async with client_for(database_url, aws, aws_endpoint_url=endpoint) as stuck:

            async def import_book() -> None:
                async with stuck.transaction() as batch:
                    await batch.create_job("sources/a.jpg", book_id="b")

            task = asyncio.create_task(import_book())
            committed = await eventually(lambda: rows(db), timeout=30, interval=0.05)

            async def send_hangs() -> bool:
                return proxy.held_request(b"AmazonSQS.SendMessage")

            await eventually(send_hangs, timeout=30, interval=0.02)
            assert not task.done()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    (row,) = await rows(db)
    assert row["id"] == committed[0]["id"]
    assert (row["status"], row["error"]) == ("queue_failed", None)
    assert await aws.queue_counts() == (0, 0)
    assert (await producer.retry_queue_failed()).sent == [row["id"]]
    assert await drain(aws) == [row["id"]]


@pytest.mark.slow  # a worker start; the producer contract runs a real worker fast
async def test_an_import_in_a_transaction_is_processed_by_a_real_worker(
    db: asyncpg.Pool, aws: Aws, producer: JobClient, start_worker: StartWorker
) -> None:
    """The web API's flow: copy the photos (the first copy failed), write the book and queue its
    primary photo in one transaction; a worker processes it once the transaction commits."""
    await start_worker()
    scene, _ = synthetic_scene(seed=3)
    await aws.put("books/b9/1.jpg", scene)
    await db.execute("CREATE TABLE books (id text PRIMARY KEY)")
    async with db.acquire() as conn, producer.transaction(conn) as batch:
        await conn.execute("INSERT INTO books VALUES ('b9')")
        result = await batch.create_primary_image_job(
            "b9",
            [ImageCopy.failed("books/b9/0.jpg", "copy timed out"), "books/b9/1.jpg"],
            idempotency_key="import-b9",
        )
    assert result.job is not None
    done = (await wait_finished(producer, [result.job.id]))[result.job.id]
    assert done.status is JobStatus.COMPLETED
    assert done.source_key == "books/b9/1.jpg"
    assert await aws.keys("cutouts/") == [f"cutouts/{result.job.id}.png"]


async def test_an_idempotency_key_of_a_bad_length_is_refused(producer: JobClient) -> None:
    for key in ("", "k" * 201):
        with pytest.raises(ClientConfigError, match="idempotency_key must be 1-200 characters"):
            await producer.create_job("sources/a.jpg", idempotency_key=key)


async def backends_waiting_on_a_lock(db: asyncpg.Pool) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    return count


@pytest.mark.parametrize("first_request", ["commits", "rolls back"])
async def test_a_repeat_waits_for_the_first_requests_transaction(
    first_request: str, db: asyncpg.Pool, aws: Aws, producer: JobClient
) -> None:
    """The repeat arrives while the first request's row is written but not committed: it waits
    for that transaction, then returns its job (commit) or creates its own (rollback)."""
    async with db.acquire() as conn:
        repeat: asyncio.Task[Job] | None = None

        async def first() -> Job:
            nonlocal repeat
            async with producer.transaction(conn) as batch:
                job = await batch.create_job("sources/a.jpg", idempotency_key="k")
                repeat = asyncio.create_task(
                    producer.create_job("sources/a.jpg", idempotency_key="k")
                )
                await eventually(lambda: backends_waiting_on_a_lock(db), timeout=10, interval=0.05)
                assert not repeat.done()  # blocked on the uncommitted row
                if first_request == "rolls back":
                    raise RollBack
            return job

        if first_request == "commits":
            written = await first()
        else:
            with pytest.raises(RollBack):
                await first()
        assert repeat is not None
        answered = await asyncio.wait_for(repeat, timeout=30)
    (row,) = await rows(db)
    assert row["id"] == answered.id
    assert answered.status is JobStatus.PENDING
    if first_request == "commits":
        assert answered.id == written.id
    assert await drain(aws) == [answered.id]


async def test_an_async_session_writes_in_its_transaction_and_sends_after_commit(
    database_url: str, db: asyncpg.Pool, aws: Aws, producer: JobClient
) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    engine = create_async_engine(database_url.replace("postgresql://", "postgresql+asyncpg://", 1))
    await db.execute("CREATE TABLE books (id text PRIMARY KEY)")
    try:
        async with AsyncSession(engine) as session:
            await session.execute(text("INSERT INTO books VALUES ('b1')"))
            job = await producer.create_job("sources/a.jpg", book_id="b1", session=session)
            primary = await producer.create_primary_image_job("b1", ["b1/0.jpg"], session=session)
            assert (job.status, job.error) == (JobStatus.QUEUE_FAILED, None)
            assert await rows(db) == []  # not committed: invisible elsewhere
            assert await drain(aws) == []
            await session.commit()
            assert job.status is JobStatus.PENDING  # the returned job: state after the send
            assert primary.job is not None
            assert primary.job.status is JobStatus.PENDING
            assert sorted(await drain(aws)) == sorted([job.id, primary.job.id])
            await producer.create_job("sources/dropped.jpg", session=session)
            await session.rollback()
        assert sorted(r["id"] for r in await rows(db)) == sorted([job.id, primary.job.id])
        assert await db.fetchval("SELECT count(*) FROM books") == 1
        assert await drain(aws) == []
    finally:
        await engine.dispose()


async def test_an_async_session_on_another_driver_is_refused(
    database_url: str, producer: JobClient
) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    engine = create_async_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        async with AsyncSession(engine) as session:
            with pytest.raises(ClientConfigError, match=r"asyncpg driver .*postgresql\+psycopg"):
                await producer.create_job("sources/a.jpg", session=session)
    finally:
        await engine.dispose()


async def test_a_cancelled_wait_closes_its_listening_connection(
    db: asyncpg.Pool, producer: JobClient
) -> None:
    async def listening() -> bool:
        count = await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE 'LISTEN %' AND state = 'idle'"
        )
        return bool(count)

    async def none_listening() -> bool:
        return not await listening()

    job = await producer.create_job("sources/a.jpg")
    waiting = asyncio.create_task(producer.wait_for_job(job.id, timeout=60))
    await eventually(listening, timeout=30, interval=0.05)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await eventually(none_listening, timeout=30, interval=0.05)
