"""The app hears back: a lifespan task that attaches each completed cut-out to its book
(`ATTACH_PROCESSED_IMAGES=listener`). `JobClient.listen()` yields every job that finishes (a NOTIFY
from the job table; the library reconnects and catches up by itself), so the app has no polling
loop. At startup it first attaches what completed while it was down. Attaching is idempotent
(app.attach_processed_image), so a job heard twice is attached once."""

from __future__ import annotations

import json
import uuid

import asyncpg
import structlog

from api_client import JobClient, JobStatus
from examples.fastapi_app.books import UNATTACHED, attach
from examples.fastapi_app.errors import DATABASE_ERRORS

log = structlog.get_logger(__name__)

CATCH_UP_LIMIT = 500  # jobs attached per startup pass at most; the rest at the next start


async def attach_finished_jobs(jobs: JobClient) -> None:
    """Runs until cancelled (at shutdown). A failed attach is logged and skipped: the row stays
    unattached and the next catch-up tries it again. The catch-up runs before listening and once
    more after the first job is heard (the LISTEN is surely up by then), so a job that completed
    between the first catch-up and the LISTEN is not left behind."""
    await _catch_up(jobs.pool)
    caught_up = False
    async for job in jobs.listen():
        if job.status is JobStatus.COMPLETED and job.book_id is not None:
            await _attach(jobs.pool, job.id, job.book_id, json.dumps(job.outputs))
        if not caught_up:
            await _catch_up(jobs.pool)
            caught_up = True


async def _catch_up(pool: asyncpg.Pool) -> None:
    try:
        rows = await pool.fetch(UNATTACHED, CATCH_UP_LIMIT)
    except DATABASE_ERRORS as exc:
        log.error("catching up on completed jobs failed", error=str(exc))
        return
    for row in rows:
        await _attach(pool, row["id"], row["book_id"], row["outputs"])


async def _attach(pool: asyncpg.Pool, job_id: uuid.UUID, book_id: str, outputs: str) -> None:
    try:
        await attach(pool, job_id, book_id, outputs)
    except DATABASE_ERRORS as exc:
        log.error(
            "attaching the cut-out failed", job_id=str(job_id), book_id=book_id, error=str(exc)
        )
    else:
        log.info("cut-out attached", job_id=str(job_id), book_id=book_id)
