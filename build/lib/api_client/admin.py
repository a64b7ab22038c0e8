"""Repairs and numbers: re-send `queue_failed` rows, re-queue `failed` jobs, move DLQ messages back,
and the counts an operator watches.

Rows are sent by one path, `send_and_mark_pending`: the repairs send `queue_failed` rows, and the
recovery sweep (api_client/recovery.py) also re-sends `pending` rows whose message is lost. It
takes a batch with `SELECT ... FOR UPDATE SKIP LOCKED` in a transaction, sends their messages, and
marks the sent ones `pending` before it commits, so two senders running at once never send one
row twice. (A
worker that receives a message before that commit waits for the row lock: its claim accepts
`queue_failed` rows.) Re-queuing a `failed` job is two steps: reset it to `queue_failed`
(attempts 0, error cleared) and commit, then send it like any `queue_failed` row; a crash between
the two leaves a row that `retry_queue_failed` sends later, never a `pending` row with no message.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypedDict

from api_client.errors import ClientConfigError
from api_client.sending import batch_calls, log_refused, send_messages
from api_client.settings import ClientSettings
from api_client.steps import Pause, Steps, atomic, call, rows
from jobcore.job_queries import COUNT_JOBS, MARK_QUEUE_FAILED, job_counts, mark_queue_failed_args
from jobcore.jobs import JobStatus, MalformedMessage, decode_message
from jobcore.queues import QUEUE_DEPTH_ATTRIBUTES, depth_of, dlq_target
from jobcore.sqs import CALL_ERRORS, SQS_BATCH, BatchOutcome

if TYPE_CHECKING:
    from types_aiobotocore_sqs.type_defs import (
        ChangeMessageVisibilityBatchRequestEntryTypeDef,
        DeleteMessageBatchRequestEntryTypeDef,
        MessageTypeDef,
        SendMessageBatchRequestEntryTypeDef,
    )

log = logging.getLogger("image_worker.producer")


class Queues:
    """What the repairs know of the queues: the settings and the DLQ once found."""

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self._dlq_url: str | None = settings.dlq_url

    def dlq_url(self) -> Steps[str | None]:
        """The DLQ: SQS_DLQ_URL, else the main queue's RedrivePolicy deadLetterTargetArn."""
        if self._dlq_url is None:
            response = yield from call(
                "sqs",
                "get_queue_attributes",
                QueueUrl=self.settings.queue_url,
                AttributeNames=["RedrivePolicy"],
            )
            target = dlq_target(response.get("Attributes", {}).get("RedrivePolicy"))
            if target is not None:
                found = yield from call(
                    "sqs", "get_queue_url", QueueName=target[1], QueueOwnerAWSAccountId=target[0]
                )
                self._dlq_url = found["QueueUrl"]
        return self._dlq_url


def queue_depth(url: str) -> Steps[dict[str, int]]:
    response = yield from call(
        "sqs",
        "get_queue_attributes",
        QueueUrl=url,
        AttributeNames=list(QUEUE_DEPTH_ATTRIBUTES.values()),
    )
    return depth_of(response.get("Attributes", {}))


def count_jobs(statuses: Iterable[JobStatus] = tuple(JobStatus)) -> Steps[Any]:
    wanted = [status.value for status in statuses]
    return job_counts(wanted, (yield from rows(COUNT_JOBS, wanted)))


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


def retry_queue_failed(
    settings: ClientSettings, *, limit: int = 100, batch_size: int = 10
) -> Steps[Requeued]:
    """Send the messages of `queue_failed` rows, oldest first, at most `limit` rows, one
    transaction per batch of up to 10. Stops early when a whole batch fails (queue still down)."""
    positive("limit", limit)
    positive("batch_size", batch_size)
    result = yield from send_and_mark_pending(settings, None, limit=limit, batch_size=batch_size)
    if result.sent or result.failed:
        log.info("queue_failed jobs re-sent: %d, failed: %d", len(result.sent), len(result.failed))
    return result


def positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ClientConfigError(f"{name} must be a positive whole number, not {value!r}")


TAKE_UNSENT = """
SELECT id FROM image_processing_jobs
 WHERE status = $4 AND id <> ALL($2::uuid[])
   AND ($3::uuid[] IS NULL OR id = ANY($3::uuid[]))
   AND ($5::interval IS NULL OR updated_at < now() - $5::interval)
 ORDER BY created_at, id
 LIMIT $1
   FOR UPDATE SKIP LOCKED"""

MARK_RESENT = """
UPDATE image_processing_jobs
   SET status = 'pending', updated_at = now(),
       error = CASE WHEN status = 'queue_failed' THEN NULL ELSE error END
 WHERE id = ANY($1::uuid[]) AND status = $2"""


def send_and_mark_pending(
    settings: ClientSettings,
    only: list[uuid.UUID] | None,
    *,
    limit: int,
    batch_size: int = SQS_BATCH,
    status: JobStatus = JobStatus.QUEUE_FAILED,
    idle_for: timedelta | None = None,
    pace: Callable[[int], float] | None = None,
) -> Steps[Requeued]:
    """Send rows in `status` (`queue_failed`, or `pending` for the recovery sweep's re-sends)
    untouched for `idle_for`, and mark the sent ones `pending` (updated_at now) before commit.
    `pace(n)` says how long to wait before each batch of up to n rows (a rate limit)."""
    result = Requeued()
    tried: list[uuid.UUID] = []
    size = max(1, min(batch_size, SQS_BATCH))

    def one_batch(wanted: int) -> Steps[tuple[list[uuid.UUID], BatchOutcome[uuid.UUID]]]:
        records = yield from rows(TAKE_UNSENT, wanted, tried, only, status.value, idle_for)
        ids = [record["id"] for record in records]
        if not ids:
            return ids, BatchOutcome()
        logged: set[uuid.UUID] = set()
        outcome = yield from send_messages(settings, ids, logged)
        yield from rows(MARK_RESENT, outcome.sent, status.value)
        if outcome.failed:
            log_refused(outcome, logged)
            yield from rows(MARK_QUEUE_FAILED, *mark_queue_failed_args(outcome.failed))
        return ids, outcome

    while len(tried) < limit:
        wanted = min(size, limit - len(tried))
        if pace is not None:
            yield Pause(pace(wanted))
        ids, outcome = yield from atomic(one_batch(wanted))
        if not ids:
            break
        tried.extend(ids)
        result.sent.extend(outcome.sent)
        result.failed.update(outcome.failed)
        if not outcome.sent or len(ids) < wanted:  # queue down, or no more rows to take
            break
    return result


# Only `failed` rows: a `cancelled` one is never revived.
RESET_FAILED = f"""
UPDATE image_processing_jobs SET {RESET_COLUMNS}
 WHERE id = ANY($1::uuid[]) AND status = 'failed'
RETURNING id"""


def reset_failed(ids: list[uuid.UUID]) -> Steps[list[uuid.UUID]]:
    """`failed` -> `queue_failed` with attempts 0 and the error cleared (caller commits)."""
    return [record["id"] for record in (yield from rows(RESET_FAILED, ids))]


# -- retry_failed --------------------------------------------------------------------------------

TAKE_FAILED = """
SELECT id FROM image_processing_jobs
 WHERE status = 'failed'
   AND ($2::uuid[] IS NULL OR id = ANY($2::uuid[]))
   AND ($3::text IS NULL OR strpos(error, $3) > 0)
   AND ($4::interval IS NULL OR created_at <= now() - $4::interval)
 ORDER BY created_at, id
 LIMIT $1
   FOR UPDATE SKIP LOCKED"""


class RetryFilter(TypedDict, total=False):
    """Keyword arguments of `retry_failed` (both clients)."""

    error_contains: str | None  # only jobs whose error contains this text
    older_than: timedelta | None  # created at least this long ago
    limit: int  # default 100


STATUSES_OF = "SELECT id, status FROM image_processing_jobs WHERE id = ANY($1::uuid[])"


def retry_failed(
    settings: ClientSettings,
    job_ids: Iterable[uuid.UUID] | None = None,
    *,
    error_contains: str | None = None,
    older_than: timedelta | None = None,
    limit: int = 100,
) -> Steps[Requeued]:
    """Reset `failed` jobs (attempts 0, error cleared) and send their messages; sent jobs are
    `pending`. The jobs are `job_ids`, or with None every failed job matching the filters, oldest
    first, at most `limit`. Requested ids that are not `failed` (a `cancelled` job is never
    revived) come back in `skipped`."""
    positive("limit", limit)
    wanted = None if job_ids is None else list(dict.fromkeys(job_ids))
    for job_id in wanted or ():
        if not isinstance(job_id, uuid.UUID):
            raise ClientConfigError(f"job_ids: not a uuid.UUID: {job_id!r}")

    def take() -> Steps[list[uuid.UUID]]:
        found = yield from rows(TAKE_FAILED, limit, wanted, error_contains, older_than)
        return (yield from reset_failed([record["id"] for record in found]))

    reset = yield from atomic(take())
    result = Requeued()
    if reset:
        result = yield from send_and_mark_pending(settings, reset, limit=len(reset))
    handled = set(result.sent) | set(result.failed)
    for job_id in reset:
        if job_id not in handled:  # a concurrent retry_queue_failed sent it first
            result.skipped[job_id] = "re-queued by a concurrent retry"
    left = [job_id for job_id in wanted or () if job_id not in set(reset)]
    if left:
        found = {r["id"]: r["status"] for r in (yield from rows(STATUSES_OF, left))}
        for job_id in left:
            status = found.get(job_id)
            result.skipped[job_id] = (
                "not found" if status is None
                else f"status is {status}, not failed" if status != "failed"
                else "held by another retry, or over the limit"
            )  # fmt: skip
    log.info("failed jobs re-queued: %d, failed: %d", len(result.sent), len(result.failed))
    return result


# -- redrive_dlq ---------------------------------------------------------------------------------


def redrive_dlq(
    settings: ClientSettings,
    queues: Queues,
    *,
    dlq_url: str | None = None,
    limit: int | None = None,
    wait_seconds: int = 1,
    visibility_seconds: int = 60,
) -> Steps[DlqRedrive]:
    """Move DLQ messages back to the main queue. A message whose job is `failed` resets the job
    (attempts 0, error cleared) and sends it once, like `retry_failed`; any other message (its job
    not failed, cancelled, unknown, or a malformed body) is copied to the queue as it is, as SQS's
    own redrive would, and the worker decides (it drops a finished job's message). A DLQ message
    is deleted only once its job or copy is on the queue; one whose send failed stays in the DLQ
    and is reported."""
    if limit is not None:
        positive("limit", limit)
    url = dlq_url or (yield from queues.dlq_url())
    if not url:
        raise ClientConfigError(
            "no DLQ: the queue has no RedrivePolicy; pass dlq_url (--dlq-url) or set SQS_DLQ_URL"
        )
    result = DlqRedrive(url)
    unsent: list[MessageTypeDef] = []
    while limit is None or result.moved + len(result.failed) < limit:
        room = SQS_BATCH if limit is None else limit - result.moved - len(result.failed)
        response = yield from call(
            "sqs",
            "receive_message",
            QueueUrl=url,
            MaxNumberOfMessages=min(SQS_BATCH, room),
            WaitTimeSeconds=wait_seconds,
            VisibilityTimeout=visibility_seconds,
            MessageAttributeNames=["All"],
        )
        messages = response.get("Messages", [])
        if not messages:
            break
        moved = yield from redrive_batch(settings, messages, result)
        done = [m for m in messages if m["MessageId"] in moved]
        unsent.extend(m for m in messages if m["MessageId"] not in moved)
        if not done:
            break
        outcome = yield from batch_calls(
            "sqs", "delete_message_batch", done, entry=_delete_entry,
            key=_message_id, verb="delete", QueueUrl=url,
        )  # fmt: skip
        for message_id, reason in outcome.failed.items():
            log.warning("redriven message %s left in the DLQ: %s", message_id, reason)
    if unsent:
        outcome = yield from batch_calls(
            "sqs", "change_message_visibility_batch", unsent, entry=_release_entry,
            key=_message_id, verb="release", QueueUrl=url,
        )  # fmt: skip
        for message_id, reason in outcome.failed.items():
            log.warning("unsent DLQ message %s returns after its timeout: %s", message_id, reason)
    log.info("DLQ redriven: moved %d, reset %d, failed %d", result.moved, len(result.reset),
             len(result.failed))  # fmt: skip
    return result


LOCK_KNOWN = "SELECT id FROM image_processing_jobs WHERE id = ANY($1::uuid[]) FOR UPDATE"


def redrive_batch(
    settings: ClientSettings, messages: list[MessageTypeDef], result: DlqRedrive
) -> Steps[set[str]]:
    """Move one received batch; the ids of the DLQ messages that are now on the queue."""
    job_of: dict[str, uuid.UUID] = {}
    for message in messages:
        with contextlib.suppress(MalformedMessage):  # copied as is; the worker drops it
            job_of[message["MessageId"]] = decode_message(message.get("Body", ""))

    def lock_and_reset() -> Steps[tuple[set[uuid.UUID], set[uuid.UUID]]]:
        found = yield from rows(LOCK_KNOWN, list(set(job_of.values())))
        known = {r["id"] for r in found}
        return known, set((yield from reset_failed(list(known))))

    known, reset = yield from atomic(lock_and_reset())
    sent = Requeued()
    if reset:
        sent = yield from send_and_mark_pending(settings, list(reset), limit=len(reset))
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
        outcome = yield from batch_calls(
            "sqs", "send_message_batch", copies, entry=_copy_entry, key=_message_id,
            verb="send", QueueUrl=settings.queue_url,
        )  # fmt: skip
        moved.update(outcome.sent)
        failed.update(outcome.failed)
        result.unknown += sum(1 for key in outcome.sent if job_of.get(key) not in known)
    for message_id, reason in failed.items():
        log.error("DLQ message %s not moved: %s", message_id, reason)
    result.failed.update(failed)
    result.moved += len(moved)
    result.reset.extend(sorted(sent.sent))
    return moved


def _message_id(message: MessageTypeDef) -> str:
    return message["MessageId"]


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


# -- stats ---------------------------------------------------------------------------------------


def stats(settings: ClientSettings, queues: Queues) -> Steps[QueueStats]:
    """Jobs by status, the age of the oldest pending job, and queue and DLQ depth. SQS trouble
    does not hide the table numbers: the depths are None and `queue_error` says why."""
    jobs = yield from count_jobs()
    result = QueueStats(jobs.counts, jobs.oldest_pending_age_seconds, None, None)
    try:
        result.queue = QueueDepth(**(yield from queue_depth(settings.queue_url)))
        dlq = yield from queues.dlq_url()
        if dlq is not None:
            result.dlq = QueueDepth(**(yield from queue_depth(dlq)))
    except CALL_ERRORS as exc:
        result.queue_error = str(exc)
    return result
