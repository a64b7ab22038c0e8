"""The async driver: runs the core's steps (api_client.steps) on asyncpg, a SQLAlchemy
`AsyncSession` on the asyncpg driver, and aioboto3 clients. It decides nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import asyncpg

from api_client.errors import ClientConfigError
from api_client.steps import Atomic, Aws, Pause, Query, Row, Steps

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

T = TypeVar("T")


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


class AsyncRunner:
    """Runs steps: statements on `driver`, calls on the aioboto3 clients in `aws` (by service
    name; a missing one raises ClientConfigError naming it)."""

    def __init__(self, driver: Driver, aws: Mapping[str, Any]) -> None:
        self.driver = driver
        self.aws = aws

    async def run(self, steps: Steps[T], driver: Driver | None = None) -> T:
        on = driver or self.driver
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = steps.send(value) if error is None else steps.throw(error)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            try:
                value, error = await self._do(step, on), None
            except Exception as exc:
                value, error = None, exc

    async def _do(self, step: Any, on: Driver) -> Any:
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
