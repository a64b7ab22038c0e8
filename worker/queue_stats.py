"""A low-rate poll of queue depth (SQS GetQueueAttributes on the queue and its DLQ) and of the
open jobs in the table, exposed as gauges so dashboards and alerts need no CloudWatch datasource.
Every worker reports the same fleet-wide values: aggregate them with max(), not sum()."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import structlog
from botocore.exceptions import BotoCoreError, ClientError

from jobcore.jobs import QUEUE_DEPTH_ATTRIBUTES
from worker.metrics import WorkerMetrics
from worker.settings import Settings

log = structlog.get_logger(__name__)

OPEN_STATUSES = ("pending", "queue_failed", "processing")


class QueueStatsPoller:
    def __init__(
        self, settings: Settings, sqs: Any, pool: asyncpg.Pool, metrics: WorkerMetrics
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
        names = [*QUEUE_DEPTH_ATTRIBUTES.values(), "RedrivePolicy"]
        main = await self._attributes(self.settings.queue_url, names)
        self._record("main", main)
        if self._dlq_url is None and "RedrivePolicy" in main:
            arn = json.loads(main["RedrivePolicy"])["deadLetterTargetArn"]
            name = arn.rsplit(":", 1)[-1]
            self._dlq_url = (await self.sqs.get_queue_url(QueueName=name))["QueueUrl"]
        if self._dlq_url is not None:
            self._record(
                "dlq", await self._attributes(self._dlq_url, list(QUEUE_DEPTH_ATTRIBUTES.values()))
            )

    async def _attributes(self, url: str, names: list[str]) -> dict[str, str]:
        response = await self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)
        attributes: dict[str, str] = response.get("Attributes", {})
        return attributes

    def _record(self, queue: str, attributes: dict[str, str]) -> None:
        for state, attribute in QUEUE_DEPTH_ATTRIBUTES.items():
            value = float(attributes.get(attribute, 0))
            self.metrics.queue_messages.labels(queue=queue, state=state).set(value)

    async def _poll_jobs(self) -> None:
        rows = await self.pool.fetch(
            """SELECT status, count(*) AS n,
                      EXTRACT(EPOCH FROM now() - min(created_at))::float8 AS oldest
                 FROM image_processing_jobs
                WHERE status = ANY($1::text[])
                GROUP BY status""",
            list(OPEN_STATUSES),
        )
        counts = {status: 0 for status in OPEN_STATUSES}
        oldest_pending = 0.0
        for row in rows:
            counts[row["status"]] = row["n"]
            if row["status"] == "pending":
                oldest_pending = row["oldest"] or 0.0
        for status, count in counts.items():
            self.metrics.open_jobs.labels(status=status).set(count)
        self.metrics.oldest_pending_age.set(oldest_pending)
