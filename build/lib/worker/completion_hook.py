"""The completion hook: an operator's PostgreSQL function (COMPLETION_HOOK, e.g.
`app.attach_processed_image`) that the worker calls inside the transaction completing a job:

    SELECT <hook>(job_id uuid, book_id text, outputs jsonb)

so an app sharing the database records its new image atomically with the completion. A hook that
raises rolls the completion back and fails the attempt as transient with its error. The function
must exist with that signature, executable by the worker's role, or the worker refuses to start."""

from __future__ import annotations

import re
from typing import Any

from worker.errors import JobFailed, transient

# An unquoted (lower-case folded) name, optionally schema-qualified: it is put into SQL as it is.
HOOK_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$")
HOOK_ARGUMENTS = "(uuid, text, jsonb)"
MAX_HOOK_ERROR_CHARS = 400


class CompletionHookMissing(RuntimeError):
    """COMPLETION_HOOK names no function the worker can call with (uuid, text, jsonb)."""


def hook_name_problem(name: str) -> str | None:
    if HOOK_NAME.fullmatch(name):
        return None
    return (
        f"COMPLETION_HOOK={name!r} is not a function name (an identifier, optionally "
        "schema-qualified: letters, digits, underscores, e.g. app.attach_processed_image)"
    )


def hook_call_sql(name: str) -> str:
    return f"SELECT {name}($1::uuid, $2::text, $3::jsonb)"


def hook_failure(name: str, exc: BaseException) -> JobFailed:
    text = str(exc) or type(exc).__name__
    reason = f"completion hook {name} failed: {text}"
    return transient("completion_hook", reason[:MAX_HOOK_ERROR_CHARS])


async def check_completion_hook(executor: Any, name: str) -> None:
    """Raise CompletionHookMissing unless `name(uuid, text, jsonb)` exists and the worker's role
    may execute it. `executor`: an asyncpg pool or connection."""
    row = await executor.fetchrow(
        """SELECT p.oid IS NOT NULL AS found,
                  p.oid IS NOT NULL AND has_function_privilege(p.oid, 'EXECUTE') AS allowed
             FROM (SELECT to_regprocedure($1)::oid AS oid) AS p""",
        name + HOOK_ARGUMENTS,
    )
    if not row["found"]:
        raise CompletionHookMissing(
            f"COMPLETION_HOOK={name}: no function {name}{HOOK_ARGUMENTS} in the database (create "
            "it, fix the name or its argument types, or unset COMPLETION_HOOK)"
        )
    if not row["allowed"]:
        raise CompletionHookMissing(
            f"COMPLETION_HOOK={name}: the worker's database role may not execute "
            f"{name}{HOOK_ARGUMENTS} (GRANT EXECUTE ON FUNCTION ... TO the worker's role)"
        )
