"""Sending job messages, once for both producers: SendMessageBatch 10 entries a call with an
outcome per entry, and the send after a commit (lock the rows still `queue_failed`, send, mark
the sent ones `pending` and the refused ones `queue_failed` with the reason, commit). Queue
trouble never raises: it is logged (with the stack trace) and kept on the row."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from api_client.settings import ClientSettings
from api_client.steps import Steps, atomic, call, rows, sqlstate
from jobcore.job_create import (
    FETCH_JOBS,
    LOCK_NOT_AVAILABLE,
    LOCK_UNSENT,
    LOCK_WAIT_LIMIT,
    MARK_SENT,
    Created,
    by_id,
    unsent_ids,
)
from jobcore.job_queries import MARK_QUEUE_FAILED, mark_queue_failed_args
from jobcore.jobs import Job, encode_message
from jobcore.sqs import CALL_ERRORS, BatchOutcome, K, chunked, entry_outcomes

if TYPE_CHECKING:
    from types_aiobotocore_sqs.type_defs import SendMessageBatchRequestEntryTypeDef

log = logging.getLogger("image_worker.producer")

T = TypeVar("T")


def batch_calls(
    service: str,
    method: str,
    items: Sequence[T],
    *,
    entry: Callable[[str, T], Any],
    key: Callable[[T], K],
    verb: str,
    logged: set[K] | None = None,
    entries_argument: str = "Entries",
    **kwargs: Any,
) -> Steps[BatchOutcome[K]]:
    """One `method` call per chunk of 10 items, `Entries=[entry(Id, item)]` (SNS names it
    `PublishBatchRequestEntries`: `entries_argument`) plus `kwargs`;
    every item ends as sent or failed (by `key`). A call that fails as a whole is logged with
    its stack trace (once per item; those keys are added to `logged`) and fails its entries."""
    outcome: BatchOutcome[K] = BatchOutcome()
    for chunk in chunked(items):
        keys = [key(item) for item in chunk]
        entries = [entry(str(index), item) for index, item in enumerate(chunk)]
        try:
            arguments = {entries_argument: entries, **kwargs}
            response = yield from call(service, method, **arguments)  # type: ignore[arg-type]
        except CALL_ERRORS as exc:
            for k in keys:
                log.error("%s failed for %s", verb, k, exc_info=exc, extra={"job_id": str(k)})
            if logged is not None:
                logged.update(keys)
            outcome.merge(BatchOutcome(failed={k: f"{verb} failed: {exc}" for k in keys}))
            continue
        outcome.merge(entry_outcomes(response, keys, verb=verb))
    return outcome


def message_entry(index: str, job: tuple[uuid.UUID, int]) -> SendMessageBatchRequestEntryTypeDef:
    job_id, delay_seconds = job
    return {"Id": index, "MessageBody": encode_message(job_id), "DelaySeconds": delay_seconds}


def send_messages(
    settings: ClientSettings,
    items: Sequence[tuple[uuid.UUID, int]] | Sequence[uuid.UUID],
    logged: set[uuid.UUID] | None = None,
) -> Steps[BatchOutcome[uuid.UUID]]:
    """Pointer messages for existing rows; never raises for a failed send."""
    pairs = [item if isinstance(item, tuple) else (item, 0) for item in items]
    return (
        yield from batch_calls(
            "sqs",
            "send_message_batch",
            pairs,
            entry=message_entry,
            key=lambda pair: pair[0],
            verb="send",
            logged=logged,
            QueueUrl=settings.queue_url,
        )
    )


def log_refused(outcome: BatchOutcome[uuid.UUID], logged: set[uuid.UUID]) -> None:
    """One error line per job whose send failed (a whole call's failure is logged already)."""
    for job_id, reason in outcome.failed.items():
        if job_id not in logged:
            log.error("send refused; job %s kept as queue_failed: %s", job_id, reason,
                      extra={"job_id": str(job_id)})  # fmt: skip


def record_outcome(
    outcome: BatchOutcome[uuid.UUID], logged: set[uuid.UUID]
) -> Steps[dict[uuid.UUID, Job]]:
    """Mark sent rows `pending` and refused ones `queue_failed` with the reason (a row a worker
    already took is left alone); the rows so changed."""
    changed: dict[uuid.UUID, Job] = {}
    if outcome.sent:
        changed |= by_id((yield from rows(MARK_SENT, outcome.sent)))
    if outcome.failed:
        log_refused(outcome, logged)
        changed |= by_id(
            (yield from rows(MARK_QUEUE_FAILED, *mark_queue_failed_args(outcome.failed)))
        )
    return changed


def send_unsent(
    settings: ClientSettings, created: Sequence[Created]
) -> Steps[dict[uuid.UUID, Job]]:
    """After the commit: send every job still `queue_failed` under its row lock (waiting at most
    LOCK_WAIT_LIMIT for a concurrent sender of the same rows, then leaving them to it). Returns
    every job's state afterwards."""
    delays = {item.job.id: item.spec.delay_seconds for item in created}
    state = {item.job.id: item.job for item in created}
    unsent = unsent_ids(created)
    if not unsent:
        return state

    def locked_send() -> Steps[dict[uuid.UUID, Job]]:
        yield from rows(LOCK_WAIT_LIMIT)
        locked = [record["id"] for record in (yield from rows(LOCK_UNSENT, unsent))]
        if not locked:
            return {}
        logged: set[uuid.UUID] = set()
        outcome = yield from send_messages(settings, [(i, delays[i]) for i in locked], logged)
        return (yield from record_outcome(outcome, logged))

    touched: dict[uuid.UUID, Job] = {}
    try:
        touched = yield from atomic(locked_send())
    except Exception as exc:
        if sqlstate(exc) != LOCK_NOT_AVAILABLE:
            raise
        log.warning("rows held by another sender; left to it: %s", ", ".join(map(str, unsent)),
                    extra={"job_ids": [str(i) for i in unsent]})  # fmt: skip
    stale = [job_id for job_id in unsent if job_id not in touched]  # another sender had them
    if stale:
        touched |= by_id((yield from rows(FETCH_JOBS, stale)))
    return state | touched
