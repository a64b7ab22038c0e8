"""Creating jobs, once for both producers: a job's spec from the call's arguments (every bad
argument named), whether a repeat of an idempotency key is acceptable, which of a book's images
becomes its primary-image job, and the steps that write the rows (`BatchCore`)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

from api_client.errors import ClientConfigError
from api_client.settings import ClientSettings
from api_client.steps import Row, Steps, rows
from jobcore.job_create import (
    FIND_EXISTING,
    INSERT_JOBS,
    Created,
    IdempotencyConflict,
    JobSpec,
    differences,
    find_existing_args,
    insert_args,
    match_created,
)
from jobcore.jobs import Job
from jobcore.recipe import Recipe

log = logging.getLogger("image_worker.producer")


class PrimaryOptions(TypedDict, total=False):
    """Keyword arguments of `create_primary_image_job` (both clients and their batches)."""

    source_bucket: str | None
    idempotency_key: str | None
    job_id: uuid.UUID | None
    delay_seconds: int
    recipe: Recipe | Mapping[str, Any] | None


class JobOptions(PrimaryOptions, total=False):
    """Keyword arguments of `create_job` (both clients and their batches): `NewJob`'s fields."""

    book_id: str | int | None


@dataclass(frozen=True, slots=True)
class NewJob:
    """One job for `create_jobs`. `delay_seconds` (0-900) holds the message back from workers.
    `idempotency_key` (or a caller-chosen `job_id`) makes a repeat return the existing job."""

    source_key: str
    source_bucket: str | None = None
    book_id: str | int | None = None  # stored as text
    delay_seconds: int = 0
    idempotency_key: str | None = None
    job_id: uuid.UUID | None = None
    recipe: Recipe | Mapping[str, Any] | None = None  # None: the worker's DEFAULT_RECIPE


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
    if not isinstance(bucket, str):
        raise ClientConfigError(f"source_bucket must be a string, not {bucket!r}")
    return bucket


def job_id_of(value: object, name: str = "job_id") -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise ClientConfigError(f"{name} must be a job id (UUID), not {value!r}")


def book_text(book_id: object) -> str | None:
    """`book_id` as stored: an int or a non-empty string, as text."""
    if book_id is None:
        return None
    if isinstance(book_id, bool) or not isinstance(book_id, int | str) or book_id == "":
        raise ClientConfigError(f"book_id must be an int or a non-empty string, not {book_id!r}")
    return str(book_id)


def recipe_of(value: object) -> Recipe | None:
    """A Recipe, or a mapping of its fields (an API payload); a bad one raises RecipeError
    naming the field."""
    if value is None or isinstance(value, Recipe):
        return value
    if isinstance(value, Mapping):
        return Recipe.from_json(value)
    raise ClientConfigError(f"recipe must be a Recipe or a mapping, not {type(value).__name__}")


def spec_for(settings: ClientSettings, item: NewJob | str) -> JobSpec:
    new = NewJob(item) if isinstance(item, str) else item
    if not isinstance(new, NewJob):
        raise ClientConfigError(f"jobs: each item must be a NewJob or a key, not {new!r}")
    if not isinstance(new.source_key, str) or not new.source_key:
        raise ClientConfigError(f"source_key must be a non-empty string, not {new.source_key!r}")
    delay = new.delay_seconds
    # Over SQS's 900 s the send is refused per entry: the row stays queue_failed with the reason.
    if isinstance(delay, bool) or not isinstance(delay, int) or delay < 0:
        raise ClientConfigError(f"delay_seconds must be a whole number >= 0, not {delay!r}")
    if new.job_id is not None and not isinstance(new.job_id, uuid.UUID):
        raise ClientConfigError(f"job_id must be a uuid.UUID, not {new.job_id!r}")
    recipe = recipe_of(new.recipe)  # a RecipeError names the field
    try:
        return JobSpec(
            id=new.job_id or uuid.uuid4(),
            source_bucket=bucket_for(settings, new.source_bucket),
            source_key=new.source_key,
            book_id=book_text(new.book_id),
            idempotency_key=new.idempotency_key,
            delay_seconds=delay,
            recipe=recipe,
        )
    except ValueError as exc:
        if isinstance(exc, ClientConfigError):
            raise
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
            "repeat returns the existing job %s (idempotency key %r, %s)",
            item.job.id,
            item.spec.idempotency_key,
            item.job.status.value,
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
    book_id: str | int,
    images: Sequence[ImageCopy | str],
    options: PrimaryOptions,
) -> PrimaryPlan:
    book = book_text(book_id)
    if book is None:
        raise ClientConfigError("book_id is required for a primary-image job")
    if isinstance(images, str | bytes) or not isinstance(images, Sequence):
        raise ClientConfigError(f"images must be a list of ImageCopy or keys, not {images!r}")
    copies = [ImageCopy(image) if isinstance(image, str) else image for image in images]
    for image in copies:
        if not isinstance(image, ImageCopy):
            raise ClientConfigError(f"images: each must be an ImageCopy or a key, not {image!r}")
    source_bucket = options.get("source_bucket")
    sources = tuple(
        (bucket_for(settings, image.bucket or source_bucket), image.key) for image in copies
    )
    skipped: dict[int, str] = {}
    for index, image in enumerate(copies):
        if image.ok:
            bucket = image.bucket or source_bucket
            new = NewJob(
                image.key,
                bucket,
                book,
                options.get("delay_seconds", 0),
                options.get("idempotency_key"),
                options.get("job_id"),
                options.get("recipe"),
            )
            return PrimaryPlan(book, sources, spec_for(settings, new), skipped)
        skipped[index] = image.error or "not copied"
    log.warning("no image of book %s was copied; no job (%s)", book, skipped)
    return PrimaryPlan(book, sources, None, skipped)


class BatchCore:
    """The jobs of one transaction: the steps that write them, and their state. The jobs the
    steps return are as written (`queue_failed`, not sent yet); `sent_state` is filled after
    the commit by the send (api_client.sending)."""

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self.created: list[Created] = []
        self.sent_state: dict[uuid.UUID, Job] = {}

    @property
    def jobs(self) -> list[Job]:
        """Every job of the batch in creation order; after the send, as it stands then."""
        return [self.sent_state.get(item.job.id, item.job) for item in self.created]

    def settle(self, state: Mapping[uuid.UUID, Job]) -> None:
        """After the send: record each job's state, and bring the Job objects already returned
        to the caller up to it (in place: a caller that kept the job from `create_job` inside a
        transaction or session reads the state after the send once it has committed)."""
        self.sent_state = dict(state)
        for item in self.created:
            after = state.get(item.job.id)
            if after is not None and after is not item.job:
                for name in Job.__slots__:
                    object.__setattr__(item.job, name, getattr(after, name))

    def create_jobs(self, jobs: Iterable[NewJob | str]) -> Steps[list[Job]]:
        if isinstance(jobs, str | bytes):
            raise ClientConfigError("jobs must be a list of NewJob or keys, not one string")
        specs = [spec_for(self.settings, item) for item in jobs]
        return [item.job for item in (yield from self.write(specs))]

    def create_job(self, source_key: str, options: JobOptions) -> Steps[Job]:
        (job,) = yield from self.create_jobs([NewJob(source_key, **options)])
        return job

    def create_primary_image_job(
        self, book_id: str | int, images: Sequence[ImageCopy | str], options: PrimaryOptions
    ) -> Steps[PrimaryImageJob]:
        plan = plan_primary(self.settings, book_id, images, options)
        if plan.spec is None:
            return plan.result(None)
        (created,) = yield from self.write([plan.spec], tolerated=plan.tolerated)
        return plan.result(created.job, repeat=created.repeat)

    def write(
        self, specs: Sequence[JobSpec], *, tolerated: Tolerated | None = None
    ) -> Steps[list[Created]]:
        if not specs:
            return []
        inserted = yield from rows(INSERT_JOBS, *insert_args(specs))
        existing: list[Row] = []
        if len(inserted) < len(specs):
            args = find_existing_args(specs, (record["id"] for record in inserted))
            existing = yield from rows(FIND_EXISTING, *args)
        created = match_created(specs, inserted, existing)
        check_repeats(created, tolerated)
        self.created.extend(created)
        return created
