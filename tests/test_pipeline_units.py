"""The pipeline's claim and failure branches on in-memory fakes (tests/fakes.py), and
worker/errors.py's `classify`: no database, no queue, no model."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import pytest
from botocore.exceptions import EndpointConnectionError

from jobcore.jobs import JobStatus
from tests.fakes import FakeJobStore, FakeS3, client_error, unit_settings
from worker.errors import Failure, FailureKind, JobFailed, classify, permanent, transient
from worker.metrics import WorkerMetrics
from worker.models import ModelRegistry
from worker.pipeline import UNKNOWN_JOB_RECHECK_SECONDS, Action, JobProcessor, Outcome

VISIBILITY = 60
MAX_ATTEMPTS = 3


class Pipeline:
    def __init__(self, store: FakeJobStore, s3: FakeS3, **env: str) -> None:
        self.store = store
        self.s3 = s3
        self.settings = unit_settings(
            VISIBILITY_TIMEOUT_SECONDS=str(VISIBILITY), MAX_ATTEMPTS=str(MAX_ATTEMPTS), **env
        )
        self.metrics = WorkerMetrics()
        self.models = ModelRegistry(self.settings, self.metrics)  # never asked for a model here
        self.cpu_pool = ThreadPoolExecutor(1)
        self.processor = JobProcessor(
            self.settings, store, cast(Any, s3), self.models, self.cpu_pool, self.metrics
        )

    async def process(self, job_id: uuid.UUID, receive_count: int = 1) -> Outcome:
        deadline = time.monotonic() + self.settings.job_timeout_seconds
        return await self.processor.process(job_id, receive_count, None, deadline)

    def close(self) -> None:
        self.models.close()
        self.cpu_pool.shutdown()


@pytest.fixture
async def pipeline() -> AsyncIterator[Pipeline]:
    made = Pipeline(FakeJobStore("worker-a"), FakeS3())
    yield made
    made.close()


def assert_backoff(outcome: Outcome, pipeline: Pipeline, receive_count: int) -> None:
    settings = pipeline.settings
    ceiling = min(
        settings.backoff_max_seconds, settings.backoff_base_seconds * 2 ** (receive_count - 1)
    )
    assert outcome.action is Action.RETRY
    assert int(ceiling / 2) <= outcome.delay <= int(ceiling) + 1


async def test_a_job_another_worker_holds_is_looked_at_again_after_the_visibility_timeout(
    pipeline: Pipeline,
) -> None:
    job_id = pipeline.store.add(JobStatus.PROCESSING, claimed_by="worker-b", lease_seconds=300)
    before = pipeline.store.rows[job_id]

    assert await pipeline.process(job_id) == Outcome(Action.RETRY, VISIBILITY)
    assert pipeline.store.rows[job_id] == before


async def test_a_job_whose_worker_died_is_taken_over(pipeline: Pipeline) -> None:
    job_id = pipeline.store.add(JobStatus.PROCESSING, claimed_by="worker-b", lease_seconds=10)
    pipeline.store.advance(11)

    outcome = await pipeline.process(job_id, receive_count=2)

    # Claimed (attempt 1 of this row), then the download failed transiently: released.
    row = pipeline.store.rows[job_id]
    assert row.attempts == 1
    assert row.status is JobStatus.PENDING
    assert row.error == "download s3://photos/in/a.jpg: InternalError"
    assert_backoff(outcome, pipeline, 2)


async def test_an_unknown_job_is_looked_at_once_more_then_dropped(pipeline: Pipeline) -> None:
    job_id = uuid.uuid4()
    first = await pipeline.process(job_id, receive_count=1)
    second = await pipeline.process(job_id, receive_count=2)

    assert first == Outcome(Action.RETRY, UNKNOWN_JOB_RECHECK_SECONDS)
    assert second == Outcome(Action.DELETE)


@pytest.mark.parametrize("status", [JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED])
async def test_a_finished_job_drops_its_message(pipeline: Pipeline, status: JobStatus) -> None:
    job_id = pipeline.store.add(status)
    before = pipeline.store.rows[job_id]

    assert await pipeline.process(job_id) == Outcome(Action.DELETE)
    assert pipeline.store.rows[job_id] == before


async def test_a_cancel_asked_of_a_dead_workers_job_ends_it_and_deletes_its_objects(
    pipeline: Pipeline,
) -> None:
    job_id = pipeline.store.add(
        JobStatus.PROCESSING, claimed_by="worker-b", lease_seconds=10, cancel_reason="user asked"
    )
    pipeline.store.advance(11)

    assert await pipeline.process(job_id) == Outcome(Action.DELETE)
    row = pipeline.store.rows[job_id]
    assert (row.status, row.error) == (JobStatus.CANCELLED, "user asked")
    assert pipeline.s3.deleted == [("photos", f"cutouts/{job_id}.png")]


async def test_a_message_past_its_last_attempt_fails_the_row_unclaimed(
    pipeline: Pipeline,
) -> None:
    job_id = pipeline.store.add(JobStatus.PENDING)

    outcome = await pipeline.process(job_id, receive_count=MAX_ATTEMPTS + 1)

    assert outcome == Outcome(Action.LEAVE)
    row = pipeline.store.rows[job_id]
    assert row.status is JobStatus.FAILED
    assert row.error is not None
    assert row.error.startswith(f"gave up after {MAX_ATTEMPTS} attempts: no attempt finished")
    assert "claim" not in pipeline.store.calls


@pytest.mark.parametrize(
    "error", [ConnectionResetError("connection reset"), TimeoutError("pool timeout")]
)
async def test_a_claim_the_database_cannot_answer_returns_the_message(
    pipeline: Pipeline, error: Exception
) -> None:
    job_id = pipeline.store.add(JobStatus.PENDING)
    pipeline.store.fail_call["claim"] = error

    outcome = await pipeline.process(job_id, receive_count=2)

    assert_backoff(outcome, pipeline, 2)
    assert pipeline.store.rows[job_id].status is JobStatus.PENDING
    code = "timeout" if isinstance(error, TimeoutError) else "claim_error"
    sample = pipeline.metrics.registry.get_sample_value(
        "image_worker_job_failures_total", {"kind": "transient", "reason": code}
    )
    assert sample == 1


async def test_a_permanent_failure_fails_the_row_and_drops_the_message() -> None:
    made = Pipeline(FakeJobStore(), FakeS3(), SOURCE_BUCKETS="allowed")
    try:
        job_id = made.store.add(JobStatus.PENDING, source_bucket="photos")
        outcome = await made.process(job_id)
    finally:
        made.close()

    assert outcome == Outcome(Action.DELETE)
    row = made.store.rows[job_id]
    assert row.status is JobStatus.FAILED
    assert row.error == "source bucket 'photos' is not one of SOURCE_BUCKETS (allowed)"
    assert made.s3.deleted == []


async def test_a_transient_failure_releases_the_row_until_the_last_attempt(
    pipeline: Pipeline,
) -> None:
    job_id = pipeline.store.add(JobStatus.PENDING)

    first = await pipeline.process(job_id, receive_count=1)
    assert_backoff(first, pipeline, 1)
    row = pipeline.store.rows[job_id]
    assert (row.status, row.claimed_by) == (JobStatus.PENDING, None)

    last = await pipeline.process(job_id, receive_count=MAX_ATTEMPTS)
    assert last == Outcome(Action.LEAVE)  # visible now: the redrive policy takes it to the DLQ
    row = pipeline.store.rows[job_id]
    assert row.status is JobStatus.FAILED
    assert row.error == (
        f"gave up after {MAX_ATTEMPTS} attempts: download s3://photos/in/a.jpg: InternalError"
    )


async def test_a_failure_the_database_cannot_record_still_returns_the_message(
    pipeline: Pipeline,
) -> None:
    job_id = pipeline.store.add(JobStatus.PENDING)
    pipeline.store.fail_call["release"] = ConnectionResetError("connection reset")

    outcome = await pipeline.process(job_id)

    assert_backoff(outcome, pipeline, 1)
    assert pipeline.store.rows[job_id].status is JobStatus.PROCESSING  # its lease runs out


async def test_a_release_of_a_job_asked_to_cancel_ends_it_cancelled(
    pipeline: Pipeline,
) -> None:
    job_id = pipeline.store.add(JobStatus.PENDING, cancel_reason="user asked")
    # A row asked to stop before any worker held it is claimed as any other; the download fails
    # here, and the release ends it as cancelled rather than pending.
    outcome = await pipeline.process(job_id)

    assert_backoff(outcome, pipeline, 1)
    row = pipeline.store.rows[job_id]
    assert (row.status, row.error) == (JobStatus.CANCELLED, "user asked")


# classify: every exception that ends an attempt becomes a Failure.


def test_a_classified_failure_is_kept_as_raised() -> None:
    for raised in (permanent("too_big", "too big"), transient("s3_error", "slow down")):
        assert classify(raised, stage="download") is raised.failure
    assert classify(permanent("too_big", "too big"), stage="x").permanent
    assert not classify(transient("s3_error", "slow down"), stage="x").permanent


def test_a_timeout_is_transient() -> None:
    assert classify(TimeoutError(), stage="claim") == Failure(
        FailureKind.TRANSIENT, "timeout", "claim: timed out"
    )


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (ValueError("bad value"), "pipeline: ValueError: bad value"),
        (ConnectionResetError(), "pipeline: ConnectionResetError: ConnectionResetError"),
        (
            EndpointConnectionError(endpoint_url="http://s3"),
            'pipeline: EndpointConnectionError: Could not connect to the endpoint URL: "http://s3"',
        ),
        (client_error("InternalError", "GetObject"), "pipeline: ClientError: An error occurred"
         " (InternalError) when calling the GetObject operation: fake InternalError"),
    ],
)  # fmt: skip
def test_an_unknown_error_is_transient_with_the_stage_as_code(exc: Exception, reason: str) -> None:
    assert classify(exc, stage="pipeline") == Failure(
        FailureKind.TRANSIENT, "pipeline_error", reason
    )


def test_an_unknown_errors_reason_is_bounded() -> None:
    failure = classify(RuntimeError("x" * 2000), stage="complete")
    assert failure.code == "complete_error"
    assert len(failure.reason) == 500
    assert failure.reason.startswith("complete: RuntimeError: xxx")


def test_job_failed_carries_its_reason_as_the_message() -> None:
    raised = permanent("no_subject", "no_subject: nothing found")
    assert isinstance(raised, JobFailed)
    assert str(raised) == "no_subject: nothing found"
    assert raised.failure.kind is FailureKind.PERMANENT
