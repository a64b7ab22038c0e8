"""A low-rate poll of queue depth (SQS GetQueueAttributes on the queue and its DLQ) and of the
open jobs in the table, exposed as gauges so dashboards and alerts need no CloudWatch datasource.
Every worker reports the same fleet-wide values: aggregate them with max(), not sum()."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import TYPE_CHECKING

import asyncpg
import structlog
from botocore.exceptions import BotoCoreError, ClientError

from jobcore.job_queries import count_jobs
from jobcore.jobs import JobStatus
from jobcore.queues import discover_dlq_url, queue_depth
from jobcore.recovery_queries import unsent_backlog
from worker.metrics import WorkerMetrics
from worker.settings import Settings

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient

log = structlog.get_logger(__name__)

OPEN_STATUSES = (JobStatus.PENDING, JobStatus.QUEUE_FAILED, JobStatus.PROCESSING)


class QueueStatsPoller:
    def __init__(
        self, settings: Settings, sqs: SQSClient, pool: asyncpg.Pool, metrics: WorkerMetrics
    ) -> None:
        self.settings = settings
        self.sqs = sqs
        self.pool = pool
        self.metrics = metrics
        self._dlq_url: str | None = None

    async def run(self) -> None:
        interval = self.settings.queue_stats_interval_seconds
        while True:
            await self.poll_once()
            await asyncio.sleep(interval)

    async def poll_once(self) -> None:
        try:
            await self._poll_queues()
        except (ClientError, BotoCoreError, OSError, KeyError, ValueError) as exc:
            log.warning("queue stats poll failed", error=str(exc))
        try:
            await self._poll_jobs()
        except (asyncpg.PostgresError, OSError, TimeoutError) as exc:
            log.warning("job stats poll failed", error=str(exc))

    async def _poll_queues(self) -> None:
        self._record("main", await queue_depth(self.sqs, self.settings.queue_url))
        if self._dlq_url is None:
            self._dlq_url = await discover_dlq_url(self.sqs, self.settings.queue_url)
        if self._dlq_url is not None:
            self._record("dlq", await queue_depth(self.sqs, self._dlq_url))

    def _record(self, queue: str, depth: dict[str, int]) -> None:
        for state, value in depth.items():
            self.metrics.queue_messages.labels(queue=queue, state=state).set(value)

    async def _poll_jobs(self) -> None:
        jobs = await count_jobs(self.pool, OPEN_STATUSES)
        for status, count in jobs.counts.items():
            self.metrics.open_jobs.labels(status=status).set(count)
        self.metrics.oldest_pending_age.set(jobs.oldest_pending_age_seconds or 0.0)
        unsent = await unsent_backlog(self.pool, timedelta(0))
        self.metrics.oldest_queue_failed_age.set(unsent.oldest_queue_failed_age_seconds or 0.0)
        self.metrics.oldest_pending_idle.set(unsent.oldest_pending_idle_seconds or 0.0)
