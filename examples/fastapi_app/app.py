"""A book-listing import API on image-worker's async producer (FastAPI), end to end: the import
queues the primary photo, the finished cut-out comes back as the book's new first, primary image.

POST /books/import                 copy the listing's photos (from allowed buckets only) into
                                   SOURCE_BUCKET, save the book and its images and queue the first
                                   photo copied, in one transaction; the message goes out after the
                                   commit. `Idempotency-Key` makes a retried request return the
                                   same job.
GET  /books/{id}                   the book's images in order (primary first once processed).
GET  /jobs/{id}                    the job as it stands.
POST /jobs/{id}/retry              queue a failed job again.
POST /jobs/{id}/cancel             cancel an open job.
POST /jobs/{id}/remove-background  remove the background again (a new job, same photo).
POST /admin/retry-failed           queue every failed job again.
POST /admin/sweep                  one recovery pass (unsent jobs, lost messages).
GET  /admin/health                 database, queue, DLQ, bucket (and workers): 200 or 503.
GET  /admin                        the admin page (examples/fastapi_app/admin.py).

The cut-out is attached by app.attach_processed_image (schema.sql), called either by this app's
listener (ATTACH_PROCESSED_IMAGES=listener, the default) or by the worker itself in the completing
transaction (ATTACH_PROCESSED_IMAGES=hook, with the worker's COMPLETION_HOOK set to it).

Run from the checkout (after `make install`):
    DATABASE_URL=... SQS_QUEUE_URL=... SOURCE_BUCKET=... \
        .venv/bin/uvicorn examples.fastapi_app.app:app
"""

from __future__ import annotations

import asyncio
import logging
import os
import posixpath
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Annotated, Any, TypedDict

import structlog
from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
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
from examples.fastapi_app import admin, operations
from examples.fastapi_app.admin import Jobs
from examples.fastapi_app.books import book_images, migrate, record_job, save_book
from examples.fastapi_app.errors import DATABASE_ERRORS, SERVICE_ERRORS, STORAGE_ERRORS, copy_error
from examples.fastapi_app.listener import attach_finished_jobs
from examples.fastapi_app.operations import Outcome
from examples.fastapi_app.settings import ExampleSettings

log = structlog.get_logger(__name__)
# The producer library logs through stdlib logging (`image_worker.producer`) and shows nothing
# until the app says where: here, stderr beside uvicorn's lines.
logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")

COPY_TIMEOUT_SECONDS = 30.0
HEALTH_TIMEOUT_SECONDS = 3.0


class Photo(BaseModel):
    """A listing photo where the uploader left it (a bucket in ALLOWED_SOURCE_BUCKETS)."""

    bucket: str = Field(min_length=3, max_length=63)
    key: str = Field(min_length=1, max_length=1024)


class BookListing(BaseModel):
    book_id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    title: str = Field(min_length=1, max_length=500)
    photos: list[Photo] = Field(min_length=1, max_length=20)  # listing order: the first is primary


class State(TypedDict):
    jobs: JobClient
    example: ExampleSettings


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[State]:
    """One JobClient for the whole process (its pool and AWS clients are shared by every
    request), the example's tables, and (in listener mode) the task that attaches cut-outs; all
    closed at shutdown."""
    settings = ClientSettings.from_env(required=("DATABASE_URL", "SQS_QUEUE_URL", "SOURCE_BUCKET"))
    example = ExampleSettings.from_env(os.environ, str(settings.source_bucket))
    async with JobClient.connect(settings) as jobs:
        await migrate(jobs.pool)
        listener = None
        if example.attach == "listener":
            listener = asyncio.create_task(attach_finished_jobs(jobs), name="attach-cut-outs")
            listener.add_done_callback(_listener_ended)
        try:
            yield {"jobs": jobs, "example": example}
        finally:
            if listener is not None:
                listener.cancel()
                await asyncio.wait({listener})


def _listener_ended(task: asyncio.Task[None]) -> None:
    """The listener only ends at shutdown; anything else is logged loudly (the catch-up at the
    next start attaches what it missed)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("the cut-out listener stopped", exc_info=task.exception())


app = FastAPI(title="book import (image-worker example)", lifespan=lifespan)
app.include_router(admin.router)


@app.exception_handler(RequestValidationError)
async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each bad field, without echoing the input back."""
    problems = [
        {"field": ".".join(str(part) for part in error["loc"][1:]), "problem": error["msg"]}
        for error in exc.errors()
    ]
    return JSONResponse({"detail": problems}, status_code=422)


def outcome_response(outcome: Outcome) -> JSONResponse:
    body: dict[str, Any] = {"detail": outcome.message}
    if outcome.job is not None:
        body["job"] = outcome.job.to_dict()
    return JSONResponse(body, status_code=outcome.status_code)


@app.post("/books/import")
async def import_book(
    listing: BookListing,
    jobs: Jobs,
    request: Request,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    example: ExampleSettings = request.state.example
    for index, photo in enumerate(listing.photos):
        if photo.bucket not in example.allowed_source_buckets:
            raise HTTPException(422, f"photos[{index}].bucket is not a bucket this API reads from")
    copies = await asyncio.gather(
        *(copy_photo(jobs, listing.book_id, i, photo) for i, photo in enumerate(listing.photos))
    )
    try:
        primary = await import_in_one_transaction(jobs, listing, copies, idempotency_key)
    except IdempotencyConflict as exc:
        raise HTTPException(409, str(exc)) from None
    except ClientConfigError as exc:  # e.g. an Idempotency-Key longer than 200 characters
        raise HTTPException(422, str(exc)) from None
    except DATABASE_ERRORS as exc:
        log.error("import failed: database", book_id=listing.book_id, exc_info=exc)
        raise HTTPException(503, "database unavailable; try again shortly") from None
    body: dict[str, Any] = {
        "copies": [
            {"source": f"s3://{photo.bucket}/{photo.key}", "key": copy.key, "error": copy.error}
            for photo, copy in zip(listing.photos, copies, strict=True)
        ],
        "primary": primary.to_dict(),
    }
    return JSONResponse(body, status_code=200 if primary.repeat else 201)


async def copy_photo(jobs: JobClient, book_id: str, index: int, photo: Photo) -> ImageCopy:
    """Copy one photo into the source bucket; a failure is recorded with a generic reason (the
    details are logged), never raised."""
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
    except (*STORAGE_ERRORS, OSError) as exc:
        log.warning("photo copy failed", book_id=book_id, index=index, error=str(exc))
        return ImageCopy.failed(key, copy_error(exc))
    return ImageCopy(key)


async def import_in_one_transaction(
    jobs: JobClient, listing: BookListing, copies: list[ImageCopy], idempotency_key: str | None
) -> PrimaryImageJob:
    """The book, its images, its primary-image job and the app's record of that job in one
    transaction; the message is sent after the commit (a failed send leaves the job
    `queue_failed`, never raises)."""
    async with jobs.transaction() as batch:
        copied = [copy.key for copy in copies if copy.ok]
        image_ids = await save_book(
            batch.connection,
            listing.book_id,
            listing.title,
            str(jobs.settings.source_bucket),
            copied,
        )
        primary = await batch.create_primary_image_job(
            listing.book_id, copies, idempotency_key=idempotency_key
        )
        if primary.job is not None and primary.key is not None:
            await record_job(batch.connection, primary.job, image_ids.get(primary.key))
    if primary.job is None:
        return primary
    (sent,) = batch.jobs  # the job as it stands after the send (`pending` or `queue_failed`)
    return replace(primary, job=sent)


@app.get("/books/{book_id}")
async def get_book(book_id: str, jobs: Jobs) -> dict[str, Any]:
    images = await book_images(jobs.pool, book_id)
    if images is None:
        raise HTTPException(404, "no such book")
    return {"book_id": book_id, "images": images}


@app.get("/jobs/{job_id}")
async def get_job(job_id: str, jobs: Jobs) -> dict[str, Any]:
    wanted = operations.parse_job_id(job_id)
    job = await jobs.get_job(wanted) if wanted is not None else None
    if job is None:
        raise HTTPException(404, "no such job")
    return job.to_dict()


async def _job_endpoint(jobs: JobClient, job_id: str, action: operations.Action) -> JSONResponse:
    wanted = operations.parse_job_id(job_id)
    if wanted is None:
        return outcome_response(operations.not_a_job_id(job_id))
    try:
        return outcome_response(await action(jobs, wanted))
    except SERVICE_ERRORS as exc:
        log.error("job action failed", job_id=job_id, exc_info=exc)
        raise HTTPException(503, "a service is unavailable; try again shortly") from None


@app.post("/jobs/{job_id}/retry")
async def retry_job(job_id: str, jobs: Jobs) -> JSONResponse:
    return await _job_endpoint(jobs, job_id, operations.retry)


@app.post("/jobs/{job_id}/cancel")
async def cancel_job(job_id: str, jobs: Jobs) -> JSONResponse:
    return await _job_endpoint(jobs, job_id, operations.cancel)


@app.post("/jobs/{job_id}/remove-background")
async def remove_background_again(job_id: str, jobs: Jobs) -> JSONResponse:
    return await _job_endpoint(jobs, job_id, operations.remove_background_again)


@app.post("/admin/retry-failed")
async def retry_failed(jobs: Jobs) -> JSONResponse:
    return outcome_response(await operations.retry_all_failed(jobs))


@app.post("/admin/sweep")
async def sweep(jobs: Jobs) -> JSONResponse:
    return outcome_response(await operations.sweep(jobs))


@app.get("/admin/health")
async def health(jobs: Jobs) -> JSONResponse:
    """Needs sqs:GetQueueUrl and sqs:GetQueueAttributes on the queue and its DLQ, and
    s3:ListBucket on the source bucket."""
    report = await jobs.check_health(timeout=HEALTH_TIMEOUT_SECONDS)
    body = report.to_dict() | {"failed": [check.name for check in report.checks if not check.ok]}
    return JSONResponse(body, status_code=200 if report.ok else 503)
