"""The SQS consumer: long-polls for as many messages as it has free slots, runs each through the
pipeline as its own task within JOB_TIMEOUT_SECONDS of its receipt, keeps in-flight messages
invisible with a batched heartbeat, batches deletes (both loops supervised), and on stop drains
within a budget and hands unfinished messages straight back."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from jobcore.jobs import MalformedMessage, decode_message, excerpt
from jobcore.sqs import MAX_VISIBILITY_SECONDS, SQS_BATCH, call_in_batches
from worker.metrics import WorkerMetrics
from worker.pipeline import Action, JobProcessor, Outcome
from worker.ports import JobStorePort, MessageQueue
from worker.settings import Settings
from worker.supervisor import Supervisor

if TYPE_CHECKING:
    from types_aiobotocore_sqs.type_defs import (
        ChangeMessageVisibilityBatchRequestEntryTypeDef,
        DeleteMessageBatchRequestEntryTypeDef,
        MessageTypeDef,
    )

log = structlog.get_logger(__name__)

RECEIVE_BACKOFF_MAX_SECONDS = 30.0
DELETE_FLUSH_SECONDS = 30.0  # at stop, the most we wait for queued deletes to be sent


@dataclass(eq=False, slots=True)
class InFlight:
    message_id: str
    receipt_handle: str
    job_id: uuid.UUID | None = None
    task: asyncio.Task[None] | None = None
    settled: bool = False  # deleted or handed back: no more heartbeats
    # JOB_TIMEOUT_SECONDS counts from here (time.monotonic()).
    received_at: float = field(default_factory=time.monotonic)


class Consumer:
    def __init__(
        self,
        settings: Settings,
        sqs: MessageQueue,
        store: JobStorePort,
        processor: JobProcessor,
        metrics: WorkerMetrics,
        supervisor: Supervisor,
        on_poll: Callable[[bool], None] = lambda ok: None,
    ) -> None:
        self.settings = settings
        self.sqs = sqs
        self.store = store
        self.processor = processor
        self.metrics = metrics
        self.supervisor = supervisor
        self.on_poll = on_poll
        self.in_flight: dict[str, InFlight] = {}
        self._slot_freed = asyncio.Event()
        self._delete_queue: asyncio.Queue[InFlight] = asyncio.Queue()
        self.metrics.concurrency.set(settings.concurrency)

    @property
    def free_slots(self) -> int:
        return self.settings.concurrency - len(self.in_flight)

    async def run(self, stop: asyncio.Event) -> None:
        heartbeat = self.supervisor.start("visibility_heartbeat", self._heartbeat_loop)
        deleter = self.supervisor.start("delete_batcher", self._delete_loop)
        try:
            await self._receive_loop(stop)
        finally:
            await self._drain()
            await heartbeat.stop()
            try:
                await asyncio.wait_for(self._delete_queue.join(), DELETE_FLUSH_SECONDS)
            except TimeoutError:  # the messages return; their rows are finished, so dropped then
                log.warning("queued deletes not sent in time", count=self._delete_queue.qsize())
            await deleter.stop()

    async def _receive_loop(self, stop: asyncio.Event) -> None:
        failures = 0
        stop_wait = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                if self.free_slots <= 0:
                    self._slot_freed.clear()
                    await _first_of(self._slot_freed.wait(), stop_wait, limit=5.0)
                    self.on_poll(True)  # alive, only busy
                    continue
                receive = asyncio.create_task(self._receive(self.free_slots))
                await asyncio.wait({receive, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                if not receive.done():
                    # Stop during a long poll: messages SQS had picked for this call stay
                    # invisible until their timeout, then return. Nothing is lost.
                    receive.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await receive
                    break
                try:
                    messages = receive.result()
                except (ClientError, BotoCoreError, OSError, TimeoutError) as exc:
                    failures += 1
                    delay = min(RECEIVE_BACKOFF_MAX_SECONDS, 0.5 * 2**failures)
                    self.metrics.receive_errors.inc()
                    self.metrics.dependency_up.labels("sqs").set(0)
                    self.on_poll(False)
                    log.warning("receive failed; backing off", error=str(exc), delay=delay)
                    await _first_of(asyncio.sleep(delay), stop_wait, limit=delay)
                    continue
                failures = 0
                self.metrics.dependency_up.labels("sqs").set(1)
                self.metrics.last_poll.set_to_current_time()
                self.on_poll(True)
                if not messages:
                    self.metrics.empty_receives.inc()
                    continue
                self.metrics.messages_received.inc(len(messages))
                for message in messages:
                    self._start(message)
        finally:
            stop_wait.cancel()

    async def _receive(self, count: int) -> list[MessageTypeDef]:
        response = await self.sqs.receive_message(
            QueueUrl=self.settings.queue_url,
            MaxNumberOfMessages=min(SQS_BATCH, count),
            WaitTimeSeconds=self.settings.wait_time_seconds,
            VisibilityTimeout=self.settings.visibility_timeout_seconds,
            MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
        )
        return response.get("Messages", [])

    def _start(self, message: MessageTypeDef) -> None:
        entry = InFlight(message["MessageId"], message["ReceiptHandle"])
        self.in_flight[entry.message_id] = entry
        self.metrics.in_flight.set(len(self.in_flight))
        entry.task = asyncio.create_task(self._handle(entry, message), name=entry.message_id)

    async def _handle(self, entry: InFlight, message: MessageTypeDef) -> None:
        attributes = message.get("Attributes", {})
        receive_count = int(attributes.get("ApproximateReceiveCount", "1"))
        sent_ms = attributes.get("SentTimestamp")
        sent_at = int(sent_ms) / 1000 if sent_ms else None
        with structlog.contextvars.bound_contextvars(message_id=entry.message_id):
            try:
                body = message.get("Body", "")
                try:
                    entry.job_id = decode_message(body)
                except MalformedMessage as exc:
                    log.warning("malformed message deleted", reason=str(exc), body=excerpt(body))
                    self.metrics.malformed_messages.inc()
                    self._delete(entry)
                    return
                deadline = entry.received_at + self.settings.job_timeout_seconds
                with structlog.contextvars.bound_contextvars(job_id=str(entry.job_id)):
                    outcome = await self.processor.process(
                        entry.job_id, receive_count, sent_at, deadline
                    )
                    await self._settle(entry, outcome)
            except asyncio.CancelledError:
                await asyncio.shield(self._return_now(entry))
                raise
            except Exception:
                # A bug, not a job failure: the message returns after its visibility timeout.
                log.exception("message handler crashed")
            finally:
                self._free_slot(entry)

    async def _settle(self, entry: InFlight, outcome: Outcome) -> None:
        if outcome.action is Action.DELETE:
            self._delete(entry)
        elif outcome.action is Action.RETRY:
            await self._set_visibility(entry, outcome.delay)
        else:  # LEAVE: visible now, so the redrive policy moves it to the DLQ on next receive
            await self._set_visibility(entry, 0)

    def _free_slot(self, entry: InFlight) -> None:
        self.in_flight.pop(entry.message_id, None)
        self.metrics.in_flight.set(len(self.in_flight))
        self._slot_freed.set()

    def _delete(self, entry: InFlight) -> None:
        entry.settled = True
        self._delete_queue.put_nowait(entry)

    async def _set_visibility(self, entry: InFlight, seconds: int) -> None:
        entry.settled = True
        try:
            await self.sqs.change_message_visibility(
                QueueUrl=self.settings.queue_url,
                ReceiptHandle=entry.receipt_handle,
                VisibilityTimeout=max(0, min(seconds, MAX_VISIBILITY_SECONDS)),
            )
        except (ClientError, BotoCoreError, OSError) as exc:
            log.warning("could not change visibility; timeout applies", error=str(exc))

    async def _return_now(self, entry: InFlight) -> None:
        if not entry.settled:
            await self._set_visibility(entry, 0)

    async def _delete_loop(self) -> None:
        while True:
            batch = [await self._delete_queue.get()]
            # Gather what arrives within a few milliseconds into one call.
            await asyncio.sleep(0.02)
            while len(batch) < SQS_BATCH and not self._delete_queue.empty():
                batch.append(self._delete_queue.get_nowait())
            try:
                await self._delete_batch(batch)
            except Exception:  # the messages return and are dropped then; keep deleting
                log.exception("delete batch crashed")
            finally:
                for _ in batch:
                    self._delete_queue.task_done()

    async def _delete_batch(self, batch: list[InFlight]) -> None:
        # Messages not deleted come back; their rows are finished, so they are dropped then.
        outcome = await call_in_batches(
            batch,
            entry=_delete_entry,
            key=lambda e: e.message_id,
            call=lambda entries: self.sqs.delete_message_batch(
                QueueUrl=self.settings.queue_url, Entries=entries
            ),
            verb="delete",
        )
        self.metrics.deletes.inc(len(outcome.sent))
        for message_id, reason in outcome.failed.items():
            log.warning("delete failed; message will be redelivered", message_id=message_id,
                        reason=reason)  # fmt: skip

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval_seconds)
            entries = [e for e in self.in_flight.values() if not e.settled]
            if not entries:
                continue
            try:
                await self._extend(entries)
            except Exception:  # a heartbeat bug must not take the daemon down with it
                log.exception("visibility heartbeat crashed")

    async def _extend(self, entries: list[InFlight]) -> None:
        timeout = self.settings.visibility_timeout_seconds

        def extension(index: str, e: InFlight) -> ChangeMessageVisibilityBatchRequestEntryTypeDef:
            return {"Id": index, "ReceiptHandle": e.receipt_handle, "VisibilityTimeout": timeout}

        outcome = await call_in_batches(
            entries,
            entry=extension,
            key=lambda e: e.message_id,
            call=lambda chunk: self.sqs.change_message_visibility_batch(
                QueueUrl=self.settings.queue_url, Entries=chunk
            ),
            verb="extend visibility",
        )
        self.metrics.visibility_extensions.inc(len(outcome.sent))
        if outcome.failed:
            log.warning("visibility heartbeat failed", error=next(iter(outcome.failed.values())),
                        messages=len(outcome.failed))  # fmt: skip
        job_ids = [e.job_id for e in entries if e.job_id is not None]
        try:
            await self.store.extend_leases(job_ids, timeout)
        except Exception as exc:
            log.warning("lease heartbeat failed", error=str(exc))

    async def _drain(self) -> None:
        """Let running jobs finish within DRAIN_SECONDS; hand the rest back at once."""
        tasks = [e.task for e in self.in_flight.values() if e.task is not None]
        if not tasks:
            return
        log.info("draining", in_flight=len(tasks), budget=self.settings.drain_seconds)
        _, pending = await asyncio.wait(tasks, timeout=self.settings.drain_seconds)
        if pending:
            log.warning("drain budget spent; returning unfinished messages", count=len(pending))
            for task in pending:
                task.cancel()
            await asyncio.wait(pending)


def _delete_entry(index: str, entry: InFlight) -> DeleteMessageBatchRequestEntryTypeDef:
    return {"Id": index, "ReceiptHandle": entry.receipt_handle}


async def _first_of(
    awaitable: Awaitable[Any], stop_wait: asyncio.Task[Any], *, limit: float
) -> None:
    """Wait for `awaitable`, a stop, or `limit` seconds, whichever comes first."""
    task = asyncio.ensure_future(awaitable)
    try:
        await asyncio.wait({task, stop_wait}, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
    finally:
        task.cancel()
