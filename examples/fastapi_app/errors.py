"""Errors the example turns into generic answers: the details go to the log, never to the
caller (no exception text, no bucket or key from a storage error)."""

from __future__ import annotations

import asyncpg
from botocore.exceptions import BotoCoreError, ClientError

from examples.fastapi_app.operations import Outcome

DATABASE_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)
STORAGE_ERRORS = (ClientError, BotoCoreError)
SERVICE_ERRORS = (*DATABASE_ERRORS, *STORAGE_ERRORS)

COPY_ERRORS = {
    "NoSuchKey": "photo not found",
    "404": "photo not found",
    "NoSuchBucket": "photo not found",
    "AccessDenied": "photo not readable",
    "403": "photo not readable",
}


def unavailable() -> Outcome:
    return Outcome(503, "A service this page needs is unavailable; try again shortly.")


def copy_error(exc: BaseException) -> str:
    """A short, generic reason for a failed photo copy."""
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        return COPY_ERRORS.get(code, "photo could not be copied")
    return "photo could not be copied"
