"""Database authentication failures as a health problem.

ECS injects the database secret when a task starts. After the password rotates, the connections
a task holds keep working (PostgreSQL does not drop them), but every new one fails to
authenticate, and the worker would treat that as a database outage for ever: jobs retried until
the DLQ. Counting consecutive authentication failures of new connections and failing `/healthz`
past `DB_AUTH_FAILURE_LIMIT` makes ECS replace the task, and the new task reads the current
secret. Any connection that authenticates resets the count.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import structlog

log = structlog.get_logger(__name__)

# SQLSTATE class 28 (invalid authorization specification): wrong password (28P01), unknown or
# NOLOGIN role, no pg_hba entry (28000).
AUTH_ERRORS = (
    asyncpg.exceptions.InvalidPasswordError,
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,
)


class AuthFailureWatch:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.consecutive = 0
        self.last_error = ""

    async def connect(self, *args: Any, **kwargs: Any) -> asyncpg.Connection:
        """asyncpg.connect for the pool (`create_pool(connect=...)`), counting auth failures."""
        try:
            connection = await asyncpg.connect(*args, **kwargs)
        except AUTH_ERRORS as exc:
            self.consecutive += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.error(
                "database authentication failed",
                consecutive=self.consecutive,
                limit=self.limit,
                error=self.last_error,
            )
            raise
        if self.consecutive:
            log.info("database authentication works again", after_failures=self.consecutive)
        self.consecutive = 0
        return connection

    def problem(self) -> str | None:
        """A /healthz check: why the task should be replaced, or None."""
        if self.consecutive < self.limit:
            return None
        return (
            f"database authentication failed {self.consecutive} times in a row "
            f"(DB_AUTH_FAILURE_LIMIT={self.limit}; last: {self.last_error}): the credentials "
            "changed (secret rotated?); a new task reads the current secret"
        )
