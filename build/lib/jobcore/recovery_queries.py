"""How far behind the recovery of unsent jobs is, read the same way by the sweep (its log line and
CloudWatch metrics) and by the worker (its Prometheus gauges)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any


@dataclass(frozen=True, slots=True)
class UnsentBacklog:
    queue_failed: int  # rows with no message known to be on the queue
    oldest_queue_failed_age_seconds: float | None  # since the row was created; None: no row
    stale_pending: int  # pending rows untouched (not sent, re-sent or released) for `stale_after`
    oldest_pending_idle_seconds: float | None  # since the least recently touched pending row


UNSENT_BACKLOG = """SELECT count(*) FILTER (WHERE status = 'queue_failed') AS queue_failed,
                  EXTRACT(EPOCH FROM now() - min(created_at) FILTER (WHERE status = 'queue_failed'))
                      ::float8 AS oldest_queue_failed,
                  count(*) FILTER (WHERE status = 'pending' AND updated_at < now() - $1::interval)
                      AS stale_pending,
                  EXTRACT(EPOCH FROM now() - min(updated_at) FILTER (WHERE status = 'pending'))
                      ::float8 AS oldest_pending_idle
             FROM image_processing_jobs
            WHERE status IN ('pending', 'queue_failed')"""


async def unsent_backlog(executor: Any, stale_after: timedelta) -> UnsentBacklog:
    """`executor`: an asyncpg pool or connection."""
    return backlog_of(await executor.fetchrow(UNSENT_BACKLOG, stale_after))


def backlog_of(row: Any) -> UnsentBacklog:
    """UNSENT_BACKLOG's one row."""
    return UnsentBacklog(
        queue_failed=row["queue_failed"],
        oldest_queue_failed_age_seconds=_not_negative(row["oldest_queue_failed"]),
        stale_pending=row["stale_pending"],
        oldest_pending_idle_seconds=_not_negative(row["oldest_pending_idle"]),
    )


def _not_negative(value: float | None) -> float | None:
    # now() is the transaction's start: a row written since reads a little "in the future".
    return None if value is None else max(0.0, value)
