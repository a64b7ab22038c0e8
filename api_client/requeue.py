"""Sending job rows' messages: the one path the repairs (`admin`) and the recovery sweep
(`recovery`) take. Rows are taken with `SELECT ... FOR UPDATE SKIP LOCKED` in a transaction, their
messages sent, and the sent ones marked `pending` before the commit, so two senders running at
once never send one row twice. (A worker that receives a message before that commit waits for the
row lock: its claim accepts `queue_failed` rows.)"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

import asyncpg
import structlog

from api_client.settings import ClientSettings
from jobcore.job_queries import mark_queue_failed
from jobcore.jobs import JobStatus
from jobcore.sqs import SQS_BATCH, BatchOutcome

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient

log = structlog.get_logger(__name__)


class JobQueue(Protocol):
    """What the senders need of a `JobClient` (which passes itself)."""

    settings: ClientSettings
    pool: asyncpg.Pool
    sqs: SQSClient

    async def send_messages(self, items: Sequence[uuid.UUID]) -> BatchOutcome[uuid.UUID]: ...

    async def dlq_url(self) -> str | None: ...


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


async def send_and_mark_pending(
    client: JobQueue,
    only: list[uuid.UUID] | None,
    *,
    limit: int,
    batch_size: int = SQS_BATCH,
    status: JobStatus = JobStatus.QUEUE_FAILED,
    idle_for: timedelta | None = None,
    pace: Callable[[int], Awaitable[None]] | None = None,
) -> Requeued:
    """Send the messages of rows in `status` (`queue_failed`; `pending` for the sweep's re-sends
    of lost messages), only those in `only` when given, untouched for `idle_for`, oldest first, at
    most `limit`, one transaction per batch; mark the sent ones `pending` (updated_at now) before
    the commit and leave the failed ones `queue_failed` with the reason. `pace(n)` is awaited
    before each batch of up to n rows (a rate limit). Stops early when a whole batch fails (the
    queue is down) or no row is left."""
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
