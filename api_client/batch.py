"""Jobs created inside a transaction and sent after it commits (the async producer).

asyncpg has no commit hooks, so with a connection the transaction is opened here:
`JobClient.transaction(conn)` yields a `JobBatch`; the caller writes its own rows on
`batch.connection` and creates jobs on the batch. On a clean exit the transaction commits and
then the messages go out; on an exception it rolls back and nothing is sent. With a SQLAlchemy
`AsyncSession` (`JobClient.in_session(session)`), the rows go into the session's transaction and
the send runs from its `after_commit` event, before `await session.commit()` returns."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, TypeVar, Unpack

from api_client.creation import (
    BatchCore,
    ImageCopy,
    JobOptions,
    NewJob,
    PrimaryImageJob,
    PrimaryOptions,
)
from api_client.drivers import AsyncRunner, Driver
from api_client.errors import ClientConfigError
from api_client.steps import Steps
from jobcore.jobs import Job

if TYPE_CHECKING:
    import asyncpg

T = TypeVar("T")


class JobBatch:
    """Creates jobs inside the open transaction. The jobs these methods return are as written
    (`queue_failed`, not sent yet) until the transaction has committed and the send is done;
    then they (and `jobs`) read the state after the send."""

    def __init__(
        self,
        core: BatchCore,
        runner: AsyncRunner,
        driver: Driver,
        connection: asyncpg.Connection | None = None,
    ) -> None:
        self.core = core
        self._connection = connection
        self._runner = runner
        self._driver = driver

    @property
    def connection(self) -> asyncpg.Connection:
        """The transaction's asyncpg connection, for your own statements."""
        if self._connection is None:
            raise ClientConfigError("this batch writes in a session: use the session")
        return self._connection

    @property
    def jobs(self) -> list[Job]:
        return self.core.jobs

    async def _in_transaction(self, steps: Steps[T]) -> T:
        return await self._runner.run(steps, self._driver)

    async def create_job(self, source_key: str, **options: Unpack[JobOptions]) -> Job:
        return await self._in_transaction(self.core.create_job(source_key, options))

    async def create_jobs(self, jobs: Iterable[NewJob | str]) -> list[Job]:
        return await self._in_transaction(self.core.create_jobs(jobs))

    async def create_primary_image_job(
        self,
        book_id: str | int,
        images: Sequence[ImageCopy | str],
        **options: Unpack[PrimaryOptions],
    ) -> PrimaryImageJob:
        return await self._in_transaction(
            self.core.create_primary_image_job(book_id, images, options)
        )

    def __repr__(self) -> str:
        return f"JobBatch({len(self.core.created)} jobs)"
