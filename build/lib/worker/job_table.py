"""The job store: every status transition is one conditional UPDATE (compare-and-set), so a
duplicate or late message can never undo a finished job or run it twice.

Every UPDATE that finishes a job sets the event outbox flag when events are on, and hands the
finished row to `events` (worker/events.py) after its commit. A processing row whose cancel was
requested never completes: `complete` refuses it, and a failure or release ends it as `cancelled`
(with the cancel reason), so a cancelled job can never come back."""

from __future__ import annotations

import enum
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from jobcore.event_outbox import EVENT_COLUMNS, JobEvent
from jobcore.job_queries import fetch_job
from jobcore.jobs import JOB_COLUMNS, Job, JobStatus
from worker.completion_hook import hook_call_sql, hook_failure
from worker.events import WorkerEvents


class ClaimOutcome(enum.Enum):
    CLAIMED = "claimed"
    NOT_FOUND = "not_found"
    FINISHED = "finished"  # completed, failed or cancelled already: drop the message
    BUSY = "busy"  # another worker holds a live lease on it
    # Its cancel was asked while a worker that has since died held it: `cancelled` now; what that
    # worker may have uploaded is left for the caller to delete.
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class Claim:
    outcome: ClaimOutcome
    job: Job | None = None


class Completion(enum.Enum):
    COMPLETED = "completed"
    CANCEL_REQUESTED = "cancel_requested"  # not completed: the job must end as cancelled
    LOST = "lost"  # another worker holds the job now
    GONE = "gone"  # the row was deleted meanwhile: what the job uploaded must go too


# A finishing UPDATE's status and error: `cancelled` with the cancel's reason when one was asked.
_ENDING = """status = CASE WHEN cancel_requested_at IS NULL THEN {status} ELSE 'cancelled' END,
             error = CASE WHEN cancel_requested_at IS NULL THEN {error} ELSE cancel_reason END"""


class JobStore:
    def __init__(
        self,
        pool: asyncpg.Pool,
        worker_id: str,
        *,
        completion_hook: str | None = None,
        events: WorkerEvents | None = None,
    ) -> None:
        self.pool = pool
        self.worker_id = worker_id
        self.completion_hook = completion_hook
        self.events = events

    @property
    def events_on(self) -> bool:
        return self.events is not None

    async def get(self, job_id: uuid.UUID) -> Job | None:
        return await fetch_job(self.pool, job_id)

    async def claim(self, job_id: uuid.UUID, *, model: str, lease_seconds: float) -> Claim:
        """Take the job for this worker. A row in `processing` whose lease has run out belongs to
        a worker that died: its message came back, so it may be claimed again, unless its cancel
        was requested: then it ends as `cancelled` now."""
        record = await self.pool.fetchrow(
            f"""UPDATE image_processing_jobs
                   SET status = 'processing', attempts = attempts + 1, claimed_by = $2,
                       model = $3, lease_expires_at = now() + make_interval(secs => $4),
                       started_at = now(), updated_at = now()
                 WHERE id = $1
                   AND (status IN ('pending', 'queue_failed')
                        OR (status = 'processing' AND lease_expires_at < now()
                            AND cancel_requested_at IS NULL))
             RETURNING {JOB_COLUMNS}""",
            job_id,
            self.worker_id,
            model,
            float(lease_seconds),
        )
        if record is not None:
            return Claim(ClaimOutcome.CLAIMED, Job.from_record(record))
        if await self._cancel_abandoned(job_id):
            return Claim(ClaimOutcome.CANCELLED, await self.get(job_id))
        current = await self.get(job_id)
        if current is None:
            return Claim(ClaimOutcome.NOT_FOUND)
        if current.status.finished:
            return Claim(ClaimOutcome.FINISHED, current)
        return Claim(ClaimOutcome.BUSY, current)

    async def _cancel_abandoned(self, job_id: uuid.UUID) -> bool:
        """A cancel asked of a job whose worker died: end it as cancelled."""
        return (
            await self._finish(
                f"""UPDATE image_processing_jobs
                   SET status = 'cancelled', error = cancel_reason, lease_expires_at = NULL,
                       completed_at = now(), updated_at = now(), event_pending = $2
                 WHERE id = $1 AND status = 'processing' AND lease_expires_at < now()
                   AND cancel_requested_at IS NOT NULL
             RETURNING {EVENT_COLUMNS}""",
                job_id,
                self.events_on,
            )
            is not None
        )

    async def extend_leases(self, job_ids: list[uuid.UUID], lease_seconds: float) -> None:
        if not job_ids:
            return
        await self.pool.execute(
            """UPDATE image_processing_jobs
                  SET lease_expires_at = now() + make_interval(secs => $3)
                WHERE id = ANY($1::uuid[]) AND status = 'processing' AND claimed_by = $2""",
            job_ids,
            self.worker_id,
            float(lease_seconds),
        )

    async def cancel_requested(self, job_id: uuid.UUID) -> str | None:
        """The reason, when the app asked this job to stop; None otherwise."""
        reason: str | None = await self.pool.fetchval(
            """SELECT COALESCE(cancel_reason, 'cancelled') FROM image_processing_jobs
                WHERE id = $1 AND cancel_requested_at IS NOT NULL""",
            job_id,
        )
        return reason

    async def complete(
        self,
        job_id: uuid.UUID,
        result_bucket: str,
        result_key: str,
        outputs: Sequence[Mapping[str, Any]],
        background_used: Mapping[str, Any] | None = None,
    ) -> Completion:
        """Record the result, every object written (`outputs`) and the background used, and run
        the completion hook (when set) in the same transaction: a hook that raises rolls the
        completion back and raises JobFailed (transient, its error as the reason). A cancel asked
        before this commit wins: CANCEL_REQUESTED, nothing recorded."""
        outputs_json = json.dumps([dict(output) for output in outputs])
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                record = await conn.fetchrow(
                    f"""UPDATE image_processing_jobs
                           SET status = 'completed', result_bucket = $3, result_key = $4,
                               outputs = $6::jsonb, background_used = $7::jsonb,
                               error = NULL, lease_expires_at = NULL, completed_at = now(),
                               updated_at = now(), event_pending = $5
                         WHERE id = $1 AND status = 'processing' AND claimed_by = $2
                           AND cancel_requested_at IS NULL
                     RETURNING {EVENT_COLUMNS}""",
                    job_id,
                    self.worker_id,
                    result_bucket,
                    result_key,
                    self.events_on,
                    outputs_json,
                    None if background_used is None else json.dumps(dict(background_used)),
                )
                if record is not None and self.completion_hook is not None:
                    try:
                        await conn.execute(
                            hook_call_sql(self.completion_hook),
                            job_id,
                            record["book_id"],
                            outputs_json,
                        )
                    except asyncpg.PostgresError as exc:  # leaving the block rolls back
                        raise hook_failure(self.completion_hook, exc) from exc
            if record is None:
                current = await conn.fetchrow(
                    """SELECT status = 'processing' AND claimed_by = $2
                              AND cancel_requested_at IS NOT NULL AS cancel
                         FROM image_processing_jobs WHERE id = $1""",
                    job_id,
                    self.worker_id,
                )
                if current is None:
                    return Completion.GONE
                return Completion.CANCEL_REQUESTED if current["cancel"] else Completion.LOST
        await self._published(record)
        return Completion.COMPLETED

    async def record_model(self, job_id: uuid.UUID, model: str) -> bool:
        """The model this attempt runs, when its recipe names another than the claim's."""
        status: str = await self.pool.execute(
            """UPDATE image_processing_jobs SET model = $3, updated_at = now()
                WHERE id = $1 AND status = 'processing' AND claimed_by = $2""",
            job_id,
            self.worker_id,
            model,
        )
        return status == "UPDATE 1"

    async def cancel(self, job_id: uuid.UUID) -> bool:
        """End this worker's job as `cancelled` after its cancel was requested (its objects are
        gone: worker/cancellation.py deletes them first)."""
        return (
            await self._finish(
                f"""UPDATE image_processing_jobs
                   SET status = 'cancelled', error = cancel_reason, lease_expires_at = NULL,
                       completed_at = now(), updated_at = now(), event_pending = $3
                 WHERE id = $1 AND status = 'processing' AND claimed_by = $2
                   AND cancel_requested_at IS NOT NULL
             RETURNING {EVENT_COLUMNS}""",
                job_id,
                self.worker_id,
                self.events_on,
            )
            is not None
        )

    async def fail(self, job_id: uuid.UUID, reason: str) -> JobStatus | None:
        """The status written (`failed`, or `cancelled` when a cancel was asked meanwhile); None
        when this worker no longer holds the job."""
        return await self._finish(
            f"""UPDATE image_processing_jobs
                   SET {_ENDING.format(status="'failed'", error="$3")}, lease_expires_at = NULL,
                       completed_at = now(), updated_at = now(), event_pending = $4
                 WHERE id = $1 AND status = 'processing' AND claimed_by = $2
             RETURNING {EVENT_COLUMNS}""",
            job_id,
            self.worker_id,
            reason,
            self.events_on,
        )

    async def fail_unclaimed(self, job_id: uuid.UUID, reason: str) -> JobStatus | None:
        """Fail a job whose attempts ran out before this worker could claim it again."""
        return await self._finish(
            f"""UPDATE image_processing_jobs
                   SET {_ENDING.format(status="'failed'", error="$2")}, lease_expires_at = NULL,
                       completed_at = now(), updated_at = now(), event_pending = $3
                 WHERE id = $1
                   AND (status IN ('pending', 'queue_failed')
                        OR (status = 'processing' AND lease_expires_at < now()))
             RETURNING {EVENT_COLUMNS}""",
            job_id,
            reason,
            self.events_on,
        )

    async def release(self, job_id: uuid.UUID, reason: str | None) -> JobStatus | None:
        """Give the job back (transient error, shutdown): `pending` again, last error kept; a job
        whose cancel was asked ends as `cancelled` instead. None: not held by this worker."""
        record = await self.pool.fetchrow(
            f"""UPDATE image_processing_jobs
                   SET {_ENDING.format(status="'pending'", error="COALESCE($3, error)")},
                       claimed_by = NULL, lease_expires_at = NULL, updated_at = now(),
                       completed_at = CASE WHEN cancel_requested_at IS NULL THEN NULL
                                           ELSE now() END,
                       event_pending = cancel_requested_at IS NOT NULL AND $4
                 WHERE id = $1 AND status = 'processing' AND claimed_by = $2
             RETURNING {EVENT_COLUMNS}""",
            job_id,
            self.worker_id,
            reason,
            self.events_on,
        )
        if record is None:
            return None
        status = JobStatus(record["status"])
        if status.finished:
            await self._published(record)
        return status

    async def _finish(self, sql: str, *args: Any) -> JobStatus | None:
        record = await self.pool.fetchrow(sql, *args)
        if record is None:
            return None
        await self._published(record)
        return JobStatus(record["status"])

    async def _published(self, record: Any) -> None:
        if self.events is not None:
            await self.events.publish(JobEvent.from_record(record))

    async def ping(self) -> None:
        await self.pool.fetchval("SELECT 1")
