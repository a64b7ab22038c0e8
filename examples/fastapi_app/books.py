"""The example's own tables (schema.sql): books, their images in order, and the jobs it asked
for. Plain SQL on the connection the caller gives."""

from __future__ import annotations

import uuid
from importlib import resources
from typing import Any

import asyncpg

from api_client import Job, JobBatch, NewJob

SCHEMA_LOCK = 7_004_201  # an advisory lock: two app processes starting at once migrate in turn

UPSERT_BOOK = """
INSERT INTO app.books (book_id, title) VALUES ($1, $2)
    ON CONFLICT (book_id) DO UPDATE SET title = EXCLUDED.title, imported_at = now()"""

# A re-import replaces the listing's photos (cut-outs already attached stay first); the first
# photo is the primary until a cut-out is attached.
DROP_PHOTOS = "DELETE FROM app.book_images WHERE book_id = $1 AND NOT background_removed"
INSERT_PHOTOS = """
WITH kept AS (SELECT count(*) AS n FROM app.book_images WHERE book_id = $1)
INSERT INTO app.book_images (book_id, bucket, key, position, is_primary)
SELECT $1, $2, key, kept.n + ordinality - 1, kept.n = 0 AND ordinality = 1
  FROM kept, unnest($3::text[]) WITH ORDINALITY AS photo(key, ordinality)
RETURNING id, key"""

RECORD_JOB = """
INSERT INTO app.image_jobs (job_id, book_id, source_image_id) VALUES ($1, $2, $3)
    ON CONFLICT (job_id) DO NOTHING"""

BOOK_IMAGES = """
SELECT i.id, i.bucket, i.key, i.position, i.is_primary, i.background_removed,
       j.job_id AS processed_by_job
  FROM app.book_images i
  LEFT JOIN app.image_jobs j ON j.processed_image_id = i.id
 WHERE i.book_id = $1
 ORDER BY i.position, i.id"""

ATTACH = "SELECT app.attach_processed_image($1::uuid, $2::text, $3::jsonb)"

# Completed jobs of this app not attached yet: what a listener catches up on at startup.
UNATTACHED = """
SELECT j.id, j.book_id, j.outputs
  FROM app.image_jobs a
  JOIN image_processing_jobs j ON j.id = a.job_id
 WHERE a.attached_at IS NULL AND j.status = 'completed'
 ORDER BY j.completed_at
 LIMIT $1"""


async def migrate(pool: asyncpg.Pool) -> None:
    schema = resources.files(__package__).joinpath("schema.sql").read_text()
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
        await connection.execute(schema)


async def save_book(
    connection: asyncpg.Connection, book_id: str, title: str, bucket: str, keys: list[str]
) -> dict[str, int]:
    """Upsert the book and replace its listing photos; returns {key: image id}."""
    await connection.execute(UPSERT_BOOK, book_id, title)
    await connection.execute(DROP_PHOTOS, book_id)
    rows = await connection.fetch(INSERT_PHOTOS, book_id, bucket, keys)
    return {row["key"]: row["id"] for row in rows}


async def record_job(connection: asyncpg.Connection, job: Job, source_image_id: int | None) -> None:
    if job.book_id is not None:
        await connection.execute(RECORD_JOB, job.id, job.book_id, source_image_id)


async def queue_again(batch: JobBatch, job: Job, idempotency_key: str) -> Job:
    """A new job for the same photo, book and recipe, recorded for the book in the same
    transaction."""
    (new,) = await batch.create_jobs(
        [
            NewJob(
                job.source_key,
                job.source_bucket,
                job.book_id,
                idempotency_key=idempotency_key,
                recipe=job.recipe,
            )
        ]
    )
    source_image_id = await batch.connection.fetchval(
        "SELECT source_image_id FROM app.image_jobs WHERE job_id = $1", job.id
    )
    await record_job(batch.connection, new, source_image_id)
    return new


async def book_images(pool: asyncpg.Pool, book_id: str) -> list[dict[str, Any]] | None:
    """The book's images in display order; None for an unknown book."""
    async with pool.acquire() as connection:
        if await connection.fetchval("SELECT 1 FROM app.books WHERE book_id = $1", book_id) is None:
            return None
        rows = await connection.fetch(BOOK_IMAGES, book_id)
    return [
        dict(row)
        | {"processed_by_job": str(row["processed_by_job"]) if row["processed_by_job"] else None}
        for row in rows
    ]


async def attach(pool: asyncpg.Pool, job_id: uuid.UUID, book_id: str, outputs: str) -> None:
    """Run the attach function for one completed job (`outputs`: the job's outputs as JSON)."""
    await pool.execute(ATTACH, job_id, book_id, outputs)
