"""The metrics and health server: /metrics, /healthz (the consumer loop is alive, no background
loop keeps dying, no stuck model runs pile up), /readyz (model loaded, database reachable, queue
reachable)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from worker.metrics import WorkerMetrics

DB_CHECK_TIMEOUT_SECONDS = 2.0
# /readyz reuses the database check this long: a probe storm costs one query per interval, not
# one per request, on the pool the jobs use.
READY_CACHE_SECONDS = 5.0


@dataclass(slots=True)
class HealthState:
    stale_after: float
    last_poll: float = field(default_factory=time.monotonic)
    sqs_ok: bool = True
    model_loaded: bool = False
    database_ping: Callable[[], Awaitable[None]] | None = None
    # Each returns why the worker should be replaced, or None (supervisor, stuck model runs).
    checks: list[Callable[[], str | None]] = field(default_factory=list)
    clock: Callable[[], float] = time.monotonic
    _database: tuple[float, str] | None = None  # (checked at, result) of the last ping
    _database_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def polled(self, ok: bool) -> None:
        self.last_poll = time.monotonic()
        self.sqs_ok = ok

    def alive(self) -> tuple[bool, str]:
        age = time.monotonic() - self.last_poll
        if age > self.stale_after:
            return False, f"consumer loop silent for {age:.0f}s"
        problems = [problem for check in self.checks if (problem := check()) is not None]
        if problems:
            return False, "; ".join(problems)
        return True, f"last poll {age:.1f}s ago"

    async def ready(self) -> tuple[bool, dict[str, str]]:
        checks = {"model": "loaded" if self.model_loaded else "not loaded"}
        ok = self.model_loaded
        checks["database"] = await self._database_status()
        ok = ok and checks["database"] == "ok"
        checks["sqs"] = "ok" if self.sqs_ok else "receive failing"
        ok = ok and self.sqs_ok
        return ok, checks

    async def _database_status(self) -> str:
        if self.database_ping is None:
            return "not connected"
        async with self._database_lock:  # concurrent probes share one ping
            cached = self._database
            if cached is not None and self.clock() - cached[0] < READY_CACHE_SECONDS:
                return cached[1]
            try:
                await asyncio.wait_for(self.database_ping(), DB_CHECK_TIMEOUT_SECONDS)
                status = "ok"
            except Exception as exc:
                status = f"unreachable: {type(exc).__name__}"
            self._database = (self.clock(), status)
            return status


class HealthServer:
    def __init__(self, host: str, port: int, metrics: WorkerMetrics, state: HealthState) -> None:
        self.host = host
        self.requested_port = port
        self.metrics = metrics
        self.state = state
        self.port = port
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)

    async def __aenter__(self) -> HealthServer:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.requested_port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._runner.cleanup()

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _request: web.Request) -> web.Response:
        ok, detail = self.state.alive()
        return web.json_response({"ok": ok, "detail": detail}, status=200 if ok else 503)

    async def _readyz(self, _request: web.Request) -> web.Response:
        ok, checks = await self.state.ready()
        return web.json_response({"ok": ok, "checks": checks}, status=200 if ok else 503)
