"""A fault-injecting TCP proxy for outage tests: put it between the worker and PostgreSQL or
moto, then cut (close every connection and refuse new ones), stall (accept but forward nothing),
delay, and resume."""

from __future__ import annotations

import asyncio
import contextlib
import enum
from types import TracebackType


class Mode(enum.Enum):
    FORWARD = "forward"
    REFUSE = "refuse"
    STALL = "stall"


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.mode = Mode.FORWARD
        self.delay = 0.0  # seconds per chunk flowing back from the target (a slow download)
        self.port = 0
        self.connections_refused = 0
        self.held: list[bytes] = []  # what clients sent while stalled (forwarded on resume)
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.Task[None]] = set()
        self._resumed = asyncio.Event()
        self._resumed.set()

    async def __aenter__(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        self._drop_links()
        await self._server.wait_closed()

    def cut(self) -> None:
        """Close every open connection and refuse new ones."""
        self.mode = Mode.REFUSE
        self._drop_links()

    def stall(self) -> None:
        """Accept connections but forward nothing (a hung endpoint); what clients send meanwhile
        is kept in `held`."""
        self.mode = Mode.STALL
        self._resumed.clear()

    def held_request(self, marker: bytes) -> bool:
        """Whether a client sent something containing `marker` while the proxy stalled."""
        return any(marker in data for data in self.held)

    def resume(self) -> None:
        self.mode = Mode.FORWARD
        self.delay = 0.0
        self._resumed.set()

    def _drop_links(self) -> None:
        for task in list(self._links):
            task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode is Mode.REFUSE:
            self.connections_refused += 1
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._links.add(task)
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
            await asyncio.gather(
                self._pump(reader, upstream_writer, throttled=False),
                self._pump(upstream_reader, writer, throttled=True),
            )
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._links.discard(task)
            for stream in (writer, upstream_writer):
                if stream is not None:
                    stream.transport.abort()

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, throttled: bool
    ) -> None:
        while data := await source.read(65536):
            if not throttled and not self._resumed.is_set():
                self.held.append(data)
            await self._resumed.wait()
            if throttled and self.delay:
                await asyncio.sleep(self.delay)
            sink.write(data)
            with contextlib.suppress(ConnectionError):
                await sink.drain()
        with contextlib.suppress(OSError):
            sink.write_eof()
