"""Repairs and numbers: re-send `queue_failed` rows, re-queue `failed` jobs, move DLQ messages back,
and the counts an operator watches.

Only `queue_failed` rows are ever sent. A repair takes a batch of them with
`SELECT ... FOR UPDATE SKIP LOCKED` in a transaction, sends their messages, and marks the sent
ones `pending` before it commits, so two repairs running at once never send one row twice. (A
worker that receives a message before that commit waits for the row lock: its claim accepts
`queue_failed` rows.) Re-queuing a `failed` job is two steps: reset it to `queue_failed`
(attempts 0, error cleared) and commit, then send it like any `queue_failed` row; a crash between
the two leaves a row that `retry_queue_failed` sends later, never a `pending` row with no message.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

import asyncpg
import structlog

from api_client.errors import ClientConfigError
from api_client.settings import ClientSettings
from jobcore.job_queries import count_jobs, mark_queue_failed
from jobcore.jobs import JobStatus, MalformedMessage, decode_message
from jobcore.queues import queue_depth
from jobcore.sqs import CALL_ERRORS, SQS_BATCH, BatchOutcome, call_in_batches

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient
    from types_aiobotocore_sqs.type_defs import (
        ChangeMessageVisibilityBatchRequestEntryTypeDef,
        DeleteMessageBatchRequestEntryTypeDef,
        MessageTypeDef,
        SendMessageBatchRequestEntryTypeDef,
    )

log = structlog.get_logger(__name__)


class JobQueue(Protocol):
    """What the repairs need of a `JobClient` (which passes itself)."""

    settings: ClientSettings
    pool: asyncpg.Pool
    sqs: SQSClient

    async def send_messages(self, items: Sequence[uuid.UUID]) -> BatchOutcome[uuid.UUID]: ...

    async def dlq_url(self) -> str | None: ...


RESET_COLUMNS = """status = 'queue_failed', attempts = 0, error = NULL, claimed_by = NULL,
                   lease_expires_at = NULL, started_at = NULL, completed_at = NULL,
                   result_bucket = NULL, result_key = NULL, updated_at = now()"""


@dataclass
class Requeued:
    """What a retry did: jobs sent (now `pending`), jobs whose send failed (`queue_failed`, with
    the reason), and requested jobs left alone (with why)."""

    sent: list[uuid.UUID] = field(default_factory=list)
    failed: dict[uuid.UUID, str] = field(default_factory=dict)
    skipped: dict[uuid.UUID, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sent": [str(i) for i in self.sent],
            "failed": {str(k): v for k, v in self.failed.items()},
            "skipped": {str(k): v for k, v in self.skipped.items()},
        }


@dataclass
class DlqRedrive:
    """Messages moved from the DLQ to the queue, the jobs reset to `pending` on the way, the
    moved messages that name no known job, and messages left in the DLQ because the send failed."""

    dlq_url: str
    moved: int = 0
    reset: list[uuid.UUID] = field(default_factory=list)
    unknown: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # DLQ message id -> reason

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reset": [str(i) for i in self.reset]}


@dataclass
class QueueDepth:
    visible: int
    in_flight: int
    delayed: int


@dataclass
class QueueStats:
    counts: dict[str, int]
    oldest_pending_age_seconds: float | None
    queue: QueueDepth | None
    dlq: QueueDepth | None
    queue_error: str | None = None  # SQS could not be asked; the table numbers still hold

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- sending queue_failed rows -------------------------------------------------------------------


async def retry_queue_failed(
    client: JobQueue, *, limit: int = 100, batch_size: int = 10
) -> Requeued:
    """Send the messages of `queue_failed` rows, oldest first, at most `limit` rows, one
    transaction per batch of up to 10. Stops early when a whole batch fails (queue still down)."""
    result = await _send_queue_failed(client, None, limit=limit, batch_size=batch_size)
    if result.sent or result.failed:
        log.info("queue_failed jobs re-sent", sent=len(result.sent), failed=len(result.failed))
    return result


async def _send_queue_failed(
    client: JobQueue,
    only: list[uuid.UUID] | None,
    *,
    limit: int,
    batch_size: int = SQS_BATCH,
    status: JobStatus = JobStatus.QUEUE_FAILED,
    idle_for: timedelta | None = None,
    pace: Callable[[int], Awaitable[None]] | None = None,
) -> Requeued:
    """Send rows in `status` (`queue_failed`, or `pending` for the recovery sweep's re-sends)
    untouched for `idle_for`, and mark the sent ones `pending` (updated_at now) before commit.
    `pace(n)` is awaited before each batch of up to n rows (a rate limit)."""
    result = Requeued()
    tried: list[uuid.UUID] = []
    size = max(1, min(batch_size, SQS_BATCH))
    while len(tried) < limit:
        wanted = min(size, limit - len(tried))
        if pace is not None:
            await pace(wanted)
        async with client.pool.acquire() as conn, conn.transaction():
            records = await conn.fetch(
                """SELECT id FROM image_processing_jobs
                    WHERE status = $4 AND id <> ALL($2::uuid[])
                      AND ($3::uuid[] IS NULL OR id = ANY($3::uuid[]))
                      AND ($5::interval IS NULL OR updated_at < now() - $5::interval)
                    ORDER BY created_at, id
                    LIMIT $1
                      FOR UPDATE SKIP LOCKED""",
                wanted,
                tried,
                only,
                status.value,
                idle_for,
            )
            ids = [record["id"] for record in records]
            if not ids:
                break
            tried.extend(ids)
            outcome = await client.send_messages(ids)
            await conn.execute(
                """UPDATE image_processing_jobs
                      SET status = 'pending', updated_at = now(),
                          error = CASE WHEN status = 'queue_failed' THEN NULL ELSE error END
                    WHERE id = ANY($1::uuid[]) AND status = $2""",
                outcome.sent,
                status.value,
            )
            await _record_send_failures(conn, outcome)
        result.sent.extend(outcome.sent)
        result.failed.update(outcome.failed)
        if not outcome.sent or len(ids) < wanted:  # queue down, or no more rows to take
            break
    return result


async def _record_send_failures(conn: asyncpg.Connection, outcome: BatchOutcome[uuid.UUID]) -> None:
    if not outcome.failed:
        return
    for job_id, reason in outcome.failed.items():
        log.error("send failed; job stays queue_failed", job_id=str(job_id), reason=reason)
    await mark_queue_failed(conn, outcome.failed)


async def _reset_failed(conn: asyncpg.Connection, ids: list[uuid.UUID]) -> list[uuid.UUID]:
    """`failed` -> `queue_failed` with attempts 0 and the error cleared (caller commits)."""
    records = await conn.fetch(
        f"""UPDATE image_processing_jobs SET {RESET_COLUMNS}
             WHERE id = ANY($1::uuid[]) AND status = 'failed'
         RETURNING id""",
        ids,
    )
    return [record["id"] for record in records]


# -- retry_failed --------------------------------------------------------------------------------


async def retry_failed(
    client: JobQueue,
    job_ids: Iterable[uuid.UUID] | None = None,
    *,
    error_contains: str | None = None,
    older_than: timedelta | None = None,
    limit: int = 100,
) -> Requeued:
    """Reset `failed` jobs (attempts 0, error cleared) and send their messages; sent jobs are
    `pending`. The jobs are `job_ids`, or with None every failed job matching the filters, oldest
    first, at most `limit`. Requested ids that are not `failed` come back in `skipped`."""
    wanted = None if job_ids is None else list(dict.fromkeys(job_ids))
    async with client.pool.acquire() as conn, conn.transaction():
        records = await conn.fetch(
            """SELECT id FROM image_processing_jobs
                WHERE status = 'failed'
                  AND ($2::uuid[] IS NULL OR id = ANY($2::uuid[]))
                  AND ($3::text IS NULL OR strpos(error, $3) > 0)
                  AND ($4::interval IS NULL OR created_at <= now() - $4::interval)
                ORDER BY created_at, id
                LIMIT $1
                  FOR UPDATE SKIP LOCKED""",
            limit,
            wanted,
            error_contains,
            older_than,
        )
        reset = await _reset_failed(conn, [record["id"] for record in records])
    result = await _send_queue_failed(client, reset, limit=len(reset)) if reset else Requeued()
    handled = set(result.sent) | set(result.failed)
    for job_id in reset:
        if job_id not in handled:  # a concurrent retry_queue_failed sent it first
            result.skipped[job_id] = "re-queued by a concurrent retry"
    if wanted is not None:
        left = [job_id for job_id in wanted if job_id not in set(reset)]
        if left:
            rows = await client.pool.fetch(
                "SELECT id, status FROM image_processing_jobs WHERE id = ANY($1::uuid[])", left
            )
            found = {r["id"]: r["status"] for r in rows}
            for job_id in left:
                status = found.get(job_id)
                result.skipped[job_id] = (
                    "not found" if status is None
                    else f"status is {status}, not failed" if status != "failed"
                    else "held by another retry, or over the limit"
                )  # fmt: skip
    log.info("failed jobs re-queued", sent=len(result.sent), failed=len(result.failed))
    return result


# -- redrive_dlq ---------------------------------------------------------------------------------


async def redrive_dlq(
    client: JobQueue,
    *,
    dlq_url: str | None = None,
    limit: int | None = None,
    wait_seconds: int = 1,
    visibility_seconds: int = 60,
) -> DlqRedrive:
    """Move DLQ messages back to the main queue. A message whose job is `failed` resets the job
    (attempts 0, error cleared) and sends it once, like `retry_failed`; any other message (its job
    not failed, unknown, or a malformed body) is copied to the queue as it is, as SQS's own
    redrive would, and the worker decides. A DLQ message is deleted only once its job or copy is
    on the queue; one whose send failed stays in the DLQ and is reported."""
    url = dlq_url or await client.dlq_url()
    if not url:
        raise ClientConfigError(
            "no DLQ: the queue has no RedrivePolicy; pass --dlq-url or set SQS_DLQ_URL"
        )
    result = DlqRedrive(url)
    unsent: list[MessageTypeDef] = []
    while limit is None or result.moved + len(result.failed) < limit:
        room = SQS_BATCH if limit is None else limit - result.moved - len(result.failed)
        response = await client.sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=min(SQS_BATCH, room),
            WaitTimeSeconds=wait_seconds,
            VisibilityTimeout=visibility_seconds,
            MessageAttributeNames=["All"],
        )
        messages = response.get("Messages", [])
        if not messages:
            break
        moved = await _redrive_batch(client, messages, result)
        done = [m for m in messages if m["MessageId"] in moved]
        unsent.extend(m for m in messages if m["MessageId"] not in moved)
        if not done:
            break
        await _delete(client.sqs, url, done)
    if unsent:
        await _make_visible(client.sqs, url, unsent)
    log.info("DLQ redriven", moved=result.moved, reset=len(result.reset), failed=len(result.failed))
    return result


async def _redrive_batch(
    client: JobQueue, messages: list[MessageTypeDef], result: DlqRedrive
) -> set[str]:
    """Move one received batch; the ids of the DLQ messages that are now on the queue."""
    job_of: dict[str, uuid.UUID] = {}
    for message in messages:
        with contextlib.suppress(MalformedMessage):  # copied as is; the worker drops it
            job_of[message["MessageId"]] = decode_message(message.get("Body", ""))
    async with client.pool.acquire() as conn, conn.transaction():
        known = {
            r["id"]
            for r in await conn.fetch(
                "SELECT id FROM image_processing_jobs WHERE id = ANY($1::uuid[]) FOR UPDATE",
                list(set(job_of.values())),
            )
        }
        reset = set(await _reset_failed(conn, list(known)))
    sent = await _send_queue_failed(client, list(reset), limit=len(reset)) if reset else Requeued()
    moved: set[str] = set()
    failed: dict[str, str] = {}
    copies = []
    for message in messages:
        message_id = message["MessageId"]
        job_id = job_of.get(message_id)
        if job_id is not None and job_id in reset:
            if job_id in sent.failed:
                failed[message_id] = sent.failed[job_id]
            else:  # sent by us, or by a concurrent retry_queue_failed
                moved.add(message_id)
        else:
            copies.append(message)
    if copies:
        outcome = await call_in_batches(
            copies,
            entry=_copy_entry,
            key=lambda message: message["MessageId"],
            call=lambda entries: client.sqs.send_message_batch(
                QueueUrl=client.settings.queue_url, Entries=entries
            ),
            verb="send",
        )
        moved.update(outcome.sent)
        failed.update(outcome.failed)
        result.unknown += sum(1 for key in outcome.sent if job_of.get(key) not in known)
    for message_id, reason in failed.items():
        log.error("DLQ message not moved", message_id=message_id, reason=reason)
    result.failed.update(failed)
    result.moved += len(moved)
    result.reset.extend(sorted(sent.sent))
    return moved


def _copy_entry(index: str, message: MessageTypeDef) -> SendMessageBatchRequestEntryTypeDef:
    entry: SendMessageBatchRequestEntryTypeDef = {
        "Id": index,
        "MessageBody": message.get("Body", ""),
    }
    if message.get("MessageAttributes"):
        entry["MessageAttributes"] = message["MessageAttributes"]
    return entry


def _delete_entry(index: str, message: MessageTypeDef) -> DeleteMessageBatchRequestEntryTypeDef:
    return {"Id": index, "ReceiptHandle": message["ReceiptHandle"]}


def _release_entry(
    index: str, message: MessageTypeDef
) -> ChangeMessageVisibilityBatchRequestEntryTypeDef:
    return {"Id": index, "ReceiptHandle": message["ReceiptHandle"], "VisibilityTimeout": 0}


async def _delete(sqs: SQSClient, url: str, messages: list[MessageTypeDef]) -> None:
    outcome = await call_in_batches(
        messages,
        entry=_delete_entry,
        key=lambda m: m["MessageId"],
        call=lambda entries: sqs.delete_message_batch(QueueUrl=url, Entries=entries),
        verb="delete",
    )
    for message_id, reason in outcome.failed.items():
        log.warning("redriven message left in the DLQ", message_id=message_id, reason=reason)


async def _make_visible(sqs: SQSClient, url: str, messages: list[MessageTypeDef]) -> None:
    outcome = await call_in_batches(
        messages,
        entry=_release_entry,
        key=lambda m: m["MessageId"],
        call=lambda entries: sqs.change_message_visibility_batch(QueueUrl=url, Entries=entries),
        verb="release",
    )
    for message_id, reason in outcome.failed.items():
        log.warning("unsent DLQ message returns after its timeout", message_id=message_id,
                    reason=reason)  # fmt: skip


# -- stats ---------------------------------------------------------------------------------------


async def stats(client: JobQueue) -> QueueStats:
    """Jobs by status, the age of the oldest pending job, and queue and DLQ depth. SQS trouble
    does not hide the table numbers: the depths are None and `queue_error` says why."""
    jobs = await count_jobs(client.pool)
    result = QueueStats(jobs.counts, jobs.oldest_pending_age_seconds, None, None)
    try:
        result.queue = QueueDepth(**await queue_depth(client.sqs, client.settings.queue_url))
        dlq = await client.dlq_url()
        if dlq is not None:
            result.dlq = QueueDepth(**await queue_depth(client.sqs, dlq))
    except CALL_ERRORS as exc:
        result.queue_error = str(exc)
    return result
