"""Lifecycle: one AsyncExitStack opens everything in order (metrics/health server, thread pools,
model registry, database pool, AWS clients) and closes it in reverse. Whoever opens a resource
closes it."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import aioboto3
import structlog

from jobcore.aws import aws_client
from jobcore.event_outbox import EventPublisher
from worker.admission import MIB, MemoryAdmission, default_budget_bytes
from worker.completion_hook import check_completion_hook
from worker.consumer import Consumer
from worker.db_auth import AuthFailureWatch
from worker.db_pool import open_pool
from worker.events import WorkerEvents
from worker.health import HealthServer, HealthState
from worker.job_table import JobStore
from worker.metrics import WorkerMetrics
from worker.models import ModelRegistry
from worker.pipeline import JobProcessor
from worker.queue_stats import QueueStatsPoller
from worker.settings import Settings
from worker.supervisor import Supervisor
from worker.watchdog import StuckRunCheck, TimedThreadPool

log = structlog.get_logger(__name__)


def memory_budget_bytes(settings: Settings) -> int | None:
    """MEMORY_BUDGET_MB; unset: from the cgroup limit less what the process holds; 0: none."""
    if settings.memory_budget_mb is None:
        return default_budget_bytes()
    return settings.memory_budget_mb * MIB or None


class WorkerApp:
    """Runs until `stop` is set, then drains and closes. `ready` is set once the first receive
    can happen (model warm, clients open); `port` is the bound metrics port."""

    def __init__(self, settings: Settings, metrics: WorkerMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or WorkerMetrics()
        self.health = HealthState(stale_after=settings.health_stale_seconds)
        self.stop_requested = asyncio.Event()
        self.ready = asyncio.Event()
        self.port: int | None = None
        self.provider: str | None = None
        self.model: ModelRegistry | None = None
        self.cpu_pool: TimedThreadPool | None = None

    async def run(self) -> None:
        settings = self.settings
        log.info("worker starting", worker_id=settings.worker_id, concurrency=settings.concurrency)
        async with AsyncExitStack() as stack:
            server = await stack.enter_async_context(
                HealthServer(
                    settings.metrics_host, settings.metrics_port, self.metrics, self.health
                )
            )
            self.port = server.port
            # The model first: it needs no network (the weights are local), and a missing GPU or
            # corrupt weights refuse the start before any connection is opened.
            cpu_pool = stack.enter_context(
                TimedThreadPool(max_workers=settings.cpu_threads, thread_name_prefix="cpu")
            )
            self.cpu_pool = cpu_pool
            model = ModelRegistry(settings, self.metrics)
            stack.callback(model.close)
            self.model = model
            await model.preload(settings.preload_models)  # each loaded and warmed up
            self.provider = model.provider
            self.metrics.model_info.info(
                {"model": settings.model_name, "provider": model.provider or "none"}
            )
            self.metrics.show_default_recipe(settings.model_name, settings.default_recipe.matting)
            self.health.model_loaded = True
            stuck_runs = StuckRunCheck(
                model.executor,
                settings.job_timeout_seconds,
                settings.model_run_max_seconds,
                capacity=1 if model.batcher is not None else settings.inference_threads,
            )
            self.metrics.stuck_model_runs.set_function(stuck_runs.stuck)
            self.health.checks.append(stuck_runs.problem)
            stuck_cpu = StuckRunCheck(
                cpu_pool,
                settings.job_timeout_seconds,
                settings.model_run_max_seconds,
                capacity=settings.cpu_threads,
                what="CPU-pool call",
            )
            self.metrics.stuck_cpu_work.set_function(stuck_cpu.stuck)
            self.health.checks.append(stuck_cpu.problem)
            # Measured now, with the models loaded: the budget is what is left of the limit.
            memory = MemoryAdmission(memory_budget_bytes(settings))
            self.metrics.memory_budget.set(memory.budget or 0)
            self.metrics.memory_reserved.set_function(lambda: memory.reserved)
            self.metrics.memory_waiting.set_function(lambda: memory.waiting)
            log.info(
                "memory admission",
                budget_mib=None if memory.budget is None else memory.budget // MIB,
            )
            # Past DB_AUTH_FAILURE_LIMIT failed logins in a row (a rotated secret), /healthz fails.
            auth_watch = AuthFailureWatch(settings.db_auth_failure_limit)
            self.health.checks.append(auth_watch.problem)
            pool = await open_pool(settings, connect=auth_watch.connect)
            stack.push_async_callback(pool.close)
            if settings.completion_hook is not None:
                await check_completion_hook(pool, settings.completion_hook)

            session = aioboto3.Session()
            aws = settings.aws_options()
            sqs = await stack.enter_async_context(aws_client("sqs", aws, session=session))
            s3 = await stack.enter_async_context(aws_client("s3", aws, session=session))
            events: WorkerEvents | None = None
            if settings.events_topic_arn is not None:
                sns = await stack.enter_async_context(aws_client("sns", aws, session=session))
                publisher = EventPublisher(sns, settings.events_topic_arn)
                events = WorkerEvents(publisher, pool, self.metrics)
            store = JobStore(
                pool, settings.worker_id, completion_hook=settings.completion_hook, events=events
            )
            self.health.database_ping = store.ping

            # Entered after the clients and the model it uses, so its loops stop before they close.
            supervisor = await stack.enter_async_context(Supervisor(self.metrics))
            self.health.checks.append(supervisor.problem)
            supervisor.start("queue_stats", QueueStatsPoller(settings, sqs, pool, self.metrics).run)
            if model.batcher is not None:
                supervisor.start("micro_batcher", model.batcher.run)

            processor = JobProcessor(
                settings, store, s3, model, cpu_pool, self.metrics, memory=memory
            )
            consumer = Consumer(
                settings,
                sqs,
                store,
                processor,
                self.metrics,
                supervisor,
                on_poll=self.health.polled,
            )
            self.ready.set()
            log.info("worker ready", metrics_port=self.port, provider=model.provider,
                     models=model.loaded(), available=model.available())  # fmt: skip
            await consumer.run(self.stop_requested)
        log.info("worker stopped")
