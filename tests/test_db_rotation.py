"""A rotated database password: the worker's held connections keep working, new ones fail to
authenticate, and past DB_AUTH_FAILURE_LIMIT failures in a row `/healthz` fails with the reason,
so that ECS replaces the task (which reads the current secret).

The session's PostgreSQL trusts every local login, so a password change there cannot fail one:
this test runs its own PostgreSQL (pgserver's binaries, a Unix socket in a temporary folder)
where a dedicated role logs in with a SCRAM password, and changes that password while a real
worker runs against it."""

from __future__ import annotations

import asyncio
import re
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pgserver
import pytest

from tests.conftest import Aws, worker_env
from tests.helpers import eventually
from worker.app import WorkerApp
from worker.db_auth import AuthFailureWatch
from worker.migrate import migrate_url
from worker.settings import Settings

pytestmark = pytest.mark.slow  # a worker through a password rotation

ROLE = "rotating_worker"


@dataclass(frozen=True)
class PasswordServer:
    socket_dir: Path

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@/postgres?host={self.socket_dir}"

    def url(self, password: str, database: str = "jobs") -> str:
        return f"postgresql://{ROLE}:{password}@/{database}?host={self.socket_dir}"

    async def admin(self, *statements: str) -> list[Any]:
        connection = await asyncpg.connect(self.admin_url)
        try:
            return [await connection.fetch(statement) for statement in statements]
        finally:
            await connection.close()


@pytest.fixture(scope="module")
def password_server() -> Iterator[PasswordServer]:
    """A private PostgreSQL whose pg_hba makes ROLE log in with a SCRAM password."""
    with tempfile.TemporaryDirectory(prefix="iw-pgpw-") as folder:
        server = pgserver.postgres_server.get_server(Path(folder), cleanup_mode="stop")
        try:
            hba = Path(folder) / "pg_hba.conf"
            hba.write_text(f"local all {ROLE} scram-sha-256\n" + hba.read_text())
            server.psql("SELECT pg_reload_conf();")
            yield PasswordServer(Path(folder))
        finally:
            server.cleanup()


@pytest.fixture
async def rotating_role(password_server: PasswordServer) -> AsyncIterator[PasswordServer]:
    """ROLE with the password `first` and a migrated database it owns; dropped afterwards."""
    await password_server.admin(
        f"CREATE ROLE {ROLE} LOGIN PASSWORD 'first'", f"CREATE DATABASE jobs OWNER {ROLE}"
    )
    try:
        await migrate_url(password_server.url("first"))
        yield password_server
    finally:
        await password_server.admin(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{ROLE}'",
            "DROP DATABASE jobs WITH (FORCE)",
            f"DROP ROLE {ROLE}",
        )


async def get(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json()


async def test_the_password_is_really_checked(rotating_role: PasswordServer) -> None:
    with pytest.raises(asyncpg.exceptions.InvalidPasswordError):
        await asyncpg.connect(rotating_role.url("wrong"))


async def test_a_rotated_password_fails_healthz_after_the_limit_and_a_good_login_clears_it(
    rotating_role: PasswordServer, aws: Aws, model_home: Path
) -> None:
    env = worker_env(
        rotating_role.url("first"), aws, model_home, DB_AUTH_FAILURE_LIMIT="3", LOG_FORMAT="json"
    )
    app = WorkerApp(Settings.from_env(env))
    task = asyncio.create_task(app.run())
    try:
        await asyncio.wait_for(app.ready.wait(), timeout=120)
        base = f"http://127.0.0.1:{app.port}"
        assert (await get(f"{base}/healthz"))[0] == 200

        # The rotation: a new password, and the held connections gone (a failover, or the
        # pool's idle lifetime): every new connection now fails to authenticate.
        await rotating_role.admin(
            f"ALTER ROLE {ROLE} PASSWORD 'second'",
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{ROLE}'",
        )

        async def replaced() -> dict[str, Any] | None:
            await get(f"{base}/readyz")  # each check opens a connection through the pool
            status, body = await get(f"{base}/healthz")
            return body if status == 503 else None

        body = await eventually(replaced, timeout=60, interval=0.2)
        # At least the limit: the queue-stats loop may fail one more login before the probe reads.
        failures = re.match(r"database authentication failed (\d+) times in a row", body["detail"])
        assert failures is not None, body["detail"]
        assert int(failures.group(1)) >= 3
        assert "DB_AUTH_FAILURE_LIMIT=3" in body["detail"]
        assert "InvalidPasswordError" in body["detail"]
        status, ready = await get(f"{base}/readyz")
        assert status == 503
        assert ready["checks"]["database"].startswith("unreachable")

        # The old password back (what a new task's secret would hold): the next login resets.
        await rotating_role.admin(f"ALTER ROLE {ROLE} PASSWORD 'first'")

        async def healthy() -> bool:
            await get(f"{base}/readyz")
            return (await get(f"{base}/healthz"))[0] == 200

        await eventually(healthy, timeout=60, interval=0.2)
    finally:
        app.stop_requested.set()
        await asyncio.wait_for(task, timeout=60)


async def test_failures_below_the_limit_or_interrupted_by_a_login_stay_healthy(
    rotating_role: PasswordServer,
) -> None:
    watch = AuthFailureWatch(limit=2)
    with pytest.raises(asyncpg.exceptions.InvalidPasswordError):
        await watch.connect(rotating_role.url("wrong"))
    assert watch.problem() is None
    connection = await watch.connect(rotating_role.url("first"))
    await connection.close()
    for _ in range(2):
        with pytest.raises(asyncpg.exceptions.InvalidPasswordError):
            await watch.connect(rotating_role.url("wrong"))
    problem = watch.problem()
    assert problem is not None
    assert problem.startswith("database authentication failed 2 times in a row")
