"""Lifecycle: one AsyncExitStack opens everything in order (metrics/health server, thread pools,
model, database pool, AWS clients) and closes it in reverse. Whoever opens a resource closes it."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack

import aioboto3
import asyncpg
import structlog

from jobcore.aws import aws_client
from worker.consumer import Consumer
from worker.db_auth import AuthFailureWatch
from worker.health import HealthServer, HealthState
from worker.inference import ModelRunner
from worker.job_table import JobStore
from worker.metrics import WorkerMetrics
from worker.pipeline import JobProcessor
from worker.queue_stats import QueueStatsPoller
from worker.settings import Settings
from worker.supervisor import Supervisor
from worker.watchdog import StuckRunCheck

log = structlog.get_logger(__name__)


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
        self.model: ModelRunner | None = None

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
                ThreadPoolExecutor(max_workers=settings.cpu_threads, thread_name_prefix="cpu")
            )
            model = await asyncio.get_running_loop().run_in_executor(
                cpu_pool, ModelRunner.load, settings, self.metrics
            )
            stack.callback(model.close)
            self.model = model
            self.provider = model.provider
            self.metrics.model_load_seconds.set(model.load_seconds)
            self.metrics.model_info.info({"model": model.model_name, "provider": model.provider})
            self.health.model_loaded = True
            stuck_runs = StuckRunCheck(
                model.executor,
                settings.job_timeout_seconds,
                settings.model_run_max_seconds,
                capacity=1 if model.batcher is not None else settings.inference_threads,
            )
            self.metrics.stuck_model_runs.set_function(stuck_runs.stuck)
            self.health.checks.append(stuck_runs.problem)
            # Past DB_AUTH_FAILURE_LIMIT failed logins in a row (a rotated secret), /healthz fails.
            auth_watch = AuthFailureWatch(settings.db_auth_failure_limit)
            self.health.checks.append(auth_watch.problem)
            pool = await asyncpg.create_pool(
                settings.database_url,
                connect=auth_watch.connect,
                min_size=1,
                max_size=settings.db_pool_size,
                command_timeout=30,
                max_inactive_connection_lifetime=300,
            )
            stack.push_async_callback(pool.close)
            store = JobStore(pool, settings.worker_id)
            self.health.database_ping = store.ping

            session = aioboto3.Session()
            aws = settings.aws_options()
            sqs = await stack.enter_async_context(aws_client("sqs", aws, session=session))
            s3 = await stack.enter_async_context(aws_client("s3", aws, session=session))

            # Entered after the clients and the model it uses, so its loops stop before they close.
            supervisor = await stack.enter_async_context(Supervisor(self.metrics))
            self.health.checks.append(supervisor.problem)
            supervisor.start("queue_stats", QueueStatsPoller(settings, sqs, pool, self.metrics).run)
            if model.batcher is not None:
                supervisor.start("micro_batcher", model.batcher.run)

            processor = JobProcessor(settings, store, s3, model, cpu_pool, self.metrics)
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
            log.info("worker ready", metrics_port=self.port, provider=model.provider)
            await consumer.run(self.stop_requested)
        log.info("worker stopped")
