"""Job-finished events on moto's SNS, delivered to a subscribed SQS queue: the worker publishes one
per finished job and clears the row's outbox flag; a worker killed between the completion and the
publish leaves the flag, and the recovery sweep's catch-up delivers the event; a publish SNS
refuses is caught up the same way; the sweep also publishes the event of a job cancelled before
any worker took it."""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import aioboto3
import asyncpg
import pytest

from api_client.client import JobClient
from api_client.recovery import SweepSettings
from jobcore.cancel_queries import cancel_job
from jobcore.event_outbox import JobEvent, single_output
from jobcore.jobs import JobStatus
from tests.conftest import Aws, SpawnWorker, StartWorker
from tests.faults import FaultProxy
from tests.helpers import (
    contract_fields,
    eventually,
    large_photo,
    scrape,
    synthetic_scene,
    wait_finished,
)


@dataclass
class Topic:
    arn: str
    subscriber_url: str  # an SQS queue subscribed with raw delivery: the body is the event
    sqs: Any

    async def events(self, count: int) -> list[JobEvent]:
        """Wait for `count` events, then make sure no more are there."""
        bodies: list[str] = []

        async def arrived() -> bool:
            response = await self.sqs.receive_message(
                QueueUrl=self.subscriber_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
            )
            bodies.extend(m["Body"] for m in response.get("Messages", []))
            return len(bodies) >= count

        await eventually(arrived, timeout=60, interval=0)
        response = await self.sqs.receive_message(
            QueueUrl=self.subscriber_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
        )
        bodies.extend(m["Body"] for m in response.get("Messages", []))
        assert len(bodies) == count, bodies
        return [JobEvent.from_json(body) for body in bodies]


@pytest.fixture
async def topic(aws: Aws) -> AsyncIterator[Topic]:
    suffix = uuid.uuid4().hex[:10]
    async with aioboto3.Session().client(
        "sns", endpoint_url=aws.endpoint, region_name="us-east-1"
    ) as sns:
        arn = (await sns.create_topic(Name=f"job-events-{suffix}"))["TopicArn"]
        url = (await aws.sqs.create_queue(QueueName=f"app-events-{suffix}"))["QueueUrl"]
        attributes = await aws.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        await sns.subscribe(
            TopicArn=arn,
            Protocol="sqs",
            Endpoint=attributes["Attributes"]["QueueArn"],
            Attributes={"RawMessageDelivery": "true"},
        )
        yield Topic(arn, url, aws.sqs)


async def event_pending(db: asyncpg.Pool, job_id: uuid.UUID) -> bool:
    flag: bool = await db.fetchval(
        "SELECT event_pending FROM image_processing_jobs WHERE id = $1", job_id
    )
    return flag


async def test_the_worker_publishes_one_event_per_finished_job(
    start_worker: StartWorker, producer: JobClient, aws: Aws, db: asyncpg.Pool, topic: Topic
) -> None:
    worker = await start_worker(EVENTS_TOPIC_ARN=topic.arn)
    scene, _ = synthetic_scene((320, 240))
    await aws.put("sources/scene.jpg", scene)
    good = await producer.create_job("sources/scene.jpg", book_id="book-1")
    missing = await producer.create_job("sources/missing.jpg", book_id="book-2")
    finished = await wait_finished(producer, [good.id, missing.id])

    events = {event.id: event for event in await topic.events(2)}
    done = finished[good.id]
    assert events[good.id] == JobEvent(
        id=good.id,
        book_id="book-1",
        status=JobStatus.COMPLETED,
        outputs=events[good.id].outputs,
        error=None,
        model="u2netp",
        finished_at=events[good.id].finished_at,
    )
    assert contract_fields(events[good.id].outputs) == single_output(
        aws.bucket, f"cutouts/{good.id}.png"
    )
    assert done.completed_at is not None
    assert events[good.id].finished_at == done.completed_at
    failed = events[missing.id]
    assert (failed.status, failed.book_id, failed.outputs) == (JobStatus.FAILED, "book-2", None)
    assert failed.error == finished[missing.id].error
    assert failed.error is not None
    assert "does not exist" in failed.error

    async def cleared() -> bool:  # the flag is cleared after the publish returns
        return not await event_pending(db, good.id) and not await event_pending(db, missing.id)

    await eventually(cleared, timeout=30)
    metrics = await scrape(worker.url)
    assert metrics['image_worker_events_total{outcome="published"}'] == 2
    assert metrics['image_worker_events_total{outcome="failed"}'] == 0


@pytest.mark.slow  # a second worker start; test_no_topic_no_catch_up stays fast
async def test_a_worker_without_a_topic_owes_no_events(
    start_worker: StartWorker, producer: JobClient, aws: Aws, db: asyncpg.Pool
) -> None:
    await start_worker()
    job = await producer.create_job("sources/missing.jpg")
    await wait_finished(producer, [job.id])
    assert not await event_pending(db, job.id)


@pytest.mark.slow  # a worker process started, held on a lock and killed
async def test_a_worker_killed_between_completion_and_publish_is_caught_up_by_the_sweep(
    spawn_worker: SpawnWorker,
    producer: JobClient,
    aws: Aws,
    db: asyncpg.Pool,
    topic: Topic,
) -> None:
    """The worker's AWS traffic goes through a proxy. The test holds the job's row lock so the
    completing UPDATE waits; meanwhile it stalls the proxy, so the publish that follows the
    commit hangs; once the row reads `completed`, SIGKILL. Then the sweep catches up."""
    target = urlsplit(aws.endpoint)
    async with FaultProxy(target.hostname or "127.0.0.1", target.port or 80) as proxy:
        proxy.delay = 0.05  # a slow download: time to take the row lock while it runs
        worker = await spawn_worker(
            AWS_ENDPOINT_URL=f"http://127.0.0.1:{proxy.port}",
            EVENTS_TOPIC_ARN=topic.arn,
            WORKER_CONCURRENCY="1",
        )
        await aws.put("large.jpg", large_photo())
        job = await producer.create_job("large.jpg", book_id="book-k")

        async def processing() -> bool:
            return bool(
                await db.fetchval(
                    "SELECT status = 'processing' FROM image_processing_jobs WHERE id = $1", job.id
                )
            )

        await eventually(processing, timeout=60, interval=0.05)
        async with db.acquire() as holder, holder.transaction():
            await holder.execute(
                "SELECT 1 FROM image_processing_jobs WHERE id = $1 FOR UPDATE", job.id
            )

            async def completion_waits() -> bool:
                return bool(
                    await db.fetchval(
                        """SELECT count(*) > 0 FROM pg_stat_activity
                        WHERE datname = current_database() AND wait_event_type = 'Lock'
                          AND query LIKE '%SET status = ''completed''%'"""
                    )
                )

            await eventually(completion_waits, timeout=120, interval=0.05)
            proxy.stall()
        # The lock is released: the completion commits; its publish hangs in the proxy.

        async def completed() -> bool:
            return bool(
                await db.fetchval(
                    "SELECT status = 'completed' FROM image_processing_jobs WHERE id = $1", job.id
                )
            )

        await eventually(completed, timeout=30, interval=0.02)
        worker.process.send_signal(signal.SIGKILL)
        assert await worker.wait_exit(30) == -signal.SIGKILL
        proxy.resume()

    assert await event_pending(db, job.id)  # the kill left the event owed
    assert "job event" not in worker.log.read_text()  # no publish was attempted to the end
    settings = SweepSettings(
        grace_seconds=0.5, pending_after_seconds=900, events_topic_arn=topic.arn
    )

    async def past_grace() -> bool:
        return bool(
            await db.fetchval(
                """SELECT completed_at < now() - interval '0.5 seconds'
                 FROM image_processing_jobs WHERE id = $1""",
                job.id,
            )
        )

    await eventually(past_grace, timeout=10)
    report = await producer.sweep(settings)
    assert report.events is not None
    assert report.events.published == [job.id]
    assert report.metrics()["EventsCaughtUp"] == (1, "Count")
    (event,) = await topic.events(1)
    assert (event.id, event.status, event.book_id) == (job.id, JobStatus.COMPLETED, "book-k")
    assert contract_fields(event.outputs) == single_output(aws.bucket, f"cutouts/{job.id}.png")
    assert not await event_pending(db, job.id)
    again = await producer.sweep(settings)
    assert again.events is not None
    assert again.events.published == []


@pytest.mark.slow  # two workers and two sweeps
async def test_a_refused_publish_and_an_early_cancel_are_caught_up(
    start_worker: StartWorker, producer: JobClient, aws: Aws, db: asyncpg.Pool, topic: Topic
) -> None:
    missing_topic = topic.arn + "-gone"
    worker = await start_worker(EVENTS_TOPIC_ARN=missing_topic)
    failed = await producer.create_job("sources/missing.jpg", book_id="book-f")
    await wait_finished(producer, [failed.id])

    async def refused() -> bool:  # counted after the row's commit, when SNS answers
        metrics = await scrape(worker.url)
        return metrics['image_worker_events_total{outcome="failed"}'] == 1

    await eventually(refused, timeout=30)
    assert await event_pending(db, failed.id)  # still owed

    await worker.stop()  # no worker takes the next job: the cancel ends it at once
    cancelled = await producer.create_job("sources/whatever.jpg", book_id="book-c")
    await cancel_job(db, cancelled.id, "book deleted")
    assert await event_pending(db, cancelled.id)

    # Inside the grace period nothing is published (the worker may still be about to).
    settings = SweepSettings(grace_seconds=3600, pending_after_seconds=7200,
                             events_topic_arn=topic.arn)  # fmt: skip
    early = await producer.sweep(settings)
    assert early.events is not None
    assert early.events.published == []
    await db.execute("UPDATE image_processing_jobs SET completed_at = completed_at - interval '2h'")
    report = await producer.sweep(settings)
    assert report.events is not None
    assert sorted(report.events.published) == sorted([failed.id, cancelled.id])
    events = {event.id: event for event in await topic.events(2)}
    assert events[cancelled.id].status is JobStatus.CANCELLED
    assert events[cancelled.id].error == "book deleted"
    assert events[failed.id].status is JobStatus.FAILED
    assert report.to_dict()["events"]["published"]


def test_an_event_reads_back_from_its_json() -> None:
    event = JobEvent(
        id=uuid.uuid4(),
        book_id=None,
        status=JobStatus.CANCELLED,
        outputs=None,
        error="book deleted",
        model=None,
        finished_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC) + timedelta(microseconds=7),
    )
    text = event.to_json()
    assert json.loads(text)["v"] == 1
    assert set(json.loads(text)) == {
        "v", "id", "book_id", "status", "outputs", "error", "model", "finished_at"
    }  # fmt: skip
    assert JobEvent.from_json(text) == event


def test_sweep_settings_read_the_topic_from_the_environment() -> None:
    assert SweepSettings.from_env({}).events_topic_arn is None
    arn = "arn:aws:sns:us-east-1:123456789012:jobs"
    assert SweepSettings.from_env({"EVENTS_TOPIC_ARN": arn}).events_topic_arn == arn


async def test_no_topic_no_catch_up(producer: JobClient) -> None:
    report = await producer.sweep(SweepSettings())
    assert report.events is None
    assert "EventsCaughtUp" not in report.metrics()
