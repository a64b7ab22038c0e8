"""SyncJobClient: the producer for synchronous web frameworks (Flask, Django, sync routes), with
everything `JobClient` offers, on psycopg 3 (a pool it opens, a given pool, or a SQLAlchemy
engine) and boto3. Install the `sync` extra (`image-worker[sync]`).

It runs the same core as `JobClient` (api_client.steps: every statement, decision and order of
calls), on the sync driver (api_client.sync_drivers); only the I/O differs. Why not a wrapper
that runs the async client on a background loop: the row has to be written on the caller's own
connection, inside its transaction, on its thread (a SQLAlchemy session after `db.flush()`), which
asyncpg on another loop cannot do; and a loop thread would have to be started, stopped and kept
alive in every web worker (and lost across a pre-fork server's fork). psycopg's pool and boto3's
clients are thread-safe: one SyncJobClient can be shared by all request threads.

A SQLAlchemy session must use the psycopg 3 driver (`postgresql+psycopg://`); the client reaches
its transaction through `Session.connection()` and sends from the session's `after_commit` event,
on the client's own connection, before `db.commit()` returns."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import ExitStack, closing, contextmanager
from typing import TYPE_CHECKING, Any, TypeVar, Unpack

from psycopg_pool import ConnectionPool

from api_client import admin, creation, health, lifecycle, listening, reading, recovery
from api_client.admin import DlqRedrive, QueueStats, Requeued, RetryFilter
from api_client.base import ClientBase
from api_client.health import DEFAULT_TIMEOUT, HealthReport
from api_client.lifecycle import DeleteResult
from api_client.reading import ListFilter
from api_client.recovery import SweepReport, SweepSettings
from api_client.sending import send_messages, send_unsent
from api_client.sessions import send_on_commit
from api_client.settings import ClientSettings
from api_client.steps import Steps
from api_client.sync_drivers import (
    AlchemyDriver,
    EngineDriver,
    PsycopgPoolDriver,
    SyncDriver,
    SyncRunner,
    require_psycopg,
)
from jobcore.aws import sync_aws_client
from jobcore.cancel_queries import CancelResult
from jobcore.jobs import Job
from jobcore.sqs import BatchOutcome

if TYPE_CHECKING:
    from mypy_boto3_ecs import ECSClient
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session

log = logging.getLogger("image_worker.producer")

T = TypeVar("T")


class SyncJobBatch:
    """Creates jobs inside an open transaction (the client's own, or a session's). The jobs these
    methods return read the state after the send once the transaction has committed."""

    def __init__(self, core: creation.BatchCore, runner: SyncRunner, driver: SyncDriver) -> None:
        self.core = core
        self.driver = driver  # `batch.driver.fetch(sql, args)` runs your statements in it
        self._runner = runner

    @property
    def jobs(self) -> list[Job]:
        return self.core.jobs

    def _here(self, steps: Steps[T]) -> T:
        return self._runner.run(steps, self.driver)

    def create_job(self, source_key: str, **options: Unpack[creation.JobOptions]) -> Job:
        return self._here(self.core.create_job(source_key, options))

    def create_jobs(self, jobs: Iterable[creation.NewJob | str]) -> list[Job]:
        return self._here(self.core.create_jobs(jobs))

    def create_primary_image_job(
        self,
        book_id: str | int,
        images: Sequence[creation.ImageCopy | str],
        **options: Unpack[creation.PrimaryOptions],
    ) -> creation.PrimaryImageJob:
        return self._here(self.core.create_primary_image_job(book_id, images, options))


class SyncJobClient(
    ClientBase["ConnectionPool[Any] | Engine", "SQSClient", "S3Client", "ECSClient"]
):
    """The synchronous producer, with `JobClient`'s API (see there for each method). Thread-safe:
    share one between request threads. `SyncJobClient(settings, database, sqs, s3=None, *,
    ecs=None)`: `database` a psycopg pool or a SQLAlchemy engine; opens and closes nothing."""

    def _setup(self) -> None:
        database = self.database
        driver = (
            PsycopgPoolDriver(database)
            if isinstance(database, ConnectionPool)
            else EngineDriver(database)
        )
        self._runner = SyncRunner(driver, self.aws, self.settings.database_url)

    @classmethod
    @contextmanager
    def connect(
        cls,
        settings: ClientSettings,
        *,
        pool: ConnectionPool[Any] | None = None,
        engine: Engine | None = None,
        sqs: SQSClient | None = None,
        s3: S3Client | None = None,
    ) -> Iterator[SyncJobClient]:
        """`with SyncJobClient.connect(settings) as client:` opens a psycopg pool (unless a
        `pool` or a SQLAlchemy `engine` is given), SQS and S3 clients (unless given) and an ECS
        client when ECS_CLUSTER/ECS_SERVICE are set; closes only what it opened."""
        with ExitStack() as stack:
            database: ConnectionPool[Any] | Engine | None = pool or engine
            if database is None:
                opened: ConnectionPool[Any] = ConnectionPool(
                    settings.database_url,
                    min_size=1,
                    max_size=4,
                    timeout=settings.connect_timeout,
                    kwargs={"connect_timeout": max(1, round(settings.connect_timeout))},
                    open=False,
                )
                stack.callback(opened.close)  # also when it cannot open
                opened.open(wait=True, timeout=settings.connect_timeout)
                database = opened
            aws = settings.aws_options()
            if sqs is None:
                sqs = stack.enter_context(closing(sync_aws_client("sqs", aws)))
            if s3 is None:
                s3 = stack.enter_context(closing(sync_aws_client("s3", aws)))
            ecs: ECSClient | None = None
            if settings.ecs_cluster and settings.ecs_service:
                ecs = stack.enter_context(closing(sync_aws_client("ecs", aws)))
            yield cls(settings, database, sqs, s3, ecs=ecs)

    def _run(self, steps: Steps[T]) -> T:
        return self._runner.run(steps)

    # -- creating jobs ---------------------------------------------------------------------------

    def create_job(
        self,
        source_key: str,
        *,
        session: Session | None = None,
        **options: Unpack[creation.JobOptions],
    ) -> Job:
        """As `JobClient.create_job`. With `session` the row is written in the session's
        transaction and sent when it commits (the job returned reads the state after the send
        once `session.commit()` has returned); without one, in a transaction of its own."""
        (job,) = self.create_jobs([creation.NewJob(source_key, **options)], session=session)
        return job

    def create_jobs(
        self, jobs: Iterable[creation.NewJob | str], *, session: Session | None = None
    ) -> list[Job]:
        if session is not None:
            return self.in_session(session).create_jobs(jobs)
        with self.transaction() as batch:
            created = batch.create_jobs(jobs)
        return created

    def create_primary_image_job(
        self,
        book_id: str | int,
        images: Sequence[creation.ImageCopy | str],
        *,
        session: Session | None = None,
        **options: Unpack[creation.PrimaryOptions],
    ) -> creation.PrimaryImageJob:
        """As `JobClient.create_primary_image_job`; `session` as in `create_job`."""
        if session is not None:
            return self.in_session(session).create_primary_image_job(book_id, images, **options)
        with self.transaction() as batch:
            result = batch.create_primary_image_job(book_id, images, **options)
        return result

    @contextmanager
    def transaction(self) -> Iterator[SyncJobBatch]:
        """`with client.transaction() as batch:` a transaction on a connection of the client's
        own; `batch.driver.fetch(sql, args)` runs your statements in it. Commit, then send; an
        exception rolls everything back and sends nothing."""
        core = creation.BatchCore(self.settings)
        with self._runner.driver.atomic() as driver:
            yield SyncJobBatch(core, self._runner, driver)
        core.settle(self._run(send_unsent(self.settings, core.created)))

    def in_session(self, session: Session) -> SyncJobBatch:
        """A batch writing on `session`'s connection, in its transaction (begun if none is open),
        whose jobs are sent when the session commits and dropped when it rolls back."""
        require_psycopg(session.get_bind().dialect)  # before it connects
        core = creation.BatchCore(self.settings)

        def send(batch: creation.BatchCore) -> dict[uuid.UUID, Job]:
            return self._run(send_unsent(self.settings, batch.created))

        send_on_commit(session, core, send)
        return SyncJobBatch(core, self._runner, AlchemyDriver(session.connection()))

    def send_messages(
        self, items: Sequence[tuple[uuid.UUID, int]] | Sequence[uuid.UUID]
    ) -> BatchOutcome[uuid.UUID]:
        return self._run(send_messages(self.settings, items))

    def upload_source(self, key: str, data: bytes, *, bucket: str | None = None) -> str:
        return self._run(lifecycle.upload_source(self.settings, key, data, bucket))

    # -- reading jobs and hearing back -------------------------------------------------------------

    def get_job(self, job_id: uuid.UUID | str) -> Job | None:
        return self._run(reading.get_job(job_id))

    def list_jobs(self, **options: Unpack[ListFilter]) -> list[Job]:
        return self._run(reading.list_jobs(options))

    def wait_for_job(
        self, job_id: uuid.UUID | str, *, timeout: float = 300.0, interval: float = 0.5
    ) -> Job:
        steps = listening.wait_for_job(job_id, timeout, interval, self.settings.connect_timeout)
        return self._run(steps)

    def listen(self, *, book_id: str | int | None = None) -> Iterator[Job]:
        """As `JobClient.listen`, a blocking generator: `for job in client.listen():` in a thread
        of its own; close the generator (or break) to stop."""
        return self._runner.stream(listening.listen(book_id, self.settings.connect_timeout))

    # -- cancel, purge, results --------------------------------------------------------------------

    def cancel_job(self, job_id: uuid.UUID | str, reason: str | None = None) -> CancelResult:
        return self._run(lifecycle.cancel_job(job_id, reason))

    def delete_jobs(
        self,
        *,
        book_id: str | int | None = None,
        ids: Iterable[uuid.UUID | str] | None = None,
        wait: float = 0.0,
    ) -> DeleteResult:
        bounds = {"wait": wait, "connect_timeout": self.settings.connect_timeout}
        return self._run(lifecycle.delete_jobs(book_id, ids, **bounds))

    def result_url(
        self, job: Job | uuid.UUID | str, output: str = "image", *, expires_in: int = 3600
    ) -> str:
        return self._run(lifecycle.result_url(job, output, expires_in))

    # -- repairs, numbers, recovery, health --------------------------------------------------------

    def retry_queue_failed(self, *, limit: int = 100, batch_size: int = 10) -> Requeued:
        return self._run(
            admin.retry_queue_failed(self.settings, limit=limit, batch_size=batch_size)
        )

    def retry_failed(
        self, job_ids: Iterable[uuid.UUID] | None = None, **filters: Unpack[RetryFilter]
    ) -> Requeued:
        return self._run(admin.retry_failed(self.settings, job_ids, **filters))

    def redrive_dlq(self, *, dlq_url: str | None = None, limit: int | None = None) -> DlqRedrive:
        return self._run(
            admin.redrive_dlq(self.settings, self._queues, dlq_url=dlq_url, limit=limit)
        )

    def stats(self) -> QueueStats:
        return self._run(admin.stats(self.settings, self._queues))

    def dlq_url(self) -> str | None:
        return self._run(self._queues.dlq_url())

    def sweep(self, settings: SweepSettings | None = None) -> SweepReport:
        options = settings or SweepSettings()
        if options.events_topic_arn is None:
            return self._run(recovery.sweep(self.settings, options))
        with closing(sync_aws_client("sns", self.settings.aws_options())) as sns:
            runner = SyncRunner(
                self._runner.driver, {**self.aws, "sns": sns}, self.settings.database_url
            )
            return runner.run(recovery.sweep(self.settings, options))

    def check_health(self, *, timeout: float = DEFAULT_TIMEOUT) -> HealthReport:
        """As `JobClient.check_health`: each check on a thread of its own, bounded by `timeout`
        (a check still running then is reported as timed out and left to finish)."""
        report = HealthReport([])
        checks = health.health_checks(self.settings, self._queues)
        pool = ThreadPoolExecutor(max_workers=len(checks), thread_name_prefix="image-jobs-health")
        try:
            started = health.clock()
            futures = [(name, pool.submit(self._run, check(report))) for name, check in checks]
            for name, future in futures:
                left = max(0.0, timeout - (health.clock() - started))
                error: BaseException | None = None
                detail: str | None = None
                try:
                    detail = future.result(timeout=left)
                except FutureTimeout:
                    error = TimeoutError()
                except Exception as exc:  # a health check reports every failure, never raises
                    error = exc
                report.checks.append(health.timed(name, started, detail, error, timeout))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        return report
