"""The consumer's branches on in-memory fakes (tests/fakes.py): a job another worker holds, delete
batches that fail per entry or whole, a lease heartbeat whose database write fails."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, cast

from structlog.testing import capture_logs

from jobcore.jobs import JobStatus, encode_message
from tests.fakes import FakeJobStore, FakeQueue, FakeS3, client_error, unit_settings
from tests.helpers import eventually
from worker.consumer import Consumer, InFlight
from worker.metrics import WorkerMetrics
from worker.models import ModelRegistry
from worker.pipeline import JobProcessor
from worker.ports import MessageQueue
from worker.settings import Settings
from worker.supervisor import Supervisor

VISIBILITY = 60


def make_consumer(
    queue: FakeQueue, store: FakeJobStore, settings: Settings | None = None
) -> tuple[Consumer, WorkerMetrics, Callable[[], None]]:
    settings = settings or unit_settings(VISIBILITY_TIMEOUT_SECONDS=str(VISIBILITY))
    metrics = WorkerMetrics()
    models = ModelRegistry(settings, metrics)  # never asked for a model by these tests
    cpu_pool = ThreadPoolExecutor(1)
    processor = JobProcessor(settings, store, cast(Any, FakeS3()), models, cpu_pool, metrics)
    # FakeQueue answers the same calls with plain dicts, not the SQS stubs' typed responses.
    sqs = cast(MessageQueue, queue)
    consumer = Consumer(settings, sqs, store, processor, metrics, Supervisor(metrics))

    def close() -> None:
        models.close()
        cpu_pool.shutdown()

    return consumer, metrics, close


@asynccontextmanager
async def running(consumer: Consumer) -> AsyncIterator[None]:
    """The consumer's whole `run`, stopped (drain, delete flush) when the block ends."""
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def until(condition: Callable[[], bool]) -> None:
    async def probe() -> bool:
        return condition()

    await eventually(probe, timeout=5.0, interval=0.005)


def metric(metrics: WorkerMetrics, name: str) -> float:
    return metrics.registry.get_sample_value(name) or 0.0


async def test_busy_job_returns_after_the_visibility_timeout() -> None:
    queue, store = FakeQueue(), FakeJobStore("worker-a")
    job_id = store.add(JobStatus.PROCESSING, claimed_by="worker-b", lease_seconds=300)
    message_id = queue.send(encode_message(job_id))
    consumer, _, close = make_consumer(queue, store)
    try:
        async with running(consumer):
            await until(lambda: any(n == "change_message_visibility" for n, _ in queue.calls))
    finally:
        close()

    (change,) = [kwargs for name, kwargs in queue.calls if name == "change_message_visibility"]
    assert change["VisibilityTimeout"] == VISIBILITY
    assert not any(name == "delete_message_batch" for name, _ in queue.calls)
    assert store.rows[job_id].claimed_by == "worker-b"  # the other worker keeps it
    assert store.rows[job_id].attempts == 0
    queue.advance(VISIBILITY - 1)
    assert queue.visible() == []
    queue.advance(1)
    assert queue.visible() == [message_id]
    assert queue.messages[message_id].receive_count == 1


async def test_a_delete_entry_that_fails_keeps_its_message_for_redelivery() -> None:
    queue, store = FakeQueue(), FakeJobStore()
    failing = queue.send("not json")
    deleted = queue.send("not json either")
    queue.fail_entries.add(failing)
    consumer, metrics, close = make_consumer(queue, store)
    try:
        with capture_logs() as logs:
            async with running(consumer):
                await until(lambda: deleted not in queue.messages)
                await until(lambda: not consumer.in_flight)
    finally:
        close()

    assert list(queue.messages) == [failing]
    assert metric(metrics, "image_worker_messages_deleted_total") == 1
    warnings = [e for e in logs if e["event"] == "delete failed; message will be redelivered"]
    assert [w["message_id"] for w in warnings] == [failing]
    assert "InternalError" in warnings[0]["reason"]
    queue.advance(VISIBILITY)
    assert queue.visible() == [failing]  # back, so its delete is tried again on redelivery


async def test_a_delete_call_that_fails_whole_keeps_every_message_and_the_batcher_runs_on() -> None:
    queue, store = FakeQueue(), FakeJobStore()
    first = queue.send("not json")
    queue.fail_call["delete_message_batch"] = client_error("ServiceUnavailable", "DeleteMessage")
    consumer, metrics, close = make_consumer(queue, store)
    try:
        with capture_logs() as logs:
            async with running(consumer):
                await until(lambda: any(n == "delete_message_batch" for n, _ in queue.calls))
                second = queue.send("still not json")
                await until(lambda: second not in queue.messages)
    finally:
        close()

    assert list(queue.messages) == [first]
    assert metric(metrics, "image_worker_messages_deleted_total") == 1
    warnings = [e for e in logs if e["event"] == "delete failed; message will be redelivered"]
    assert [w["message_id"] for w in warnings] == [first]
    assert "ServiceUnavailable" in warnings[0]["reason"]
    queue.advance(VISIBILITY)
    assert queue.visible() == [first]


async def held_message(queue: FakeQueue, store: FakeJobStore, consumer: Consumer) -> InFlight:
    """A message received for a job this worker holds, as the consumer tracks it in flight."""
    job_id = store.add(JobStatus.PROCESSING, claimed_by=store.worker_id, lease_seconds=VISIBILITY)
    queue.send(encode_message(job_id))
    (message,) = await consumer._receive(1)
    return InFlight(message["MessageId"], message["ReceiptHandle"], job_id=job_id)


async def test_a_failed_lease_heartbeat_is_logged_and_visibility_is_still_extended() -> None:
    queue, store = FakeQueue(), FakeJobStore()
    consumer, metrics, close = make_consumer(queue, store)
    entry = await held_message(queue, store, consumer)
    store.fail_call["extend_leases"] = ConnectionResetError("database went away")
    queue.advance(VISIBILITY / 2)
    store.advance(VISIBILITY / 2)
    try:
        with capture_logs() as logs:
            await consumer._extend([entry])  # does not raise
    finally:
        close()

    assert queue.messages[entry.message_id].visible_at == queue.now + VISIBILITY
    assert metric(metrics, "image_worker_visibility_extensions_total") == 1
    (warning,) = [e for e in logs if e["event"] == "lease heartbeat failed"]
    assert warning["error"] == "database went away"
    assert warning["log_level"] == "warning"
    assert entry.job_id is not None
    assert store.leases[entry.job_id] == VISIBILITY  # unchanged: the write failed


async def test_a_failed_visibility_extension_still_extends_the_lease() -> None:
    queue, store = FakeQueue(), FakeJobStore()
    consumer, metrics, close = make_consumer(queue, store)
    entry = await held_message(queue, store, consumer)
    queue.fail_entries.add(entry.message_id)
    queue.advance(VISIBILITY / 2)
    store.advance(VISIBILITY / 2)
    try:
        with capture_logs() as logs:
            await consumer._extend([entry])
    finally:
        close()

    assert entry.job_id is not None
    assert store.leases[entry.job_id] == store.now + VISIBILITY
    assert queue.messages[entry.message_id].visible_at == VISIBILITY  # not extended
    assert metric(metrics, "image_worker_visibility_extensions_total") == 0
    (warning,) = [e for e in logs if e["event"] == "visibility heartbeat failed"]
    assert warning["messages"] == 1
