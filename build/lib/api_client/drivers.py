"""The async driver: runs the core's steps (api_client.steps) on asyncpg, a SQLAlchemy
`AsyncSession` on the asyncpg driver, and aioboto3 clients. It decides nothing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import asyncpg

from api_client.errors import ClientConfigError
from api_client.steps import Atomic, Aws, Emit, Listen, Notices, Pause, Query, Row, Stepper, Steps
from jobcore.events import JOBS_CHANNEL

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

T = TypeVar("T")
log = logging.getLogger("image_worker.producer")
# A listening connection that fails: the core reconnects (listen) or polls (wait_for_job).
CONNECTION_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class Driver(Protocol):
    """One database, or one connection of it, for the async client."""

    async def fetch(self, sql: str, args: Sequence[Any]) -> list[Row]: ...

    def atomic(self) -> AbstractAsyncContextManager[Driver]: ...


class PoolDriver:
    """An asyncpg pool: each statement on any connection, each `Atomic` on one in a
    transaction."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def fetch(self, sql: str, args: Sequence[Any]) -> list[Row]:
        return list(await self.pool.fetch(sql, *args))

    @asynccontextmanager
    async def atomic(self) -> AsyncIterator[Driver]:
        async with self.pool.acquire() as connection, connection.transaction():
            yield ConnectionDriver(connection)


class ConnectionDriver:
    """One asyncpg connection; `Atomic` is a transaction on it (a savepoint inside one)."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection

    async def fetch(self, sql: str, args: Sequence[Any]) -> list[Row]:
        return list(await self.connection.fetch(sql, *args))

    @asynccontextmanager
    async def atomic(self) -> AsyncIterator[Driver]:
        async with self.connection.transaction():
            yield self


class AsyncAlchemyDriver:
    """A SQLAlchemy `AsyncConnection` on the asyncpg driver, inside its session's transaction."""

    def __init__(self, connection: AsyncConnection) -> None:
        dialect = connection.dialect
        if dialect.driver != "asyncpg":
            raise ClientConfigError(
                "session: JobClient needs SQLAlchemy's asyncpg driver (a postgresql+asyncpg://"
                f" URL), not {dialect.name}+{dialect.driver}"
            )
        self.connection = connection

    async def fetch(self, sql: str, args: Sequence[Any]) -> list[Row]:
        result = await self.connection.exec_driver_sql(sql, tuple(args))
        return [dict(row) for row in result.mappings()] if result.returns_rows else []

    @asynccontextmanager
    async def atomic(self) -> AsyncIterator[Driver]:
        async with self.connection.begin_nested():
            yield self


class AsyncListening:
    """A dedicated asyncpg connection LISTENing on the job channel; payloads queue up here."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection
        self.heard: asyncio.Queue[str | None] = asyncio.Queue()  # None: the connection closed

    @classmethod
    async def open(cls, url: str, timeout: float) -> AsyncListening | None:  # noqa: ASYNC109
        try:
            connection = await asyncpg.connect(url, timeout=timeout)
        except CONNECTION_ERRORS as exc:
            log.warning("cannot LISTEN: %s", exc)
            return None
        listening = cls(connection)
        try:
            await connection.add_listener(JOBS_CHANNEL, listening._on_notice)
        except CONNECTION_ERRORS as exc:
            log.warning("cannot LISTEN: %s", exc)
            await listening.close()
            return None
        connection.add_termination_listener(lambda _: listening.heard.put_nowait(None))
        return listening

    def _on_notice(self, _c: object, _p: object, _ch: object, payload: str) -> None:
        self.heard.put_nowait(payload)

    async def notices(self, timeout: float) -> list[str] | None:  # noqa: ASYNC109
        try:
            async with asyncio.timeout(timeout):
                first = await self.heard.get()
        except TimeoutError:
            try:
                await self.connection.execute("SELECT 1")  # still there?
            except CONNECTION_ERRORS:
                await self.close()
                return None
            return []
        payloads = [first]
        while not self.heard.empty():
            payloads.append(self.heard.get_nowait())
        if None in payloads:
            await self.close()
            return None
        return [payload for payload in payloads if payload is not None]

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.connection.close(), timeout=5)
        except CONNECTION_ERRORS:
            self.connection.terminate()
        except BaseException:  # cancelled while closing: still never leave it open
            self.connection.terminate()
            raise


class AsyncRunner:
    """Runs steps: statements on `driver`, calls on the aioboto3 clients in `aws` (by service
    name; a missing one raises ClientConfigError naming it), LISTEN on connections of its own to
    `listen_url` (closed when the run ends)."""

    def __init__(self, driver: Driver, aws: Mapping[str, Any], listen_url: str) -> None:
        self.driver = driver
        self.aws = aws
        self.listen_url = listen_url

    async def run(self, steps: Steps[T], driver: Driver | None = None) -> T:
        result: list[T] = []  # per run: one runner serves concurrent runs
        async for _ in self._drive(steps, driver or self.driver, result):
            pass
        return result[0]

    async def stream(self, steps: Steps[None]) -> AsyncIterator[Any]:
        """Run steps that `Emit`: an async iterator of what they emit."""
        async for item in self._drive(steps, self.driver, None):
            yield item

    async def _drive(
        self, steps: Steps[Any], on: Driver, result: list[Any] | None
    ) -> AsyncIterator[Any]:
        """Run `steps`; their return value goes into `result`, and with no `result` (a stream)
        what they `Emit` is yielded."""
        opened: list[AsyncListening] = []
        stepper = Stepper(steps)
        try:
            while (step := stepper.next()) is not None:
                if isinstance(step, Emit) and result is None:
                    yield step.job
                    continue
                try:
                    stepper.answer(await self._do(step, on, opened))
                except Exception as exc:
                    stepper.fail(exc)
            if result is not None:
                result.append(stepper.value)
        finally:
            for listening in opened:
                await listening.close()

    async def _do(self, step: Any, on: Driver, opened: list[AsyncListening]) -> Any:
        if isinstance(step, Listen):  # a run listens on one connection at a time
            while opened:
                await opened.pop().close()
            listening = await AsyncListening.open(self.listen_url, step.timeout)
            if listening is not None:
                opened.append(listening)
            return listening
        if isinstance(step, Notices):
            return await step.handle.notices(step.timeout)
        if isinstance(step, Query):
            return await on.fetch(step.sql, step.args)
        if isinstance(step, Aws):
            client = self.aws.get(step.service)
            if client is None:
                raise ClientConfigError(f"this client has no {step.service.upper()} client")
            return await getattr(client, step.method)(**step.kwargs)
        if isinstance(step, Atomic):
            async with on.atomic() as inner:
                return await self.run(step.steps, inner)
        if isinstance(step, Pause):
            await asyncio.sleep(step.seconds)
            return None
        raise TypeError(f"not a step: {step!r}")
