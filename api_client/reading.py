"""Reading jobs, once for both producers."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import timedelta
from typing import TypedDict

from api_client.creation import book_text, job_id_of
from api_client.errors import ClientConfigError
from api_client.steps import Steps, rows
from jobcore.job_queries import FETCH_JOB
from jobcore.jobs import JOB_COLUMNS, Job, JobStatus


class ListFilter(TypedDict, total=False):
    """Keyword arguments of `list_jobs` (both clients)."""

    status: JobStatus | str | Iterable[JobStatus | str] | None
    older_than: timedelta | None  # created at least this long ago
    newer_than: timedelta | None  # created at most this long ago
    book_id: str | int | None
    limit: int  # default 100
    oldest_first: bool  # default newest first


LIST_JOBS = f"""
SELECT {JOB_COLUMNS} FROM image_processing_jobs
 WHERE (cardinality($1::text[]) = 0 OR status = ANY($1::text[]))
   AND ($2::interval IS NULL OR created_at <= now() - $2::interval)
   AND ($3::interval IS NULL OR created_at >= now() - $3::interval)
   AND ($4::text IS NULL OR book_id = $4)
 ORDER BY created_at {{order}}, id
 LIMIT $5"""


def get_job(job_id: uuid.UUID | str) -> Steps[Job | None]:
    found = yield from rows(FETCH_JOB, job_id_of(job_id))
    return Job.from_record(found[0]) if found else None


def statuses_of(status: JobStatus | str | Iterable[JobStatus | str] | None) -> list[str]:
    try:
        if status is None:
            return []
        if isinstance(status, str):
            return [JobStatus(status).value]
        return [JobStatus(s).value for s in status]
    except ValueError as exc:
        known = ", ".join(s.value for s in JobStatus)
        raise ClientConfigError(f"status: {exc} (known: {known})") from None


def list_jobs(options: ListFilter) -> Steps[list[Job]]:
    """Jobs by status, book and age (time since creation), newest first unless `oldest_first`."""
    limit = options.get("limit", 100)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ClientConfigError(f"limit must be a whole number >= 0, not {limit!r}")
    for name in ("older_than", "newer_than"):
        value = options.get(name)
        if value is not None and not isinstance(value, timedelta):
            raise ClientConfigError(f"{name} must be a timedelta, not {value!r}")
    order = "ASC" if options.get("oldest_first", False) else "DESC"
    found = yield from rows(
        LIST_JOBS.format(order=order),
        statuses_of(options.get("status")),
        options.get("older_than"),
        options.get("newer_than"),
        book_text(options.get("book_id")),
        limit,
    )
    return [Job.from_record(record) for record in found]
