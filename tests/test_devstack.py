"""The embedded stack: with no PostgreSQL answering, a real embedded server (pgserver) starts."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from devstack import stack as devstack
from worker.migrate import bundled_migrations, migrate_url

pytestmark = pytest.mark.slow  # starts an embedded PostgreSQL


def test_embedded_postgres_when_none_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:1/closed")
    monkeypatch.setattr(devstack, "LOCAL_POSTGRES_URL", "postgresql://postgres@127.0.0.1:2/none")

    async def migrate_and_count(admin_url: str) -> int:
        url = await devstack.recreate_database(admin_url, "embedded_check")
        applied = await migrate_url(url)
        assert applied[0] == "0001_create_jobs"
        assert applied == [migration.version for migration in bundled_migrations()]
        connection = await asyncpg.connect(url)
        try:
            count: int = await connection.fetchval("SELECT count(*) FROM image_processing_jobs")
            return count
        finally:
            await connection.close()

    with devstack.postgres_server() as admin_url:
        assert "127.0.0.1:1" not in admin_url
        assert asyncio.run(migrate_and_count(admin_url)) == 0
