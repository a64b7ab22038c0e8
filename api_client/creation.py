"""What the async (`JobClient`) and sync (`SyncJobClient`) producers decide the same way, without
I/O: a job's spec from the call's arguments, whether a repeat of an idempotency key is
acceptable, and which of a book's images becomes its primary-image job."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from api_client.errors import ClientConfigError
from api_client.settings import ClientSettings
from jobcore.job_create import Created, IdempotencyConflict, JobSpec, differences
from jobcore.jobs import Job
from jobcore.recipe import Recipe

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class NewJob:
    """One job for `create_jobs`. `delay_seconds` (0-900) holds the message back from workers.
    `idempotency_key` (or a caller-chosen `job_id`) makes a repeat return the existing job."""

    source_key: str
    source_bucket: str | None = None
    book_id: str | None = None
    delay_seconds: int = 0
    idempotency_key: str | None = None
    job_id: uuid.UUID | None = None
    recipe: Recipe | None = None  # None: the worker's DEFAULT_RECIPE


@dataclass(frozen=True, slots=True)
class ImageCopy:
    """One of a book's images, in listing order, and how copying it to the source bucket went:
    `ImageCopy(key)` was copied, `ImageCopy(key, error="timeout")` was not."""

    key: str
    error: str | None = None
    copied: bool | None = None  # default: copied unless there is an error
    bucket: str | None = None  # default: the client's source bucket

    @property
    def ok(self) -> bool:
        return self.error is None if self.copied is None else self.copied

    @classmethod
    def failed(cls, key: str, error: BaseException | str) -> ImageCopy:
        reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        return cls(key, error=reason or "copy failed", copied=False)


@dataclass(frozen=True, slots=True)
class PrimaryImageJob:
    """The outcome of `create_primary_image_job`. `job` is None when no image was copied; then
    `skipped` says why for each. `index`/`key` name the image the job is for. `repeat`: the
    idempotency key named an existing job, which is returned (and sent only if it was
    `queue_failed`)."""

    book_id: str
    job: Job | None
    index: int | None
    key: str | None
    skipped: dict[int, str] = field(default_factory=dict)  # image index -> why it was passed over
    repeat: bool = False

    @property
    def queued(self) -> bool:
        return self.job is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "book_id": self.book_id,
            "job": self.job.to_dict() if self.job else None,
            "index": self.index,
            "key": self.key,
            "skipped": {str(i): why for i, why in self.skipped.items()},
            "repeat": self.repeat,
        }


def bucket_for(settings: ClientSettings, source_bucket: str | None) -> str:
    bucket = source_bucket or settings.source_bucket
    if not bucket:
        raise ClientConfigError("no source bucket: pass source_bucket or set SOURCE_BUCKET")
    return bucket


def spec_for(settings: ClientSettings, item: NewJob | str) -> JobSpec:
    new = NewJob(item) if isinstance(item, str) else item
    try:
        return JobSpec(
            id=new.job_id or uuid.uuid4(),
            source_bucket=bucket_for(settings, new.source_bucket),
            source_key=new.source_key,
            book_id=new.book_id,
            idempotency_key=new.idempotency_key,
            delay_seconds=new.delay_seconds,
            recipe=new.recipe,
        )
    except ValueError as exc:
        raise ClientConfigError(str(exc)) from None


# Whether a repeat may return this existing job although it differs from the spec.
Tolerated = Callable[[JobSpec, Job], bool]


def check_repeats(created: Sequence[Created], tolerated: Tolerated | None = None) -> None:
    """A repeat that asks for the same job returns it; one that names another image raises
    IdempotencyConflict (the caller's transaction then rolls back: nothing is written)."""
    for item in created:
        if not item.repeat:
            continue
        diff = differences(item.spec, item.job)
        if diff and not (tolerated and tolerated(item.spec, item.job)):
            raise IdempotencyConflict(item.spec, item.job, diff)
        log.info(
            "repeat returns the existing job",
            job_id=str(item.job.id),
            idempotency_key=item.spec.idempotency_key,
            status=item.job.status.value,
        )


@dataclass(frozen=True, slots=True)
class PrimaryPlan:
    """Which image to queue: `spec` is None when none was copied."""

    book_id: str
    sources: tuple[tuple[str, str], ...]  # (bucket, key) of each image, in listing order
    spec: JobSpec | None
    skipped: dict[int, str]

    def tolerated(self, spec: JobSpec, job: Job) -> bool:
        """A repeat for this book may find the job of another of its images (the first copy
        failed last time and worked now): the book has its primary-image job either way."""
        return job.book_id == spec.book_id and self.index_of(job) is not None

    def index_of(self, job: Job) -> int | None:
        source = (job.source_bucket, job.source_key)
        return self.sources.index(source) if source in self.sources else None

    def result(self, job: Job | None, *, repeat: bool = False) -> PrimaryImageJob:
        index = None if job is None else self.index_of(job)
        key = None if job is None else job.source_key
        return PrimaryImageJob(self.book_id, job, index, key, dict(self.skipped), repeat)


def plan_primary(
    settings: ClientSettings,
    book_id: str,
    images: Sequence[ImageCopy | str],
    *,
    source_bucket: str | None,
    idempotency_key: str | None,
    job_id: uuid.UUID | None,
    delay_seconds: int,
) -> PrimaryPlan:
    copies = [ImageCopy(image) if isinstance(image, str) else image for image in images]
    sources = tuple(
        (bucket_for(settings, image.bucket or source_bucket), image.key) for image in copies
    )
    skipped: dict[int, str] = {}
    for index, image in enumerate(copies):
        if image.ok:
            spec = spec_for(
                settings,
                NewJob(
                    image.key,
                    image.bucket or source_bucket,
                    book_id,
                    delay_seconds,
                    idempotency_key,
                    job_id,
                ),
            )
            return PrimaryPlan(book_id, sources, spec, skipped)
        skipped[index] = image.error or "not copied"
    log.warning("no image of the book was copied; no job", book_id=book_id, skipped=skipped)
    return PrimaryPlan(book_id, sources, None, skipped)
