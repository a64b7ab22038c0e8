"""Settings: every invalid value stops the start with a message naming the variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from worker.settings import Settings, SettingsError

VALID = {"DATABASE_URL": "postgresql://u@h/db", "SQS_QUEUE_URL": "https://sqs.example/1/q"}


def test_defaults_are_sane() -> None:
    settings = Settings.from_env(VALID)
    assert settings.wait_time_seconds == 20
    assert settings.heartbeat_interval_seconds < settings.visibility_timeout_seconds
    assert settings.drain_seconds < 120  # below the ECS stopTimeout ceiling
    assert settings.db_pool_size > settings.concurrency
    assert settings.model_run_max_seconds > settings.job_timeout_seconds


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("DATABASE_URL", "", "DATABASE_URL must be set"),
        ("DATABASE_URL", "mysql://x", "DATABASE_URL must start with"),
        ("SQS_QUEUE_URL", "", "SQS_QUEUE_URL must be set"),
        ("SQS_QUEUE_URL", "my-queue", "SQS_QUEUE_URL must start with"),
        ("WORKER_CONCURRENCY", "zero", "WORKER_CONCURRENCY='zero' is not an integer"),
        ("WORKER_CONCURRENCY", "0", "WORKER_CONCURRENCY=0 is out of range"),
        (
            "WAIT_TIME_SECONDS",
            "21",
            "WAIT_TIME_SECONDS=21 is out of range: must be between 0 and 20",
        ),
        ("VISIBILITY_TIMEOUT_SECONDS", "1", "VISIBILITY_TIMEOUT_SECONDS=1 is out of range"),
        ("HEARTBEAT_INTERVAL_SECONDS", "90", "must be shorter than VISIBILITY_TIMEOUT_SECONDS"),
        ("DRAIN_SECONDS", "nan", "DRAIN_SECONDS='nan' is not a number"),
        ("DRAIN_SECONDS", "-1", "DRAIN_SECONDS=-1 is out of range"),
        ("PNG_COMPRESS_LEVEL", "10", "PNG_COMPRESS_LEVEL=10 is out of range"),
        ("EXECUTION_PROVIDER", "tpu", "EXECUTION_PROVIDER='tpu' is not one of auto, cuda, cpu"),
        ("REQUIRE_GPU", "maybe", "REQUIRE_GPU='maybe' is not a boolean"),
        ("LOG_FORMAT", "xml", "LOG_FORMAT='xml' is not one of json, console"),
        ("METRICS_PORT", "70000", "METRICS_PORT=70000 is out of range"),
        ("MAX_IMAGE_PIXELS", "-5", "MAX_IMAGE_PIXELS=-5 is out of range"),
        ("AWS_ENDPOINT_URL", "localhost:5000", "AWS_ENDPOINT_URL must start with"),
        ("JOB_TIMEOUT_SECONDS", "0", "JOB_TIMEOUT_SECONDS=0 is out of range"),
        ("JOB_TIMEOUT_SECONDS", "soon", "JOB_TIMEOUT_SECONDS='soon' is not a number"),
        ("MODEL_RUN_MAX_SECONDS", "200", "must be longer than JOB_TIMEOUT_SECONDS=300"),
    ],
)
def test_invalid_value_names_the_variable(name: str, value: str, expected: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({**VALID, name: value})
    assert any(expected in problem for problem in caught.value.problems), caught.value.problems


def test_all_problems_reported_at_once() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"WORKER_CONCURRENCY": "x", "LOG_LEVEL": "loud"})
    text = str(caught.value)
    for name in ("DATABASE_URL", "SQS_QUEUE_URL", "WORKER_CONCURRENCY", "LOG_LEVEL"):
        assert name in text


def test_run_with_bad_setting_exits_2_naming_it() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "worker", "run"],
        env={**VALID, "WORKER_CONCURRENCY": "lots", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 2
    assert "WORKER_CONCURRENCY='lots' is not an integer" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_run_with_unreachable_database_exits_3_with_one_reason(model_home: Path) -> None:
    env = {
        **VALID,
        "U2NET_HOME": str(model_home),  # the model loads before the first connection
        "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nowhere",
        "METRICS_PORT": "0",
        "LOG_FORMAT": "console",
        "PATH": "",
    }
    completed = subprocess.run(
        [sys.executable, "-m", "worker", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,  # importing rembg may compile numba's functions first
        check=False,
    )
    assert completed.returncode == 3
    assert "cannot start" in completed.stderr
    assert "a dependency is unreachable" in completed.stderr
    assert "Traceback" not in completed.stderr
