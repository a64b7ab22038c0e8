"""Ordered SQL migrations, recorded in a table and serialised by an advisory lock so that several
tasks starting together apply each migration exactly once. The SQL files live beside the contract
SQL both sides run (`jobcore/migrations/`); this runner is the worker's `image-worker migrate`."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import asyncpg
import structlog

log = structlog.get_logger(__name__)

# An arbitrary constant that names this project's migration lock.
MIGRATION_LOCK_ID = 0x1A6E_0001


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    sql: str


def bundled_migrations() -> list[Migration]:
    folder = resources.files("jobcore") / "migrations"
    files = sorted(
        (entry for entry in folder.iterdir() if entry.name.endswith(".sql")), key=lambda e: e.name
    )
    return [Migration(entry.name.removesuffix(".sql"), entry.read_text()) for entry in files]


async def migrate(connection: asyncpg.Connection) -> list[str]:
    """Apply the migrations not yet recorded; return the versions applied now."""
    applied_now: list[str] = []
    await connection.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
    try:
        await connection.execute(
            """CREATE TABLE IF NOT EXISTS image_worker_migrations (
                   version text PRIMARY KEY,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {
            r["version"]
            for r in await connection.fetch("SELECT version FROM image_worker_migrations")
        }
        for migration in bundled_migrations():
            if migration.version in done:
                continue
            async with connection.transaction():
                await connection.execute(migration.sql)
                await connection.execute(
                    "INSERT INTO image_worker_migrations (version) VALUES ($1)", migration.version
                )
            log.info("migration applied", version=migration.version)
            applied_now.append(migration.version)
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
    return applied_now


async def migrate_url(database_url: str) -> list[str]:
    connection = await asyncpg.connect(database_url)
    try:
        return await migrate(connection)
    finally:
        await connection.close()
