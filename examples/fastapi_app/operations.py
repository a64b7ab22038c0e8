"""What the admin buttons and the JSON endpoints do, once for both: retry a failed job, cancel an
open one, remove the background again, and the queue repairs. Each returns an Outcome: an HTTP
status and a sentence for a person (an unknown id, a double click or a finished job is a clear
message, never an exception)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from api_client import CancelOutcome, Job, JobClient, JobStatus
from examples.fastapi_app.books import queue_again

CANCEL_REASON = "cancelled by an operator"
OPEN = (JobStatus.QUEUE_FAILED, JobStatus.PENDING, JobStatus.PROCESSING)


@dataclass(frozen=True, slots=True)
class Outcome:
    status_code: int
    message: str
    job: Job | None = None

    @property
    def ok(self) -> bool:
        return self.status_code < 400


Action = Callable[[JobClient, uuid.UUID], Awaitable[Outcome]]


def parse_job_id(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def not_a_job_id(text: str) -> Outcome:
    return Outcome(404, f"{text[:80]!r} is not a job id.")


def unknown(job_id: uuid.UUID) -> Outcome:
    return Outcome(404, f"There is no job {job_id}.")


async def retry(jobs: JobClient, job_id: uuid.UUID) -> Outcome:
    job = await jobs.get_job(job_id)
    if job is None:
        return unknown(job_id)
    requeued = await jobs.retry_failed([job_id])
    if job_id in requeued.sent:
        return Outcome(200, f"Job {job_id} is queued again.", await jobs.get_job(job_id))
    if job_id in requeued.failed:
        return Outcome(
            503,
            f"Job {job_id} could not be queued (the queue did not answer); it is kept as "
            "queue_failed and the recovery sweep sends it later.",
        )
    return Outcome(409, f"Job {job_id} was not retried: it is {job.status}, not failed.", job)


async def cancel(jobs: JobClient, job_id: uuid.UUID) -> Outcome:
    result = await jobs.cancel_job(job_id, CANCEL_REASON)
    if result.outcome is CancelOutcome.NOT_FOUND:
        return unknown(job_id)
    if result.outcome is CancelOutcome.CANCELLED:
        return Outcome(200, f"Job {job_id} is cancelled.", result.job)
    if result.outcome is CancelOutcome.REQUESTED:
        return Outcome(
            202,
            f"Job {job_id} is running: its worker ends it as cancelled, leaving no cut-out.",
            result.job,
        )
    status = result.job.status if result.job is not None else "finished"
    return Outcome(409, f"Job {job_id} is already {status}: nothing to cancel.", result.job)


async def remove_background_again(jobs: JobClient, job_id: uuid.UUID) -> Outcome:
    """A new job for the same photo and book. Its idempotency key is derived from the original
    job, so a double click (or a second request) returns the job already queued."""
    job = await jobs.get_job(job_id)
    if job is None:
        return unknown(job_id)
    if job.status in OPEN:
        return Outcome(409, f"Job {job_id} is still {job.status}: wait for it or cancel it.", job)
    key = f"again:{job_id}"
    existing = await jobs.pool.fetchval(
        "SELECT id FROM image_processing_jobs WHERE idempotency_key = $1", key
    )
    if existing is not None:
        return Outcome(409, f"The background of job {job_id} is already being removed again: "
                            f"job {existing}.", await jobs.get_job(existing))  # fmt: skip
    async with jobs.transaction() as batch:
        await queue_again(batch, job, key)
    (new,) = batch.jobs
    return Outcome(201, f"Removing the background again: job {new.id}.", new)


async def retry_all_failed(jobs: JobClient, limit: int = 100) -> Outcome:
    requeued = await jobs.retry_failed(limit=limit)
    message = f"{len(requeued.sent)} failed job(s) queued again"
    if requeued.failed:
        message += f", {len(requeued.failed)} left queue_failed (the queue did not answer)"
    return Outcome(200 if not requeued.failed else 503, message + ".")


async def sweep(jobs: JobClient) -> Outcome:
    report = await jobs.sweep()
    message = (
        f"Recovery sweep: {len(report.queue_failed_sent)} unsent job(s) sent, "
        f"{len(report.pending_resent)} lost message(s) sent again"
    )
    if report.send_failures:
        message += f", {len(report.send_failures)} still unsent (the queue did not answer)"
    return Outcome(200 if report.ok else 503, message + ".")
