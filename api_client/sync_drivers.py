"""The sync driver: runs the core's steps (api_client.steps) on psycopg 3 (a pool or a
connection), SQLAlchemy on the psycopg driver (an `Engine`, or a `Session`'s connection), and
boto3 clients. It decides nothing. Needs the `sync` extra."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

try:
    import psycopg
    from psycopg import Connection as PsycopgConnection
    from psycopg.rows import dict_row
    from psycopg_pool import ConnectionPool
except ImportError as exc:  # pragma: no cover - only in an install without the extra
    raise ImportError(
        f"SyncJobClient needs the `sync` extra: pip install 'image-worker[sync]' ({exc})"
    ) from exc

from api_client.errors import ClientConfigError
from api_client.listening import LISTEN
from api_client.steps import Atomic, Aws, Emit, Listen, Notices, Pause, Query, Row, Stepper, Steps
from jobcore.job_create import named, pyformat

if TYPE_CHECKING:
    from sqlalchemy import Connection as AlchemyConnection
    from sqlalchemy import Dialect, Engine

T = TypeVar("T")
log = logging.getLogger("image_worker.producer")


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


class SyncListening:
    """A dedicated psycopg connection (autocommit) LISTENing on the job channel."""

    def __init__(self, connection: PsycopgConnection[Any]) -> None:
        self.connection = connection

    @classmethod
    def open(cls, url: str, timeout: float) -> SyncListening | None:
        try:
            connection = psycopg.connect(
                url, autocommit=True, connect_timeout=max(1, round(timeout))
            )
        except psycopg.Error as exc:
            log.warning("cannot LISTEN: %s", exc)
            return None
        try:
            connection.execute(LISTEN)
        except psycopg.Error as exc:
            log.warning("cannot LISTEN: %s", exc)
            connection.close()
            return None
        return cls(connection)

    def notices(self, timeout: float) -> list[str] | None:
        try:
            heard = [n.payload for n in self.connection.notifies(timeout=timeout, stop_after=1)]
            if not heard:
                self.connection.execute("SELECT 1")  # still there?
        except psycopg.Error:
            self.close()
            return None
        return heard

    def close(self) -> None:
        self.connection.close()


class SyncRunner:
    """Runs steps: statements on `driver`, calls on the boto3 clients in `aws`, LISTEN on
    connections of its own to `listen_url` (closed when the run ends)."""

    def __init__(self, driver: SyncDriver, aws: Mapping[str, Any], listen_url: str) -> None:
        self.driver = driver
        self.aws = aws
        self.listen_url = listen_url

    def run(self, steps: Steps[T], driver: SyncDriver | None = None) -> T:
        finished: list[T] = []
        for _ in self._drive(steps, driver or self.driver, finished):
            pass
        return finished[0]

    def stream(self, steps: Steps[None]) -> Iterator[Any]:
        """Run steps that `Emit`: a blocking iterator of what they emit."""
        return self._drive(steps, self.driver, None)

    def _drive(
        self, steps: Steps[Any], on: SyncDriver, finished: list[Any] | None
    ) -> Iterator[Any]:
        listening: list[SyncListening] = []
        stepper = Stepper(steps)
        try:
            while (step := stepper.next()) is not None:
                if finished is None and isinstance(step, Emit):
                    yield step.job
                else:
                    stepper.settle(lambda: self._do(step, on, listening))
            if finished is not None:
                finished.append(stepper.value)
        finally:
            for handle in listening:
                handle.close()

    def _do(self, step: Any, on: SyncDriver, listening: list[SyncListening]) -> Any:
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
            case Listen(timeout=timeout):  # a run listens on one connection at a time
                while listening:
                    listening.pop().close()
                handle = SyncListening.open(self.listen_url, timeout)
                if handle is not None:
                    listening.append(handle)
                return handle
            case Notices(handle=handle, timeout=timeout):
                return handle.notices(timeout)
        raise TypeError(f"not a step: {step!r}")
