"""check_health() and `image-jobs health` against the real stack: healthy, and with real failures
(a queue that does not exist, a missing bucket, a closed database port, a hung endpoint). A check
never raises; each is bounded by its timeout."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from urllib.parse import urlsplit

import pytest

from api_client.client import JobClient
from api_client.health import HealthReport
from tests.cli_runs import SCRIPT
from tests.conftest import Aws
from tests.faults import FaultProxy
from tests.helpers import settings_for, unused_port

CHECKS = ["database", "queue", "dlq", "source_bucket", "pending"]


def by_name(report: HealthReport) -> dict[str, tuple[bool, str]]:
    return {check.name: (check.ok, check.detail) for check in report.checks}


async def test_a_healthy_stack_reports_every_check_ok(producer: JobClient) -> None:
    report = await producer.check_health()
    assert report.ok
    assert [check.name for check in report.checks] == CHECKS
    assert all(check.latency_seconds > 0 for check in report.checks)
    checks = by_name(report)
    assert checks["queue"][1] == "visible=0 in_flight=0 delayed=0"
    assert checks["source_bucket"][1] == f"s3://{producer.settings.source_bucket} reachable"


async def test_a_missing_queue_and_bucket_fail_their_checks_only(
    database_url: str, aws: Aws
) -> None:
    gone = aws.queue_url.rsplit("/", 1)[0] + f"/gone-{uuid.uuid4().hex[:6]}"
    settings = settings_for(database_url, aws, queue_url=gone, source_bucket="no-such-bucket")
    async with JobClient.connect(settings) as client:
        report = await client.check_health()
    checks = by_name(report)
    assert not report.ok
    assert checks["database"][0]
    assert not checks["queue"][0]
    assert "NonExistentQueue" in checks["queue"][1] or "QueueDoesNotExist" in checks["queue"][1]
    assert not checks["dlq"][0]  # found through the missing queue's RedrivePolicy
    assert not checks["source_bucket"][0]
    assert "404" in checks["source_bucket"][1]


@pytest.mark.slow  # waits out the check timeout on a hung endpoint
async def test_a_hung_endpoint_is_a_timed_out_check_not_a_hang(database_url: str, aws: Aws) -> None:
    moto = urlsplit(aws.endpoint)
    assert moto.hostname is not None
    assert moto.port is not None
    async with FaultProxy(moto.hostname, moto.port) as proxy:
        proxy.stall()
        settings = settings_for(
            database_url, aws, aws_endpoint_url=f"http://127.0.0.1:{proxy.port}"
        )
        async with JobClient.connect(settings) as client:
            report = await asyncio.wait_for(client.check_health(timeout=1.0), timeout=30)
        proxy.resume()
    checks = by_name(report)
    assert checks["database"] == (True, "job table reachable")
    for name in ("queue", "dlq", "source_bucket"):
        assert checks[name] == (False, "timed out after 1s")


async def run_cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        str(SCRIPT),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


@pytest.fixture
def cli_env(database_url: str, aws: Aws) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "SQS_QUEUE_URL": aws.queue_url,
        "AWS_ENDPOINT_URL": aws.endpoint,
        "AWS_REGION": "us-east-1",
        "SOURCE_BUCKET": aws.bucket,
        "AWS_MAX_ATTEMPTS": "1",
        "CLIENT_CONNECT_TIMEOUT_SECONDS": "2",
    }


async def test_health_command_exits_0_when_healthy(cli_env: dict[str, str]) -> None:
    code, stdout, stderr = await run_cli(cli_env, "health")
    assert code == 0, stderr
    lines = stdout.splitlines()
    assert [line.split()[:2] for line in lines[:-1]] == [[name, "ok"] for name in CHECKS]
    assert lines[-1] == "healthy"
    code, stdout, _ = await run_cli(cli_env, "health", "--json")
    assert code == 0
    document = json.loads(stdout)
    assert document["ok"] is True
    assert [check["name"] for check in document["checks"]] == CHECKS


@pytest.mark.slow  # waits out the connect timeout
async def test_health_command_with_the_database_port_closed_exits_3(
    cli_env: dict[str, str],
) -> None:
    env = {**cli_env, "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{unused_port()}/x"}
    code, stdout, stderr = await run_cli(env, "health", "--json", "--timeout", "3")
    assert code == 3, stderr
    document = json.loads(stdout)
    assert document["ok"] is False
    checks = {check["name"]: check for check in document["checks"]}
    assert checks["database"]["ok"] is False
    assert "Connect" in checks["database"]["detail"] or "refused" in checks["database"]["detail"]
    assert all(checks[name]["ok"] for name in ("queue", "dlq", "source_bucket"))
    code, stdout, _ = await run_cli(env, "health")
    assert code == 3
    assert stdout.splitlines()[0].split()[:2] == ["database", "FAILED"]
    assert stdout.splitlines()[-1] == "NOT healthy"
