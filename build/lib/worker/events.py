"""The worker's side of job-finished events (EVENTS_TOPIC_ARN): publish the event of a job this
worker just finished, then clear its outbox flag. A publish that fails or times out is logged and
counted, never raised: the flag stays set and the recovery sweep's catch-up publishes it
(jobcore/event_outbox.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import structlog

from jobcore.event_outbox import EventPublisher, JobEvent, clear_published
from jobcore.sqs import CALL_ERRORS
from worker.metrics import WorkerMetrics

log = structlog.get_logger(__name__)

PUBLISH_TIMEOUT_SECONDS = 10.0
PUBLISH_ERRORS = (*CALL_ERRORS, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


class WorkerEvents:
    def __init__(
        self,
        publisher: EventPublisher,
        pool: Any,
        metrics: WorkerMetrics,
        *,
        timeout_seconds: float = PUBLISH_TIMEOUT_SECONDS,
    ) -> None:
        self.publisher = publisher
        self.pool = pool
        self.metrics = metrics
        self.timeout_seconds = timeout_seconds

    async def publish(self, event: JobEvent) -> None:
        try:
            async with asyncio.timeout(self.timeout_seconds):
                outcome = await self.publisher.publish([event])
        except PUBLISH_ERRORS as exc:
            reason = f"{type(exc).__name__}: {exc}"
        else:
            if outcome.sent:
                self.metrics.events.labels("published").inc()
                await self._clear(event)
                return
            reason = outcome.failed[event.id]
        self.metrics.events.labels("failed").inc()
        log.warning(
            "job event not published; the recovery sweep will", job_id=str(event.id), reason=reason
        )

    async def _clear(self, event: JobEvent) -> None:
        try:
            async with asyncio.timeout(self.timeout_seconds):
                await clear_published(self.pool, [event])
        except PUBLISH_ERRORS as exc:
            log.warning(
                "job event published but its flag not cleared; the sweep will send it again",
                job_id=str(event.id),
                error=f"{type(exc).__name__}: {exc}",
            )
