"""The one check runner: the worker's `selfcheck` (the deploy gate) and the producer's health
report run their checks here. Every check runs concurrently with the others under its own time
limit and never raises: a failure, or no answer in time, is a readable reason in its result."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

MAX_DETAIL = 500  # characters of a reason: one readable line, not a dump


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    ok: bool
    latency_seconds: float
    detail: str  # what was found (ok) or why not

    @property
    def problem(self) -> str | None:
        return None if self.ok else self.detail


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    run: Callable[[], Awaitable[str]]  # returns what it found; raises to fail
    timeout: float  # seconds


async def run_bounded(checks: Sequence[Check]) -> list[CheckResult]:
    """All `checks` at once; the results in the same order."""
    return list(await asyncio.gather(*(run_one(check) for check in checks)))


async def run_one(check: Check) -> CheckResult:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(check.timeout):
            detail = await check.run()
        ok = True
    except TimeoutError:
        ok, detail = False, f"timed out after {check.timeout:g}s"
    except Exception as exc:  # a check reports every failure as one line, never raises
        ok, detail = False, describe_error(exc)
    return CheckResult(check.name, ok, round(time.perf_counter() - started, 6), detail)


def describe_error(exc: BaseException) -> str:
    """One line: an AWS error as `Operation: Code (Message)`, anything else as `Type: text`."""
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = error.get("Code") or status or "?"
        message = error.get("Message") or ""
        line = f"{exc.operation_name}: {code}" + (f" ({message})" if message else "")
    else:
        text = " ".join(str(exc).split())
        line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return line[:MAX_DETAIL]
