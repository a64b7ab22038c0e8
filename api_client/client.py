"""JobClient: what the web API imports to queue work. Creating a job inserts its row, then sends a
pointer message; when the send fails the row is kept as `queue_failed` and the job is returned,
so an import never fails because the queue hiccuped."""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aioboto3
import asyncpg
import structlog
from botocore.exceptions import BotoCoreError, ClientError

from worker.jobs import JOB_COLUMNS, Job, encode_message

log = structlog.get_logger(__name__)


class ClientConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ClientSettings:
    database_url: str
    queue_url: str
    source_bucket: str | None
    aws_region: str
    aws_endpoint_url: str | None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ClientSettings:
        env = os.environ if environ is None else environ
        missing = [name for name in ("DATABASE_URL", "SQS_QUEUE_URL") if not env.get(name)]
        if missing:
            raise ClientConfigError(f"{' and '.join(missing)} must be set")
        return cls(
            database_url=env["DATABASE_URL"],
            queue_url=env["SQS_QUEUE_URL"],
            source_bucket=env.get("SOURCE_BUCKET") or None,
            aws_region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            aws_endpoint_url=env.get("AWS_ENDPOINT_URL") or None,
        )


class JobClient:
    """Owns its pool and AWS clients when opened with `async with JobClient.connect(...)`."""

    def __init__(self, settings: ClientSettings, pool: asyncpg.Pool, sqs: Any, s3: Any) -> None:
        self.settings = settings
        self.pool = pool
        self.sqs = sqs
        self.s3 = s3
        self._stack: AsyncExitStack | None = None

    @classmethod
    def connect(cls, settings: ClientSettings) -> _Connector:
        return _Connector(settings)

    async def create_job(
        self,
        source_key: str,
        *,
        source_bucket: str | None = None,
        book_id: str | None = None,
        connection: asyncpg.Connection | None = None,
    ) -> Job:
        bucket = source_bucket or self.settings.source_bucket
        if not bucket:
            raise ClientConfigError("no source bucket: pass source_bucket or set SOURCE_BUCKET")
        job_id = uuid.uuid4()
        executor: Any = connection or self.pool
        record = await executor.fetchrow(
            f"""INSERT INTO image_processing_jobs (id, book_id, source_bucket, source_key)
                VALUES ($1, $2, $3, $4) RETURNING {JOB_COLUMNS}""",
            job_id,
            book_id,
            bucket,
            source_key,
        )
        job = Job.from_record(record)
        try:
            await self.sqs.send_message(
                QueueUrl=self.settings.queue_url, MessageBody=encode_message(job_id)
            )
        except (ClientError, BotoCoreError, OSError) as exc:
            log.error("send failed; job kept as queue_failed", job_id=str(job_id), exc_info=exc)
            record = await executor.fetchrow(
                f"""UPDATE image_processing_jobs
                       SET status = 'queue_failed', error = $2, updated_at = now()
                     WHERE id = $1 AND status = 'pending' RETURNING {JOB_COLUMNS}""",
                job_id,
                f"send failed: {exc}"[:500],
            )
            job = Job.from_record(record) if record else job
        return job

    async def upload_source(self, key: str, data: bytes, *, bucket: str | None = None) -> str:
        target = bucket or self.settings.source_bucket
        if not target:
            raise ClientConfigError("no source bucket: pass bucket or set SOURCE_BUCKET")
        await self.s3.put_object(Bucket=target, Key=key, Body=data)
        return target

    async def get_job(self, job_id: uuid.UUID) -> Job | None:
        record = await self.pool.fetchrow(
            f"SELECT {JOB_COLUMNS} FROM image_processing_jobs WHERE id = $1", job_id
        )
        return Job.from_record(record) if record else None


class _Connector:
    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> JobClient:
        stack = self._stack
        try:
            pool = await asyncpg.create_pool(self.settings.database_url, min_size=1, max_size=4)
            stack.push_async_callback(pool.close)
            session = aioboto3.Session()
            kwargs = {
                "endpoint_url": self.settings.aws_endpoint_url,
                "region_name": self.settings.aws_region,
            }
            sqs = await stack.enter_async_context(session.client("sqs", **kwargs))
            s3 = await stack.enter_async_context(session.client("s3", **kwargs))
        except BaseException:
            await stack.aclose()
            raise
        return JobClient(self.settings, pool, sqs, s3)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()
