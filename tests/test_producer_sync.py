"""The synchronous producer on the real stack: psycopg 3 and SQLAlchemy sessions on PostgreSQL,
boto3 on moto's SQS server. A SQLAlchemy session is the caller's transaction: the row is written
after `db.flush()`, the message goes out only when the session commits."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import asyncpg
import boto3
import pytest
from psycopg_pool import ConnectionPool
from sqlalchemy import Engine, String, create_engine, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import QueuePool

from api_client import ClientConfigError, IdempotencyConflict, ImageCopy, NewJob
from api_client.sync_client import SyncJobClient
from jobcore.jobs import JobStatus, decode_message
from tests.conftest import Aws
from tests.helpers import capture_logs, missing_queue_url, settings_for, unused_port


class Base(DeclarativeBase):
    pass


class Book(Base):
    __tablename__ = "books"
    id: Mapped[str] = mapped_column(String, primary_key=True)
    title: Mapped[str] = mapped_column(String)


@contextmanager
def sync_client(database_url: str, aws: Aws, **changes: Any) -> Iterator[SyncJobClient]:
    with SyncJobClient.connect(settings_for(database_url, aws, **changes)) as client:
        yield client


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sqs(aws: Aws) -> Iterator[Any]:
    client = boto3.client("sqs", endpoint_url=aws.endpoint, region_name="us-east-1")
    yield client
    client.close()


def drain(sqs: Any, aws: Aws) -> list[uuid.UUID]:
    """Job ids of every visible message (received and left invisible)."""
    ids: list[uuid.UUID] = []
    while True:
        response = sqs.receive_message(
            QueueUrl=aws.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=120
        )
        if not response.get("Messages"):
            return ids
        ids.extend(decode_message(m["Body"]) for m in response["Messages"])


def job_rows(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        found = conn.execute(
            text("SELECT id, status, error, source_key FROM image_processing_jobs ORDER BY 4")
        )
        return [tuple(row) for row in found]


# -- standalone ------------------------------------------------------------------------------------


def test_standalone_create_get_and_repeat(
    database_url: str, aws: Aws, sqs: Any, engine: Engine
) -> None:
    with sync_client(database_url, aws) as client:
        job = client.create_job("sources/a.jpg", book_id="b", idempotency_key="req-1")
        assert job.status is JobStatus.PENDING
        assert client.create_job("sources/a.jpg", book_id="b", idempotency_key="req-1") == job
        jobs = client.create_jobs([NewJob("sources/c.jpg", delay_seconds=0), "sources/d.jpg"])
        assert [j.source_key for j in jobs] == ["sources/c.jpg", "sources/d.jpg"]
        assert {j.status for j in jobs} == {JobStatus.PENDING}
        assert client.get_job(job.id) == job
        assert client.get_job(uuid.uuid4()) is None
        with pytest.raises(IdempotencyConflict, match="req-1"):
            client.create_job("sources/other.jpg", idempotency_key="req-1")
        primary = client.create_primary_image_job(
            "b2", [ImageCopy.failed("0.jpg", OSError("copy failed")), "1.jpg"]
        )
    assert (primary.index, primary.key, primary.skipped) == (
        1,
        "1.jpg",
        {0: "OSError: copy failed"},
    )
    assert primary.job is not None
    assert primary.job.status is JobStatus.PENDING
    assert len(job_rows(engine)) == 4
    assert sorted(drain(sqs, aws)) == sorted([job.id, *(j.id for j in jobs), primary.job.id])


def test_standalone_with_the_queue_down_keeps_queue_failed_rows(
    database_url: str, aws: Aws, sqs: Any, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    closed = f"http://127.0.0.1:{unused_port()}"
    with sync_client(database_url, aws, aws_endpoint_url=closed) as c, capture_logs(caplog) as logs:
        job = c.create_job("sources/a.jpg", idempotency_key="req-2")
    assert job.status is JobStatus.QUEUE_FAILED
    assert job.error is not None
    assert job.error.startswith("send failed:")
    errors = [r for r in logs.records if r.levelno == logging.ERROR]
    assert [r.job_id for r in errors] == [str(job.id)]  # type: ignore[attr-defined]
    assert errors[0].exc_info is not None
    with sync_client(database_url, aws) as client:  # the repeat sends it
        again = client.create_job("sources/a.jpg", idempotency_key="req-2")
    assert (again.id, again.status) == (job.id, JobStatus.PENDING)
    assert drain(sqs, aws) == [job.id]


def test_a_client_on_a_sqlalchemy_engine(
    database_url: str, aws: Aws, sqs: Any, engine: Engine
) -> None:
    with SyncJobClient.connect(settings_for(database_url, aws), engine=engine, sqs=sqs) as client:
        job = client.create_job("sources/a.jpg")
    assert job.status is JobStatus.PENDING
    assert isinstance(engine.pool, QueuePool)
    assert engine.pool.checkedout() == 0
    assert drain(sqs, aws) == [job.id]  # the given sqs client still works: not closed


@pytest.mark.parametrize("first_send", ["ok", "queue down"])
def test_twenty_threads_repeating_one_key_make_one_row_and_one_message(
    first_send: str, database_url: str, aws: Aws, sqs: Any, engine: Engine
) -> None:
    if first_send == "queue down":
        with sync_client(database_url, aws, queue_url=missing_queue_url(aws)) as broken:
            seed = broken.create_job("sources/a.jpg", idempotency_key="same")
        assert seed.status is JobStatus.QUEUE_FAILED
    settings = settings_for(database_url, aws)
    with (
        ConnectionPool(database_url, min_size=20, max_size=20) as pool,
        SyncJobClient.connect(settings, pool=pool) as client,
        ThreadPoolExecutor(max_workers=20) as threads,
    ):
        futures = [
            threads.submit(client.create_job, "sources/a.jpg", idempotency_key="same")
            for _ in range(20)
        ]
        jobs = [future.result(timeout=60) for future in futures]
    assert len({job.id for job in jobs}) == 1
    assert {job.status for job in jobs} == {JobStatus.PENDING}
    assert len(job_rows(engine)) == 1
    assert drain(sqs, aws) == [jobs[0].id]


# -- a SQLAlchemy session as the caller's transaction ----------------------------------------------


def test_session_commit_sends_after_the_commit(
    database_url: str, aws: Aws, sqs: Any, engine: Engine
) -> None:
    with sync_client(database_url, aws) as client, Session(engine) as db:
        db.add(Book(id="b1", title="Moby Dick"))
        db.flush()
        result = client.create_primary_image_job(
            "b1", [ImageCopy.failed("b1/0.jpg", "timeout"), "b1/1.jpg"], session=db
        )
        assert result.job is not None
        assert (result.job.status, result.job.error) == (JobStatus.QUEUE_FAILED, None)
        assert job_rows(engine) == []  # not committed: invisible to other connections
        assert drain(sqs, aws) == []  # and not sent
        db.commit()
        assert result.job.status is JobStatus.PENDING  # the returned job: state after the send
        stored = client.get_job(result.job.id)
    assert stored is not None
    assert stored.status is JobStatus.PENDING
    assert stored.source_key == "b1/1.jpg"
    assert drain(sqs, aws) == [result.job.id]
    with Session(engine) as check:
        assert check.get(Book, "b1") is not None


def test_session_rollback_leaves_no_row_and_sends_nothing(
    database_url: str, aws: Aws, sqs: Any, engine: Engine
) -> None:
    with sync_client(database_url, aws) as client, Session(engine) as db:
        db.add(Book(id="b1", title="t"))
        db.flush()
        dropped = client.create_job("sources/dropped.jpg", session=db)
        db.rollback()
        kept = client.create_job("sources/kept.jpg", session=db)  # same session, next transaction
        db.commit()
    assert [row[3] for row in job_rows(engine)] == ["sources/kept.jpg"]
    assert drain(sqs, aws) == [kept.id]
    assert dropped.id != kept.id


def test_session_commit_with_the_queue_down_commits_and_keeps_queue_failed(
    database_url: str,
    aws: Aws,
    sqs: Any,
    engine: Engine,
    db: asyncpg.Pool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with (
        sync_client(database_url, aws, queue_url=missing_queue_url(aws)) as broken,
        Session(engine) as session,
    ):
        session.add(Book(id="b1", title="t"))
        job = broken.create_job("sources/a.jpg", session=session)
        with capture_logs(caplog) as logs:
            session.commit()  # never raises for queue trouble
    (row,) = job_rows(engine)
    assert (row[0], row[1]) == (job.id, "queue_failed")
    assert row[2].startswith("send failed:")
    errors = [r for r in logs.records if r.levelno == logging.ERROR]
    assert [r.job_id for r in errors] == [str(job.id)]  # type: ignore[attr-defined]
    assert drain(sqs, aws) == []


def test_a_session_on_another_driver_is_refused(database_url: str, aws: Aws) -> None:
    other = create_engine(database_url.replace("postgresql://", "postgresql+asyncpg://", 1))
    refused = r"psycopg 3 driver .* not postgresql\+asyncpg"
    with (
        sync_client(database_url, aws) as client,
        Session(other) as db,
        pytest.raises(ClientConfigError, match=refused),
    ):
        client.create_job("sources/a.jpg", session=db)
