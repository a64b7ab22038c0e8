"""The NOTIFY every status change of a job row emits (channel `image_jobs`), heard by a real
LISTEN on PostgreSQL, and the payload's parser that the producers use."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from jobcore.cancel_queries import cancel_job
from jobcore.event_outbox import single_output
from jobcore.events import JOBS_CHANNEL, JobNotice, MalformedNotice
from jobcore.jobs import JobStatus
from worker.job_table import Completion, JobStore


class Listener:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.notices: asyncio.Queue[str] = asyncio.Queue()

    def heard(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        assert channel == JOBS_CHANNEL
        self.notices.put_nowait(payload)

    async def next(self) -> JobNotice:
        return JobNotice.parse(await asyncio.wait_for(self.notices.get(), timeout=10))

    async def nothing_more(self) -> None:
        # A round trip on the listening connection delivers anything already committed.
        await self.conn.execute("SELECT 1")
        assert self.notices.empty(), self.notices.get_nowait()


@pytest.fixture
async def listener(database_url: str) -> AsyncIterator[Listener]:
    conn = await asyncpg.connect(database_url)
    listening = Listener(conn)
    await conn.add_listener(JOBS_CHANNEL, listening.heard)
    yield listening
    await conn.close()


async def insert(db: asyncpg.Pool, book_id: str | None) -> uuid.UUID:
    job_id = uuid.uuid4()
    await db.execute(
        """INSERT INTO image_processing_jobs (id, book_id, source_bucket, source_key, status)
           VALUES ($1, $2, 'photos', 'a.jpg', 'queue_failed')""",
        job_id,
        book_id,
    )
    return job_id


async def test_every_status_change_is_heard_once_after_commit(
    db: asyncpg.Pool, listener: Listener
) -> None:
    job_id = await insert(db, "book-7")
    assert await listener.next() == JobNotice(job_id, JobStatus.QUEUE_FAILED, "book-7")

    store = JobStore(db, "w1")
    await db.execute("UPDATE image_processing_jobs SET status = 'pending' WHERE id = $1", job_id)
    assert await listener.next() == JobNotice(job_id, JobStatus.PENDING, "book-7")
    assert (await store.claim(job_id, model="u2netp", lease_seconds=30)).job is not None
    assert await listener.next() == JobNotice(job_id, JobStatus.PROCESSING, "book-7")
    await store.extend_leases([job_id], 60)  # no status change: nothing heard
    await db.execute("UPDATE image_processing_jobs SET status = status WHERE id = $1", job_id)
    await listener.nothing_more()

    # Inside a transaction: heard at commit, not before; nothing from a rollback.
    async with db.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        await conn.execute(
            "UPDATE image_processing_jobs SET status = 'failed' WHERE id = $1", job_id
        )
        await listener.nothing_more()
        await transaction.rollback()
    await listener.nothing_more()

    outputs = single_output("b", "k")
    assert await store.complete(job_id, "b", "k", outputs) is Completion.COMPLETED
    assert await listener.next() == JobNotice(job_id, JobStatus.COMPLETED, "book-7")
    await listener.nothing_more()


async def test_a_cancel_and_a_job_without_book_are_heard(
    db: asyncpg.Pool, listener: Listener
) -> None:
    job_id = await insert(db, None)
    assert await listener.next() == JobNotice(job_id, JobStatus.QUEUE_FAILED, None)
    await cancel_job(db, job_id, "gone")
    assert await listener.next() == JobNotice(job_id, JobStatus.CANCELLED, None)
    assert JobStatus.CANCELLED.finished


async def test_a_book_id_too_long_for_a_notify_is_sent_as_null(
    db: asyncpg.Pool, listener: Listener
) -> None:
    # A NOTIFY payload must stay under 8000 bytes, or the INSERT itself would fail.
    job_id = await insert(db, "x" * 9000)
    assert await listener.next() == JobNotice(job_id, JobStatus.QUEUE_FAILED, None)
    fits = "é" * 2000  # 4000 bytes: kept
    fitting = await insert(db, fits)
    assert await listener.next() == JobNotice(fitting, JobStatus.QUEUE_FAILED, fits)


@pytest.mark.parametrize(
    "payload",
    [
        "not json",
        "[1, 2]",
        '{"status": "pending"}',
        '{"id": "nope", "status": "pending", "book_id": null}',
        f'{{"id": "{uuid.uuid4()}", "status": "sleeping", "book_id": null}}',
        f'{{"id": "{uuid.uuid4()}", "status": "pending", "book_id": 7}}',
    ],
)
def test_a_payload_that_is_no_job_notice_is_refused(payload: str) -> None:
    with pytest.raises(MalformedNotice, match="not a job notice"):
        JobNotice.parse(payload)
