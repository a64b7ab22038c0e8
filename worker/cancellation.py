"""Cancel on the worker's side. The app asks a running job to stop (`cancel_job`: the row gets
`cancel_requested_at`); the pipeline looks before it uploads (`check`) and the completing UPDATE
refuses such a row. Either way the job ends through `finish`: every object it uploaded is
deleted, then the row becomes `cancelled` (a cancel is not a failure: counted as
`image_worker_jobs_total{outcome="cancelled"}`)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

import asyncpg
import structlog
from botocore.exceptions import BotoCoreError, ClientError

from jobcore.jobs import Job
from worker.errors import transient
from worker.metrics import WorkerMetrics
from worker.ports import JobStorePort

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

log = structlog.get_logger(__name__)


class JobCancelled(Exception):
    """The app asked this job to stop: raised by `check`, ended by `finish`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Cancellation:
    def __init__(self, store: JobStorePort, s3: S3Client, metrics: WorkerMetrics) -> None:
        self.store = store
        self.s3 = s3
        self.metrics = metrics

    async def check(self, job_id: uuid.UUID) -> None:
        """Raise JobCancelled when a cancel was asked of this job (JobFailed, transient, when the
        database cannot say)."""
        try:
            reason = await self.store.cancel_requested(job_id)
        except (asyncpg.PostgresError, OSError) as exc:
            raise transient("database_error", f"cancel check: {type(exc).__name__}: {exc}") from exc
        if reason is not None:
            raise JobCancelled(reason)

    async def finish(self, job: Job, uploaded: Sequence[tuple[str, str]]) -> bool:
        """Delete `uploaded` (bucket, key) objects, then end the row as `cancelled` (when it still
        exists: a row deleted by the app while its job ran leaves nothing either). False when
        the row could not be written (the message must come back: the next claim of a row whose
        cancel was asked ends it)."""
        await self._delete(uploaded)
        try:
            ended = await self.store.cancel(job.id)
        except (asyncpg.PostgresError, OSError, TimeoutError) as exc:
            log.warning("could not record the cancel; the message will return", error=str(exc))
            return False
        if ended:
            self.metrics.jobs.labels("cancelled").inc()
            log.info("job cancelled", deleted=len(uploaded))
        else:
            log.warning("job row deleted or taken by another worker; its uploads deleted")
        return True

    async def remove(self, job: Job, objects: Sequence[tuple[str, str]]) -> None:
        """A job the claim just ended as cancelled (its worker died): delete the objects that
        worker may have uploaded (a missing key is no error)."""
        await self._delete(objects)
        self.metrics.jobs.labels("cancelled").inc()
        log.info("job cancelled after its worker died", reason=job.cancel_reason)

    async def _delete(self, objects: Sequence[tuple[str, str]]) -> None:
        for bucket, key in objects:
            try:
                await self.s3.delete_object(Bucket=bucket, Key=key)
            except (ClientError, BotoCoreError, OSError) as exc:
                self.metrics.cancel_cleanup_failures.inc()
                log.error(
                    "cancelled job's object not deleted", object=f"s3://{bucket}/{key}",
                    error=str(exc),
                )  # fmt: skip
