"""The producer's one core, written once for both clients: each operation is a generator of
steps (sans-I/O) that a driver runs. A step is one database statement (`Query`), one AWS call
(`Aws`), a block in a transaction of its own (`Atomic`) or a pause (`Pause`); the generator
receives each step's result, or has the step's exception thrown into it. `JobClient` runs the
steps on asyncpg (or a SQLAlchemy `AsyncSession`) and aioboto3 (api_client.drivers);
`SyncJobClient` on psycopg 3 (or a SQLAlchemy `Session`/`Engine`) and boto3
(api_client.sync_drivers). Every decision, statement and order of calls lives in the
generators; a driver only executes."""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias, TypeVar

T = TypeVar("T")

Row: TypeAlias = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Query:
    """One statement with asyncpg-style `$n` placeholders; the result is its rows (a list)."""

    sql: str
    args: Sequence[Any] = ()


@dataclass(frozen=True, slots=True)
class Aws:
    """One call on the client's `service` client (`sqs`, `s3`, `ecs` or `sns`); the result is the
    response (for `generate_presigned_url`, the URL)."""

    service: Literal["sqs", "s3", "ecs", "sns"]
    method: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Atomic:
    """Run `steps` in a transaction of their own (a pooled connection; inside a given
    connection's open transaction, a savepoint); commit when they return, roll back when they
    raise. The result is theirs."""

    steps: Steps[Any]


@dataclass(frozen=True, slots=True)
class Pause:
    seconds: float


@dataclass(frozen=True, slots=True)
class Listen:
    """Open a dedicated connection that LISTENs on the job channel (bounded by `timeout`); the
    result is its handle, or None when it cannot connect. The runner closes every handle it
    opened when the run ends."""

    timeout: float


@dataclass(frozen=True, slots=True)
class Notices:
    """Wait up to `timeout` seconds on a Listen handle; the result is the payloads heard (empty:
    none, and the connection still answers), or None when the connection is lost (then closed)."""

    handle: Any
    timeout: float


@dataclass(frozen=True, slots=True)
class Emit:
    """Hand a job to the consumer of a stream (`listen()`); only a stream accepts it."""

    job: Any


Step: TypeAlias = Query | Aws | Atomic | Pause | Listen | Notices | Emit
Steps: TypeAlias = Generator[Step, Any, T]


class Stepper:
    """How a runner drives a generator of steps: `next()` is the next step (None once the
    generator has returned, its value then in `value`); each step's outcome goes back with
    `answer(value)`, `fail(exception)` or `settle(thunk)` (a blocking call: either)."""

    def __init__(self, steps: Steps[Any]) -> None:
        self.steps = steps
        self.value: Any = None
        self._error: BaseException | None = None

    def next(self) -> Step | None:
        value, error, self.value, self._error = self.value, self._error, None, None
        try:
            return self.steps.throw(error) if error is not None else self.steps.send(value)
        except StopIteration as done:
            self.value = done.value
            return None

    def answer(self, value: Any) -> None:
        self.value = value

    def fail(self, error: BaseException) -> None:
        self._error = error

    def settle(self, thunk: Callable[[], Any]) -> None:
        try:
            self.value = thunk()
        except Exception as exc:
            self._error = exc


def rows(sql: str, *args: Any) -> Steps[list[Row]]:
    """`found = yield from rows(SQL, a, b)`: the statement's rows, typed."""
    result: list[Row] = yield Query(sql, args)
    return result


def call(service: Literal["sqs", "s3", "ecs", "sns"], method: str, **kwargs: Any) -> Steps[Any]:
    result = yield Aws(service, method, kwargs)
    return result


def atomic(steps: Steps[T]) -> Steps[T]:
    result: T = yield Atomic(steps)
    return result


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error from asyncpg or psycopg, or one SQLAlchemy wraps."""
    for candidate in (exc, getattr(exc, "orig", None), getattr(exc, "__cause__", None)):
        state = getattr(candidate, "sqlstate", None)
        if isinstance(state, str):
            return state
    return None
