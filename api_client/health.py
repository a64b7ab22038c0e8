"""Health of what the producer depends on, for an admin endpoint or `image-jobs health`:
PostgreSQL (and its job table), the queue (GetQueueUrl + GetQueueAttributes, the permissions a
health check needs besides SendMessage), the dead-letter queue, and the source bucket
(HeadBucket). The checks run concurrently, each bounded by `timeout`; a check never raises: its
failure is a reason in the report."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import asyncpg

from api_client.settings import ClientSettings
from jobcore.checks import Check, CheckResult, run_bounded
from jobcore.queues import queue_depth

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_sqs import SQSClient

DEFAULT_TIMEOUT = 5.0


class HealthTarget(Protocol):
    """What the checks need of a `JobClient` (which passes itself)."""

    settings: ClientSettings
    pool: asyncpg.Pool
    sqs: SQSClient
    s3: S3Client | None

    async def dlq_url(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class HealthReport:
    checks: list[CheckResult]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [asdict(check) for check in self.checks]}


async def check_health(
    target: HealthTarget,
    *,
    timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 - a bound per check, not for the call
) -> HealthReport:
    checks = [
        Check("database", lambda: _database(target.pool), timeout),
        Check("queue", lambda: _queue(target.sqs, target.settings.queue_url), timeout),
        Check("dlq", lambda: _dlq(target), timeout),
        Check("source_bucket", lambda: _bucket(target), timeout),
    ]
    return HealthReport(await run_bounded(checks))


async def _database(pool: asyncpg.Pool) -> str:
    async with pool.acquire() as connection:
        found = await connection.fetchval("SELECT to_regclass('image_processing_jobs') IS NOT NULL")
    if not found:
        raise LookupError("no image_processing_jobs table (run `image-worker migrate`)")
    return "job table reachable"


async def _queue(sqs: SQSClient, queue_url: str) -> str:
    """GetQueueUrl by the queue's name (and owner) answers that the queue exists and this role may
    look it up; GetQueueAttributes that it may be read."""
    path = urlsplit(queue_url).path.strip("/").split("/")
    name = path[-1]
    kwargs: dict[str, str] = {"QueueName": name}
    if len(path) >= 2 and path[-2].isdigit():
        kwargs["QueueOwnerAWSAccountId"] = path[-2]
    found = (await sqs.get_queue_url(**kwargs))["QueueUrl"]
    depth = await queue_depth(sqs, found)
    return " ".join(f"{state}={count}" for state, count in depth.items())


async def _dlq(target: HealthTarget) -> str:
    url = await target.dlq_url()
    if url is None:
        raise LookupError("no DLQ: the queue has no RedrivePolicy and SQS_DLQ_URL is unset")
    return await _queue(target.sqs, url)


async def _bucket(target: HealthTarget) -> str:
    bucket = target.settings.source_bucket
    if target.s3 is None:
        raise LookupError("this client has no S3 client")
    if not bucket:
        raise LookupError("no source bucket: set SOURCE_BUCKET")
    await target.s3.head_bucket(Bucket=bucket)
    return f"s3://{bucket} reachable"
