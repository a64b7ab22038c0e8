"""The job store: every status transition is one conditional UPDATE (compare-and-set), so a
duplicate or late message can never undo a finished job or run it twice."""

from __future__ import annotations

import enum
import json
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from jobcore.job_queries import fetch_job
from jobcore.jobs import JOB_COLUMNS, Job


class ClaimOutcome(enum.Enum):
    CLAIMED = "claimed"
    NOT_FOUND = "not_found"
    FINISHED = "finished"  # completed or failed already: drop the message without work
    BUSY = "busy"  # another worker holds a live lease on it


@dataclass(frozen=True, slots=True)
class Claim:
    outcome: ClaimOutcome
    job: Job | None = None


class JobStore:
    def __init__(self, pool: asyncpg.Pool, worker_id: str) -> None:
        self.pool = pool
        self.worker_id = worker_id

    async def get(self, job_id: uuid.UUID) -> Job | None:
        return await fetch_job(self.pool, job_id)

    async def claim(self, job_id: uuid.UUID, *, model: str, lease_seconds: float) -> Claim:
        """Take the job for this worker. A row in `processing` whose lease has run out belongs to
        a worker that died: its message came back, so it may be claimed again."""
        record = await self.pool.fetchrow(
            f"""UPDATE image_processing_jobs
                   SET status = 'processing', attempts = attempts + 1, claimed_by = $2,
                       model = $3, lease_expires_at = now() + make_interval(secs => $4),
                       started_at = now(), updated_at = now()
                 WHERE id = $1
                   AND (status IN ('pending', 'queue_failed')
                        OR (status = 'processing' AND lease_expires_at < now()))
             RETURNING {JOB_COLUMNS}""",
            job_id,
            self.worker_id,
            model,
            float(lease_seconds),
        )
        if record is not None:
            return Claim(ClaimOutcome.CLAIMED, Job.from_record(record))
        current = await self.get(job_id)
        if current is None:
            return Claim(ClaimOutcome.NOT_FOUND)
        if current.status.finished:
            return Claim(ClaimOutcome.FINISHED, current)
        return Claim(ClaimOutcome.BUSY, current)

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

    async def complete(
        self,
        job_id: uuid.UUID,
        result_bucket: str,
        result_key: str,
        *,
        outputs: list[dict[str, Any]] | None = None,
        background_used: dict[str, Any] | None = None,
    ) -> bool:
        """Record the result (and every object written); False when this worker no longer holds
        the job."""
        status = await self.pool.execute(
            """UPDATE image_processing_jobs
                  SET status = 'completed', result_bucket = $3, result_key = $4, error = NULL,
                      outputs = $5::jsonb, background_used = $6::jsonb,
                      lease_expires_at = NULL, completed_at = now(), updated_at = now()
                WHERE id = $1 AND status = 'processing' AND claimed_by = $2""",
            job_id,
            self.worker_id,
            result_bucket,
            result_key,
            None if outputs is None else json.dumps(outputs),
            None if background_used is None else json.dumps(background_used),
        )
        return _affected(status) == 1

    async def record_model(self, job_id: uuid.UUID, model: str) -> bool:
        """The model this attempt runs, when its recipe names another than the claim's."""
        status = await self.pool.execute(
            """UPDATE image_processing_jobs SET model = $3, updated_at = now()
                WHERE id = $1 AND status = 'processing' AND claimed_by = $2""",
            job_id,
            self.worker_id,
            model,
        )
        return _affected(status) == 1

    async def fail(self, job_id: uuid.UUID, reason: str) -> bool:
        status = await self.pool.execute(
            """UPDATE image_processing_jobs
                  SET status = 'failed', error = $3, lease_expires_at = NULL,
                      completed_at = now(), updated_at = now()
                WHERE id = $1 AND status = 'processing' AND claimed_by = $2""",
            job_id,
            self.worker_id,
            reason,
        )
        return _affected(status) == 1

    async def fail_unclaimed(self, job_id: uuid.UUID, reason: str) -> bool:
        """Fail a job whose attempts ran out before this worker could claim it again."""
        status = await self.pool.execute(
            """UPDATE image_processing_jobs
                  SET status = 'failed', error = $2, lease_expires_at = NULL,
                      completed_at = now(), updated_at = now()
                WHERE id = $1
                  AND (status IN ('pending', 'queue_failed')
                       OR (status = 'processing' AND lease_expires_at < now()))""",
            job_id,
            reason,
        )
        return _affected(status) == 1

    async def release(self, job_id: uuid.UUID, reason: str | None) -> bool:
        """Give the job back (transient error, shutdown): `pending` again, last error kept."""
        status = await self.pool.execute(
            """UPDATE image_processing_jobs
                  SET status = 'pending', error = COALESCE($3, error), claimed_by = NULL,
                      lease_expires_at = NULL, updated_at = now()
                WHERE id = $1 AND status = 'processing' AND claimed_by = $2""",
            job_id,
            self.worker_id,
            reason,
        )
        return _affected(status) == 1

    async def ping(self) -> None:
        await self.pool.fetchval("SELECT 1")


def _affected(command_status: str) -> int:
    return int(command_status.rsplit(" ", 1)[-1])
