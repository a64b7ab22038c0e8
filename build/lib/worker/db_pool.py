"""The worker's database pool. TLS comes from DATABASE_URL (or PGSSLMODE/PGSSLROOTCERT):
`?sslmode=verify-full&sslrootcert=<CA bundle>` checks the server's certificate and host name;
the module's `rds_json` URLs carry both (docs/deploy.md)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from worker.settings import Settings


async def open_pool(
    settings: Settings, *, connect: Callable[..., Awaitable[Any]] | None = None
) -> asyncpg.Pool:
    """`connect`: asyncpg's connection factory hook (the worker counts failed logins with it)."""
    return await asyncpg.create_pool(
        settings.database_url,
        connect=connect,
        min_size=1,
        max_size=settings.db_pool_size,
        command_timeout=30,
        max_inactive_connection_lifetime=300,
    )
