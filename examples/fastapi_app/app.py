"""A book-listing import API on image-worker's async producer (FastAPI).

POST /books/import   copy the listing's photos into SOURCE_BUCKET, write the book and queue its
                     primary photo (the first one copied) in one transaction; the message goes
                     out after the commit. `Idempotency-Key` makes a retried request return the
                     same job. A queue outage never fails the import: the job is `queue_failed`
                     and the recovery sweep (`image-jobs sweep`) sends it later.
GET  /jobs/{id}      the job as it stands.
GET  /admin/health   PostgreSQL, queue, DLQ and source bucket: 200 healthy, 503 not.

Run from the checkout (after `make install`):
    DATABASE_URL=... SQS_QUEUE_URL=... SOURCE_BUCKET=... \
        .venv/bin/uvicorn examples.fastapi_app.app:app
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Annotated, Any, TypedDict

import asyncpg
import structlog
from botocore.exceptions import BotoCoreError, ClientError
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from api_client import (
    ClientConfigError,
    ClientSettings,
    IdempotencyConflict,
    ImageCopy,
    JobClient,
    PrimaryImageJob,
)

log = structlog.get_logger(__name__)
# The producer library logs through stdlib logging (`image_worker.producer`) and shows nothing
# until the app says where: here, stderr beside uvicorn's lines.
logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")

COPY_TIMEOUT_SECONDS = 30.0
HEALTH_TIMEOUT_SECONDS = 3.0
DATABASE_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)

# The example's own table; in a real API your migrations own it.
CREATE_BOOKS = """
CREATE TABLE IF NOT EXISTS example_books (
    book_id     text PRIMARY KEY,
    title       text NOT NULL,
    photo_keys  text[] NOT NULL,
    imported_at timestamptz NOT NULL DEFAULT now()
)"""

UPSERT_BOOK = """
INSERT INTO example_books (book_id, title, photo_keys) VALUES ($1, $2, $3)
    ON CONFLICT (book_id) DO UPDATE
   SET title = EXCLUDED.title, photo_keys = EXCLUDED.photo_keys, imported_at = now()"""


class Photo(BaseModel):
    """A listing photo where the uploader left it (any bucket this API may read)."""

    bucket: str = Field(min_length=3, max_length=63)
    key: str = Field(min_length=1, max_length=1024)


class BookListing(BaseModel):
    book_id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    title: str = Field(min_length=1, max_length=500)
    photos: list[Photo] = Field(min_length=1, max_length=20)  # listing order: the first is primary


class State(TypedDict):
    jobs: JobClient


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[State]:
    """One JobClient for the whole process (its pool and AWS clients are shared by every
    request) and closed at shutdown."""
    settings = ClientSettings.from_env(required=("DATABASE_URL", "SQS_QUEUE_URL", "SOURCE_BUCKET"))
    async with JobClient.connect(settings) as jobs:
        await jobs.pool.execute(CREATE_BOOKS)
        yield {"jobs": jobs}


def job_client(request: Request) -> JobClient:
    jobs: JobClient = request.state.jobs
    return jobs


Jobs = Annotated[JobClient, Depends(job_client)]
app = FastAPI(title="book import (image-worker example)", lifespan=lifespan)


@app.post("/books/import")
async def import_book(
    listing: BookListing,
    jobs: Jobs,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    copies = await asyncio.gather(
        *(copy_photo(jobs, listing.book_id, i, photo) for i, photo in enumerate(listing.photos))
    )
    try:
        primary = await save_book(jobs, listing, copies, idempotency_key)
    except IdempotencyConflict as exc:
        raise HTTPException(409, str(exc)) from None
    except ClientConfigError as exc:  # e.g. an Idempotency-Key longer than 200 characters
        raise HTTPException(422, str(exc)) from None
    except DATABASE_ERRORS as exc:
        log.error("import failed: database", book_id=listing.book_id, exc_info=exc)
        raise HTTPException(503, f"database unavailable: {type(exc).__name__}") from None
    body: dict[str, Any] = {
        "copies": [
            {"source": f"s3://{photo.bucket}/{photo.key}", "key": copy.key, "error": copy.error}
            for photo, copy in zip(listing.photos, copies, strict=True)
        ],
        "primary": primary.to_dict(),
    }
    return JSONResponse(body, status_code=200 if primary.repeat else 201)


async def copy_photo(jobs: JobClient, book_id: str, index: int, photo: Photo) -> ImageCopy:
    """Copy one photo into the source bucket; a failure is recorded, never raised."""
    extension = posixpath.splitext(photo.key)[1].lower()[:10]
    key = f"books/{book_id}/{index}{extension}"
    bucket = jobs.settings.source_bucket
    try:
        async with asyncio.timeout(COPY_TIMEOUT_SECONDS):
            await jobs.require_s3().copy_object(
                Bucket=str(bucket), Key=key, CopySource={"Bucket": photo.bucket, "Key": photo.key}
            )
    except TimeoutError:
        return ImageCopy.failed(key, f"copy timed out after {COPY_TIMEOUT_SECONDS:g}s")
    except (ClientError, BotoCoreError, OSError) as exc:
        log.warning("photo copy failed", book_id=book_id, index=index, error=str(exc))
        return ImageCopy.failed(key, exc)
    return ImageCopy(key)


async def save_book(
    jobs: JobClient, listing: BookListing, copies: list[ImageCopy], idempotency_key: str | None
) -> PrimaryImageJob:
    """The book row and its primary-image job in one transaction; the message is sent after the
    commit (a failed send leaves the job `queue_failed`, never raises)."""
    async with jobs.transaction() as batch:
        await batch.connection.execute(
            UPSERT_BOOK, listing.book_id, listing.title, [copy.key for copy in copies if copy.ok]
        )
        primary = await batch.create_primary_image_job(
            listing.book_id, copies, idempotency_key=idempotency_key
        )
    if primary.job is None:
        return primary
    (sent,) = batch.jobs  # the job as it stands after the send (`pending` or `queue_failed`)
    return replace(primary, job=sent)


@app.get("/jobs/{job_id}")
async def get_job(job_id: uuid.UUID, jobs: Jobs) -> dict[str, Any]:
    job = await jobs.get_job(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id}")
    return job.to_dict()


@app.get("/admin/health")
async def health(jobs: Jobs) -> JSONResponse:
    """Put this behind your admin auth. Needs sqs:GetQueueUrl and sqs:GetQueueAttributes on the
    queue and its DLQ, and s3:ListBucket on the source bucket."""
    report = await jobs.check_health(timeout=HEALTH_TIMEOUT_SECONDS)
    body = report.to_dict() | {"failed": [check.name for check in report.checks if not check.ok]}
    return JSONResponse(body, status_code=200 if report.ok else 503)
