"""Supervision for the worker's background loops (queue stats, micro-batcher, visibility
heartbeat, delete batcher). A loop that crashes, or returns when it should run forever,
is logged with its traceback and restarted after an exponential backoff; one that keeps dying
(`unhealthy_after` crashes in a row, none of them after a stable run) fails /healthz, so ECS
replaces the task instead of leaving it half-working."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType

import structlog

from worker.metrics import WorkerMetrics

log = structlog.get_logger(__name__)

LoopFactory = Callable[[], Awaitable[None]]


@dataclass(eq=False, slots=True)
class SupervisedLoop:
    name: str
    factory: LoopFactory
    task: asyncio.Task[None] | None = None
    crashes_in_a_row: int = 0
    running_since: float | None = None
    last_error: str = ""
    stopped: bool = field(default=False)

    async def stop(self) -> None:
        """Cancel the loop (and any restart pending) and wait until it has ended."""
        self.stopped = True
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await asyncio.wait({self.task})


class Supervisor:
    """Owns the background loops: `start` them, `problem` tells /healthz whether one keeps dying,
    and leaving the context stops every loop still running."""

    def __init__(
        self,
        metrics: WorkerMetrics,
        *,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        stable_after: float = 60.0,
        unhealthy_after: int = 5,
    ) -> None:
        self.metrics = metrics
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.stable_after = stable_after
        self.unhealthy_after = unhealthy_after
        self.loops: dict[str, SupervisedLoop] = {}

    async def __aenter__(self) -> Supervisor:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for loop in list(self.loops.values()):
            await loop.stop()

    def start(self, name: str, factory: LoopFactory) -> SupervisedLoop:
        if name in self.loops and not self.loops[name].stopped:
            raise ValueError(f"a loop named {name!r} is already supervised")
        loop = SupervisedLoop(name, factory)
        self.loops[name] = loop
        self.metrics.loop_restarts.labels(name)
        loop.task = asyncio.create_task(self._supervise(loop), name=f"supervised-{name}")
        return loop

    async def _supervise(self, loop: SupervisedLoop) -> None:
        up = self.metrics.loop_up.labels(loop.name)
        while True:
            loop.running_since = time.monotonic()
            up.set(1)
            try:
                await loop.factory()
            except asyncio.CancelledError:
                up.set(0)
                raise
            except Exception as exc:
                log.error("background loop crashed; restarting", loop=loop.name, exc_info=exc)
                loop.last_error = f"{type(exc).__name__}: {exc}"[:300]
            else:
                log.error("background loop returned; restarting", loop=loop.name)
                loop.last_error = "returned"
            up.set(0)
            ran = time.monotonic() - loop.running_since
            loop.running_since = None
            loop.crashes_in_a_row = 1 if ran >= self.stable_after else loop.crashes_in_a_row + 1
            self.metrics.loop_restarts.labels(loop.name).inc()
            delay = min(self.backoff_max, self.backoff_base * 2 ** (loop.crashes_in_a_row - 1))
            await asyncio.sleep(delay)

    def problem(self) -> str | None:
        """Why the worker is unhealthy because of its loops, or None."""
        now = time.monotonic()
        dying = [
            loop
            for loop in self.loops.values()
            if not loop.stopped
            and loop.crashes_in_a_row >= self.unhealthy_after
            and (loop.running_since is None or now - loop.running_since < self.stable_after)
        ]
        if not dying:
            return None
        return "; ".join(
            f"background loop {loop.name} crashed {loop.crashes_in_a_row} times in a row"
            f" (last: {loop.last_error})"
            for loop in dying
        )
