"""SyncJobClient: the producer for synchronous web frameworks (Flask, Django, sync routes), with
the async `JobClient`'s API: create_job, create_jobs, create_primary_image_job, get_job,
idempotency keys, and a SQLAlchemy `Session` as the caller's transaction. Install the `sync`
extra (`image-worker[sync]`: psycopg 3 with its pool, boto3).

Why psycopg 3 + boto3, not a thread-safe wrapper that runs the async client on a background
event loop: the row has to be written on the caller's own connection, inside its transaction, on
its thread (a SQLAlchemy session after `db.flush()`), which asyncpg on another loop cannot do,
so the database half would be synchronous anyway. A wrapper would add a loop thread to start,
stop and keep alive in every web worker (and to lose across a pre-fork server's fork), and a
thread hop per call; psycopg's pool and boto3's clients are thread-safe on their own, so one
SyncJobClient can be shared by all request threads. What is shared with the async client is
everything that must not drift: each SQL statement (jobcore.job_create, translated by
`pyformat`), the decisions (api_client.creation) and the protocol (write `queue_failed`, commit,
then send under a row lock and mark `pending`). Only the thin I/O steps exist twice.

A SQLAlchemy session must use the psycopg 3 driver (`postgresql+psycopg://`); the client reaches
its transaction through `Session.connection()` and sends from the session's `after_commit`
event, on the client's own connection (a pool it opens, or one given: a psycopg pool or a
SQLAlchemy engine).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

import structlog

try:
    import boto3
    from psycopg import Connection as PsycopgConnection
    from psycopg.rows import dict_row
    from psycopg_pool import ConnectionPool
except ImportError as exc:  # pragma: no cover - only in an install without the extra
    raise ImportError(
        f"SyncJobClient needs the `sync` extra: pip install 'image-worker[sync]' ({exc})"
    ) from exc

from api_client.creation import (
    ImageCopy,
    NewJob,
    PrimaryImageJob,
    Tolerated,
    check_repeats,
    plan_primary,
    spec_for,
)
from api_client.errors import ClientConfigError
from api_client.settings import ClientSettings
from jobcore.job_create import (
    FETCH_JOBS,
    FIND_EXISTING,
    INSERT_JOBS,
    LOCK_NOT_AVAILABLE,
    LOCK_UNSENT,
    LOCK_WAIT_LIMIT,
    MARK_SENT,
    Created,
    JobSpec,
    by_id,
    find_existing_args,
    insert_args,
    match_created,
    named,
    pyformat,
    unsent_ids,
)
from jobcore.job_queries import FETCH_JOB, MARK_QUEUE_FAILED, mark_queue_failed_args
from jobcore.jobs import Job, encode_message
from jobcore.sqs import CALL_ERRORS, BatchOutcome, chunked, entry_outcomes

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import SendMessageBatchRequestEntryTypeDef
    from sqlalchemy import Connection as AlchemyConnection
    from sqlalchemy import Dialect, Engine
    from sqlalchemy.orm import Session

log = structlog.get_logger(__name__)

_PENDING_SENDS = "image_jobs.pending_sends"  # Session.info key: jobs to send after its commit


class Rows(Protocol):
    """One connection inside a transaction, whichever driver API reaches it."""

    def fetch(self, sql: str, *args: Any) -> list[Mapping[str, Any]]: ...


class PsycopgRows:
    def __init__(self, connection: PsycopgConnection[Any]) -> None:
        self.connection = connection

    def fetch(self, sql: str, *args: Any) -> list[Mapping[str, Any]]:
        with self.connection.cursor(row_factory=dict_row) as cursor:
            cursor.execute(pyformat(sql), named(args))
            return list(cursor.fetchall()) if cursor.description else []


class AlchemyRows:
    """A SQLAlchemy connection on the psycopg driver, in its transaction."""

    def __init__(self, connection: AlchemyConnection) -> None:
        require_psycopg(connection.dialect)
        self.connection = connection

    def fetch(self, sql: str, *args: Any) -> list[Mapping[str, Any]]:
        result = self.connection.exec_driver_sql(pyformat(sql), named(args))
        return [dict(row) for row in result.mappings()] if result.returns_rows else []


def require_psycopg(dialect: Dialect) -> None:
    if dialect.driver != "psycopg":
        raise ClientConfigError(
            "SyncJobClient needs SQLAlchemy's psycopg 3 driver (a postgresql+psycopg:// URL),"
            f" not {dialect.name}+{dialect.driver}"
        )


class SyncJobBatch:
    """Jobs created on one connection inside an open transaction; sent after it commits. The
    jobs the methods return are as written (`queue_failed`, not sent yet); `jobs` holds their
    state after the send once the transaction is over."""

    def __init__(self, settings: ClientSettings, rows: Rows) -> None:
        self.settings = settings
        self.rows = rows
        self.created: list[Created] = []
        self.sent_state: dict[uuid.UUID, Job] = {}

    @property
    def jobs(self) -> list[Job]:
        return [self.sent_state.get(item.job.id, item.job) for item in self.created]

    def create_job(
        self,
        source_key: str,
        *,
        source_bucket: str | None = None,
        book_id: str | None = None,
        idempotency_key: str | None = None,
        job_id: uuid.UUID | None = None,
        delay_seconds: int = 0,
    ) -> Job:
        new = NewJob(source_key, source_bucket, book_id, delay_seconds, idempotency_key, job_id)
        (job,) = self.create_jobs([new])
        return job

    def create_jobs(self, jobs: Iterable[NewJob | str]) -> list[Job]:
        specs = [spec_for(self.settings, item) for item in jobs]
        return [item.job for item in self.write(specs)]

    def create_primary_image_job(
        self,
        book_id: str,
        images: Sequence[ImageCopy | str],
        *,
        source_bucket: str | None = None,
        idempotency_key: str | None = None,
        job_id: uuid.UUID | None = None,
        delay_seconds: int = 0,
    ) -> PrimaryImageJob:
        plan = plan_primary(
            self.settings,
            book_id,
            images,
            source_bucket=source_bucket,
            idempotency_key=idempotency_key,
            job_id=job_id,
            delay_seconds=delay_seconds,
        )
        if plan.spec is None:
            return plan.result(None)
        (created,) = self.write([plan.spec], tolerated=plan.tolerated)
        return plan.result(created.job, repeat=created.repeat)

    def write(
        self, specs: Sequence[JobSpec], *, tolerated: Tolerated | None = None
    ) -> list[Created]:
        if not specs:
            return []
        inserted = self.rows.fetch(INSERT_JOBS, *insert_args(specs))
        existing: list[Mapping[str, Any]] = []
        if len(inserted) < len(specs):
            args = find_existing_args(specs, (record["id"] for record in inserted))
            existing = self.rows.fetch(FIND_EXISTING, *args)
        created = match_created(specs, inserted, existing)
        check_repeats(created, tolerated)
        self.created.extend(created)
        return created


class SyncJobClient:
    """The synchronous producer. Thread-safe: share one between request threads."""

    def __init__(
        self,
        settings: ClientSettings,
        database: ConnectionPool[Any] | Engine,
        sqs: SQSClient,
    ) -> None:
        self.settings = settings
        self.database = database
        self.sqs = sqs

    @classmethod
    @contextmanager
    def connect(
        cls,
        settings: ClientSettings,
        *,
        pool: ConnectionPool[Any] | None = None,
        engine: Engine | None = None,
        sqs: SQSClient | None = None,
    ) -> Iterator[SyncJobClient]:
        """`with SyncJobClient.connect(settings) as client:` opens a psycopg pool (unless a
        `pool` or a SQLAlchemy `engine` is given) and an SQS client (unless given), and closes
        only what it opened."""
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
            if sqs is None:
                sqs = boto3.client(
                    "sqs",
                    endpoint_url=settings.aws_endpoint_url,
                    region_name=settings.aws_region,
                    config=settings.boto_config(),
                )
                stack.callback(sqs.close)
            yield cls(settings, database, sqs)

    # -- creating jobs ---------------------------------------------------------------------------

    def create_job(
        self,
        source_key: str,
        *,
        source_bucket: str | None = None,
        book_id: str | None = None,
        idempotency_key: str | None = None,
        job_id: uuid.UUID | None = None,
        delay_seconds: int = 0,
        session: Session | None = None,
    ) -> Job:
        """As `JobClient.create_job`. With `session` the row is written in the session's
        transaction and sent after the session commits (the job returned is `queue_failed`,
        not sent yet); without one, in a transaction of its own, committed and sent."""
        new = NewJob(source_key, source_bucket, book_id, delay_seconds, idempotency_key, job_id)
        (job,) = self.create_jobs([new], session=session)
        return job

    def create_jobs(
        self, jobs: Iterable[NewJob | str], *, session: Session | None = None
    ) -> list[Job]:
        items = list(jobs)
        if not items:
            return []
        if session is not None:
            return self.in_session(session).create_jobs(items)
        with self.transaction() as batch:
            created = batch.create_jobs(items)
        return [batch.sent_state.get(job.id, job) for job in created]

    def create_primary_image_job(
        self,
        book_id: str,
        images: Sequence[ImageCopy | str],
        *,
        source_bucket: str | None = None,
        idempotency_key: str | None = None,
        job_id: uuid.UUID | None = None,
        delay_seconds: int = 0,
        session: Session | None = None,
    ) -> PrimaryImageJob:
        """As `JobClient.create_primary_image_job`; `session` as in `create_job`."""
        arguments: dict[str, Any] = {
            "source_bucket": source_bucket,
            "idempotency_key": idempotency_key,
            "job_id": job_id,
            "delay_seconds": delay_seconds,
        }
        if session is not None:
            return self.in_session(session).create_primary_image_job(book_id, images, **arguments)
        with self.transaction() as batch:
            result = batch.create_primary_image_job(book_id, images, **arguments)
        if result.job is None:
            return result
        return replace(result, job=batch.sent_state.get(result.job.id, result.job))

    @contextmanager
    def transaction(self) -> Iterator[SyncJobBatch]:
        """`with client.transaction() as batch:` a transaction on a connection of the client's
        own; `batch.rows.fetch(sql, ...)` runs your statements in it. Commit, then send; an
        exception rolls everything back and sends nothing."""
        with self._begin() as rows:
            batch = SyncJobBatch(self.settings, rows)
            yield batch
        batch.sent_state = self.send_unsent(batch.created)

    def in_session(self, session: Session) -> SyncJobBatch:
        """A batch writing on `session`'s connection, in its transaction (which it begins if
        none is open), whose jobs are sent when the session commits and dropped when it rolls
        back."""
        from sqlalchemy import event

        require_psycopg(session.get_bind().dialect)  # before it connects
        batch = SyncJobBatch(self.settings, AlchemyRows(session.connection()))
        pending: list[tuple[SyncJobClient, SyncJobBatch]] | None = session.info.get(_PENDING_SENDS)
        if pending is None:
            pending = session.info[_PENDING_SENDS] = []
            event.listen(session, "after_commit", _send_after_commit)
            event.listen(session, "after_rollback", _forget_sends)
        pending.append((self, batch))
        return batch

    def send_unsent(self, created: Sequence[Created]) -> dict[uuid.UUID, Job]:
        """After the commit: as api_client.batch.send_unsent, on the client's own connection."""
        delays = {item.job.id: item.spec.delay_seconds for item in created}
        state = {item.job.id: item.job for item in created}
        unsent = unsent_ids(created)
        if not unsent:
            return state
        touched: dict[uuid.UUID, Job] = {}
        try:
            with self._begin() as rows:
                rows.fetch(LOCK_WAIT_LIMIT)
                locked = [record["id"] for record in rows.fetch(LOCK_UNSENT, unsent)]
                if locked:
                    touched = self._send(rows, [(job_id, delays[job_id]) for job_id in locked])
        except Exception as exc:
            if _sqlstate(exc) != LOCK_NOT_AVAILABLE:
                raise
            log.warning("rows held by another sender; left to it",
                        job_ids=[str(i) for i in unsent])  # fmt: skip
        stale = [job_id for job_id in unsent if job_id not in touched]  # another sender had them
        if stale:
            with self._begin() as rows:
                touched |= by_id(rows.fetch(FETCH_JOBS, stale))
        return state | touched

    def _send(self, rows: Rows, items: Sequence[tuple[uuid.UUID, int]]) -> dict[uuid.UUID, Job]:
        outcome: BatchOutcome[uuid.UUID] = BatchOutcome()
        logged: set[uuid.UUID] = set()
        for chunk in chunked(items):
            keys = [job_id for job_id, _ in chunk]
            entries: list[SendMessageBatchRequestEntryTypeDef] = [
                {"Id": str(n), "MessageBody": encode_message(job_id), "DelaySeconds": delay}
                for n, (job_id, delay) in enumerate(chunk)
            ]
            try:
                response = self.sqs.send_message_batch(
                    QueueUrl=self.settings.queue_url, Entries=entries
                )
            except CALL_ERRORS as exc:
                for job_id in keys:
                    log.error("send failed; job kept as queue_failed", job_id=str(job_id),
                              exc_info=exc)  # fmt: skip
                logged.update(keys)
                outcome.merge(BatchOutcome(failed={k: f"send failed: {exc}" for k in keys}))
                continue
            outcome.merge(entry_outcomes(response, keys, verb="send"))
        changed: dict[uuid.UUID, Job] = {}
        if outcome.sent:
            changed |= by_id(rows.fetch(MARK_SENT, outcome.sent))
        if outcome.failed:
            for job_id, reason in outcome.failed.items():
                if job_id not in logged:
                    log.error("send refused; job kept as queue_failed", job_id=str(job_id),
                              reason=reason)  # fmt: skip
            changed |= by_id(rows.fetch(MARK_QUEUE_FAILED, *mark_queue_failed_args(outcome.failed)))
        return changed

    # -- reading jobs ----------------------------------------------------------------------------

    def get_job(self, job_id: uuid.UUID) -> Job | None:
        with self._begin() as rows:
            found = rows.fetch(FETCH_JOB, job_id)
        return Job.from_record(found[0]) if found else None

    @contextmanager
    def _begin(self) -> Iterator[Rows]:
        if isinstance(self.database, ConnectionPool):
            with self.database.connection() as connection, connection.transaction():
                yield PsycopgRows(connection)
        else:
            with self.database.begin() as alchemy:
                yield AlchemyRows(alchemy)


def _send_after_commit(session: Session) -> None:
    """Session `after_commit`: the session's rows are committed; send them. Never raises into
    the caller's commit: a failure leaves the rows `queue_failed` for the sweeper."""
    for client, batch in session.info.pop(_PENDING_SENDS, []):
        try:
            batch.sent_state = client.send_unsent(batch.created)
        except Exception as exc:
            log.error("send after commit failed; jobs stay queue_failed",
                      job_ids=[str(c.job.id) for c in batch.created], exc_info=exc)  # fmt: skip
    session.info[_PENDING_SENDS] = []


def _forget_sends(session: Session) -> None:
    """Session `after_rollback`: its rows are gone; nothing to send."""
    session.info[_PENDING_SENDS] = []


def _sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a psycopg error, or of one SQLAlchemy wraps (`.orig`)."""
    for candidate in (exc, getattr(exc, "orig", None)):
        state = getattr(candidate, "sqlstate", None)
        if isinstance(state, str):
            return state
    return None
