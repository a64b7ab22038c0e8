"""Model runs that outlive their job. A job past JOB_TIMEOUT_SECONDS is given up (the pipeline
releases it), but a model run already inside ONNX Runtime cannot be stopped from outside its
thread: it keeps the thread until it returns. The inference pool therefore records when each call
started, and /healthz fails once such stuck runs leave no model run free (every inference thread,
or the micro-batcher's one run at a time) or one has run longer than MODEL_RUN_MAX_SECONDS, so
ECS replaces the task."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class TimedThreadPool(ThreadPoolExecutor):
    """A thread pool that knows how long each of its running calls has been running."""

    def __init__(self, max_workers: int, thread_name_prefix: str = "") -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self._lock = threading.Lock()
        self._started: dict[int, float] = {}
        self._tokens = itertools.count()

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        return super().submit(self._timed, fn, *args, **kwargs)

    def _timed(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        token = next(self._tokens)
        with self._lock:
            self._started[token] = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            with self._lock:
                del self._started[token]

    def running_longer_than(self, seconds: float) -> list[float]:
        """How long each call running for more than `seconds` has been running, longest first."""
        now = time.monotonic()
        with self._lock:
            ages = [now - started for started in self._started.values()]
        return sorted((age for age in ages if age > seconds), reverse=True)


class StuckRunCheck:
    """`capacity`: how many model runs can go on at once: INFERENCE_THREADS, or 1 with the
    micro-batcher, which waits for each batch run before it starts the next. The CPU pool
    (decode, conversions, encode: work that cannot be stopped from outside its thread either) is
    watched the same way, `what="CPU-pool call"`, with CPU_THREADS as its capacity."""

    def __init__(
        self,
        pool: TimedThreadPool,
        job_timeout: float,
        max_run_seconds: float,
        capacity: int,
        what: str = "model run",
    ) -> None:
        self.pool = pool
        self.job_timeout = job_timeout
        self.max_run_seconds = max_run_seconds
        self.capacity = capacity
        self.what = what

    def stuck(self) -> int:
        """Calls still going past JOB_TIMEOUT_SECONDS: their jobs have been given up."""
        return len(self.pool.running_longer_than(self.job_timeout))

    def problem(self) -> str | None:
        stuck = self.pool.running_longer_than(self.job_timeout)
        if not stuck:
            return None
        if len(stuck) >= self.capacity:
            return (
                f"{len(stuck)} {self.what}(s) stuck past JOB_TIMEOUT_SECONDS={self.job_timeout:g}"
                f" leave no {self.what} free (longest {stuck[0]:.0f}s)"
            )
        if stuck[0] > self.max_run_seconds:
            return (
                f"a {self.what} has been running {stuck[0]:.0f}s,"
                f" over MODEL_RUN_MAX_SECONDS={self.max_run_seconds:g}"
            )
        return None
