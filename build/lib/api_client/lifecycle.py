"""Cancel, purge and result URLs, once for both producers.

- `cancel_job(id, reason)`: a job not yet claimed becomes `cancelled` at once; a `processing`
  one is asked to stop (`cancel_requested_at`) and its worker ends it as `cancelled` without
  leaving an object; a finished one is left as it is (jobcore.cancel_queries).
- `delete_jobs(book_id=... | ids=...)`: cancels the open jobs first, then removes every finished
  or cancelled row with its result objects (each key in `outputs`, and `result_key`). The objects
  go first and a row is deleted only once all of its objects are gone, so a failed S3 delete
  keeps the row (reported in `failed`) and a repeat finishes the purge. A `processing` job is
  not deleted under its worker: it is asked to cancel and reported in `cancel_requested`; it
  finishes as `cancelled` (no object) and a later `delete_jobs` (or `wait=` seconds on the
  client's call) removes it.
- `result_url(job, output="image", expires_in=3600)`: a presigned GET of one output by name
  (`image` is the main result, `thumb-300` a thumbnail; names from `job.outputs`), falling back
  to `result_bucket`/`result_key` for a row written before outputs were recorded."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from api_client.creation import job_id_of
from api_client.errors import ClientConfigError, JobNotFound, JobWaitTimeout
from api_client.listening import wait_for_job
from api_client.settings import ClientSettings
from api_client.steps import Steps, atomic, call, rows
from jobcore.cancel_queries import CANCEL_JOB, CancelResult, cancel_args, cancel_result
from jobcore.job_queries import FETCH_JOB
from jobcore.jobs import JOB_COLUMNS, Job, JobStatus

log = logging.getLogger("image_worker.producer")

MAX_EXPIRES_IN = 7 * 24 * 3600  # SigV4's limit
S3_DELETE_BATCH = 1000  # keys per DeleteObjects call
FINISHED = [status.value for status in JobStatus if status.finished]

SELECT_FOR_DELETE = f"""
SELECT {JOB_COLUMNS} FROM image_processing_jobs
 WHERE ($1::text IS NULL OR book_id = $1) AND ($2::uuid[] IS NULL OR id = ANY($2::uuid[]))
 ORDER BY id"""

DELETE_FINISHED = """
DELETE FROM image_processing_jobs
 WHERE id = ANY($1::uuid[]) AND status = ANY($2::text[])
RETURNING id"""


def cancel_job(job_id: uuid.UUID | str, reason: str | None = None) -> Steps[CancelResult]:
    """Cancel one job; the outcome (CANCELLED, REQUESTED, ALREADY_FINISHED, NOT_FOUND) and the
    row after the request."""
    if reason is not None and not isinstance(reason, str):
        raise ClientConfigError(f"reason must be a string, not {reason!r}")
    wanted = job_id_of(job_id)
    updated = yield from rows(CANCEL_JOB, *cancel_args(wanted, reason))
    if updated:
        result = cancel_result(Job.from_record(updated[0]), None)
    else:
        current = yield from rows(FETCH_JOB, wanted)
        result = cancel_result(None, Job.from_record(current[0]) if current else None)
    log.info("cancel %s: %s", wanted, result.outcome.value)
    return result


@dataclass
class DeleteResult:
    """What `delete_jobs` did: rows deleted, objects deleted, running jobs asked to cancel (left
    until they finish), and rows kept because an object could not be deleted (with why)."""

    deleted: list[uuid.UUID] = field(default_factory=list)
    objects_deleted: list[str] = field(default_factory=list)  # s3://bucket/key
    cancel_requested: list[uuid.UUID] = field(default_factory=list)
    failed: dict[uuid.UUID, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "deleted": [str(i) for i in self.deleted],
            "objects_deleted": self.objects_deleted,
            "cancel_requested": [str(i) for i in self.cancel_requested],
            "failed": {str(k): v for k, v in self.failed.items()},
        }


def delete_target(
    book_id: str | int | None, ids: Iterable[uuid.UUID | str] | None
) -> tuple[str | None, list[uuid.UUID] | None]:
    """Exactly one of `book_id` and `ids`, checked and normalised."""
    if (book_id is None) == (ids is None):
        raise ClientConfigError("delete_jobs: pass book_id or ids (one of them)")
    if ids is not None:
        if isinstance(ids, str | bytes):
            raise ClientConfigError("ids must be a list of job ids, not one string")
        return None, [job_id_of(value, "ids") for value in ids]
    if isinstance(book_id, bool) or not isinstance(book_id, int | str) or book_id == "":
        raise ClientConfigError(f"book_id must be an int or a non-empty string, not {book_id!r}")
    return str(book_id), None


def delete_jobs(
    book_id: str | int | None = None,
    ids: Iterable[uuid.UUID | str] | None = None,
    *,
    wait: float = 0.0,
    connect_timeout: float = 10.0,
) -> Steps[DeleteResult]:
    """See the module's docstring; `wait` > 0: wait (LISTEN) up to that many seconds for the
    running jobs asked to cancel, and remove those that finished too."""
    if isinstance(wait, bool) or not isinstance(wait, int | float) or wait < 0:
        raise ClientConfigError(f"wait must be a number of seconds >= 0, not {wait!r}")
    result = yield from purge(*delete_target(book_id, ids))
    if wait > 0 and result.cancel_requested:
        deadline = time.monotonic() + wait
        for job_id in result.cancel_requested:
            left = max(0.001, deadline - time.monotonic())
            try:
                yield from wait_for_job(job_id, left, 0.5, connect_timeout)
            except (JobWaitTimeout, JobNotFound):
                continue
        merge(result, (yield from purge(None, result.cancel_requested)))
    return result


def purge(book: str | None, wanted: list[uuid.UUID] | None) -> Steps[DeleteResult]:
    result = DeleteResult()
    jobs = [Job.from_record(r) for r in (yield from rows(SELECT_FOR_DELETE, book, wanted))]
    for job in jobs:
        if not job.status.finished:
            cancelled = yield from cancel_job(job.id, "deleted")
            if cancelled.job is not None and cancelled.job.status is JobStatus.PROCESSING:
                result.cancel_requested.append(job.id)
    done = [job for job in jobs if job.id not in set(result.cancel_requested)]
    if not done:
        return result
    gone = yield from delete_objects(done, result)
    kept = [job.id for job in done if job.id not in gone]
    found = yield from atomic(rows(DELETE_FINISHED, [job.id for job in done if job.id in gone],
                                   [*FINISHED]))  # fmt: skip
    result.deleted = [record["id"] for record in found]
    for job_id in kept:
        log.warning("job %s kept: %s", job_id, result.failed.get(job_id, "objects left"))
    log.info("deleted %d job(s), %d object(s); %d asked to cancel", len(result.deleted),
             len(result.objects_deleted), len(result.cancel_requested))  # fmt: skip
    return result


def objects_of(job: Job) -> list[tuple[str, str]]:
    """(bucket, key) of every object the job wrote: its outputs and its result."""
    found: dict[tuple[str, str], None] = {}
    for output in job.outputs or ():
        key = output.get("key")
        bucket = output.get("bucket") or job.result_bucket
        if key and bucket:
            found[(bucket, key)] = None
    if job.result_bucket and job.result_key:
        found[(job.result_bucket, job.result_key)] = None
    return list(found)


def delete_objects(jobs: Sequence[Job], result: DeleteResult) -> Steps[set[uuid.UUID]]:
    """Delete the jobs' objects (DeleteObjects, 1000 keys a call); the ids of the jobs whose
    objects are all gone. Failures go to `result.failed`."""
    owner: dict[tuple[str, str], uuid.UUID] = {}
    for job in jobs:
        owner.update(dict.fromkeys(objects_of(job), job.id))
    by_bucket: dict[str, list[str]] = {}
    for bucket, key in owner:
        by_bucket.setdefault(bucket, []).append(key)
    for bucket, keys in by_bucket.items():
        for start in range(0, len(keys), S3_DELETE_BATCH):
            chunk = keys[start : start + S3_DELETE_BATCH]
            try:
                response = yield from call(
                    "s3", "delete_objects", Bucket=bucket,
                    Delete={"Objects": [{"Key": key} for key in chunk], "Quiet": True},
                )  # fmt: skip
            except Exception as exc:
                for key in chunk:
                    result.failed[owner[(bucket, key)]] = f"s3://{bucket}/{key}: {exc}"
                continue
            errors = {e["Key"]: e.get("Code", "error") for e in response.get("Errors", [])}
            for key in chunk:
                if key in errors:
                    result.failed[owner[(bucket, key)]] = f"s3://{bucket}/{key}: {errors[key]}"
                else:
                    result.objects_deleted.append(f"s3://{bucket}/{key}")
    return {job.id for job in jobs if job.id not in result.failed}


def output_location(job: Job, output: str) -> tuple[str, str]:
    """(bucket, key) of the job's output named `output`."""
    for item in job.outputs or ():
        if item.get("name") == output:
            bucket = item.get("bucket") or job.result_bucket
            if bucket and item.get("key"):
                return bucket, item["key"]
    if output == "image" and not job.outputs and job.result_bucket and job.result_key:
        return job.result_bucket, job.result_key
    names = [str(item.get("name")) for item in job.outputs or ()]
    if not names and job.result_key:
        names = ["image"]
    raise ClientConfigError(
        f"output: job {job.id} has no output {output!r}"
        f" ({'outputs: ' + ', '.join(names) if names else 'status ' + job.status.value})"
    )


def result_url(
    job: Job | uuid.UUID | str, output: str = "image", expires_in: int = 3600
) -> Steps[str]:
    """A presigned GET of one of the job's outputs (see the module's docstring)."""
    if (
        isinstance(expires_in, bool)
        or not isinstance(expires_in, int)
        or not (1 <= expires_in <= MAX_EXPIRES_IN)
    ):
        raise ClientConfigError(
            f"expires_in must be 1-{MAX_EXPIRES_IN} seconds, not {expires_in!r}"
        )
    if not isinstance(output, str) or not output:
        raise ClientConfigError(f"output must be an output name, not {output!r}")
    if not isinstance(job, Job):
        wanted = job_id_of(job, "job")
        found = yield from rows(FETCH_JOB, wanted)
        if not found:
            raise JobNotFound(wanted)
        job = Job.from_record(found[0])
    bucket, key = output_location(job, output)
    url: str = yield from call(
        "s3", "generate_presigned_url", ClientMethod="get_object",
        Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_in,
    )  # fmt: skip
    return url


def merge(result: DeleteResult, again: DeleteResult) -> None:
    """A second pass over the jobs that were running: what it removed counts as removed."""
    result.deleted.extend(again.deleted)
    result.objects_deleted.extend(again.objects_deleted)
    result.failed.update(again.failed)
    result.cancel_requested = again.cancel_requested


def upload_source(
    settings: ClientSettings, key: str, data: bytes, bucket: str | None
) -> Steps[str]:
    """Put an image into the source bucket; the bucket used."""
    target = bucket or settings.source_bucket
    if not target:
        raise ClientConfigError("bucket: none given and SOURCE_BUCKET is not set")
    if not isinstance(key, str) or not key:
        raise ClientConfigError(f"key must be a non-empty string, not {key!r}")
    if not isinstance(data, bytes | bytearray):
        raise ClientConfigError(f"data must be bytes, not {type(data).__name__}")
    yield from call("s3", "put_object", Bucket=target, Key=key, Body=bytes(data))
    return target
