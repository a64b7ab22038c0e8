"""Jobs created inside a transaction and sent after it commits (asyncpg).

asyncpg has no commit hooks, so the transaction is opened here: `JobClient.transaction(conn)`
yields a `JobBatch`; the caller writes its own rows on `batch.connection` and creates jobs on the
batch. On a clean exit the transaction commits and then the messages go out; on an exception it
rolls back and nothing is sent. Rows are written as `queue_failed` (no error) and become
`pending` once their message is on the queue (see jobcore.job_create)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import asyncpg
import structlog

from api_client.creation import (
    ImageCopy,
    NewJob,
    PrimaryImageJob,
    Tolerated,
    check_repeats,
    plan_primary,
    spec_for,
)
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
    unsent_ids,
)
from jobcore.job_queries import MARK_QUEUE_FAILED, mark_queue_failed_args
from jobcore.jobs import Job, decode_message, encode_message
from jobcore.sqs import CALL_ERRORS, call_in_batches

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient
    from types_aiobotocore_sqs.type_defs import SendMessageBatchRequestEntryTypeDef

log = structlog.get_logger(__name__)


class JobBatch:
    """Creates jobs on `connection` inside the open transaction. The jobs these methods return
    are as written (`queue_failed`, not sent yet); `jobs` holds their state after the send once
    the `async with` block has exited."""

    def __init__(self, settings: ClientSettings, connection: asyncpg.Connection) -> None:
        self.settings = settings
        self.connection = connection
        self.created: list[Created] = []
        self.sent_state: dict[uuid.UUID, Job] = {}

    @property
    def jobs(self) -> list[Job]:
        """Every job of the batch in creation order: after exit, as it stands after the send."""
        return [self.sent_state.get(item.job.id, item.job) for item in self.created]

    async def create_job(
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
        (job,) = await self.create_jobs([new])
        return job

    async def create_jobs(self, jobs: Iterable[NewJob | str]) -> list[Job]:
        specs = [spec_for(self.settings, item) for item in jobs]
        return [item.job for item in await self.write(specs)]

    async def create_primary_image_job(
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
        (created,) = await self.write([plan.spec], tolerated=plan.tolerated)
        return plan.result(created.job, repeat=created.repeat)

    async def write(
        self, specs: Sequence[JobSpec], *, tolerated: Tolerated | None = None
    ) -> list[Created]:
        if not specs:
            return []
        inserted = await self.connection.fetch(INSERT_JOBS, *insert_args(specs))
        existing = []
        if len(inserted) < len(specs):
            args = find_existing_args(specs, (record["id"] for record in inserted))
            existing = await self.connection.fetch(FIND_EXISTING, *args)
        created = match_created(specs, inserted, existing)
        check_repeats(created, tolerated)
        self.created.extend(created)
        return created

    async def send(self, sqs: SQSClient, connection: asyncpg.Connection) -> None:
        """After the commit: send every job of the batch still `queue_failed`."""
        self.sent_state = dict(await send_unsent(self.settings, sqs, connection, self.created))


async def send_unsent(
    settings: ClientSettings,
    sqs: SQSClient,
    connection: asyncpg.Connection,
    created: Sequence[Created],
) -> dict[uuid.UUID, Job]:
    """Lock the rows still `queue_failed` (after any concurrent sender of them is done), send
    them, mark the sent ones `pending` and the refused ones `queue_failed` with the reason, and
    commit. Never raises for queue trouble. Returns every job's state afterwards."""
    delays = {item.job.id: item.spec.delay_seconds for item in created}
    state = {item.job.id: item.job for item in created}
    unsent = unsent_ids(created)
    if not unsent:
        return state
    touched: dict[uuid.UUID, Job] = {}
    try:
        async with connection.transaction():
            await connection.execute(LOCK_WAIT_LIMIT)
            records = await connection.fetch(LOCK_UNSENT, unsent)
            locked = [record["id"] for record in records]
            if locked:
                items = [(job_id, delays[job_id]) for job_id in locked]
                touched = await _send(settings, sqs, connection, items)
    except asyncpg.PostgresError as exc:
        if exc.sqlstate != LOCK_NOT_AVAILABLE:
            raise
        log.warning("rows held by another sender; left to it", job_ids=[str(i) for i in unsent])
    stale = [job_id for job_id in unsent if job_id not in touched]  # another sender had them
    if stale:
        touched |= by_id(await connection.fetch(FETCH_JOBS, stale))
    return state | touched


async def _send(
    settings: ClientSettings,
    sqs: SQSClient,
    connection: asyncpg.Connection,
    items: Sequence[tuple[uuid.UUID, int]],
) -> dict[uuid.UUID, Job]:
    """Send; mark sent rows `pending` and refused ones `queue_failed`; the rows so changed."""
    logged: set[uuid.UUID] = set()

    async def call(entries: list[SendMessageBatchRequestEntryTypeDef]) -> Mapping[str, Any]:
        try:
            return await sqs.send_message_batch(QueueUrl=settings.queue_url, Entries=entries)
        except CALL_ERRORS as exc:
            for entry in entries:
                job_id = decode_message(entry["MessageBody"])
                logged.add(job_id)
                log.error("send failed; job kept as queue_failed", job_id=str(job_id),
                          exc_info=exc)  # fmt: skip
            raise

    outcome = await call_in_batches(
        items, entry=message_entry, key=lambda item: item[0], call=call, verb="send"
    )
    changed: dict[uuid.UUID, Job] = {}
    if outcome.sent:
        changed |= by_id(await connection.fetch(MARK_SENT, outcome.sent))
    if outcome.failed:
        for job_id, reason in outcome.failed.items():
            if job_id not in logged:
                log.error("send refused; job kept as queue_failed", job_id=str(job_id),
                          reason=reason)  # fmt: skip
        failed_args = mark_queue_failed_args(outcome.failed)
        changed |= by_id(await connection.fetch(MARK_QUEUE_FAILED, *failed_args))
    return changed


def message_entry(index: str, job: tuple[uuid.UUID, int]) -> SendMessageBatchRequestEntryTypeDef:
    job_id, delay_seconds = job
    return {"Id": index, "MessageBody": encode_message(job_id), "DelaySeconds": delay_seconds}
