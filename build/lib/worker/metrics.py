"""Prometheus metrics. One registry per worker instance, so several workers in one process
(tests) never share counters. Names follow docs/architecture.md: `image_worker_` prefix, seconds and
bytes, `_total` counters."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

# Stage times range from milliseconds (decode of a thumbnail) to tens of seconds (CPU inference of
# a huge photo behind a backlog).
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)  # BATCH_SIZE is at most 64
RECIPE_FORMATS = ("png", "webp", "jpeg")
RECIPE_BACKGROUNDS = ("transparent", "auto", "colour")
STAGES = (
    "claim", "download", "decode", "preprocess", "inference", "encode", "upload", "complete"
)  # fmt: skip


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.jobs = Counter(
            "image_worker_jobs",
            "Jobs finished by this worker, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.failures = Counter(
            "image_worker_job_failures",
            "Job attempts that failed, by kind (permanent/transient) and reason code.",
            ["kind", "reason"],
            registry=r,
        )
        self.stage_seconds = Histogram(
            "image_worker_stage_duration_seconds",
            "Time spent in each pipeline stage.",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.job_seconds = Histogram(
            "image_worker_job_duration_seconds",
            "Time from claim to result recorded, for completed jobs.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.end_to_end_seconds = Histogram(
            "image_worker_end_to_end_seconds",
            "Time from message sent to job completed.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "image_worker_jobs_in_flight", "Messages being worked on now.", registry=r
        )
        self.concurrency = Gauge(
            "image_worker_concurrency_limit", "Configured WORKER_CONCURRENCY.", registry=r
        )
        self.messages_received = Counter(
            "image_worker_messages_received", "SQS messages received.", registry=r
        )
        self.empty_receives = Counter(
            "image_worker_empty_receives", "Long polls that returned no message.", registry=r
        )
        self.receive_errors = Counter(
            "image_worker_receive_errors", "ReceiveMessage calls that failed.", registry=r
        )
        self.malformed_messages = Counter(
            "image_worker_malformed_messages", "Messages deleted for a malformed body.", registry=r
        )
        self.visibility_extensions = Counter(
            "image_worker_visibility_extensions",
            "Visibility-timeout extensions sent for in-flight messages.",
            registry=r,
        )
        self.deletes = Counter(
            "image_worker_messages_deleted", "Messages deleted from the queue.", registry=r
        )
        self.bytes_processed = Counter(
            "image_worker_bytes",
            "Image bytes read from and written to S3.",
            ["direction"],
            registry=r,
        )
        self.model_load_seconds = Gauge(
            "image_worker_model_load_seconds",
            "Seconds taken to load the model and run its warm-up inference.",
            registry=r,
        )
        self.inference_seconds = Histogram(
            "image_worker_inference_seconds",
            "Model run time per image (inside the inference thread).",
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.model_info = Info(
            "image_worker_model", "Model and ONNX Runtime execution provider in use.", registry=r
        )
        self.last_poll = Gauge(
            "image_worker_last_poll_timestamp_seconds",
            "Unix time of the last completed receive call.",
            registry=r,
        )
        self.dependency_up = Gauge(
            "image_worker_dependency_up",
            "1 when the last call to a dependency succeeded, else 0.",
            ["dependency"],
            registry=r,
        )
        self.queue_messages = Gauge(
            "image_worker_queue_messages",
            "Messages in the job queue and its DLQ by state (fleet-wide: aggregate with max).",
            ["queue", "state"],
            registry=r,
        )
        self.open_jobs = Gauge(
            "image_worker_open_jobs",
            "Job rows not yet finished, by status (fleet-wide: aggregate with max).",
            ["status"],
            registry=r,
        )
        self.oldest_pending_age = Gauge(
            "image_worker_oldest_pending_job_age_seconds",
            "Age of the oldest pending job row (fleet-wide: aggregate with max).",
            registry=r,
        )
        self.batch_size = Histogram(
            "image_worker_inference_batch_size",
            "Images per model run of the micro-batcher (BATCH_SIZE > 1).",
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.overlapped_runs = Counter(
            "image_worker_overlapped_model_runs",
            "CPU model runs that started while another was running (one intra-op thread each).",
            registry=r,
        )
        self.job_timeouts = Counter(
            "image_worker_job_timeouts",
            "Jobs given up after JOB_TIMEOUT_SECONDS, by the stage they were in.",
            ["stage"],
            registry=r,
        )
        self.stuck_model_runs = Gauge(
            "image_worker_stuck_model_runs",
            "Model runs still running past JOB_TIMEOUT_SECONDS (a thread inside ONNX Runtime"
            " cannot be stopped; their jobs were given up).",
            registry=r,
        )
        self.loop_restarts = Counter(
            "image_worker_background_loop_restarts",
            "Background loops restarted by the supervisor after a crash, by loop.",
            ["loop"],
            registry=r,
        )
        self.loop_up = Gauge(
            "image_worker_background_loop_up",
            "1 while a supervised background loop runs, 0 while it waits to be restarted.",
            ["loop"],
            registry=r,
        )
        self.oldest_queue_failed_age = Gauge(
            "image_worker_oldest_queue_failed_job_age_seconds",
            "Age of the oldest queue_failed job row, 0 when none: a row whose message was never "
            "sent waits for the recovery sweep (fleet-wide: aggregate with max).",
            registry=r,
        )
        self.oldest_pending_idle = Gauge(
            "image_worker_oldest_pending_job_idle_seconds",
            "Time since the least recently sent (or re-sent, or released) pending job row was "
            "touched, 0 when none: grows past the sweep's threshold when a lost message is not "
            "re-sent (fleet-wide: aggregate with max).",
            registry=r,
        )
        self.events = Counter(
            "image_worker_events",
            "Job-finished events this worker published to SNS (EVENTS_TOPIC_ARN), by outcome; a"
            " failed one is left to the recovery sweep's catch-up.",
            ["outcome"],
            registry=r,
        )
        self.cancel_cleanup_failures = Counter(
            "image_worker_cancel_cleanup_failures",
            "Objects of a cancelled job that could not be deleted (logged with their keys).",
            registry=r,
        )
        for outcome in ("published", "failed"):
            self.events.labels(outcome)
        # Recipes. Label values come from fixed sets: model names (rembg's list and
        # CUSTOM_MODELS), yes/no flags, formats and background kinds.
        self.recipe_jobs = Counter(
            "image_worker_recipe_jobs",
            "Completed jobs by the model that produced the result, matting on/off and whether it"
            " was the recipe's fallback model.",
            ["model", "matting", "fallback"],
            registry=r,
        )
        self.quality_gate_failures = Counter(
            "image_worker_quality_gate_failures",
            "Attempts ended by the quality gate (empty mask or subject under min_subject_px), by"
            " model and what follows: the fallback model's attempt, or the job failing.",
            ["model", "next"],
            registry=r,
        )
        self.recipe_outputs = Counter(
            "image_worker_recipe_outputs",
            "Result images written, by format and background kind (thumbnails not counted).",
            ["format", "background"],
            registry=r,
        )
        self.thumbnails = Counter(
            "image_worker_thumbnails", "Thumbnails written (JPEG).", registry=r
        )
        self.models_loaded = Gauge(
            "image_worker_models_loaded",
            "Models loaded now (at most MAX_LOADED_MODELS).",
            registry=r,
        )
        self.model_loads = Counter(
            "image_worker_model_loads",
            "Model loads (preload or first use), by model.",
            ["model"],
            registry=r,
        )
        self.model_evictions = Counter(
            "image_worker_model_evictions",
            "Models unloaded to make room for another (MAX_LOADED_MODELS).",
            registry=r,
        )
        for fmt in RECIPE_FORMATS:
            for background in RECIPE_BACKGROUNDS:
                self.recipe_outputs.labels(fmt, background)
        self.memory_budget = Gauge(
            "image_worker_memory_budget_bytes",
            "Memory jobs may hold at once (MEMORY_BUDGET_MB); 0 when admission is off.",
            registry=r,
        )
        self.memory_reserved = Gauge(
            "image_worker_memory_reserved_bytes",
            "Memory reserved by running jobs, estimated from their image headers.",
            registry=r,
        )
        self.memory_waiting = Gauge(
            "image_worker_memory_waiting_jobs", "Jobs waiting for room in the budget.", registry=r
        )
        self.stuck_cpu_work = Gauge(
            "image_worker_stuck_cpu_work",
            "CPU-pool calls (decode, encode) still running past JOB_TIMEOUT_SECONDS.",
            registry=r,
        )
        for stage in STAGES:
            self.stage_seconds.labels(stage)
            self.job_timeouts.labels(stage)
        for outcome in ("completed", "failed", "cancelled", "retried", "skipped"):
            self.jobs.labels(outcome)
        for dependency in ("database", "sqs", "s3"):
            self.dependency_up.labels(dependency).set(1)
        self.bytes_processed.labels("in")
        self.bytes_processed.labels("out")

    def show_default_recipe(self, model: str, matting: bool) -> None:
        """Export the default recipe's series at 0 from the start, so that rates over them
        have data before the first job."""
        self.recipe_jobs.labels(model, "yes" if matting else "no", "no")
        for step in ("fallback", "failed"):
            self.quality_gate_failures.labels(model, step)

    @contextmanager
    def time_stage(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.stage_seconds.labels(stage).observe(time.perf_counter() - started)
