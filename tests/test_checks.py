"""The one check runner (jobcore.checks) that selfcheck and the producer's health report share:
concurrent, each check bounded, a failure a readable line, never an exception."""

from __future__ import annotations

import asyncio
from typing import Any

from botocore.exceptions import ClientError

from jobcore.checks import Check, CheckResult, describe_error, run_bounded


async def test_checks_run_concurrently_and_keep_their_order() -> None:
    # Each check waits for the other: they pass only when both run at the same time.
    first, second = asyncio.Event(), asyncio.Event()

    async def one() -> str:
        first.set()
        await second.wait()
        return "one found"

    async def two() -> str:
        second.set()
        await first.wait()
        return "two found"

    results = await run_bounded([Check("one", one, 30), Check("two", two, 30)])
    assert [(r.name, r.ok, r.detail, r.problem) for r in results] == [
        ("one", True, "one found", None),
        ("two", True, "two found", None),
    ]
    assert all(r.latency_seconds >= 0 for r in results)


async def test_a_check_past_its_limit_is_a_timed_out_result() -> None:
    never = asyncio.Event()

    async def hangs() -> str:
        await never.wait()
        return "unreachable"

    (result,) = await run_bounded([Check("queue", hangs, 0.01)])
    assert result == CheckResult("queue", False, result.latency_seconds, "timed out after 0.01s")
    assert result.problem == "timed out after 0.01s"


async def test_an_error_is_one_readable_line() -> None:
    async def fails() -> str:
        raise ConnectionRefusedError("connect call\n failed   (127.0.0.1, 1)")

    (result,) = await run_bounded([Check("database", fails, 30)])
    assert not result.ok
    assert result.detail == "ConnectionRefusedError: connect call failed (127.0.0.1, 1)"


def test_an_aws_error_names_the_operation_and_the_code() -> None:
    error = ClientError(
        {"Error": {"Code": "NoSuchBucket", "Message": "The specified bucket does not exist"}},
        "ListObjectsV2",
    )
    assert (
        describe_error(error) == "ListObjectsV2: NoSuchBucket (The specified bucket does not exist)"
    )
    status_only: Any = {"ResponseMetadata": {"HTTPStatusCode": 403}}
    no_body = ClientError(status_only, "HeadBucket")
    assert describe_error(no_body) == "HeadBucket: 403"


def test_a_long_reason_is_cut_to_one_bounded_line() -> None:
    assert len(describe_error(ValueError("x" * 5000))) == 500
    assert describe_error(LookupError()) == "LookupError"
