"""Hearing that jobs finished, once for both producers: the decisions of `wait_for_job` and
`listen()`. Each status change of a job row emits a NOTIFY on `image_jobs` (jobcore.events:
payload `{"id", "status", "book_id"}`), delivered at commit. The drivers hold a dedicated
connection that LISTENs and hand each payload to these steps, which read the row when the notice
says it finished.

`wait_for_job`: LISTEN first, then read the row (so a finish between the two is not missed),
then wait for its notice up to the timeout; when the listening connection drops, it polls the row
every `interval` until the timeout (polling is only that fallback).

`listen()`: yields every job that finishes (optionally only one book's) while the app runs. On a
dropped connection it reconnects with backoff (0.5 s doubling to 30 s) and first catches up: it
reads the rows that finished since the last one it yielded, so nothing finished meanwhile is
lost; a job may be yielded twice around a reconnect (at least once)."""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from datetime import datetime

from api_client.creation import book_text, job_id_of
from api_client.errors import ClientConfigError, JobNotFound, JobWaitTimeout
from api_client.steps import Emit, Listen, Notices, Pause, Steps, rows
from jobcore.events import JOBS_CHANNEL, JobNotice, MalformedNotice
from jobcore.job_queries import FETCH_JOB
from jobcore.jobs import JOB_COLUMNS, Job

log = logging.getLogger("image_worker.producer")

LISTEN = f"LISTEN {JOBS_CHANNEL}"
BACKOFF_START, BACKOFF_MAX = 0.5, 30.0
KEEPALIVE_SECONDS = 30.0  # a quiet listening connection is probed this often
CATCH_UP_LIMIT = 1000  # rows a catch-up reads at once (it repeats until none is left)
_SEEN = 10_000  # ids remembered to drop a repeated notice or catch-up row

NOW = "SELECT now() AS now"
FINISHED_SINCE = f"""
SELECT {JOB_COLUMNS} FROM image_processing_jobs
 WHERE status IN ('completed', 'failed', 'cancelled') AND updated_at >= $1
   AND ($2::text IS NULL OR book_id = $2)
 ORDER BY updated_at, id
 LIMIT $3"""


def notice_of(payload: str) -> JobNotice | None:
    try:
        return JobNotice.parse(payload)
    except MalformedNotice as exc:
        log.warning("ignored a notice on %s: %s", JOBS_CHANNEL, exc)
        return None


def read_job(job_id: uuid.UUID) -> Steps[Job | None]:
    found = yield from rows(FETCH_JOB, job_id)
    return Job.from_record(found[0]) if found else None


def waited_for(job_id: uuid.UUID, payload: str) -> bool:
    """Whether a notice may finish the wait for `job_id` (then the row is read)."""
    notice = notice_of(payload)
    return notice is not None and notice.id == job_id and notice.status.finished


def wait_bounds(
    job_id: object, timeout: object, interval: object
) -> tuple[uuid.UUID, float, float]:
    """`wait_for_job`'s arguments, checked (each error names its argument)."""
    for name, value in (("timeout", timeout), ("interval", interval)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ClientConfigError(f"{name} must be a positive number of seconds, not {value!r}")
    return job_id_of(job_id), float(timeout), float(interval)  # type: ignore[arg-type]


def backoff(previous: float | None) -> float:
    return BACKOFF_START if previous is None else min(BACKOFF_MAX, previous * 2)


class Listening:
    """The state of one `listen()`: where it is (the last finish it yielded) and what it has
    yielded lately."""

    def __init__(self, book_id: str | None) -> None:
        self.book_id = book_id
        self.since: datetime | None = None
        self._seen: OrderedDict[tuple[uuid.UUID, str], None] = OrderedDict()

    def start(self) -> Steps[list[Job]]:
        """Right after LISTEN on a (new) connection: on the first, note the time; after a
        reconnect, the jobs that finished since the last one yielded."""
        if self.since is None:
            (now,) = yield from rows(NOW)
            self.since = now["now"]
            return []
        caught: list[Job] = []
        while True:
            found = yield from rows(FINISHED_SINCE, self.since, self.book_id, CATCH_UP_LIMIT)
            fresh = self.fresh(Job.from_record(record) for record in found)
            caught.extend(fresh)
            if len(found) < CATCH_UP_LIMIT or not fresh:
                return caught

    def on_notice(self, payload: str) -> Steps[list[Job]]:
        """One payload: the finished job it names, read from the row (none when not finished,
        another book's, or yielded already)."""
        notice = notice_of(payload)
        if notice is None or not notice.status.finished:
            return []
        if self.book_id is not None and notice.book_id not in (self.book_id, None):
            return []
        job = yield from read_job(notice.id)
        if job is None or (self.book_id is not None and job.book_id != self.book_id):
            return []
        return self.fresh([job])

    def fresh(self, jobs: Iterable[Job]) -> list[Job]:
        """The jobs not yielded yet, in order; moves `since` to the latest."""
        out = []
        for job in jobs:
            key = (job.id, job.status.value)
            if not job.status.finished or key in self._seen:
                continue
            self._seen[key] = None
            if len(self._seen) > _SEEN:
                self._seen.popitem(last=False)
            if self.since is None or job.updated_at > self.since:
                self.since = job.updated_at
            out.append(job)
        return out


def wait_for_job(
    job_id: uuid.UUID | str, timeout: float, interval: float, connect_timeout: float
) -> Steps[Job]:
    """The steps of `wait_for_job` (see the module's docstring)."""
    wanted, limit, every = wait_bounds(job_id, timeout, interval)
    deadline = time.monotonic() + limit
    handle = yield Listen(min(limit, connect_timeout))
    while True:
        job = yield from read_job(wanted)  # after LISTEN: a later finish is heard
        if job is None:
            raise JobNotFound(wanted)
        if job.status.finished:
            return job
        left = deadline - time.monotonic()
        if left <= 0:
            raise JobWaitTimeout(job, limit)
        if handle is None:
            yield Pause(min(every, left))  # the fallback: poll
            continue
        heard = yield Notices(handle, min(left, KEEPALIVE_SECONDS))
        if heard is None:
            log.warning("listening connection lost; polling job %s every %gs", wanted, every)
            handle = None


def listen(book_id: str | int | None, connect_timeout: float) -> Steps[None]:
    """The steps of `listen()`: emits each finished job; never returns (see the module's
    docstring). A failure while listening or reading (the database restarting) is logged and
    followed by a reconnect after the backoff."""
    state = Listening(book_text(book_id))
    delay: float | None = None
    while True:
        try:
            handle = yield Listen(connect_timeout)
            if handle is not None:
                for job in (yield from state.start()):
                    yield Emit(job)
                delay = None
                while (heard := (yield Notices(handle, KEEPALIVE_SECONDS))) is not None:
                    for payload in heard:
                        for job in (yield from state.on_notice(payload)):
                            yield Emit(job)
        except Exception as exc:  # any failure of a long-running listener: reconnect
            log.warning("listening failed: %s", exc)
        delay = backoff(delay)
        log.warning("not listening; reconnecting in %.1fs", delay)
        yield Pause(delay)
