"""Automatic recovery on the real stack (PostgreSQL, moto's SQS/S3 server, a real worker with the
u2netp model): rows with no message on the queue complete while the sweeper runs as the scheduler
runs it (the `image-jobs sweep` console script), with nobody calling a retry command; concurrent
sweepers send each row once; the rate and per-pass limits hold; rows inside their grace period and
a legitimate backlog are left alone; the worker's gauges report what waits."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import time
import uuid
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from api_client.client import ClientSettings, JobClient
from api_client.errors import ClientConfigError
from api_client.recovery import EMF_NAMESPACE, SweepReport, SweepSettings, sweep_forever
from jobcore.jobs import JobStatus, decode_message
from tests.conftest import Aws, StartWorker
from tests.faults import FaultProxy
from tests.helpers import eventually, scrape, synthetic_scene, wait_finished

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / ".venv" / "bin" / "image-jobs"


def client_settings(database_url: str, aws: Aws, endpoint: str | None = None) -> ClientSettings:
    return ClientSettings(
        database_url=database_url,
        queue_url=aws.queue_url,
        source_bucket=aws.bucket,
        aws_region="us-east-1",
        aws_endpoint_url=endpoint or aws.endpoint,
        aws_max_attempts=1,
        connect_timeout=2.0,
    )


def sweep_env(database_url: str, aws: Aws, endpoint: str, **sweep: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "SQS_QUEUE_URL": aws.queue_url,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": "us-east-1",
        "SOURCE_BUCKET": aws.bucket,
        "AWS_MAX_ATTEMPTS": "1",
        "CLIENT_CONNECT_TIMEOUT_SECONDS": "2",
        **sweep,
    }


async def insert_row(
    db: asyncpg.Pool,
    status: str,
    *,
    idle: timedelta = timedelta(0),
    age: timedelta | None = None,
    key: str | None = None,
) -> uuid.UUID:
    """A job row last touched `idle` ago (created `age` ago, default the same)."""
    job_id = uuid.uuid4()
    await db.execute(
        """INSERT INTO image_processing_jobs
               (id, source_bucket, source_key, status, error, created_at, updated_at)
           VALUES ($1, 'photos', $2, $3, $4, now() - $5::interval, now() - $6::interval)""",
        job_id,
        key or f"sources/{job_id}.jpg",
        status,
        "send failed: outage" if status == "queue_failed" else None,
        age if age is not None else idle,
        idle,
    )
    return job_id


async def statuses(db: asyncpg.Pool, ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
    rows = await db.fetch(
        "SELECT id, status FROM image_processing_jobs WHERE id = ANY($1::uuid[])", ids
    )
    return {row["id"]: row["status"] for row in rows}


async def drain(aws: Aws) -> list[uuid.UUID]:
    return [decode_message(body) for body in await aws.receive_all()]


async def delete_every_message(aws: Aws) -> int:
    """What an operator's purge or a retention expiry does: the rows stay, the messages go."""
    deleted = 0
    while True:
        response = await aws.sqs.receive_message(
            QueueUrl=aws.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
        )
        messages = response.get("Messages", [])
        if not messages:
            return deleted
        for message in messages:
            await aws.sqs.delete_message(
                QueueUrl=aws.queue_url, ReceiptHandle=message["ReceiptHandle"]
            )
            deleted += 1


# -- the whole story: an outage during an import, then nobody acts ---------------------------------


@pytest.mark.slow  # a sweep and a worker
async def test_rows_without_a_message_complete_with_the_scheduled_sweep_and_a_worker(
    database_url: str,
    aws: Aws,
    db: asyncpg.Pool,
    producer: JobClient,
    start_worker: StartWorker,
) -> None:
    """A queue outage leaves a queue_failed row and an empty queue; a pending row lost its message
    (deleted by hand). `image-jobs sweep --loop` and a worker run; nobody calls a retry command."""
    moto = urlsplit(aws.endpoint)
    assert moto.hostname is not None
    assert moto.port is not None
    photo, _ = synthetic_scene((320, 240), seed=3)
    await aws.put("sources/lost.jpg", photo)
    await aws.put("sources/outage.jpg", photo)
    async with FaultProxy(moto.hostname, moto.port) as proxy:
        through_proxy = f"http://127.0.0.1:{proxy.port}"
        async with JobClient.connect(client_settings(database_url, aws, through_proxy)) as api:
            lost = await api.create_job("sources/lost.jpg", book_id="lost")
            assert lost.status is JobStatus.PENDING
            assert await delete_every_message(aws) == 1
            proxy.cut()  # SQS (and S3) unreachable from the API and the sweeper
            during = await api.create_job("sources/outage.jpg", book_id="outage")
        assert during.status is JobStatus.QUEUE_FAILED

        sweeper = await asyncio.create_subprocess_exec(
            str(SCRIPT),
            "sweep",
            "--loop",
            "--json",
            env=sweep_env(
                database_url,
                aws,
                through_proxy,
                SWEEP_INTERVAL_SECONDS="0.5",
                SWEEP_GRACE_SECONDS="1",
                SWEEP_PENDING_AFTER_SECONDS="3",
            ),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            await start_worker()
            # The sweeper runs through the outage: its sends fail and the row stays queue_failed
            # with the newest reason (updated_at touched, so it is tried once per grace period).
            failed_again = await eventually(
                lambda: db.fetchval(
                    "SELECT updated_at > created_at + interval '1 second' "
                    "FROM image_processing_jobs WHERE id = $1 AND status = 'queue_failed'",
                    during.id,
                ),
                timeout=60,
            )
            assert failed_again
            proxy.resume()
            outage_ended = time.monotonic()
            finished = await wait_finished(producer, [lost.id, during.id])
            recovered_in = time.monotonic() - outage_ended
        finally:
            sweeper.send_signal(signal.SIGTERM)
            stdout, stderr = await asyncio.wait_for(sweeper.communicate(), timeout=30)
    assert sweeper.returncode == 0, stderr.decode()
    assert {job.status for job in finished.values()} == {JobStatus.COMPLETED}
    assert all(job.attempts == 1 for job in finished.values())
    passes = [json.loads(line) for line in stdout.decode().splitlines()]
    sent = [job for one in passes for job in one["queue_failed_sent"]]
    resent = [job for one in passes for job in one["pending_resent"]]
    assert sent == [str(during.id)]
    assert resent == [str(lost.id)]
    assert "recovery sweep failed" not in stderr.decode()  # send failures are data, not crashes
    print(f"\nqueue outage end -> both rows completed: {recovered_in:.2f}s")


# -- the guarantees of one pass --------------------------------------------------------------------


async def test_concurrent_sweepers_send_each_row_once(
    database_url: str, aws: Aws, db: asyncpg.Pool
) -> None:
    queue_failed = [
        await insert_row(db, "queue_failed", idle=timedelta(minutes=5)) for _ in range(40)
    ]
    stale_pending = [
        await insert_row(db, "pending", idle=timedelta(hours=1)) for _ in range(10)
    ]  # their messages were lost: the queue is empty
    settings = SweepSettings(grace_seconds=60, pending_after_seconds=600, max_per_second=1000)
    async with AsyncExitStack() as stack:
        sweepers = [
            await stack.enter_async_context(JobClient.connect(client_settings(database_url, aws)))
            for _ in range(4)
        ]
        reports = await asyncio.gather(*(sweeper.sweep(settings) for sweeper in sweepers))
    sent = [job for report in reports for job in report.queue_failed_sent]
    resent = [job for report in reports for job in report.pending_resent]
    assert sorted(sent) == sorted(queue_failed)
    assert sorted(resent) == sorted(stale_pending)
    on_queue = collections.Counter(await drain(aws))
    assert on_queue == collections.Counter(queue_failed + stale_pending)  # each exactly once
    assert set((await statuses(db, queue_failed + stale_pending)).values()) == {"pending"}


async def test_rate_and_per_pass_limits_hold(
    database_url: str, aws: Aws, db: asyncpg.Pool, producer: JobClient
) -> None:
    ids = [
        await insert_row(
            db, "queue_failed", idle=timedelta(minutes=10), age=timedelta(hours=25 - n)
        )
        for n in range(25)
    ]  # oldest first
    settings = SweepSettings(max_per_pass=20, max_per_second=10)
    first = await producer.sweep(settings)
    assert first.queue_failed_sent == ids[:20]  # the oldest 20: the per-pass limit
    # 20 messages at 10 a second in batches of 10: the second batch waits a full second.
    assert first.duration_seconds >= 0.95
    assert first.backlog is not None
    assert first.backlog.queue_failed == 5
    second = await producer.sweep(settings)
    assert second.queue_failed_sent == ids[20:]
    assert sorted(await drain(aws)) == sorted(ids)


async def test_rows_inside_their_grace_period_are_left_alone(
    aws: Aws, db: asyncpg.Pool, producer: JobClient
) -> None:
    fresh_unsent = await insert_row(db, "queue_failed", idle=timedelta(seconds=5))
    old_unsent = await insert_row(db, "queue_failed", idle=timedelta(seconds=90))
    fresh_pending = await insert_row(db, "pending", idle=timedelta(minutes=2))
    stale_pending = await insert_row(db, "pending", idle=timedelta(minutes=20))
    settings = SweepSettings(grace_seconds=60, pending_after_seconds=900)
    report = await producer.sweep(settings)
    assert report.queue_failed_sent == [old_unsent]
    assert report.pending_resent == [stale_pending]  # both pending rows lack a message
    assert report.missing_messages == 2
    assert sorted(await drain(aws)) == sorted([old_unsent, stale_pending])
    assert await statuses(db, [fresh_unsent, fresh_pending]) == {
        fresh_unsent: "queue_failed",
        fresh_pending: "pending",
    }
    again = await producer.sweep(settings)  # a re-sent row waits another full threshold
    assert again.queue_failed_sent == []
    assert again.pending_resent == []


async def test_a_backlog_with_its_messages_is_not_resent(
    aws: Aws, db: asyncpg.Pool, producer: JobClient
) -> None:
    """Hours of legitimate backlog: every stale pending row still has its message on the queue,
    so nothing is duplicated; once two messages are lost, two rows are re-sent."""
    backlog = [await insert_row(db, "pending", idle=timedelta(hours=3)) for _ in range(6)]
    assert not (await producer.send_messages(backlog)).failed
    settings = SweepSettings(pending_after_seconds=900)
    quiet = await producer.sweep(settings)
    assert (quiet.missing_messages, quiet.pending_resent) == (0, [])
    assert quiet.backlog is not None
    assert quiet.backlog.stale_pending == 6

    response = await aws.sqs.receive_message(QueueUrl=aws.queue_url, MaxNumberOfMessages=2)
    for message in response["Messages"]:
        await aws.sqs.delete_message(QueueUrl=aws.queue_url, ReceiptHandle=message["ReceiptHandle"])
    assert len(response["Messages"]) == 2
    report = await producer.sweep(settings)
    assert report.missing_messages == 2
    assert len(report.pending_resent) == 2
    assert set(report.pending_resent) <= set(backlog)
    assert await aws.queue_counts() == (6, 0)


# -- the command the scheduled task runs ----------------------------------------------------------


async def run_cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        str(SCRIPT),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_sweep_command_prints_an_embedded_metric_format_line(
    database_url: str, aws: Aws, db: asyncpg.Pool
) -> None:
    unsent = await insert_row(db, "queue_failed", idle=timedelta(minutes=2), age=timedelta(hours=1))
    code, stdout, stderr = await run_cli(
        sweep_env(database_url, aws, aws.endpoint), "sweep", "--emf"
    )
    assert code == 0, stderr
    (line,) = stdout.splitlines()
    document = json.loads(line)
    (directive,) = document["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == EMF_NAMESPACE
    assert directive["Dimensions"] == [["QueueName"]]
    assert document["QueueName"] == aws.queue_url.rsplit("/", 1)[-1]
    assert isinstance(document["_aws"]["Timestamp"], int)
    names = [metric["Name"] for metric in directive["Metrics"]]
    for name in names:  # every declared metric has a number at the top level
        assert isinstance(document[name], int | float), name
    assert document["SweepPasses"] == 1
    assert document["QueueFailedSent"] == 1
    assert document["QueueFailedRows"] == 0
    assert document["SendFailures"] == 0
    assert {"OldestQueueFailedAgeSeconds", "StalePendingRows"} <= set(names)
    assert await drain(aws) == [unsent]


async def test_sweep_command_with_the_queue_down_keeps_rows_and_exits_3(
    database_url: str, aws: Aws, db: asyncpg.Pool
) -> None:
    unsent = await insert_row(db, "queue_failed", idle=timedelta(minutes=2), age=timedelta(hours=1))
    missing_queue = aws.queue_url.rsplit("/", 1)[0] + "/gone"
    env = {**sweep_env(database_url, aws, aws.endpoint), "SQS_QUEUE_URL": missing_queue}
    code, stdout, stderr = await run_cli(env, "sweep", "--emf")
    assert code == 3
    assert "send(s) failed" in stderr
    document = json.loads(stdout)
    assert (document["SendFailures"], document["QueueFailedRows"]) == (1, 1)
    assert document["OldestQueueFailedAgeSeconds"] >= 3600
    row = await db.fetchrow("SELECT status, error FROM image_processing_jobs WHERE id = $1", unsent)
    assert row["status"] == "queue_failed"
    assert "send failed" in row["error"]


async def test_sweep_settings_name_the_bad_variable(database_url: str, aws: Aws) -> None:
    env = {**sweep_env(database_url, aws, aws.endpoint), "SWEEP_PENDING_AFTER_SECONDS": "30"}
    code, _, stderr = await run_cli(env, "sweep")
    assert code == 2
    assert "SWEEP_PENDING_AFTER_SECONDS" in stderr
    assert "SWEEP_GRACE_SECONDS" in stderr
    with pytest.raises(ClientConfigError, match="SWEEP_MAX_PER_SECOND"):
        SweepSettings.from_env({"SWEEP_MAX_PER_SECOND": "fast"})


# -- what the worker reports ----------------------------------------------------------------------


async def test_worker_gauges_report_unsent_rows(
    db: asyncpg.Pool, start_worker: StartWorker
) -> None:
    await insert_row(db, "queue_failed", idle=timedelta(minutes=1), age=timedelta(hours=2))
    await insert_row(db, "pending", idle=timedelta(hours=1), age=timedelta(hours=3))
    worker = await start_worker(QUEUE_STATS_INTERVAL_SECONDS="0.5")

    async def gauges() -> tuple[float, float] | None:
        samples = await scrape(worker.url)
        value = (
            samples["image_worker_oldest_queue_failed_job_age_seconds"],
            samples["image_worker_oldest_pending_job_idle_seconds"],
        )
        return value if value[0] > 0 else None

    queue_failed_age, pending_idle = await eventually(gauges, timeout=30)
    assert 7200 <= queue_failed_age < 7300  # since creation, not since the last failed send
    assert 3600 <= pending_idle < 3700  # since the last touch, not since creation


async def test_the_loop_outlives_a_database_outage(
    database_url: str, aws: Aws, db: asyncpg.Pool
) -> None:
    """A pass that cannot reach PostgreSQL is logged and the next pass runs on time."""
    url = urlsplit(database_url)
    assert url.hostname is not None
    assert url.port is not None
    async with FaultProxy(url.hostname, url.port) as proxy:
        through_proxy = url._replace(netloc=f"{url.username}@127.0.0.1:{proxy.port}").geturl()
        settings = SweepSettings(grace_seconds=1, pending_after_seconds=60, interval_seconds=0.2)
        passes: list[int] = []
        stop = asyncio.Event()
        async with JobClient.connect(client_settings(through_proxy, aws)) as sweeper:
            proxy.cut()
            loop = asyncio.create_task(
                sweep_forever(sweeper, settings, stop, on_pass=lambda r: passes.append(sent(r)))
            )
            await eventually(lambda: _async(proxy.connections_refused >= 2), timeout=30)
            assert passes == []  # every pass so far failed, none crashed the loop
            assert not loop.done()
            unsent = await insert_row(db, "queue_failed", idle=timedelta(minutes=5))
            proxy.resume()
            await eventually(lambda: _async(sum(passes) == 1), timeout=30)
            stop.set()
            await asyncio.wait_for(loop, timeout=30)
    assert await drain(aws) == [unsent]


async def _async(value: bool) -> bool:
    return value


def sent(report: SweepReport) -> int:
    return len(report.queue_failed_sent)
