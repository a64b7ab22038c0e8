"""One job, start to end: claim -> download -> decode -> inference -> encode -> upload -> complete.

`process` never raises for a job's own failure: it records the outcome on the row and returns what
the consumer must do with the message (delete it, or return it after a delay)."""

from __future__ import annotations

import asyncio
import enum
import random
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg
import structlog

from jobcore.jobs import Job
from worker import admission, imaging, s3_objects
from worker.admission import MemoryAdmission
from worker.errors import Failure, FailureKind, JobFailed, classify
from worker.inference import ModelRunner
from worker.job_table import ClaimOutcome, JobStore
from worker.metrics import WorkerMetrics
from worker.settings import Settings

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

log = structlog.get_logger(__name__)

# A message can arrive before the producer's transaction commits its row: look again once.
UNKNOWN_JOB_RECHECK_SECONDS = 5


class Action(enum.Enum):
    DELETE = "delete"  # the job reached an end (or never existed): drop the message
    RETRY = "retry"  # return the message to the queue after `delay` seconds
    LEAVE = "leave"  # let SQS decide: exhausted jobs go to the DLQ by redrive policy


@dataclass(frozen=True, slots=True)
class Outcome:
    action: Action
    delay: int = 0


@dataclass(slots=True)
class _Progress:
    stage: str = "claim"


class JobProcessor:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        s3: S3Client,
        model: ModelRunner,
        cpu_pool: Executor,
        metrics: WorkerMetrics,
        memory: MemoryAdmission | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.s3 = s3
        self.model = model
        self.cpu_pool = cpu_pool
        self.metrics = metrics
        self.admission = memory or MemoryAdmission(None)

    async def process(
        self, job_id: uuid.UUID, receive_count: int, sent_at: float | None, deadline: float
    ) -> Outcome:
        """`deadline` (time.monotonic()) is when JOB_TIMEOUT_SECONDS runs out for this attempt."""
        if receive_count > self.settings.max_attempts:
            # Delivered again after its last allowed attempt: that attempt never reported back
            # (the worker died, e.g. out of memory). Fail the row instead of trying once more.
            reason = (
                f"gave up after {receive_count - 1} attempts: no attempt finished"
                " (worker crashed or was killed while processing it)"
            )
            try:
                if await self.store.fail_unclaimed(job_id, reason):
                    log.warning("job failed: attempts exhausted", reason=reason)
                    self.metrics.jobs.labels("failed").inc()
                    return Outcome(Action.LEAVE)
            except (asyncpg.PostgresError, OSError, TimeoutError) as exc:
                return self._retry_unclaimed(classify(exc, stage="claim"), receive_count)
        try:
            with self.metrics.time_stage("claim"):
                claim = await self.store.claim(
                    job_id,
                    model=self.model.model_name,
                    lease_seconds=self.settings.visibility_timeout_seconds,
                )
        except (asyncpg.PostgresError, OSError, TimeoutError) as exc:
            self.metrics.dependency_up.labels("database").set(0)
            return self._retry_unclaimed(classify(exc, stage="claim"), receive_count)
        self.metrics.dependency_up.labels("database").set(1)

        if claim.outcome is ClaimOutcome.NOT_FOUND:
            if receive_count < 2:
                return Outcome(Action.RETRY, UNKNOWN_JOB_RECHECK_SECONDS)
            log.warning("unknown job: message dropped", receive_count=receive_count)
            self.metrics.failures.labels("permanent", "unknown_job").inc()
            return Outcome(Action.DELETE)
        if claim.outcome is ClaimOutcome.FINISHED:
            assert claim.job is not None
            log.info("job already finished: message dropped", status=claim.job.status.value)
            self.metrics.jobs.labels("skipped").inc()
            return Outcome(Action.DELETE)
        if claim.outcome is ClaimOutcome.BUSY:
            # Another live worker holds it; look again once its lease could have run out.
            log.info("job held by another worker", claimed_by=claim.job and claim.job.claimed_by)
            return Outcome(Action.RETRY, self.settings.visibility_timeout_seconds)

        assert claim.job is not None
        return await self._run_claimed(claim.job, receive_count, sent_at, deadline)

    async def _run_claimed(
        self, job: Job, receive_count: int, sent_at: float | None, deadline: float
    ) -> Outcome:
        started = time.perf_counter()
        progress = _Progress()
        limit = asyncio.timeout(max(0.0, deadline - time.monotonic()))
        try:
            async with limit:
                result_bucket, result_key = await self._stages(job, progress)
        except asyncio.CancelledError:
            await asyncio.shield(self._release_quietly(job, "worker stopped before finishing"))
            raise
        except Exception as exc:
            if limit.expired():
                failure = self._timed_out(progress.stage)
            else:
                failure = classify(exc, stage="pipeline")
                if not isinstance(exc, JobFailed):
                    log.exception("unexpected pipeline error")
            return await self._record_failure(job, failure, receive_count)

        try:
            with self.metrics.time_stage("complete"):
                recorded = await self.store.complete(job.id, result_bucket, result_key)
        except (asyncpg.PostgresError, OSError, TimeoutError) as exc:
            # The object is uploaded under a deterministic key: a retry overwrites it, no duplicate.
            return self._retry_claimed(classify(exc, stage="complete"), receive_count)
        if not recorded:
            log.warning("lost the claim before completing: another worker owns the job")
            return Outcome(Action.DELETE)
        self.metrics.jobs.labels("completed").inc()
        self.metrics.job_seconds.observe(time.perf_counter() - started)
        if sent_at is not None:
            self.metrics.end_to_end_seconds.observe(max(0.0, time.time() - sent_at))
        log.info("job completed", result=f"s3://{result_bucket}/{result_key}")
        return Outcome(Action.DELETE)

    async def _stages(self, job: Job, progress: _Progress) -> tuple[str, str]:
        settings = self.settings
        loop = asyncio.get_running_loop()
        with self._stage(progress, "download"), self._tracking("s3"):
            data = await s3_objects.download(
                self.s3,
                job.source_bucket,
                job.source_key,
                max_bytes=settings.max_image_bytes,
                allowed_buckets=settings.source_buckets,
            )
        self.metrics.bytes_processed.labels("in").inc(len(data))
        need = await loop.run_in_executor(self.cpu_pool, admission.estimate_bytes, data)
        progress.stage = "admission"  # waiting for memory: bounded by the job deadline
        async with self.admission.reserve(need):
            with self._stage(progress, "decode"):
                decoded = await loop.run_in_executor(
                    self.cpu_pool,
                    lambda: imaging.decode(
                        data,
                        max_bytes=settings.max_image_bytes,
                        max_pixels=settings.max_image_pixels,
                    ),
                )
            log.debug("decoded", source_format=decoded.source_format, size=decoded.rgb.size)
            with self._stage(progress, "preprocess"):
                model_input = await loop.run_in_executor(
                    self.cpu_pool, self.model.prepare, decoded.rgb
                )
            with self._stage(progress, "inference"):
                output, model_seconds = await self.model.infer(model_input)
            del model_input
            self.metrics.inference_seconds.observe(model_seconds)
            with self._stage(progress, "encode"):
                png = await loop.run_in_executor(
                    self.cpu_pool, self._encode_cut_out, decoded, output
                )
            result_bucket = settings.result_bucket or job.source_bucket
            result_key = f"{settings.result_prefix}{job.id}.png"
            with self._stage(progress, "upload"), self._tracking("s3"):
                await s3_objects.upload(self.s3, result_bucket, result_key, png, job_id=str(job.id))
        self.metrics.bytes_processed.labels("out").inc(len(png))
        return result_bucket, result_key

    @contextmanager
    def _stage(self, progress: _Progress, stage: str) -> Iterator[None]:
        progress.stage = stage
        with self.metrics.time_stage(stage):
            yield

    def _timed_out(self, stage: str) -> Failure:
        self.metrics.job_timeouts.labels(stage).inc()
        limit = self.settings.job_timeout_seconds
        if stage == "inference":
            # Only the wait is given up: a run inside ONNX Runtime keeps its thread until it
            # returns (the watchdog fails /healthz if such runs pile up).
            log.warning("job timed out in the model run; the run keeps its thread", limit=limit)
        return Failure(
            FailureKind.TRANSIENT,
            "job_timeout",
            f"{stage}: timed out, the job took longer than JOB_TIMEOUT_SECONDS={limit:g}",
        )

    def _encode_cut_out(self, decoded: imaging.DecodedImage, output: Any) -> bytes:
        """CPU stage: the mask from the model's output, the cut-out, and its PNG."""
        mask = self.model.mask_from_output(output, decoded.rgb.size)
        cutout = imaging.cut_out(decoded, mask)
        return imaging.encode_png(cutout, compress_level=self.settings.png_compress_level)

    @contextmanager
    def _tracking(self, dependency: str) -> Iterator[None]:
        """Mark a dependency down when a call to it fails transiently, up when one succeeds."""
        try:
            yield
        except JobFailed as exc:
            if not exc.failure.permanent:
                self.metrics.dependency_up.labels(dependency).set(0)
            raise
        self.metrics.dependency_up.labels(dependency).set(1)

    async def _record_failure(self, job: Job, failure: Failure, receive_count: int) -> Outcome:
        self.metrics.failures.labels(failure.kind.value, failure.code).inc()
        exhausted = receive_count >= self.settings.max_attempts
        try:
            if failure.permanent:
                await self.store.fail(job.id, failure.reason)
                log.warning("job failed", reason=failure.reason, code=failure.code)
                self.metrics.jobs.labels("failed").inc()
                return Outcome(Action.DELETE)
            if exhausted:
                reason = f"gave up after {receive_count} attempts: {failure.reason}"
                await self.store.fail(job.id, reason)
                log.warning("job failed: attempts exhausted", reason=reason)
                self.metrics.jobs.labels("failed").inc()
                return Outcome(Action.LEAVE)
            await self.store.release(job.id, failure.reason)
        except (asyncpg.PostgresError, OSError, TimeoutError) as exc:
            log.warning("could not record the failure; the message will return", error=str(exc))
        return self._retry_claimed(failure, receive_count)

    def _retry_claimed(self, failure: Failure, receive_count: int) -> Outcome:
        delay = self.backoff(receive_count)
        log.warning("job will be retried", reason=failure.reason, code=failure.code, delay=delay)
        self.metrics.jobs.labels("retried").inc()
        return Outcome(Action.RETRY, delay)

    def _retry_unclaimed(self, failure: Failure, receive_count: int) -> Outcome:
        self.metrics.failures.labels(FailureKind.TRANSIENT.value, failure.code).inc()
        return self._retry_claimed(failure, receive_count)

    async def _release_quietly(self, job: Job, reason: str) -> None:
        try:
            await self.store.release(job.id, reason)
        except Exception as exc:  # the lease expires on its own; the message returns
            log.warning("could not release the job", error=str(exc))

    def backoff(self, receive_count: int) -> int:
        """Exponential backoff with full jitter, in whole seconds (SQS visibility unit)."""
        ceiling = min(
            self.settings.backoff_max_seconds,
            self.settings.backoff_base_seconds * 2 ** max(0, receive_count - 1),
        )
        return int(random.uniform(ceiling / 2, ceiling) + 0.5)  # noqa: S311 - jitter, not crypto
