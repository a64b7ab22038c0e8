"""Creating jobs: the SQL and the pure steps that the async producer (asyncpg) and the sync one
(psycopg 3, or a SQLAlchemy connection on the psycopg driver) both run. Each statement exists
once, written with asyncpg's `$n` placeholders; `pyformat` translates it for psycopg.

The protocol, whoever the caller is:
1. INSERT_JOBS writes the rows as `queue_failed` with no error, in the caller's transaction
   (or one of our own). A row whose idempotency key (or id) already exists is not written:
   FIND_EXISTING then returns the existing row, and the repeat is checked against it.
2. After that transaction commits, LOCK_UNSENT locks the rows that are still `queue_failed`,
   their messages are sent, and MARK_SENT moves the sent ones to `pending` before that second
   transaction commits (failures keep the row `queue_failed` with the reason). Concurrent
   repeats of one key therefore send its message once: whoever holds the row lock sends, the
   others then find it `pending`.
A crash between the two steps leaves a `queue_failed` row, which the sweeper re-sends.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from jobcore.jobs import JOB_COLUMNS, Job, JobStatus
from jobcore.recipe import Recipe
from jobcore.s3_names import check_location

MAX_IDEMPOTENCY_KEY_CHARS = 200

INSERT_JOBS = f"""
INSERT INTO image_processing_jobs
       (id, book_id, source_bucket, source_key, idempotency_key, recipe, status)
SELECT n.id, n.book_id, n.source_bucket, n.source_key, n.idempotency_key, n.recipe::jsonb,
       'queue_failed'
  FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
       AS n(id, book_id, source_bucket, source_key, idempotency_key, recipe)
    ON CONFLICT DO NOTHING
RETURNING {JOB_COLUMNS}"""

FIND_EXISTING = f"""
SELECT {JOB_COLUMNS} FROM image_processing_jobs
 WHERE idempotency_key = ANY($1::text[]) OR id = ANY($2::uuid[])"""

FETCH_JOBS = f"SELECT {JOB_COLUMNS} FROM image_processing_jobs WHERE id = ANY($1::uuid[])"

# Waits for a concurrent sender of the same rows (a repeat, the sweeper) rather than skipping
# them, so that a repeat answers with the state that sender left (`pending`): once the lock
# is free, the row no longer matches. Locks in id order: two batches never deadlock. The wait
# is bounded by LOCK_WAIT_LIMIT; when it runs out the rows stay as they are (being sent).
LOCK_UNSENT = """
SELECT id FROM image_processing_jobs
 WHERE id = ANY($1::uuid[]) AND status = 'queue_failed'
 ORDER BY id
   FOR UPDATE"""

LOCK_WAIT_LIMIT = "SET LOCAL lock_timeout = '10s'"
LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE when lock_timeout runs out

# A worker may have claimed the row already (its claim accepts `queue_failed`): then nothing
# matches, which is right.
MARK_SENT = f"""
UPDATE image_processing_jobs SET status = 'pending', error = NULL, updated_at = now()
 WHERE id = ANY($1::uuid[]) AND status = 'queue_failed'
RETURNING {JOB_COLUMNS}"""

_PLACEHOLDER = re.compile(r"\$(\d+)")


def pyformat(sql: str) -> str:
    """asyncpg's `$n` -> psycopg's `%(pn)s` (and a literal `%` -> `%%`); pair with `named`."""
    return _PLACEHOLDER.sub(r"%(p\1)s", sql.replace("%", "%%"))


def named(args: Sequence[Any]) -> dict[str, Any]:
    """Positional arguments for `$1..$n` as the mapping a `pyformat` statement takes."""
    return {f"p{index}": value for index, value in enumerate(args, start=1)}


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One job to create, its bucket resolved and its id chosen."""

    id: uuid.UUID
    source_bucket: str
    source_key: str
    book_id: str | None = None
    idempotency_key: str | None = None
    delay_seconds: int = 0
    recipe: Recipe | None = None

    def __post_init__(self) -> None:
        check_location(self.source_bucket, self.source_key)
        if self.idempotency_key is not None and not (
            0 < len(self.idempotency_key) <= MAX_IDEMPOTENCY_KEY_CHARS
        ):
            raise ValueError(
                f"idempotency_key must be 1-{MAX_IDEMPOTENCY_KEY_CHARS} characters,"
                f" got {len(self.idempotency_key)}"
            )


def insert_args(specs: Sequence[JobSpec]) -> list[Any]:
    return [
        [spec.id for spec in specs],
        [spec.book_id for spec in specs],
        [spec.source_bucket for spec in specs],
        [spec.source_key for spec in specs],
        [spec.idempotency_key for spec in specs],
        [json.dumps(spec.recipe.to_json()) if spec.recipe else None for spec in specs],
    ]


def find_existing_args(specs: Sequence[JobSpec], inserted: Iterable[uuid.UUID]) -> list[Any]:
    """Arguments for FIND_EXISTING: the keys and ids of the specs whose insert did nothing."""
    written = set(inserted)
    missing = [spec for spec in specs if spec.id not in written]
    keys = [spec.idempotency_key for spec in missing if spec.idempotency_key is not None]
    return [keys, [spec.id for spec in missing]]


@dataclass(frozen=True, slots=True)
class Created:
    """What step 1 made of one spec: its job (new or existing), and whether it is a repeat."""

    spec: JobSpec
    job: Job
    repeat: bool

    @property
    def needs_send(self) -> bool:
        return self.job.status is JobStatus.QUEUE_FAILED


class IdempotencyConflict(ValueError):
    """A repeat whose key names an existing job for another image: refused, so that the new
    image is not silently left without a job."""

    def __init__(self, spec: JobSpec, existing: Job, differences: Sequence[str]) -> None:
        super().__init__(
            f"idempotency key {spec.idempotency_key!r} already names job {existing.id}"
            f" with a different {', '.join(differences)}"
        )
        self.spec = spec
        self.existing = existing
        self.differences = list(differences)


def differences(spec: JobSpec, job: Job) -> list[str]:
    """What a repeat asks that the existing job does not match (names of the fields)."""
    diff = []
    if (spec.source_bucket, spec.source_key) != (job.source_bucket, job.source_key):
        diff.append(f"source (s3://{job.source_bucket}/{job.source_key})")
    if spec.book_id != job.book_id:
        diff.append(f"book_id ({job.book_id!r})")
    if spec.recipe != job.recipe:
        diff.append("recipe")
    return diff


def match_created(
    specs: Sequence[JobSpec], inserted: Iterable[Any], existing: Iterable[Any]
) -> list[Created]:
    """Each spec's job in input order: the row it inserted, else the row its idempotency key
    (or, without a key, its id) names. Rows are records from INSERT_JOBS and FIND_EXISTING."""
    new = {job.id: job for job in map(Job.from_record, inserted)}
    found = list(map(Job.from_record, existing))
    by_key = {job.idempotency_key: job for job in found if job.idempotency_key is not None}
    by_id = {job.id: job for job in found} | new
    created: list[Created] = []
    for spec in specs:
        if spec.id in new:
            created.append(Created(spec, new[spec.id], repeat=False))
            continue
        job = by_key.get(spec.idempotency_key) if spec.idempotency_key else None
        job = job or by_id.get(spec.id)
        if job is None:  # the row that blocked the insert is gone again (deleted meanwhile)
            raise LookupError(f"job {spec.id} was neither written nor found; try again")
        created.append(Created(spec, job, repeat=True))
    return created


def by_id(records: Iterable[Any]) -> dict[uuid.UUID, Job]:
    return {job.id: job for job in map(Job.from_record, records)}


def unsent_ids(created: Sequence[Created]) -> list[uuid.UUID]:
    return list(dict.fromkeys(item.job.id for item in created if item.needs_send))
