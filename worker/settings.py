"""Settings: read once from the environment into one typed, frozen object.

A bad value stops the start with a message naming the variable; every problem is reported at
once."""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from jobcore.s3_names import bucket_problem

EXECUTION_PROVIDERS = ("auto", "cuda", "cpu")
LOG_FORMATS = ("json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")


class SettingsError(ValueError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid settings:\n  " + "\n  ".join(problems))
        self.problems = problems


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
    source_buckets: frozenset[str]  # empty: any bucket a job names
    memory_budget_mb: int | None  # None: from the cgroup limit; 0: no admission limit

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        reader = _Reader(os.environ if environ is None else environ)
        concurrency = reader.integer("WORKER_CONCURRENCY", 4, low=1, high=256)
        visibility = reader.integer("VISIBILITY_TIMEOUT_SECONDS", 60, low=2, high=43200)
        heartbeat = reader.number("HEARTBEAT_INTERVAL_SECONDS", visibility / 3, low=0.5)
        if heartbeat >= visibility:
            reader.problems.append(
                f"HEARTBEAT_INTERVAL_SECONDS={heartbeat:g} must be shorter than "
                f"VISIBILITY_TIMEOUT_SECONDS={visibility}"
            )
        job_timeout = reader.number("JOB_TIMEOUT_SECONDS", 300.0, low=1.0, high=43200)
        model_run_max = reader.number("MODEL_RUN_MAX_SECONDS", 3 * job_timeout, low=1.0)
        if model_run_max <= job_timeout:
            reader.problems.append(
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
            backoff_base_seconds=reader.number("BACKOFF_BASE_SECONDS", 2.0, low=0.0),
            backoff_max_seconds=reader.number("BACKOFF_MAX_SECONDS", 300.0, low=0.0, high=43200),
            drain_seconds=reader.number("DRAIN_SECONDS", 90.0, low=0.0, high=3600),
            job_timeout_seconds=job_timeout,
            model_run_max_seconds=model_run_max,
            metrics_host=reader.text("METRICS_HOST", "0.0.0.0"),  # noqa: S104 - scraped in-VPC
            metrics_port=reader.integer("METRICS_PORT", 9100, low=0, high=65535),
            health_stale_seconds=reader.number("HEALTH_STALE_SECONDS", 90.0, low=1.0),
            db_pool_size=reader.integer("DB_POOL_SIZE", concurrency + 2, low=1, high=500),
            log_format=reader.choice("LOG_FORMAT", "json", LOG_FORMATS),
            log_level=reader.choice("LOG_LEVEL", "info", LOG_LEVELS),
            queue_stats_interval_seconds=reader.number(
                "QUEUE_STATS_INTERVAL_SECONDS", 30.0, low=0.5, high=3600
            ),
            source_buckets=_source_buckets(reader),
            memory_budget_mb=(
                None
                if reader.optional("MEMORY_BUDGET_MB") is None
                else reader.integer("MEMORY_BUDGET_MB", 0, low=0, high=16 * 1024 * 1024)
            ),
        )
        if reader.problems:
            raise SettingsError(reader.problems)
        return settings


def _source_buckets(reader: _Reader) -> frozenset[str]:
    """SOURCE_BUCKETS: a comma-separated allowlist of the buckets jobs may read from."""
    names = frozenset(n.strip() for n in reader.text("SOURCE_BUCKETS", "").split(",") if n.strip())
    for name in sorted(names):
        if (problem := bucket_problem(name)) is not None:
            reader.problems.append(f"SOURCE_BUCKETS: {problem}")
    return names


class _Reader:
    """Parses variables, collecting problems instead of stopping at the first."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[str] = []

    def _raw(self, name: str) -> str | None:
        value = self.environ.get(name)
        return value.strip() if value is not None and value.strip() != "" else None

    def required(self, name: str, *, prefix: tuple[str, ...] = ()) -> str:
        value = self._raw(name)
        if value is None:
            self.problems.append(f"{name} is required but not set")
            return ""
        return self._check_prefix(name, value, prefix)

    def optional(self, name: str, *, prefix: tuple[str, ...] = ()) -> str | None:
        value = self._raw(name)
        return None if value is None else self._check_prefix(name, value, prefix)

    def _check_prefix(self, name: str, value: str, prefix: tuple[str, ...]) -> str:
        if prefix and not value.startswith(prefix):
            self.problems.append(f"{name} must start with {' or '.join(prefix)}")
        return value

    def text(self, name: str, default: str) -> str:
        return self._raw(name) or default

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = (self._raw(name) or default).lower()
        if value not in choices:
            self.problems.append(f"{name}={value!r} is not one of {', '.join(choices)}")
            return default
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self._raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        self.problems.append(f"{name}={value!r} is not a boolean (true/false/1/0)")
        return default

    def integer(
        self, name: str, default: int, *, low: int | None = None, high: int | None = None
    ) -> int:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            self.problems.append(f"{name}={raw!r} is not an integer")
            return default
        return value if self._in_range(name, raw, value, low, high) else default

    def number(
        self, name: str, default: float, *, low: float | None = None, high: float | None = None
    ) -> float:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            self.problems.append(f"{name}={raw!r} is not a number")
            return default
        return value if self._in_range(name, raw, value, low, high) else default

    def _in_range(
        self, name: str, raw: str, value: float, low: float | None, high: float | None
    ) -> bool:
        if (low is None or value >= low) and (high is None or value <= high):
            return True
        if high is None:
            bounds = f"at least {low}"
        elif low is None:
            bounds = f"at most {high}"
        else:
            bounds = f"between {low} and {high}"
        self.problems.append(f"{name}={raw} is out of range: must be {bounds}")
        return False
