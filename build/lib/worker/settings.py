"""Settings: read once from the environment into one typed, frozen object.

A bad value stops the start with a message naming the variable; every problem is reported at
once."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from jobcore.aws import AwsOptions
from jobcore.env import EnvError, EnvReader
from jobcore.recipe import MODEL_NAME as MODEL_NAME_PATTERN
from jobcore.recipe import Recipe, RecipeError
from jobcore.s3_names import bucket_problem
from jobcore.sqs import MAX_VISIBILITY_SECONDS
from worker.completion_hook import hook_name_problem

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
    # Recipes (docs: README "Recipes"). `model_name` is the default recipe's model.
    default_recipe: Recipe
    default_recipe_set: bool  # DEFAULT_RECIPE given: rows without a recipe get the quality gate
    max_image_side: int
    max_loaded_models: int
    preload_models: tuple[str, ...]
    custom_models: tuple[tuple[str, Path], ...]
    source_buckets: frozenset[str]  # empty: any bucket a job names
    memory_budget_mb: int | None  # None: from the cgroup limit; 0: no admission limit
    db_auth_failure_limit: int = 3
    completion_hook: str | None = None  # a PostgreSQL function run in the completing transaction
    events_topic_arn: str | None = None  # SNS topic for job-finished events; None: no events

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
        reader = _Reader(environ)
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
        default_recipe = reader.recipe("DEFAULT_RECIPE", "MODEL_NAME")
        batch_size = reader.integer("BATCH_SIZE", 1, low=1, high=64)
        max_loaded = reader.integer("MAX_LOADED_MODELS", 2, low=1, high=32)
        preload = reader.names("PRELOAD_MODELS", (default_recipe.model,))
        # With BATCH_SIZE > 1 the default model is preloaded (and pinned) in any case.
        preloaded = set(preload) | ({default_recipe.model} if batch_size > 1 else set())
        if len(preloaded) > max_loaded:
            reader.problems.append(
                f"PRELOAD_MODELS needs {len(preloaded)} models loaded, over "
                f"MAX_LOADED_MODELS={max_loaded}"
            )
        if batch_size > 1 and max_loaded < 2:
            # The batched default model stays loaded; another model needs a second place.
            reader.problems.append(
                f"BATCH_SIZE={batch_size} keeps the default model loaded: MAX_LOADED_MODELS "
                "must be at least 2"
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
            model_name=default_recipe.model,
            model_home=Path(reader.text("U2NET_HOME", str(Path.home() / ".u2net"))).expanduser(),
            execution_provider=reader.choice("EXECUTION_PROVIDER", "auto", EXECUTION_PROVIDERS),
            require_gpu=reader.boolean("REQUIRE_GPU", False),
            ort_intra_op_threads=reader.integer("ORT_INTRA_OP_THREADS", 0, low=0, high=256),
            ort_allow_spinning=reader.boolean("ORT_ALLOW_SPINNING", False),
            batch_size=batch_size,
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
            completion_hook=reader.completion_hook("COMPLETION_HOOK"),
            events_topic_arn=reader.optional("EVENTS_TOPIC_ARN", prefix=("arn:",)),
            default_recipe=default_recipe,
            default_recipe_set=reader.is_set("DEFAULT_RECIPE"),
            max_image_side=reader.integer("MAX_IMAGE_SIDE", 4096, low=16, high=65535),
            max_loaded_models=max_loaded,
            preload_models=preload,
            custom_models=reader.custom_models("CUSTOM_MODELS"),
            source_buckets=_source_buckets(reader),
            memory_budget_mb=(
                None
                if reader.optional("MEMORY_BUDGET_MB") is None
                else reader.integer("MEMORY_BUDGET_MB", 0, low=0, high=16 * 1024 * 1024)
            ),
        )
        reader.check(SettingsError)
        return settings


def _source_buckets(reader: EnvReader) -> frozenset[str]:
    """SOURCE_BUCKETS: a comma-separated allowlist of the buckets jobs may read from."""
    names = frozenset(n.strip() for n in reader.text("SOURCE_BUCKETS", "").split(",") if n.strip())
    for name in sorted(names):
        if (problem := bucket_problem(name)) is not None:
            reader.problem(f"SOURCE_BUCKETS: {problem}")
    return names


class _Reader(EnvReader):
    """The environment reader, with the worker's own kinds of value."""

    def completion_hook(self, name: str) -> str | None:
        value = self.raw(name)
        if value is None:
            return None
        problem = hook_name_problem(value)
        if problem is not None:
            self.problem(problem)
            return None
        return value

    def recipe(self, name: str, model_variable: str) -> Recipe:
        """The recipe for rows without one. Without DEFAULT_RECIPE it is `Recipe(model=MODEL_NAME)`;
        a DEFAULT_RECIPE without a `model` key takes MODEL_NAME; with both set they must agree."""
        model = self.raw(model_variable)
        if model is not None and not MODEL_NAME_PATTERN.match(model):
            self.problem(f"{model_variable}={model!r} is not a model name")
            model = None
        raw = self.raw(name)
        if raw is None:
            return Recipe(model=model or "u2netp")
        try:
            data = json.loads(raw)
            if isinstance(data, dict) and "model" not in data and model is not None:
                data = {**data, "model": model}
            recipe = Recipe.from_json(data)
        except (json.JSONDecodeError, RecipeError, TypeError) as exc:
            self.problem(f"{name} is not a valid recipe: {exc}")
            return Recipe(model=model or "u2netp")
        if model is not None and recipe.model != model:
            self.problem(
                f"{name} has model {recipe.model!r} but {model_variable}={model!r}: "
                f"set one of them, or the same model in both"
            )
        return recipe

    def names(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        raw = self.raw(name)
        if raw is None:
            return default
        names = tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
        for item in names:
            if not MODEL_NAME_PATTERN.match(item):
                self.problem(f"{name}: {item!r} is not a model name")
                return default
        return names

    def custom_models(self, name: str) -> tuple[tuple[str, Path], ...]:
        """`name=/path/model.onnx,...`: ONNX files run as u2net-family models."""
        raw = self.raw(name)
        if raw is None:
            return ()
        found: dict[str, Path] = {}
        for part in (p.strip() for p in raw.split(",")):
            model, sep, path = part.partition("=")
            model, path = model.strip(), path.strip()
            if not sep or not MODEL_NAME_PATTERN.match(model) or not path:
                self.problem(f"{name}: {part!r} is not name=/path/model.onnx")
                continue
            if model in found:
                self.problem(f"{name}: {model!r} is named twice")
            found[model] = Path(path).expanduser()
        return tuple(found.items())
