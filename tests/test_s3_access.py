"""S3 honesty: names S3 cannot hold are refused at creation and fail for good in the worker; a
source outside SOURCE_BUCKETS fails for good; a 403 on a source (the worker's role may read only
part of the bucket) is "not permitted", permanent, with a reason naming bucket and key, and does
not mark S3 down.

The 403 is real: a moto server of its own, with IAM enforcement on (moto checks every request
against the caller's IAM policies once `/moto-api/reset-auth` is posted), and the worker running
as an IAM user allowed `s3:GetObject` on `allowed/*` only, with `s3:ListBucket` granted."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import aioboto3
import asyncpg
import pytest

from devstack.stack import create_queue_pair
from jobcore.job_create import JobSpec
from jobcore.jobs import JobStatus, encode_message
from jobcore.s3_names import bucket_problem, key_problem
from tests.conftest import Aws, worker_env
from tests.helpers import eventually, scrape, synthetic_scene, unused_port
from worker.app import WorkerApp
from worker.settings import Settings, SettingsError

BUCKET = "photos-iam"
OTHER_BUCKET = "elsewhere-iam"
BUCKET_ARN = f"arn:aws:s3:::{BUCKET}"
ADMIN_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}


@pytest.mark.parametrize(
    ("bucket", "problem"),
    [
        ("ab", "3-63 characters"),
        ("a" * 64, "3-63 characters"),
        ("Photos", "lowercase"),
        ("under_score", "lowercase"),
        ("-photos", "start and end"),
        ("photos.", "start and end"),
        ("my..photos", "adjacent dots"),
        ("192.168.5.4", "IP address"),
        ("xn--photos", "reserves"),
        ("photos-s3alias", "reserves"),
    ],
)
def test_bucket_names_s3_refuses_are_named(bucket: str, problem: str) -> None:
    reason = bucket_problem(bucket)
    assert reason is not None
    assert problem in reason


def test_valid_names_and_key_lengths() -> None:
    for bucket in ("abc", "photos-2024", "my.photos.bucket", "a" * 63):
        assert bucket_problem(bucket) is None, bucket
    assert key_problem("a") is None
    assert key_problem("é" * 512) is None  # 1,024 bytes
    assert "has 0" in (key_problem("") or "")
    assert "has 1026" in (key_problem("é" * 513) or "")
    assert "surrogate" in (key_problem("a\ud800") or "")


def test_a_job_spec_refuses_an_invalid_location() -> None:
    with pytest.raises(ValueError, match="bucket name 'Bad_Bucket'"):
        JobSpec(id=uuid.uuid4(), source_bucket="Bad_Bucket", source_key="a.jpg")
    with pytest.raises(ValueError, match="object key must be 1-1024 bytes"):
        JobSpec(id=uuid.uuid4(), source_bucket="photos", source_key="")


def test_source_buckets_setting_is_validated() -> None:
    base = {"DATABASE_URL": "postgresql://x/y", "SQS_QUEUE_URL": "http://q"}
    settings = Settings.from_env({**base, "SOURCE_BUCKETS": " photos-a, photos-b ,"})
    assert settings.source_buckets == {"photos-a", "photos-b"}
    assert Settings.from_env(base).source_buckets == frozenset()
    with pytest.raises(SettingsError, match="SOURCE_BUCKETS: bucket name 'Photos'"):
        Settings.from_env({**base, "SOURCE_BUCKETS": "Photos"})


def _post(url: str, data: bytes) -> None:
    request = urllib.request.Request(  # noqa: S310 - a loopback http URL made here
        url, data=data, method="POST", headers={"Content-Type": "text/plain"}
    )
    with urllib.request.urlopen(request, timeout=10):  # noqa: S310
        pass


@pytest.fixture
def iam_moto() -> Iterator[str]:
    """A moto server of its own (IAM enforcement is process-wide in moto)."""
    port = unused_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):  # noqa: S310
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.1)
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=10)


WORKER_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": "sqs:*", "Resource": "*"},
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": f"arn:aws:s3:::{BUCKET}"},
        {
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": f"arn:aws:s3:::{BUCKET}/allowed/*",
        },
        {
            "Effect": "Allow",
            "Action": "s3:PutObject",
            "Resource": f"arn:aws:s3:::{BUCKET}/cutouts/*",
        },
    ],
}


async def _user(iam: Any, name: str, policy: Mapping[str, Any]) -> dict[str, str]:
    await iam.create_user(UserName=name)
    await iam.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=json.dumps(policy))
    key = (await iam.create_access_key(UserName=name))["AccessKey"]
    return {
        "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
    }


@pytest.fixture
async def iam_aws(iam_moto: str) -> AsyncIterator[tuple[Aws, dict[str, str]]]:
    """Queues and buckets on the IAM-enforcing moto, administered by an all-powerful user; the
    worker's keys come with it. Enforcement starts once everything is set up."""
    session = aioboto3.Session()
    region = {"endpoint_url": iam_moto, "region_name": "us-east-1"}
    async with session.client("iam", **region) as iam:
        admin = await _user(iam, "admin", ADMIN_POLICY)
        worker = await _user(iam, "worker", WORKER_POLICY)
    keys = {"aws_access_key_id": admin["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": admin["AWS_SECRET_ACCESS_KEY"]}  # fmt: skip
    async with (
        session.client("sqs", **region, **keys) as sqs,
        session.client("s3", **region, **keys) as s3,
    ):
        queues = await create_queue_pair(sqs, "jobs-iam", max_receive_count=5, visibility=30)
        await s3.create_bucket(Bucket=BUCKET)
        await s3.create_bucket(Bucket=OTHER_BUCKET)
        _post(f"{iam_moto}/moto-api/reset-auth", b"0")
        yield Aws(iam_moto, queues.queue_url, queues.dlq_url, BUCKET, sqs, s3), worker


async def test_unreadable_sources_fail_for_good_without_an_s3_outage(
    iam_aws: tuple[Aws, dict[str, str]],
    database_url: str,
    model_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    aws, worker_keys = iam_aws
    scene, _ = synthetic_scene(seed=2)
    await aws.put("allowed/good.jpg", scene)
    await aws.put("secret/private.jpg", scene)
    await aws.s3.put_object(Bucket=OTHER_BUCKET, Key="allowed/good.jpg", Body=scene)
    sources = {
        "good": (BUCKET, "allowed/good.jpg"),
        "forbidden": (BUCKET, "secret/private.jpg"),
        "missing": (BUCKET, "allowed/never-uploaded.jpg"),
        "other bucket": (OTHER_BUCKET, "allowed/good.jpg"),
        "invalid bucket": ("Not_A_Bucket", "allowed/good.jpg"),
        "empty key": (BUCKET, ""),
    }
    pool = await asyncpg.connect(database_url)
    ids = {name: uuid.uuid4() for name in sources}
    try:
        # Written as a producer that skipped the checks would: straight into the table.
        for name, (bucket, key) in sources.items():
            await pool.execute(
                "INSERT INTO image_processing_jobs (id, source_bucket, source_key)"
                " VALUES ($1, $2, $3)",
                ids[name],
                bucket,
                key,
            )

        async def send(*names: str) -> None:
            for name in names:
                body = encode_message(ids[name])
                await aws.sqs.send_message(QueueUrl=aws.queue_url, MessageBody=body)

        for name, value in worker_keys.items():
            monkeypatch.setenv(name, value)
        settings = Settings.from_env(
            worker_env(database_url, aws, model_home, SOURCE_BUCKETS=f"{BUCKET},photos-spare")
        )
        app = WorkerApp(settings)
        task = asyncio.create_task(app.run())
        try:
            # The good job first: S3 is up; the failures that follow must leave it so.
            await send("good")

            async def good_done() -> bool:
                status = await pool.fetchval(
                    "SELECT status FROM image_processing_jobs WHERE id = $1", ids["good"]
                )
                return bool(status == "completed")

            await eventually(good_done, timeout=60)
            await send(*(name for name in sources if name != "good"))

            async def finished() -> list[asyncpg.Record] | None:
                rows = await pool.fetch(
                    "SELECT id, status, attempts, error FROM image_processing_jobs"
                )
                return rows if all(r["status"] in ("completed", "failed") for r in rows) else None

            rows = {r["id"]: r for r in await eventually(finished, timeout=120) or []}
            assert app.port is not None
            metrics = await scrape(f"http://127.0.0.1:{app.port}")
        finally:
            app.stop_requested.set()
            await asyncio.wait_for(task, timeout=60)
    finally:
        await pool.close()

    by_name = {name: rows[job_id] for name, job_id in ids.items()}
    assert by_name["good"]["status"] == JobStatus.COMPLETED
    expected = {
        "forbidden": f"not permitted to read source s3://{BUCKET}/secret/private.jpg",
        "missing": "does not exist",
        "other bucket": f"source bucket '{OTHER_BUCKET}' is not one of SOURCE_BUCKETS",
        "invalid bucket": "bucket name 'Not_A_Bucket'",
        "empty key": "object key must be 1-1024 bytes",
    }
    for name, reason in expected.items():
        row = by_name[name]
        assert row["status"] == JobStatus.FAILED, (name, row)
        assert reason in row["error"], (name, row["error"])
        assert row["attempts"] == 1, name
    assert metrics['image_worker_dependency_up{dependency="s3"}'] == 1
    assert metrics['image_worker_job_failures_total{kind="permanent",reason="access_denied"}'] == 1
    assert await aws.queue_counts(aws.dlq_url) == (0, 0)
