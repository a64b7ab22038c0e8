"""JobClient: the async producer (asyncpg + aioboto3). Creating a job writes its row as
`queue_failed` (no error) and commits, then sends a pointer message and marks the row `pending`;
when the send fails the row stays `queue_failed` with the reason and the job is returned, so an
import never fails because the queue hiccuped. Inside the caller's own transaction
(`client.transaction(conn)`, or a SQLAlchemy `AsyncSession` with `session=`) the send waits for
the commit. Every operation is the shared core's (api_client.steps), run on the async driver
(api_client.drivers); `SyncJobClient` runs the same core on psycopg and boto3.

A client opened with `async with JobClient.connect(settings) as client` owns its asyncpg pool and
its aioboto3 clients and closes them on exit. An application that already has them passes them in
(`JobClient.connect(settings, pool=..., sqs=..., s3=...)` opens only what is missing, or the
constructor `JobClient(settings, pool, sqs, s3)` opens nothing); the client never closes what it
was given. `wait_for_job` and `listen()` use a connection of their own (LISTEN), opened from
`settings.database_url` for as long as they run."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, Unpack, cast

import aioboto3
import asyncpg

from api_client import admin, creation, health, lifecycle, listening, reading, recovery
from api_client.admin import DlqRedrive, QueueStats, Requeued, RetryFilter
from api_client.base import ClientBase
from api_client.batch import JobBatch
from api_client.creation import ImageCopy, NewJob, PrimaryImageJob  # re-exported
from api_client.drivers import AsyncAlchemyDriver, AsyncRunner, ConnectionDriver, PoolDriver
from api_client.errors import ClientConfigError, JobNotFound, JobWaitTimeout
from api_client.health import DEFAULT_TIMEOUT, HealthReport
from api_client.lifecycle import DeleteResult
from api_client.reading import ListFilter
from api_client.recovery import SweepReport, SweepSettings
from api_client.sending import send_messages, send_unsent
from api_client.sessions import send_on_commit
from api_client.settings import ClientSettings
from api_client.steps import Steps
from jobcore.aws import aws_client
from jobcore.cancel_queries import CancelResult
from jobcore.checks import CheckResult
from jobcore.job_create import IdempotencyConflict
from jobcore.jobs import Job
from jobcore.sqs import BatchOutcome

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession
    from types_aiobotocore_ecs import ECSClient
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_sqs import SQSClient

log = logging.getLogger("image_worker.producer")

T = TypeVar("T")

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


class JobClient(ClientBase["asyncpg.Pool", "SQSClient", "S3Client", "ECSClient"]):
    """The async producer API. Safe to share between concurrent request handlers.
    `JobClient(settings, pool, sqs, s3=None, *, ecs=None)` opens nothing and closes nothing."""

    def _setup(self) -> None:
        self._runner = AsyncRunner(PoolDriver(self.pool), self.aws, self.settings.database_url)

    @property
    def pool(self) -> asyncpg.Pool:
        return self.database

    @classmethod
    def connect(
        cls,
        settings: ClientSettings,
        *,
        pool: asyncpg.Pool | None = None,
        sqs: SQSClient | None = None,
        s3: S3Client | None = None,
    ) -> _Connector:
        """`async with JobClient.connect(settings) as client:` opens what is not passed in (and
        an ECS client when ECS_CLUSTER/ECS_SERVICE are set) and closes only that on exit."""
        return _Connector(settings, pool, sqs, s3)

    async def _run(self, steps: Steps[T]) -> T:
        return await self._runner.run(steps)

    # -- creating jobs ---------------------------------------------------------------------------

    async def create_job(
        self,
        source_key: str,
        *,
        connection: asyncpg.Connection | None = None,
        session: AsyncSession | None = None,
        **options: Unpack[creation.JobOptions],
    ) -> Job:
        """Create one job and send its message; a failed send is logged (with its stack trace)
        and leaves the row `queue_failed`, never raising. Options are `creation.NewJob`'s fields:
        `source_bucket`, `book_id` (int or str, stored as text), `idempotency_key`, `job_id`,
        `delay_seconds` (0-900), `recipe` (a Recipe or a mapping of its fields). With
        `idempotency_key` (or a chosen `job_id`) a repeat returns the existing job and sends
        nothing unless it is still `queue_failed`; a repeat for another image raises
        IdempotencyConflict.

        `connection`: write on this asyncpg connection (not in a transaction). `session`: write
        in this SQLAlchemy AsyncSession's transaction, sent when it commits (the returned job
        then reads the state after the send). Inside your own asyncpg transaction use
        `async with client.transaction(connection) as batch`."""
        (job,) = await self.create_jobs(
            [creation.NewJob(source_key, **options)], connection=connection, session=session
        )
        return job

    async def create_jobs(
        self,
        jobs: Iterable[creation.NewJob | str],
        *,
        connection: asyncpg.Connection | None = None,
        session: AsyncSession | None = None,
    ) -> list[Job]:
        """Insert many rows in one statement and commit, then send their messages with
        SendMessageBatch (10 a call). Each entry SQS refuses, and every entry of a call that
        fails as a whole, leaves its row `queue_failed` with the reason. Returns the jobs in
        input order, as they stand after the send (with `session`: once it has committed)."""
        if session is not None:
            return await (await self.in_session(session)).create_jobs(jobs)
        async with self.transaction(connection) as batch:
            created = await batch.create_jobs(jobs)
        return created

    async def create_primary_image_job(
        self,
        book_id: str | int,
        images: Sequence[creation.ImageCopy | str],
        *,
        connection: asyncpg.Connection | None = None,
        session: AsyncSession | None = None,
        **options: Unpack[creation.PrimaryOptions],
    ) -> creation.PrimaryImageJob:
        """Queue a book's primary image: `images` in listing order, each with its copy outcome;
        the job is for the first one copied. Returns which (`index`, `key`) or, when none was
        copied, no job and why each was passed over. Never raises for queue trouble. A repeat
        of `idempotency_key` returns the book's existing job even if it is for another of its
        images. Options and `connection`/`session` as in `create_job`."""
        if session is not None:
            batch = await self.in_session(session)
            return await batch.create_primary_image_job(book_id, images, **options)
        async with self.transaction(connection) as batch:
            result = await batch.create_primary_image_job(book_id, images, **options)
        return result

    @asynccontextmanager
    async def transaction(
        self, connection: asyncpg.Connection | None = None
    ) -> AsyncIterator[JobBatch]:
        """`async with client.transaction(conn) as batch:` opens a transaction on `conn` (or on
        a pooled connection: `batch.connection`); write your rows there and create jobs with
        `batch.create_job(...)` / `create_jobs` / `create_primary_image_job`. When the block
        exits cleanly the transaction commits and then the messages are sent (the jobs returned
        and `batch.jobs` then read their state after the send); when it raises, everything
        rolls back and nothing is sent. A crash between commit and send leaves `queue_failed`
        rows that the sweep re-sends."""
        async with AsyncExitStack() as stack:
            conn: asyncpg.Connection = connection or await stack.enter_async_context(
                self.pool.acquire()
            )
            if conn.is_in_transaction():
                raise ClientConfigError(
                    "connection is already in a transaction, so its commit cannot be seen:"
                    " let client.transaction(connection) open the transaction"
                )
            core = creation.BatchCore(self.settings)
            driver = ConnectionDriver(conn)
            async with conn.transaction():
                yield JobBatch(core, self._runner, driver, conn)
            # On the same connection: a second one from the pool could deadlock a full pool.
            core.settle(await self._runner.run(send_unsent(self.settings, core.created), driver))

    async def in_session(self, session: AsyncSession) -> JobBatch:
        """A batch writing in `session`'s transaction (SQLAlchemy AsyncSession, asyncpg driver),
        begun if none is open; its jobs are sent from the session's `after_commit` event (on
        the client's own pool) before `await session.commit()` returns, and dropped when it
        rolls back."""
        from sqlalchemy.util import await_only

        bind = session.bind
        if bind is not None and bind.dialect.driver != "asyncpg":
            raise ClientConfigError(
                "session: JobClient needs SQLAlchemy's asyncpg driver (a postgresql+asyncpg://"
                f" URL), not {bind.dialect.name}+{bind.dialect.driver}"
            )
        driver = AsyncAlchemyDriver(await session.connection())
        core = creation.BatchCore(self.settings)

        def send(batch: creation.BatchCore) -> dict[uuid.UUID, Job]:
            # In the session's greenlet: the send is awaited before `await commit()` returns.
            return await_only(self._run(send_unsent(self.settings, batch.created)))

        send_on_commit(session.sync_session, core, send)
        return JobBatch(core, self._runner, driver)

    async def send_messages(
        self, items: Sequence[tuple[uuid.UUID, int]] | Sequence[uuid.UUID]
    ) -> BatchOutcome[uuid.UUID]:
        """Send pointer messages for existing rows, 10 per SendMessageBatch call; never raises
        for a failed send: the reasons come back per job."""
        return await self._run(send_messages(self.settings, items))

    async def upload_source(self, key: str, data: bytes, *, bucket: str | None = None) -> str:
        """Put an image into the source bucket; returns the bucket used."""
        return await self._run(lifecycle.upload_source(self.settings, key, data, bucket))

    def require_s3(self) -> S3Client:
        """The S3 client; a client constructed without one raises ClientConfigError."""
        if self.s3 is None:
            raise ClientConfigError("this client has no S3 client")
        return self.s3

    # -- reading jobs and hearing back -------------------------------------------------------------

    async def get_job(self, job_id: uuid.UUID | str) -> Job | None:
        return await self._run(reading.get_job(job_id))

    async def list_jobs(self, **options: Unpack[ListFilter]) -> list[Job]:
        """Jobs by `status` (one or several), `book_id` and age (`older_than`/`newer_than`:
        timedelta since creation), newest first unless `oldest_first`, at most `limit` (100)."""
        return await self._run(reading.list_jobs(options))

    async def wait_for_job(
        self,
        job_id: uuid.UUID | str,
        *,
        timeout: float = 300.0,  # noqa: ASYNC109 - a deadline, asked for by name
        interval: float = 0.5,
    ) -> Job:
        """Wait until the job is finished (`completed`, `failed` or `cancelled`), hearing it by
        LISTEN on a connection of its own (api_client.listening); `interval` is the polling
        period used only while that connection is down. Raises JobNotFound for an unknown id
        and JobWaitTimeout (a TimeoutError carrying the last state) when `timeout` seconds run
        out."""
        steps = listening.wait_for_job(job_id, timeout, interval, self.settings.connect_timeout)
        return await self._run(steps)

    def listen(self, *, book_id: str | int | None = None) -> AsyncIterator[Job]:
        """`async for job in client.listen():` every job that finishes from now on (only
        `book_id`'s when given), read from its row, for a long-running task of the app. Runs
        until the consumer stops; a dropped connection is reopened with backoff (0.5 s doubling
        to 30 s) and the jobs finished meanwhile are caught up first (at least once)."""
        return self._runner.stream(listening.listen(book_id, self.settings.connect_timeout))

    # -- cancel, purge, results --------------------------------------------------------------------

    async def cancel_job(self, job_id: uuid.UUID | str, reason: str | None = None) -> CancelResult:
        """Cancel a job: not yet claimed -> `cancelled` now; running -> asked to stop (its worker
        ends it `cancelled`, leaving no object); finished -> unchanged. `outcome` says which."""
        return await self._run(lifecycle.cancel_job(job_id, reason))

    async def delete_jobs(
        self,
        *,
        book_id: str | int | None = None,
        ids: Iterable[uuid.UUID | str] | None = None,
        wait: float = 0.0,
    ) -> DeleteResult:
        """Remove a book's jobs (or these ids) and their result objects, cancelling open ones
        first (api_client.lifecycle). A running job is asked to cancel and reported in
        `cancel_requested`; with `wait` > 0 seconds, it is waited for (LISTEN) and removed too."""
        timeout = self.settings.connect_timeout
        steps = lifecycle.delete_jobs(book_id, ids, wait=wait, connect_timeout=timeout)
        return await self._run(steps)

    async def result_url(
        self, job: Job | uuid.UUID | str, output: str = "image", *, expires_in: int = 3600
    ) -> str:
        """A presigned GET (valid `expires_in` seconds) of the job's output named `output`:
        `image` (the main result) or a thumbnail such as `thumb-300` (see `job.outputs`)."""
        return await self._run(lifecycle.result_url(job, output, expires_in))

    # -- repairs, numbers, recovery, health --------------------------------------------------------

    async def retry_queue_failed(self, *, limit: int = 100, batch_size: int = 10) -> Requeued:
        return await self._run(
            admin.retry_queue_failed(self.settings, limit=limit, batch_size=batch_size)
        )

    async def retry_failed(
        self, job_ids: Iterable[uuid.UUID] | None = None, **filters: Unpack[RetryFilter]
    ) -> Requeued:
        """Reset `failed` jobs (never `cancelled` ones) and send them again: `job_ids`, or every
        failed job matching `error_contains` / `older_than`, at most `limit` (100)."""
        return await self._run(admin.retry_failed(self.settings, job_ids, **filters))

    async def redrive_dlq(
        self, *, dlq_url: str | None = None, limit: int | None = None
    ) -> DlqRedrive:
        return await self._run(
            admin.redrive_dlq(self.settings, self._queues, dlq_url=dlq_url, limit=limit)
        )

    async def stats(self) -> QueueStats:
        return await self._run(admin.stats(self.settings, self._queues))

    async def dlq_url(self) -> str | None:
        """The DLQ: SQS_DLQ_URL, else the main queue's RedrivePolicy deadLetterTargetArn."""
        return await self._run(self._queues.dlq_url())

    async def sweep(self, settings: SweepSettings | None = None) -> SweepReport:
        """One automatic-recovery pass: re-send `queue_failed` rows past their grace period and
        `pending` rows whose message is lost (api_client.recovery)."""
        options = settings or SweepSettings()
        if options.events_topic_arn is None:
            return await self._run(recovery.sweep(self.settings, options))
        # The event catch-up publishes to SNS: a client for this pass (the sweep runs every few
        # minutes as a task of its own; an app's client seldom needs one otherwise).
        async with aws_client("sns", self.settings.aws_options()) as sns:
            runner = AsyncRunner(
                self._runner.driver, {**self.aws, "sns": sns}, self.settings.database_url
            )
            return await runner.run(recovery.sweep(self.settings, options))

    async def check_health(self, *, timeout: float = DEFAULT_TIMEOUT) -> HealthReport:  # noqa: ASYNC109
        """Each check of api_client.health, concurrently, each bounded by `timeout`; never
        raises."""
        report = HealthReport([])

        async def one(name: str, check: health.Check) -> CheckResult:
            started = health.clock()
            try:
                async with asyncio.timeout(timeout):
                    return health.timed(
                        name, started, await self._run(check(report)), None, timeout
                    )
            except Exception as exc:  # a health check reports every failure, never raises
                return health.timed(name, started, None, exc, timeout)

        checks = health.health_checks(self.settings, self._queues)
        report.checks = list(await asyncio.gather(*(one(name, check) for name, check in checks)))
        return report


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
        ecs: ECSClient | None = None
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
            aws = self.settings.aws_options()

            async def opened(service: str) -> Any:
                return await stack.enter_async_context(aws_client(service, aws, session=session))

            if sqs is None:
                sqs = cast("SQSClient", await opened("sqs"))
            if s3 is None:
                s3 = cast("S3Client", await opened("s3"))
            if self.settings.ecs_cluster and self.settings.ecs_service:
                ecs = cast("ECSClient", await opened("ecs"))
        except BaseException:
            await stack.aclose()
            raise
        return JobClient(self.settings, pool, sqs, s3, ecs=ecs)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()
