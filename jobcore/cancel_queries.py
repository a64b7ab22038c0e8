"""Cancelling a job: the SQL both producers run (`cancel_job` on both clients, `image-jobs cancel`);
the worker's side of a cancel is `worker/cancellation.py`.

- A row not yet claimed (`pending`, `queue_failed`) becomes `cancelled` at once: `error` and
  `cancel_reason` are the reason, `completed_at` is now, its event is owed (`event_pending`). Its
  message, if any, is dropped by the worker as finished.
- A `processing` row stays `processing` with `cancel_requested_at`/`cancel_reason` set; its
  worker checks before uploading and when completing, and ends it as `cancelled` with no object
  left behind. A repeated request keeps the first time and reason.
- A finished row (`completed`, `failed`, `cancelled`) is left as it is.
All in one UPDATE, so a claim racing the cancel is ordered by the row lock: either the claim
refuses the cancelled row, or the cancel finds it `processing` and asks its worker to stop."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from typing import Any

from jobcore.job_queries import MAX_ERROR_CHARS, fetch_job
from jobcore.jobs import JOB_COLUMNS, Job, JobStatus

DEFAULT_CANCEL_REASON = "cancelled"

# $1 job id, $2 reason. References to `status` on the right-hand side read the row before the
# UPDATE.
CANCEL_JOB = f"""
UPDATE image_processing_jobs
   SET status = CASE WHEN status = 'processing' THEN status ELSE 'cancelled' END,
       cancel_requested_at = COALESCE(cancel_requested_at, now()),
       cancel_reason = COALESCE(cancel_reason, $2),
       error = CASE WHEN status = 'processing' THEN error ELSE $2 END,
       completed_at = CASE WHEN status = 'processing' THEN completed_at ELSE now() END,
       event_pending = CASE WHEN status = 'processing' THEN event_pending ELSE true END,
       updated_at = now()
 WHERE id = $1 AND status IN ('pending', 'queue_failed', 'processing')
RETURNING {JOB_COLUMNS}"""


class CancelOutcome(enum.StrEnum):
    CANCELLED = "cancelled"  # was not claimed yet: cancelled now
    REQUESTED = "requested"  # running: its worker ends it as cancelled at its next check
    ALREADY_FINISHED = "already_finished"  # completed, failed or cancelled before: unchanged
    NOT_FOUND = "not_found"


@dataclass(frozen=True, slots=True)
class CancelResult:
    outcome: CancelOutcome
    job: Job | None  # the row after the request; None only for NOT_FOUND


def cancel_args(job_id: uuid.UUID, reason: str | None) -> list[Any]:
    text = (reason or "").strip() or DEFAULT_CANCEL_REASON
    return [job_id, text[:MAX_ERROR_CHARS]]


def cancel_result(updated: Job | None, current: Job | None) -> CancelResult:
    """What CANCEL_JOB did: `updated` is the row it returned; when it returned none, `current` is
    the row read afterwards (None: no such job)."""
    if updated is not None:
        if updated.status is JobStatus.CANCELLED:
            return CancelResult(CancelOutcome.CANCELLED, updated)
        return CancelResult(CancelOutcome.REQUESTED, updated)
    if current is None:
        return CancelResult(CancelOutcome.NOT_FOUND, None)
    return CancelResult(CancelOutcome.ALREADY_FINISHED, current)


async def cancel_job(executor: Any, job_id: uuid.UUID, reason: str | None = None) -> CancelResult:
    """`executor`: an asyncpg pool or connection. `reason` (default "cancelled") is kept on the
    row, at most 500 characters."""
    record = await executor.fetchrow(CANCEL_JOB, *cancel_args(job_id, reason))
    if record is not None:
        return cancel_result(Job.from_record(record), None)
    return cancel_result(None, await fetch_job(executor, job_id))
