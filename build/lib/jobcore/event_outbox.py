"""Job-finished events on SNS, from an outbox on the job row.

The UPDATE that finishes a job (completed, failed, cancelled) sets `event_pending` when events are
on; the worker publishes the event right after its commit and clears the flag. A worker killed in
between leaves the flag set, and the recovery sweep's catch-up (`catch_up_events`) publishes every
row whose flag is still set a grace period after it finished. Delivery is at least once: a crash
after the publish and before the clear, or a publish whose answer was lost, sends the event
again. Subscribers deduplicate on (`id`, `finished_at`)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from jobcore.jobs import JobStatus
from jobcore.sqs import BatchOutcome, call_in_batches

if TYPE_CHECKING:
    from types_aiobotocore_sns import SNSClient
    from types_aiobotocore_sns.type_defs import PublishBatchRequestEntryTypeDef

EVENT_VERSION = 1

# What a subscriber gets as `outputs`: every object the job wrote ({name, bucket, key,
# content_type, ...}, the shape of the row's `outputs` column), read from the row.
OUTPUTS_SQL = """CASE WHEN result_key IS NULL THEN NULL ELSE jsonb_build_array(jsonb_build_object(
    'name', 'image', 'bucket', result_bucket, 'key', result_key, 'content_type', 'image/png'))
    END"""


def single_output(bucket: str, key: str) -> list[dict[str, Any]]:
    """`outputs` of a job that wrote one PNG (what OUTPUTS_SQL reads from such a row)."""
    return [{"name": "image", "bucket": bucket, "key": key, "content_type": "image/png"}]


EVENT_COLUMNS = (
    f"id, book_id, status, COALESCE(outputs, {OUTPUTS_SQL}) AS outputs, error, model,"
    " completed_at AS finished_at"
)

SELECT_OWED = f"""
SELECT {EVENT_COLUMNS} FROM image_processing_jobs
 WHERE event_pending AND status IN ('completed', 'failed', 'cancelled')
   AND completed_at < now() - $1::interval
 ORDER BY completed_at
 LIMIT $2
 FOR UPDATE SKIP LOCKED"""

# The finish is named by its time, so a flag set by a later finish of the same row (after a
# retry) is never cleared by the event of an earlier one.
CLEAR_PUBLISHED = """
UPDATE image_processing_jobs AS j SET event_pending = false
  FROM unnest($1::uuid[], $2::timestamptz[]) AS p(id, finished_at)
 WHERE j.id = p.id AND j.completed_at = p.finished_at AND j.event_pending"""


@dataclass(frozen=True, slots=True)
class JobEvent:
    id: uuid.UUID
    book_id: str | None
    status: JobStatus
    outputs: list[dict[str, Any]] | None
    error: str | None
    model: str | None
    finished_at: datetime

    @classmethod
    def from_record(cls, record: Any) -> JobEvent:
        """From a row selected with EVENT_COLUMNS."""
        outputs = record["outputs"]
        return cls(
            id=record["id"],
            book_id=record["book_id"],
            status=JobStatus(record["status"]),
            outputs=json.loads(outputs) if isinstance(outputs, str) else outputs,
            error=record["error"],
            model=record["model"],
            finished_at=record["finished_at"],
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "v": EVENT_VERSION,
                "id": str(self.id),
                "book_id": self.book_id,
                "status": self.status.value,
                "outputs": self.outputs,
                "error": self.error,
                "model": self.model,
                "finished_at": self.finished_at.isoformat(),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> JobEvent:
        data = json.loads(text)
        return cls(
            id=uuid.UUID(data["id"]),
            book_id=data["book_id"],
            status=JobStatus(data["status"]),
            outputs=data["outputs"],
            error=data["error"],
            model=data["model"],
            finished_at=datetime.fromisoformat(data["finished_at"]),
        )


def publish_entry(entry_id: str, event: JobEvent) -> PublishBatchRequestEntryTypeDef:
    """One PublishBatch entry. The message attribute `status` lets a subscription filter (e.g.
    only `completed`)."""
    return {
        "Id": entry_id,
        "Message": event.to_json(),
        "MessageAttributes": {"status": {"DataType": "String", "StringValue": event.status.value}},
    }


class EventPublisher:
    """Publishes job-finished events to one SNS topic. The message attribute `status` lets a
    subscription filter (e.g. only `completed`)."""

    def __init__(self, sns: SNSClient, topic_arn: str) -> None:
        self.sns = sns
        self.topic_arn = topic_arn

    async def publish(self, events: Sequence[JobEvent]) -> BatchOutcome[uuid.UUID]:
        """Every event ends as sent or failed (with the reason), named by its job id."""

        return await call_in_batches(
            events,
            entry=publish_entry,
            key=lambda event: event.id,
            call=lambda entries: self.sns.publish_batch(
                TopicArn=self.topic_arn, PublishBatchRequestEntries=entries
            ),
            verb="publish",
        )


async def clear_published(executor: Any, events: Sequence[JobEvent]) -> None:
    """`executor`: an asyncpg pool or connection."""
    if events:
        await executor.execute(
            CLEAR_PUBLISHED, [e.id for e in events], [e.finished_at for e in events]
        )


@dataclass
class EventCatchUp:
    published: list[uuid.UUID] = field(default_factory=list)
    failed: dict[uuid.UUID, str] = field(default_factory=dict)  # left owed for the next pass

    def to_dict(self) -> dict[str, Any]:
        return {
            "published": [str(i) for i in self.published],
            "failed": {str(k): v for k, v in self.failed.items()},
        }


async def catch_up_events(
    pool: Any, publisher: EventPublisher, *, grace: timedelta, limit: int
) -> EventCatchUp:
    """Publish the events still owed `grace` after their job finished (the worker that finished
    it died before publishing, or SNS refused it), oldest first, at most `limit`. Rows are taken
    with SKIP LOCKED, so sweeps running at once publish each event once. `pool`: asyncpg."""
    result = EventCatchUp()
    async with pool.acquire() as conn, conn.transaction():
        records = await conn.fetch(SELECT_OWED, grace, limit)
        if not records:
            return result
        events = {record["id"]: JobEvent.from_record(record) for record in records}
        outcome = await publisher.publish(list(events.values()))
        await clear_published(conn, [events[job_id] for job_id in outcome.sent])
    result.published = outcome.sent
    result.failed = outcome.failed
    return result
