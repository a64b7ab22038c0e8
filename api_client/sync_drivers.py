"""The sync driver: runs the core's steps (api_client.steps) on psycopg 3 (a pool or a
connection), SQLAlchemy on the psycopg driver (an `Engine`, or a `Session`'s connection), and
boto3 clients. It decides nothing. Needs the `sync` extra."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

try:
    from psycopg import Connection as PsycopgConnection
    from psycopg.rows import dict_row
    from psycopg_pool import ConnectionPool
except ImportError as exc:  # pragma: no cover - only in an install without the extra
    raise ImportError(
        f"SyncJobClient needs the `sync` extra: pip install 'image-worker[sync]' ({exc})"
    ) from exc

from api_client.errors import ClientConfigError
from api_client.steps import Atomic, Aws, Pause, Query, Row, Steps
from jobcore.job_create import named, pyformat

if TYPE_CHECKING:
    from sqlalchemy import Connection as AlchemyConnection
    from sqlalchemy import Dialect, Engine

T = TypeVar("T")


class SyncDriver(Protocol):
    """One database, or one connection of it, for the sync client."""

    def fetch(self, sql: str, args: Sequence[Any]) -> list[Row]: ...

    def atomic(self) -> AbstractContextManager[SyncDriver]: ...


class PsycopgPoolDriver:
    def __init__(self, pool: ConnectionPool[Any]) -> None:
        self.pool = pool

    def fetch(self, sql: str, args: Sequence[Any]) -> list[Row]:
        with self.atomic() as connection:
            return connection.fetch(sql, args)

    @contextmanager
    def atomic(self) -> Iterator[SyncDriver]:
        with self.pool.connection() as connection, connection.transaction():
            yield PsycopgDriver(connection)


class PsycopgDriver:
    def __init__(self, connection: PsycopgConnection[Any]) -> None:
        self.connection = connection

    def fetch(self, sql: str, args: Sequence[Any]) -> list[Row]:
        with self.connection.cursor(row_factory=dict_row) as cursor:
            cursor.execute(pyformat(sql), named(args))
            return list(cursor.fetchall()) if cursor.description else []

    @contextmanager
    def atomic(self) -> Iterator[SyncDriver]:
        with self.connection.transaction():
            yield self


class EngineDriver:
    """A SQLAlchemy engine on the psycopg driver."""

    def __init__(self, engine: Engine) -> None:
        require_psycopg(engine.dialect)
        self.engine = engine

    def fetch(self, sql: str, args: Sequence[Any]) -> list[Row]:
        with self.atomic() as connection:
            return connection.fetch(sql, args)

    @contextmanager
    def atomic(self) -> Iterator[SyncDriver]:
        with self.engine.begin() as connection:
            yield AlchemyDriver(connection)


class AlchemyDriver:
    """A SQLAlchemy connection on the psycopg driver, in its (or its session's) transaction."""

    def __init__(self, connection: AlchemyConnection) -> None:
        require_psycopg(connection.dialect)
        self.connection = connection

    def fetch(self, sql: str, args: Sequence[Any]) -> list[Row]:
        result = self.connection.exec_driver_sql(pyformat(sql), named(args))
        return [dict(row) for row in result.mappings()] if result.returns_rows else []

    @contextmanager
    def atomic(self) -> Iterator[SyncDriver]:
        with self.connection.begin_nested():
            yield self


def require_psycopg(dialect: Dialect) -> None:
    if dialect.driver != "psycopg":
        raise ClientConfigError(
            "session: SyncJobClient needs SQLAlchemy's psycopg 3 driver (a postgresql+psycopg://"
            f" URL), not {dialect.name}+{dialect.driver}"
        )


class SyncRunner:
    """Runs steps: statements on `driver`, calls on the boto3 clients in `aws`."""

    def __init__(self, driver: SyncDriver, aws: Mapping[str, Any]) -> None:
        self.driver = driver
        self.aws = aws

    def run(self, steps: Steps[T], driver: SyncDriver | None = None) -> T:
        on = driver or self.driver
        value: Any = None
        failure: BaseException | None = None
        while True:
            try:
                step = steps.throw(failure) if failure else steps.send(value)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            failure = None
            try:
                value = self._do(step, on)
            except Exception as exc:
                value, failure = None, exc

    def _do(self, step: Any, on: SyncDriver) -> Any:
        match step:
            case Query(sql=sql, args=args):
                return on.fetch(sql, args)
            case Aws(service=service, method=method, kwargs=kwargs):
                if self.aws.get(service) is None:
                    raise ClientConfigError(f"this client has no {service.upper()} client")
                return getattr(self.aws[service], method)(**kwargs)
            case Atomic(steps=inner):
                with on.atomic() as scoped:
                    return self.run(inner, scoped)
            case Pause(seconds=seconds):
                time.sleep(seconds)
                return None
        raise TypeError(f"not a step: {step!r}")
