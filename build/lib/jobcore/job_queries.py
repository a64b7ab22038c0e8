"""SQL on the job table that the worker and the producer both run."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jobcore.jobs import JOB_COLUMNS, Job, JobStatus

MAX_ERROR_CHARS = 500  # a send failure's reason, as kept on the row


FETCH_JOB = f"SELECT {JOB_COLUMNS} FROM image_processing_jobs WHERE id = $1"

MARK_QUEUE_FAILED = f"""
UPDATE image_processing_jobs AS j
   SET status = 'queue_failed', error = r.error, updated_at = now()
  FROM unnest($1::uuid[], $2::text[]) AS r(id, error)
 WHERE j.id = r.id AND j.status IN ('pending', 'queue_failed')
RETURNING {", ".join(f"j.{column.strip()}" for column in JOB_COLUMNS.split(","))}"""


def mark_queue_failed_args(reasons: Mapping[uuid.UUID, str]) -> list[Any]:
    ids = list(reasons)
    return [ids, [reasons[job_id][:MAX_ERROR_CHARS] for job_id in ids]]


@dataclass(frozen=True, slots=True)
class JobCounts:
    counts: dict[str, int]  # every asked-for status, 0 when there is none
    oldest_pending_age_seconds: float | None  # None: no pending job


async def fetch_job(executor: Any, job_id: uuid.UUID) -> Job | None:
    """`executor`: an asyncpg pool or connection."""
    record = await executor.fetchrow(FETCH_JOB, job_id)
    return Job.from_record(record) if record else None


COUNT_JOBS = """
SELECT status, count(*) AS n, EXTRACT(EPOCH FROM now() - min(created_at))::float8 AS oldest
  FROM image_processing_jobs
 WHERE status = ANY($1::text[])
 GROUP BY status"""


async def count_jobs(executor: Any, statuses: Sequence[JobStatus] = tuple(JobStatus)) -> JobCounts:
    """Jobs by status, and the age of the oldest pending one."""
    wanted = [status.value for status in statuses]
    return job_counts(wanted, await executor.fetch(COUNT_JOBS, wanted))


def job_counts(wanted: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> JobCounts:
    """COUNT_JOBS' rows as counts for every wanted status and the oldest pending age."""
    counts = dict.fromkeys(wanted, 0)
    oldest: float | None = None
    for row in rows:
        counts[row["status"]] = row["n"]
        if row["status"] == JobStatus.PENDING:
            oldest = row["oldest"]
    return JobCounts(counts, oldest)


async def mark_queue_failed(
    executor: Any, reasons: Mapping[uuid.UUID, str]
) -> dict[uuid.UUID, Job]:
    """Rows whose message could not be sent become (or stay) `queue_failed` with the reason, so
    `retry_queue_failed` sends them later; a row a worker already took is left alone."""
    records = await executor.fetch(MARK_QUEUE_FAILED, *mark_queue_failed_args(reasons))
    return {record["id"]: Job.from_record(record) for record in records}
