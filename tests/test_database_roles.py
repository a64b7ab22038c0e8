"""Least privilege: the worker and the producer run their real operations as login users that
hold only the roles migration 0006 creates (image_worker, image_producer), and whatever those
roles were not granted fails. The migration is safe to run again and concurrently."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from api_client.client import ClientSettings, JobClient
from api_client.recovery import SweepSettings
from devstack.stack import drop_database, recreate_database
from jobcore.jobs import JobStatus
from tests.conftest import Aws, StartWorker
from tests.helpers import synthetic_scene, wait_finished
from worker.migrate import bundled_migrations, migrate_url

ROLES_MIGRATION = next(m for m in bundled_migrations() if m.version == "0006_database_roles")


def url_as(url: str, user: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, f"{user}@{host}", parts.path, parts.query, parts.fragment))


@pytest.fixture
async def logins(database_url: str) -> AsyncIterator[dict[str, str]]:
    """A login user per role (trust authentication here; RDS users get a password)."""
    suffix = uuid.uuid4().hex[:8]
    users = {"image_worker": f"worker_{suffix}", "image_producer": f"producer_{suffix}"}
    admin = await asyncpg.connect(database_url)
    try:
        for role, user in users.items():
            await admin.execute(f'CREATE ROLE "{user}" LOGIN IN ROLE {role}')
        yield {role: url_as(database_url, user) for role, user in users.items()}
    finally:
        for user in users.values():
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", user
            )
            await admin.execute(f'DROP ROLE IF EXISTS "{user}"')
        await admin.close()


async def test_worker_and_producer_work_as_their_roles(
    start_worker: StartWorker, aws: Aws, logins: dict[str, str]
) -> None:
    worker = await start_worker(DATABASE_URL=logins["image_worker"])
    settings = ClientSettings(
        database_url=logins["image_producer"],
        queue_url=aws.queue_url,
        source_bucket=aws.bucket,
        aws_region="us-east-1",
        aws_endpoint_url=aws.endpoint,
    )
    scene, _ = synthetic_scene(seed=3)
    await aws.put("roles/photo.jpg", scene)
    async with JobClient.connect(settings) as producer:
        job = await producer.create_job("roles/photo.jpg", idempotency_key=f"k-{uuid.uuid4()}")
        finished = await wait_finished(producer, [job.id])
        assert finished[job.id].status is JobStatus.COMPLETED
        await producer.sweep(SweepSettings())
        stats = await producer.stats()
        assert stats is not None
    await worker.stop()


async def _refused(url: str, statement: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await connection.execute(statement)
    finally:
        await connection.close()


async def test_what_a_role_was_not_granted_fails(logins: dict[str, str]) -> None:
    insert = (
        "INSERT INTO image_processing_jobs (id, source_bucket, source_key)"
        f" VALUES ('{uuid.uuid4()}', 'b', 'k')"
    )
    await _refused(logins["image_worker"], insert)
    await _refused(logins["image_worker"], "DELETE FROM image_processing_jobs")  # delete_jobs only
    for url in logins.values():
        await _refused(url, "ALTER TABLE image_processing_jobs ADD COLUMN x int")
        await _refused(url, "DROP TABLE image_processing_jobs")
        await _refused(url, "SELECT * FROM image_worker_migrations")
        await _refused(url, "CREATE TABLE public.intruder (x int)")


@pytest.mark.slow  # concurrent migrations
async def test_the_roles_migration_runs_again_and_concurrently(
    database_url: str, pg_admin_url: str
) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(ROLES_MIGRATION.sql)  # roles and grants there already
        roles = await connection.fetch(
            "SELECT rolname, rolcanlogin FROM pg_roles"
            " WHERE rolname IN ('image_worker', 'image_producer') ORDER BY rolname"
        )
    finally:
        await connection.close()
    assert [(r["rolname"], r["rolcanlogin"]) for r in roles] == [
        ("image_producer", False),
        ("image_worker", False),
    ]
    # Several tasks starting at once, on two databases of one server (roles are cluster-wide).
    names = [f"iw_roles_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    urls = [await recreate_database(pg_admin_url, name) for name in names]
    try:
        applied = await asyncio.gather(*(migrate_url(url) for url in urls * 3))
        for url in urls:
            versions = [v for u, v in zip(urls * 3, applied, strict=True) if u == url]
            assert sorted(len(v) for v in versions)[-1] == len(bundled_migrations())
            assert sum(len(v) for v in versions) == len(bundled_migrations())
    finally:
        for name in names:
            await drop_database(pg_admin_url, name)
