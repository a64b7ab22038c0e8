"""Settings: read once from the environment into one typed, frozen object.

A bad value stops the start with a message naming the variable; every problem is reported at
once."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from jobcore.aws import AwsOptions
from jobcore.env import EnvError, EnvReader
from jobcore.sqs import MAX_VISIBILITY_SECONDS

EXECUTION_PROVIDERS = ("auto", "cuda", "cpu")
LOG_FORMATS = ("json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")


class SettingsError(EnvError):
    """The worker's settings problems, one line each."""


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str
    queue_url: str
    aws_region: str
    aws_endpoint_url: str | None
    result_bucket: str | None  # None: write the cut-out next to its source
    result_prefix: str
    worker_id: str
    concurrency: int
    inference_threads: int
    cpu_threads: int
    model_name: str
    model_home: Path
    execution_provider: str
    require_gpu: bool
    ort_intra_op_threads: int
    ort_allow_spinning: bool
    batch_size: int
    batch_wait_seconds: float
    png_compress_level: int
    max_image_bytes: int
    max_image_pixels: int
    max_attempts: int
    wait_time_seconds: int
    visibility_timeout_seconds: int
    heartbeat_interval_seconds: float
    backoff_base_seconds: float
    backoff_max_seconds: float
    drain_seconds: float
    job_timeout_seconds: float
    model_run_max_seconds: float
    metrics_host: str
    metrics_port: int
    health_stale_seconds: float
    db_pool_size: int
    log_format: str
    log_level: str
    queue_stats_interval_seconds: float
    db_auth_failure_limit: int = 3

    def aws_options(self) -> AwsOptions:
        """The worker's AWS clients: a read timeout longer than a long poll, a connection per
        held message and then some."""
        return AwsOptions(
            region=self.aws_region,
            endpoint_url=self.aws_endpoint_url,
            connect_timeout=5.0,
            read_timeout=self.wait_time_seconds + 15.0,
            max_attempts=3,
            max_pool_connections=max(10, self.concurrency * 2),
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        reader = EnvReader(environ)
        concurrency = reader.integer("WORKER_CONCURRENCY", 4, low=1, high=256)
        visibility = reader.integer(
            "VISIBILITY_TIMEOUT_SECONDS", 60, low=2, high=MAX_VISIBILITY_SECONDS
        )
        heartbeat = reader.duration("HEARTBEAT_INTERVAL_SECONDS", visibility / 3, low=0.5)
        if heartbeat >= visibility:
            reader.problem(
                f"HEARTBEAT_INTERVAL_SECONDS={heartbeat:g} must be shorter than "
                f"VISIBILITY_TIMEOUT_SECONDS={visibility}"
            )
        job_timeout = reader.duration(
            "JOB_TIMEOUT_SECONDS", 300.0, low=1.0, high=MAX_VISIBILITY_SECONDS
        )
        model_run_max = reader.duration("MODEL_RUN_MAX_SECONDS", 3 * job_timeout, low=1.0)
        if model_run_max <= job_timeout:
            reader.problem(
                f"MODEL_RUN_MAX_SECONDS={model_run_max:g} must be longer than "
                f"JOB_TIMEOUT_SECONDS={job_timeout:g}"
            )
        settings = cls(
            database_url=reader.required("DATABASE_URL", prefix=("postgres://", "postgresql://")),
            queue_url=reader.required("SQS_QUEUE_URL", prefix=("http://", "https://")),
            aws_region=reader.text("AWS_REGION", reader.text("AWS_DEFAULT_REGION", "us-east-1")),
            aws_endpoint_url=reader.optional("AWS_ENDPOINT_URL", prefix=("http://", "https://")),
            result_bucket=reader.optional("RESULT_BUCKET"),
            result_prefix=reader.text("RESULT_PREFIX", "cutouts/"),
            worker_id=reader.text("WORKER_ID", f"{socket.gethostname()}-{os.getpid()}"),
            concurrency=concurrency,
            inference_threads=reader.integer("INFERENCE_THREADS", 2, low=1, high=64),
            cpu_threads=reader.integer("CPU_THREADS", max(2, os.cpu_count() or 2), low=1, high=256),
            model_name=reader.text("MODEL_NAME", "u2netp"),
            model_home=Path(reader.text("U2NET_HOME", str(Path.home() / ".u2net"))).expanduser(),
            execution_provider=reader.choice("EXECUTION_PROVIDER", "auto", EXECUTION_PROVIDERS),
            require_gpu=reader.boolean("REQUIRE_GPU", False),
            ort_intra_op_threads=reader.integer("ORT_INTRA_OP_THREADS", 0, low=0, high=256),
            ort_allow_spinning=reader.boolean("ORT_ALLOW_SPINNING", False),
            batch_size=reader.integer("BATCH_SIZE", 1, low=1, high=64),
            batch_wait_seconds=reader.number("BATCH_WAIT_MS", 5.0, low=0.0, high=1000) / 1000,
            png_compress_level=reader.integer("PNG_COMPRESS_LEVEL", 1, low=0, high=9),
            max_image_bytes=reader.integer("MAX_IMAGE_BYTES", 50 * 1024 * 1024, low=1),
            max_image_pixels=reader.integer("MAX_IMAGE_PIXELS", 64_000_000, low=1),
            max_attempts=reader.integer("MAX_ATTEMPTS", 5, low=1, high=1000),
            wait_time_seconds=reader.integer("WAIT_TIME_SECONDS", 20, low=0, high=20),
            visibility_timeout_seconds=visibility,
            heartbeat_interval_seconds=heartbeat,
            backoff_base_seconds=reader.duration("BACKOFF_BASE_SECONDS", 2.0),
            backoff_max_seconds=reader.duration(
                "BACKOFF_MAX_SECONDS", 300.0, high=MAX_VISIBILITY_SECONDS
            ),
            drain_seconds=reader.duration("DRAIN_SECONDS", 90.0, high=3600),
            job_timeout_seconds=job_timeout,
            model_run_max_seconds=model_run_max,
            metrics_host=reader.text("METRICS_HOST", "0.0.0.0"),  # noqa: S104 - scraped in-VPC
            metrics_port=reader.integer("METRICS_PORT", 9100, low=0, high=65535),
            health_stale_seconds=reader.duration("HEALTH_STALE_SECONDS", 90.0, low=1.0),
            db_pool_size=reader.integer("DB_POOL_SIZE", concurrency + 2, low=1, high=500),
            log_format=reader.choice("LOG_FORMAT", "json", LOG_FORMATS),
            log_level=reader.choice("LOG_LEVEL", "info", LOG_LEVELS),
            queue_stats_interval_seconds=reader.duration(
                "QUEUE_STATS_INTERVAL_SECONDS", 30.0, low=0.5, high=3600
            ),
            db_auth_failure_limit=reader.integer("DB_AUTH_FAILURE_LIMIT", 3, low=1, high=1000),
        )
        reader.check(SettingsError)
        return settings
