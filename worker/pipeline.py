"""One job, start to end: claim -> download -> decode -> inference -> encode -> upload -> complete.
The job's recipe (or DEFAULT_RECIPE) picks the model (worker/attempts.py, worker/models.py) and
what the encode stage makes of the mask (worker/compose.py).

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

from jobcore.jobs import Job, JobStatus
from jobcore.recipe import Recipe
from worker import admission, attempts, imaging, s3_objects
from worker.admission import MemoryAdmission
from worker.cancellation import Cancellation, JobCancelled
from worker.compose import Composed, NoSubject, check_subject, compose, output_keys
from worker.errors import Failure, FailureKind, JobFailed, classify
from worker.inference import ModelRunner
from worker.job_table import ClaimOutcome, Completion
from worker.metrics import WorkerMetrics
from worker.models import ModelRegistry
from worker.ports import JobStorePort
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


@dataclass(frozen=True, slots=True)
class _Result:
    bucket: str
    key: str
    outputs: list[dict[str, Any]]
    background_used: dict[str, Any]


class JobProcessor:
    def __init__(
        self,
        settings: Settings,
        store: JobStorePort,
        s3: S3Client,
        models: ModelRegistry,
        cpu_pool: Executor,
        metrics: WorkerMetrics,
        memory: MemoryAdmission | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.s3 = s3
        self.models = models
        self.cpu_pool = cpu_pool
        self.metrics = metrics
        self.cancellation = Cancellation(store, s3, metrics)
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
                ended = await self.store.fail_unclaimed(job_id, reason)
                if ended:
                    log.warning("job failed: attempts exhausted", reason=reason)
                    self.metrics.jobs.labels(ended.value).inc()
                    return Outcome(Action.LEAVE)
            except (asyncpg.PostgresError, OSError, TimeoutError) as exc:
                return self._retry_unclaimed(classify(exc, stage="claim"), receive_count)
        try:
            with self.metrics.time_stage("claim"):
                claim = await self.store.claim(
                    job_id,
                    model=self.settings.model_name,
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
        if claim.outcome is ClaimOutcome.CANCELLED:
            assert claim.job is not None
            await self.cancellation.remove(claim.job, self._result_locations(claim.job))
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
        recipe = job.recipe or self.settings.default_recipe
        model = attempts.model_for(job, recipe, receive_count, self.settings.max_attempts)
        limit = asyncio.timeout(max(0.0, deadline - time.monotonic()))
        try:
            async with limit:
                if model != job.model:
                    await self.store.record_model(job.id, model)
                result = await self._stages(job, recipe, model, progress)
        except asyncio.CancelledError:
            await asyncio.shield(self._release_quietly(job, "worker stopped before finishing"))
            raise
        except JobCancelled:
            return await self._cancelled(job, [])
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
                completion = await self.store.complete(
                    job.id,
                    result.bucket,
                    result.key,
                    outputs=result.outputs,
                    background_used=result.background_used,
                )
        except JobFailed as exc:  # the completion hook failed: the completion was rolled back
            return await self._record_failure(job, exc.failure, receive_count)
        except (asyncpg.PostgresError, OSError, TimeoutError) as exc:
            # The object is uploaded under a deterministic key: a retry overwrites it, no duplicate.
            return self._retry_claimed(classify(exc, stage="complete"), receive_count)
        if completion in (Completion.CANCEL_REQUESTED, Completion.GONE):
            uploaded = [(output["bucket"], output["key"]) for output in result.outputs]
            return await self._cancelled(job, uploaded)
        if completion is Completion.LOST:
            log.warning("lost the claim before completing: another worker owns the job")
            return Outcome(Action.DELETE)
        self.metrics.jobs.labels("completed").inc()
        self.metrics.recipe_jobs.labels(
            model, _yes(recipe.matting), _yes(attempts.uses_fallback(recipe, model))
        ).inc()
        self.metrics.job_seconds.observe(time.perf_counter() - started)
        if sent_at is not None:
            self.metrics.end_to_end_seconds.observe(max(0.0, time.time() - sent_at))
        log.info("job completed", result=f"s3://{result.bucket}/{result.key}", model=model)
        return Outcome(Action.DELETE)

    async def _stages(self, job: Job, recipe: Recipe, model: str, progress: _Progress) -> _Result:
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
            return await self._pixels(job, recipe, model, data, progress)

    async def _pixels(
        self, job: Job, recipe: Recipe, model: str, data: bytes, progress: _Progress
    ) -> _Result:
        """Decode -> model -> compose -> upload: the part whose memory admission reserved."""
        settings = self.settings
        loop = asyncio.get_running_loop()
        with self._stage(progress, "decode"):
            decoded = await loop.run_in_executor(
                self.cpu_pool,
                lambda: imaging.decode(
                    data,
                    max_bytes=settings.max_image_bytes,
                    max_pixels=settings.max_image_pixels,
                    max_side=settings.max_image_side,
                ),
            )
        log.debug("decoded", source_format=decoded.source_format, size=decoded.rgb.size)
        progress.stage = "inference"  # a model's first load counts as part of its first run
        async with self.models.use(model) as runner:
            with self._stage(progress, "preprocess"):
                model_input = await loop.run_in_executor(self.cpu_pool, runner.prepare, decoded.rgb)
            with self._stage(progress, "inference"):
                output, model_seconds = await runner.infer(model_input)
            del model_input
        self.metrics.inference_seconds.observe(model_seconds)
        with self._stage(progress, "encode"):
            try:
                # Today's job exactly for a row without a recipe, unless DEFAULT_RECIPE is set.
                gated = job.recipe is not None or settings.default_recipe_set
                composed = await loop.run_in_executor(
                    self.cpu_pool, self._compose, runner, decoded, output, recipe, model, gated
                )
            except NoSubject as exc:
                failure = attempts.gate_failure(recipe, model, exc.reason)
                nxt = "failed" if failure.failure.permanent else "fallback"
                self.metrics.quality_gate_failures.labels(model, nxt).inc()
                raise failure from None
        del decoded, output
        return await self._upload(job, recipe, composed, progress)

    def _compose(
        self,
        runner: ModelRunner[Any, Any],
        decoded: imaging.DecodedImage,
        output: Any,
        recipe: Recipe,
        model: str,
        gated: bool,
    ) -> Composed:
        """CPU stage: the mask from the model's output, the quality gate, the recipe's images."""
        mask = runner.mask_from_output(output, decoded.rgb.size)
        if gated:
            check_subject(mask, runner.peak(output), recipe.min_subject_px, model)
        return compose(decoded, mask, recipe, png_compress_level=self.settings.png_compress_level)

    async def _upload(
        self, job: Job, recipe: Recipe, composed: Composed, progress: _Progress
    ) -> _Result:
        bucket = self.settings.result_bucket or job.source_bucket
        job_prefix = f"{self.settings.result_prefix}{job.id}"
        records: list[dict[str, Any]] = []
        await self.cancellation.check(job.id)
        with self._stage(progress, "upload"), self._tracking("s3"):
            for item in composed.outputs:
                key = item.key(job_prefix)
                await s3_objects.upload(
                    self.s3,
                    bucket,
                    key,
                    item.data,
                    job_id=str(job.id),
                    content_type=item.content_type,
                )
                self.metrics.bytes_processed.labels("out").inc(len(item.data))
                records.append(item.record(bucket, key))
        background = recipe.background if recipe.background in ("transparent", "auto") else "colour"
        self.metrics.recipe_outputs.labels(recipe.format, background).inc()
        self.metrics.thumbnails.inc(len(records) - 1)
        return _Result(bucket, records[0]["key"], records, composed.background_used)

    def _result_locations(self, job: Job) -> list[tuple[str, str]]:
        """Every object this job's recipe writes, recorded or not."""
        bucket = self.settings.result_bucket or job.source_bucket
        recipe = job.recipe or self.settings.default_recipe
        job_prefix = f"{self.settings.result_prefix}{job.id}"
        return [(bucket, key) for key in output_keys(recipe, job_prefix)]

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
                ended = await self.store.fail(job.id, failure.reason)
                log.warning("job failed", reason=failure.reason, code=failure.code)
                self.metrics.jobs.labels((ended or JobStatus.FAILED).value).inc()
                return Outcome(Action.DELETE)
            if exhausted:
                reason = f"gave up after {receive_count} attempts: {failure.reason}"
                ended = await self.store.fail(job.id, reason)
                log.warning("job failed: attempts exhausted", reason=reason)
                self.metrics.jobs.labels((ended or JobStatus.FAILED).value).inc()
                return Outcome(Action.LEAVE)
            await self.store.release(job.id, failure.reason)
        except (asyncpg.PostgresError, OSError, TimeoutError) as exc:
            log.warning("could not record the failure; the message will return", error=str(exc))
        return self._retry_claimed(failure, receive_count)

    async def _cancelled(self, job: Job, uploaded: list[tuple[str, str]]) -> Outcome:
        if await self.cancellation.finish(job, uploaded):
            return Outcome(Action.DELETE)
        return Outcome(Action.RETRY, self.backoff(1))

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


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"
