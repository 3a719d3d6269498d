"""A raw asyncio HTTP server on 127.0.0.1 that answers exactly the bytes a test writes, and
a ``Progress`` that records checkpoints: for tests that drive ``Downloader`` directly."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

HOST = "127.0.0.1"

#: writes the whole answer to one request (the request head is already read)
Respond = Callable[[asyncio.StreamWriter], Awaitable[None]]


class RecordingProgress:
    """A ``download.Progress`` that keeps the checkpoints it is told of."""

    def __init__(self) -> None:
        self.checkpoints: list[int] = []

    def connected(self) -> None:
        pass

    def begin(self, total: int | None, etag: str | None, last_modified: str | None) -> None:
        pass

    def checkpoint(self, offset: int) -> None:
        self.checkpoints.append(offset)

    def redirected(self, url: str) -> None:
        pass

    def responded(self, range_support: bool | None, headers: str) -> None:
        pass


@contextlib.asynccontextmanager
async def raw_server(respond: Respond) -> AsyncIterator[str]:
    """Serve ``respond`` on a free port; yields the base URL, waits for handlers at exit."""
    handlers: set[asyncio.Task[None]] = set()

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await reader.readuntil(b"\r\n\r\n")
            await respond(writer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(accepted, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://{HOST}:{port}"
    finally:
        if handlers:
            await asyncio.wait(handlers, timeout=5)
        server.close()
        await server.wait_closed()
