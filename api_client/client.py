"""JobClient: what the web API imports to queue work. Creating a job writes its row as
`queue_failed` (no error) and commits, then sends a pointer message and marks the row `pending`;
when the send fails the row stays `queue_failed` with the reason and the job is returned, so an
import never fails because the queue hiccuped. Inside the caller's own transaction
(`client.transaction(conn)`) the send waits for the commit (api_client.batch). An idempotency key
makes a repeat return the existing job (jobcore.job_create).

A client opened with `async with JobClient.connect(settings) as client` owns its asyncpg pool and
its aioboto3 clients and closes them on exit. An application that already has them passes them in
(`JobClient.connect(settings, pool=..., sqs=..., s3=...)` opens only what is missing, or the
constructor `JobClient(settings, pool, sqs, s3)` opens nothing); the client never closes what it
was given."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, cast

import aioboto3
import asyncpg
import structlog

from api_client.admin import (
    DlqRedrive,
    QueueStats,
    Requeued,
    redrive_dlq,
    retry_failed,
    retry_queue_failed,
    stats,
)
from api_client.batch import JobBatch, message_entry
from api_client.creation import ImageCopy, NewJob, PrimaryImageJob
from api_client.errors import ClientConfigError, JobNotFound, JobWaitTimeout
from api_client.health import DEFAULT_TIMEOUT, HealthReport, check_health
from api_client.recovery import SweepReport, SweepSettings, sweep
from api_client.settings import ClientSettings
from jobcore.job_create import IdempotencyConflict
from jobcore.job_queries import fetch_job
from jobcore.jobs import JOB_COLUMNS, Job, JobStatus
from jobcore.queues import discover_dlq_url
from jobcore.sqs import BatchOutcome, call_in_batches

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_sqs import SQSClient

log = structlog.get_logger(__name__)

__all__ = [
    "ClientConfigError",
    "ClientSettings",
    "IdempotencyConflict",
    "ImageCopy",
    "JobClient",
    "JobNotFound",
    "JobWaitTimeout",
    "NewJob",
    "PrimaryImageJob",
]


class JobClient:
    """The producer API. Safe to share between concurrent request handlers."""

    def __init__(
        self,
        settings: ClientSettings,
        pool: asyncpg.Pool,
        sqs: SQSClient,
        s3: S3Client | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.sqs = sqs
        self.s3 = s3
        self._dlq_url: str | None = settings.dlq_url

    @classmethod
    def connect(
        cls,
        settings: ClientSettings,
        *,
        pool: asyncpg.Pool | None = None,
        sqs: SQSClient | None = None,
        s3: S3Client | None = None,
    ) -> _Connector:
        """`async with JobClient.connect(settings) as client:` opens what is not passed in and
        closes only that on exit."""
        return _Connector(settings, pool, sqs, s3)

    # -- creating jobs ---------------------------------------------------------------------------

    async def create_job(
        self,
        source_key: str,
        *,
        source_bucket: str | None = None,
        book_id: str | None = None,
        idempotency_key: str | None = None,
        job_id: uuid.UUID | None = None,
        delay_seconds: int = 0,
        connection: asyncpg.Connection | None = None,
    ) -> Job:
        """Create one job and send its message; a failed send is logged (with its stack trace)
        and leaves the row `queue_failed`, never raising. With `idempotency_key` (or a chosen
        `job_id`) a repeat returns the existing job and sends nothing unless that job is still
        `queue_failed`; a repeat for another image raises IdempotencyConflict.

        `connection`: write on this connection (not in a transaction). To write inside your own
        transaction, use `async with client.transaction(connection) as batch`."""
        new = NewJob(source_key, source_bucket, book_id, delay_seconds, idempotency_key, job_id)
        (job,) = await self.create_jobs([new], connection=connection)
        return job

    async def create_jobs(
        self, jobs: Iterable[NewJob | str], *, connection: asyncpg.Connection | None = None
    ) -> list[Job]:
        """Insert many rows in one statement and commit, then send their messages with
        SendMessageBatch (10 a call). Each entry SQS refuses, and every entry of a call that
        fails as a whole, leaves its row `queue_failed` with the reason. Returns the jobs in
        input order, as they stand after the send."""
        items = list(jobs)
        if not items:
            return []
        async with self.transaction(connection) as batch:
            created = await batch.create_jobs(items)
        return [batch.sent_state.get(job.id, job) for job in created]

    async def create_primary_image_job(
        self,
        book_id: str,
        images: Sequence[ImageCopy | str],
        *,
        source_bucket: str | None = None,
        idempotency_key: str | None = None,
        job_id: uuid.UUID | None = None,
        delay_seconds: int = 0,
        connection: asyncpg.Connection | None = None,
    ) -> PrimaryImageJob:
        """Queue a book's primary image: `images` in listing order, each with its copy outcome;
        the job is for the first one copied. Returns which (`index`, `key`) or, when none was
        copied, no job and why each was passed over. Never raises for queue trouble. A repeat
        of `idempotency_key` returns the book's existing job even if it is for another of its
        images."""
        async with self.transaction(connection) as batch:
            result = await batch.create_primary_image_job(
                book_id,
                images,
                source_bucket=source_bucket,
                idempotency_key=idempotency_key,
                job_id=job_id,
                delay_seconds=delay_seconds,
            )
        if result.job is None:
            return result
        return replace(result, job=batch.sent_state.get(result.job.id, result.job))

    @asynccontextmanager
    async def transaction(
        self, connection: asyncpg.Connection | None = None
    ) -> AsyncIterator[JobBatch]:
        """`async with client.transaction(conn) as batch:` opens a transaction on `conn` (or on
        a pooled connection: `batch.connection`); write your rows there and create jobs with
        `batch.create_job(...)` / `create_jobs` / `create_primary_image_job`. When the block
        exits cleanly the transaction commits and then the messages are sent (`batch.jobs`:
        their state after); when it raises, everything rolls back and nothing is sent. A crash
        between commit and send leaves `queue_failed` rows that the sweeper re-sends."""
        async with AsyncExitStack() as stack:
            conn: asyncpg.Connection = connection or await stack.enter_async_context(
                self.pool.acquire()
            )
            if conn.is_in_transaction():
                raise ClientConfigError(
                    "the connection is already in a transaction, so its commit cannot be"
                    " seen: let client.transaction(connection) open the transaction"
                )
            batch = JobBatch(self.settings, conn)
            async with conn.transaction():
                yield batch
            await batch.send(self.sqs, conn)

    async def send_messages(
        self, items: Sequence[tuple[uuid.UUID, int]] | Sequence[uuid.UUID]
    ) -> BatchOutcome[uuid.UUID]:
        """Send pointer messages for existing rows, 10 per SendMessageBatch call; never raises
        for a failed send: the reasons come back per job."""
        pairs = [item if isinstance(item, tuple) else (item, 0) for item in items]
        return await call_in_batches(
            pairs,
            entry=message_entry,
            key=lambda pair: pair[0],
            call=lambda entries: self.sqs.send_message_batch(
                QueueUrl=self.settings.queue_url, Entries=entries
            ),
            verb="send",
        )

    async def upload_source(self, key: str, data: bytes, *, bucket: str | None = None) -> str:
        """Put an image into the source bucket; returns the bucket used."""
        target = bucket or self.settings.source_bucket
        if not target:
            raise ClientConfigError("no source bucket: pass bucket or set SOURCE_BUCKET")
        await self.require_s3().put_object(Bucket=target, Key=key, Body=data)
        return target

    def require_s3(self) -> S3Client:
        """The S3 client; a client constructed without one raises ClientConfigError."""
        if self.s3 is None:
            raise ClientConfigError("this client has no S3 client")
        return self.s3

    # -- reading jobs ----------------------------------------------------------------------------

    async def get_job(self, job_id: uuid.UUID) -> Job | None:
        return await fetch_job(self.pool, job_id)

    async def wait_for_job(
        self,
        job_id: uuid.UUID,
        *,
        timeout: float = 300.0,  # noqa: ASYNC109 - a polling deadline, asked for by name
        interval: float = 0.5,
    ) -> Job:
        """Poll until the job is `completed` or `failed`. Raises JobNotFound for an unknown id
        and JobWaitTimeout (a TimeoutError carrying the last state) when time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            job = await self.get_job(job_id)
            if job is None:
                raise JobNotFound(job_id)
            if job.status.finished:
                return job
            left = deadline - time.monotonic()
            if left <= 0:
                raise JobWaitTimeout(job, timeout)
            await asyncio.sleep(min(interval, left))

    async def list_jobs(
        self,
        *,
        status: JobStatus | str | Iterable[JobStatus | str] | None = None,
        older_than: timedelta | None = None,
        newer_than: timedelta | None = None,
        book_id: str | None = None,
        limit: int = 100,
        oldest_first: bool = False,
    ) -> list[Job]:
        """Jobs by status and age (time since creation), newest first unless `oldest_first`."""
        if status is None:
            statuses: list[str] = []
        elif isinstance(status, str):
            statuses = [JobStatus(status).value]
        else:
            statuses = [JobStatus(s).value for s in status]
        order = "ASC" if oldest_first else "DESC"
        records = await self.pool.fetch(
            f"""SELECT {JOB_COLUMNS} FROM image_processing_jobs
                 WHERE (cardinality($1::text[]) = 0 OR status = ANY($1::text[]))
                   AND ($2::interval IS NULL OR created_at <= now() - $2::interval)
                   AND ($3::interval IS NULL OR created_at >= now() - $3::interval)
                   AND ($4::text IS NULL OR book_id = $4)
                 ORDER BY created_at {order}, id
                 LIMIT $5""",
            statuses,
            older_than,
            newer_than,
            book_id,
            max(0, limit),
        )
        return [Job.from_record(record) for record in records]

    # -- repairs and numbers (api_client.admin) ----------------------------------------------------

    async def retry_queue_failed(self, *, limit: int = 100, batch_size: int = 10) -> Requeued:
        return await retry_queue_failed(self, limit=limit, batch_size=batch_size)

    async def retry_failed(
        self,
        job_ids: Iterable[uuid.UUID] | None = None,
        *,
        error_contains: str | None = None,
        older_than: timedelta | None = None,
        limit: int = 100,
    ) -> Requeued:
        return await retry_failed(
            self, job_ids, error_contains=error_contains, older_than=older_than, limit=limit
        )

    async def redrive_dlq(
        self, *, dlq_url: str | None = None, limit: int | None = None
    ) -> DlqRedrive:
        return await redrive_dlq(self, dlq_url=dlq_url, limit=limit)

    async def stats(self) -> QueueStats:
        return await stats(self)

    async def dlq_url(self) -> str | None:
        """The DLQ: SQS_DLQ_URL, else the main queue's RedrivePolicy deadLetterTargetArn."""
        if self._dlq_url is None:
            self._dlq_url = await discover_dlq_url(self.sqs, self.settings.queue_url)
        return self._dlq_url

    # -- recovery and health (api_client.recovery, api_client.health) -----------------------------

    async def sweep(self, settings: SweepSettings | None = None) -> SweepReport:
        """One automatic-recovery pass: re-send `queue_failed` rows past their grace period and
        `pending` rows whose message is lost."""
        return await sweep(self, settings)

    async def check_health(self, *, timeout: float = DEFAULT_TIMEOUT) -> HealthReport:  # noqa: ASYNC109
        """PostgreSQL, the queue, the DLQ and the source bucket, each ok or not with its latency;
        never raises."""
        return await check_health(self, timeout=timeout)


class _Connector:
    def __init__(
        self,
        settings: ClientSettings,
        pool: asyncpg.Pool | None,
        sqs: SQSClient | None,
        s3: S3Client | None,
    ) -> None:
        self.settings = settings
        self.given = (pool, sqs, s3)
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> JobClient:
        stack = self._stack
        pool, sqs, s3 = self.given
        try:
            if pool is None:
                pool = await asyncpg.create_pool(
                    self.settings.database_url,
                    min_size=1,
                    max_size=4,
                    timeout=self.settings.connect_timeout,
                )
                stack.push_async_callback(pool.close)
            session = aioboto3.Session()
            kwargs = {
                "endpoint_url": self.settings.aws_endpoint_url,
                "region_name": self.settings.aws_region,
                "config": self.settings.boto_config(),
            }
            if sqs is None:
                sqs = cast(
                    "SQSClient", await stack.enter_async_context(session.client("sqs", **kwargs))
                )
            if s3 is None:
                s3 = cast(
                    "S3Client", await stack.enter_async_context(session.client("s3", **kwargs))
                )
        except BaseException:
            await stack.aclose()
            raise
        return JobClient(self.settings, pool, sqs, s3)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()
