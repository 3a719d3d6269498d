"""Tests of openbits.transfer.h1, the lean HTTP/1.1 client (keep-alive, pipelining).

Most tests talk to a scripted raw-TCP server running on the test's own event loop on
127.0.0.1 (:class:`ScriptServer`): each accepted connection runs a script that reads the
client's request heads and writes exact response bytes, so framing errors, early closes
and pipelined requests can be produced and observed byte for byte. A few tests run
against the session's real nginx (keep-alive reuse, pipelining many small files, Range).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yarl
from hypothesis import given
from hypothesis import strategies as st

from openbits.transfer import h1
from openbits.transfer.h1 import (
    BadRequest,
    BadResponse,
    ClosedEarly,
    ConnectFailed,
    H1Client,
    H1Error,
    NameNotResolved,
    Response,
)
from openbits.transfer.h1head import Target, parse_head
from tests.support.fixtures import make_file
from tests.support.nginx import Nginx

HOST = "127.0.0.1"
WAIT = 3.0  # deadline for anything a test waits on (never reached when all is well)
DEFAULT_HEADERS = {"User-Agent": "openbits-test/1", "Accept-Encoding": "identity"}

# -- a scripted raw-TCP server ---------------------------------------------------------------


@dataclass
class Req:
    """A request head as the server received it."""

    raw: bytes  # with its final empty line
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]  # as sent: names keep their case, repeats are kept

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None


def parse_request(raw: bytes) -> Req:
    lines = raw.decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ")
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name, value.strip()))
    return Req(raw, method, target, version, headers)


class Peer:
    """One accepted connection as a script sees it. Request heads are cut out of what
    arrives; ``queued_at_answer`` records, for each answer, how many requests the server
    had received and not yet answered (1 = no request was waiting behind this one)."""

    def __init__(self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.index = index
        self.reader = reader
        self.writer = writer
        self.received = bytearray()  # every byte the client sent
        self.heads: list[Req] = []
        self.answered = 0
        self.queued_at_answer: list[int] = []
        self.eof = asyncio.Event()  # the client closed (or reset) the connection
        self.closed = asyncio.Event()  # the script closed the connection
        self._buf = bytearray()
        self._handed = 0

    async def _read(self) -> None:
        try:
            data = await self.reader.read(65536)
        except ConnectionError:
            data = b""
        if not data:
            self.eof.set()
            return
        self.received += data
        self._buf += data
        while (end := self._buf.find(b"\r\n\r\n")) >= 0:
            self.heads.append(parse_request(bytes(self._buf[: end + 4])))
            del self._buf[: end + 4]

    async def request(self) -> Req | None:
        """The next request head, None when the client closed the connection."""
        while self._handed >= len(self.heads):
            if self.eof.is_set():
                return None
            await self._read()
        self._handed += 1
        return self.heads[self._handed - 1]

    async def wait_heads(self, count: int) -> None:
        """Read until ``count`` request heads arrived in all (or WAIT seconds passed)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(WAIT):
                while len(self.heads) < count and not self.eof.is_set():
                    await self._read()

    async def until_eof(self) -> None:
        while not self.eof.is_set():
            await self._read()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self, data: bytes) -> None:
        """Send the answer to the oldest unanswered request."""
        self.queued_at_answer.append(len(self.heads) - self.answered)
        self.answered += 1
        await self.send(data)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()
        self.closed.set()

    def abort(self) -> None:
        """Reset the connection (RST)."""
        sock = self.writer.get_extra_info("socket")
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()
        self.closed.set()


Script = Callable[[Peer], Awaitable[None]]


class ScriptServer:
    """Listens on 127.0.0.1; runs ``script(peer)`` for each accepted connection and closes
    the connection when the script returns."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.peers: list[Peer] = []
        self.errors: list[BaseException] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def key(self) -> tuple[str, int, int, str]:
        return (HOST, self.port, 0, "")

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accepted, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = Peer(len(self.peers), reader, writer)
        self.peers.append(peer)
        try:
            await self.script(peer)
        except ConnectionError:
            pass
        except Exception as e:
            self.errors.append(e)
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for peer in self.peers:
            peer.writer.transport.abort()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=WAIT)


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Script], Awaitable[ScriptServer]]]:
    """Start a :class:`ScriptServer`; a script's unexpected exception fails the test."""
    servers: list[ScriptServer] = []

    async def start(script: Script) -> ScriptServer:
        server = ScriptServer(script)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()
    errors = [e for server in servers for e in server.errors]
    if errors:
        raise errors[0]


ClientFactory = Callable[..., H1Client]


@pytest.fixture
async def make_client() -> AsyncIterator[ClientFactory]:
    made: list[H1Client] = []

    def make(**options: Any) -> H1Client:
        kwargs: dict[str, Any] = {
            "connect_timeout_s": WAIT,
            "read_timeout_s": WAIT,
            "default_headers": DEFAULT_HEADERS,
        }
        kwargs.update(options)
        client = H1Client(**kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


@pytest.fixture
def client(make_client: ClientFactory) -> H1Client:
    return make_client()


# -- helpers ------------------------------------------------------------------------------------


def resp(
    body: bytes = b"",
    *headers: str,
    status: str = "200 OK",
    version: str = "HTTP/1.1",
    length: bool = True,
) -> bytes:
    """A response with ``Content-Length`` (unless ``length=False``) and ``headers``."""
    lines = [f"{version} {status}", *headers]
    if length:
        lines.insert(1, f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(*chunks: bytes, trailers: str = "") -> bytes:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    framed = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
    return head + framed + b"0\r\n" + trailers.encode() + b"\r\n"


NOT_FOUND = resp(b"not found", status="404 Not Found")


async def serve(peer: Peer, routes: Mapping[str, bytes]) -> None:
    """Answer every request with ``routes[path]`` until the client closes."""
    while (req := await peer.request()) is not None:
        await peer.answer(routes.get(req.path, NOT_FOUND))


def serving(routes: Mapping[str, bytes]) -> Script:
    async def script(peer: Peer) -> None:
        await serve(peer, routes)

    return script


def by_connection(*scripts: Script) -> Script:
    """The n-th connection runs the n-th script; the last one runs for the rest."""

    async def script(peer: Peer) -> None:
        await scripts[min(peer.index, len(scripts) - 1)](peer)

    return script


async def stall(peer: Peer) -> None:
    await asyncio.Event().wait()  # cancelled when the server stops


async def read_all(response: Response) -> bytes:
    parts = []
    while chunk := await response.content.readany():
        parts.append(chunk)
    return b"".join(parts)


async def fetch(
    client: H1Client,
    url: str,
    headers: Mapping[str, str] | None = None,
    ahead: Iterable[tuple[str, Mapping[str, str]]] = (),
) -> tuple[int, bytes]:
    async with client.get(url, headers or {}, ahead) as response:
        return response.status, await read_all(response)


async def wait_for(event: asyncio.Event) -> None:
    async with asyncio.timeout(WAIT):
        await event.wait()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


def bodies(count: int) -> dict[str, bytes]:
    """Distinct bodies of different lengths for /f0, /f1, ..."""
    return {f"/f{i}": f"<body of /f{i}>".encode() * (i + 1) for i in range(count)}


def ahead_of(url: str, paths: list[str], i: int) -> list[tuple[str, Mapping[str, str]]]:
    return [(url + p, {}) for p in paths[i + 1 :]]


# -- 1. Content-Length bodies, empty bodies, interim answers, HTTP/1.0 -------------------------


async def test_content_length_body_read_with_readany_and_read_n(
    scripted: Callable[[Script], Awaitable[ScriptServer]], make_client: ClientFactory
) -> None:
    body = bytes(range(256)) * 40
    srv = await scripted(serving({"/f": resp(body, "X-Test: yes")}))
    client = make_client(read_bytes=1000)
    async with client.get(srv.url + "/f?x=1", {}) as r:
        assert (r.status, r.reason) == (200, "OK")
        assert r.headers["x-test"] == "yes"
        assert r.content_length == len(body)
        assert str(r.url) == srv.url + "/f?x=1"
        parts = []
        while chunk := await r.content.readany():
            assert len(chunk) <= 1000
            parts.append(chunk)
        assert b"".join(parts) == body
        assert await r.content.read() == b""
    async with client.get(srv.url + "/f", {}) as r:
        got = bytearray()
        while chunk := await r.content.read(777):
            assert len(chunk) <= 777
            got += chunk
        assert got == body
    assert len(srv.peers) == 1


@pytest.mark.parametrize(
    "answer",
    [
        resp(b""),
        resp(b"", status="204 No Content", length=False),
        resp(b"", "Content-Length: 100", status="304 Not Modified", length=False),
        resp(b"", "Transfer-Encoding: chunked", status="204 No Content", length=False),
    ],
    ids=["200-length-0", "204", "304-with-length", "204-with-chunked"],
)
async def test_empty_bodies_and_the_connection_is_reused(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client, answer: bytes
) -> None:
    srv = await scripted(serving({"/e": answer, "/f": resp(b"next")}))
    async with client.get(srv.url + "/e", {}) as r:
        assert await r.content.read() == b""
        assert await r.content.readany() == b""
    assert await fetch(client, srv.url + "/f") == (200, b"next")
    assert len(srv.peers) == 1


async def test_interim_answers_are_skipped(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client
) -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n"
    srv = await scripted(serving({"/f": interim + resp(b"hello", "X-Final: 1")}))
    async with client.get(srv.url + "/f", {}) as r:
        assert r.status == 200
        assert "Link" not in r.headers
        assert r.headers["X-Final"] == "1"
        assert await read_all(r) == b"hello"


async def test_bare_lf_response_head(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client
) -> None:
    srv = await scripted(serving({"/f": b"HTTP/1.1 200 OK\nContent-Length: 2\nX-A: b\n\nhi"}))
    async with client.get(srv.url + "/f", {}) as r:
        assert r.headers["X-A"] == "b"
        assert await read_all(r) == b"hi"


async def test_http10_response_is_not_kept_alive(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client
) -> None:
    srv = await scripted(serving({"/f": resp(b"old", version="HTTP/1.0")}))
    assert await fetch(client, srv.url + "/f") == (200, b"old")
    assert await fetch(client, srv.url + "/f") == (200, b"old")
    assert len(srv.peers) == 2
    await wait_for(srv.peers[0].eof)  # the client closed the first connection


async def test_equal_repeated_content_lengths_are_accepted(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client
) -> None:
    srv = await scripted(serving({"/f": resp(b"hello", "Content-Length: 5, 5", length=False)}))
    assert await fetch(client, srv.url + "/f") == (200, b"hello")


# -- 2. chunked bodies ----------------------------------------------------------------------------


async def test_chunked_body_with_extensions_and_trailers(
    scripted: Callable[[Script], Awaitable[ScriptServer]], make_client: ClientFactory
) -> None:
    big = bytes(range(256)) * 20  # 0x1400 bytes, read in pieces of read_bytes
    raw = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n"
        b"1;name=value\r\n \r\n"
        b'6 ; ext ; other="q"\r\nworld!\r\n'
        b"1400\r\n" + big + b"\r\n"
        b"0\r\nX-Trailer: t\r\nX-Other: u\r\n\r\n"
    )
    srv = await scripted(serving({"/c": raw, "/f": resp(b"after")}))
    client = make_client(read_bytes=1000)
    async with client.get(srv.url + "/c", {}) as r:
        assert r.content_length is None
        got = bytearray()
        while chunk := await r.content.readany():
            assert len(chunk) <= 1000
            got += chunk
        assert got == b"hello world!" + big
    async with client.get(srv.url + "/c", {}) as r:
        got = bytearray()
        while chunk := await r.content.read(3):
            assert len(chunk) <= 3
            got += chunk
        assert got == b"hello world!" + big
    # the trailers were consumed: the connection serves the next answer
    assert await fetch(client, srv.url + "/f") == (200, b"after")
    assert len(srv.peers) == 1


@pytest.mark.parametrize("size_line", [b"zz", b"-5", b"", b"12345678901234567", b"5 5"])
async def test_bad_chunk_size(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client, size_line: bytes
) -> None:
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size_line + b"\r\nhello\r\n0\r\n\r\n"
    srv = await scripted(serving({"/c": raw}))
    async with client.get(srv.url + "/c", {}) as r:
        with pytest.raises(BadResponse):
            await read_all(r)


@pytest.mark.parametrize("size_line", [b"0x5", b"+5", b"0_5"])
async def test_lax_chunk_size_is_refused(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client, size_line: bytes
) -> None:
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size_line + b"\r\nhello\r\n0\r\n\r\n"
    srv = await scripted(serving({"/c": raw}))
    async with client.get(srv.url + "/c", {}) as r:
        with pytest.raises(BadResponse):
            await read_all(r)


async def test_chunk_longer_than_its_size(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client
) -> None:
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n"
    srv = await scripted(serving({"/c": raw}))
    async with client.get(srv.url + "/c", {}) as r:
        with pytest.raises(BadResponse):
            await read_all(r)


@pytest.mark.parametrize(
    "partial",
    [b"a\r\nhel", b"5\r\nhello\r\n", b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\n", b"5\r\nhel"],
    ids=["inside-chunk-data", "before-next-size", "inside-trailers", "short-last-read"],
)
async def test_connection_closed_inside_a_chunked_body(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client, partial: bytes
) -> None:
    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + partial)
        await peer.close()

    srv = await scripted(script)
    async with client.get(srv.url + "/c", {}) as r:
        with pytest.raises(ClosedEarly):
            await read_all(r)


# -- 3. close-delimited bodies --------------------------------------------------------------------


@pytest.mark.parametrize("framing", ["", "Transfer-Encoding: identity\r\n"], ids=["none", "te-not-chunked"])
async def test_close_delimited_body_read_to_eof_and_not_reused(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client, framing: str
) -> None:
    body = b"x" * 100_000 + b"end"

    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.answer(b"HTTP/1.1 200 OK\r\nContent-Type: a/b\r\n" + framing.encode() + b"\r\n" + body)
        await peer.close()

    srv = await scripted(script)
    async with client.get(srv.url + "/f", {}) as r:
        assert r.content_length is None
        assert await read_all(r) == body
        assert await r.content.read() == b""
    assert await fetch(client, srv.url + "/f") == (200, body)
    assert len(srv.peers) == 2
    assert client._idle.get(srv.key, []) == []


# -- 4. keep-alive ------------------------------------------------------------------------------


async def test_sequential_gets_reuse_one_connection(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client
) -> None:
    srv = await scripted(serving({"/a": resp(b"aaa"), "/b": resp(b"bbbb")}))
    assert await fetch(client, srv.url + "/a") == (200, b"aaa")
    assert await fetch(client, srv.url + "/b") == (200, b"bbbb")
    assert await fetch(client, srv.url + "/a") == (200, b"aaa")
    assert len(srv.peers) == 1
    assert [h.path for h in srv.peers[0].heads] == ["/a", "/b", "/a"]


async def test_body_not_read_to_the_end_closes_the_connection(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client
) -> None:
    srv = await scripted(serving({"/f": resp(b"0123456789" * 100)}))
    async with client.get(srv.url + "/f", {}) as r:
        assert await r.content.read(10) == b"0123456789"
    await wait_for(srv.peers[0].eof)
    assert await fetch(client, srv.url + "/f") == (200, b"0123456789" * 100)
    assert len(srv.peers) == 2


async def test_connection_close_answer_is_not_reused(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client
) -> None:
    # the server would keep the connection: the client must close it itself
    srv = await scripted(serving({"/f": resp(b"bye", "Connection: close")}))
    assert await fetch(client, srv.url + "/f") == (200, b"bye")
    await wait_for(srv.peers[0].eof)
    assert await fetch(client, srv.url + "/f") == (200, b"bye")
    assert len(srv.peers) == 2


async def test_idle_connection_older_than_idle_timeout_is_not_reused(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    srv = await scripted(serving({"/f": resp(b"f")}))
    assert await fetch(client, srv.url + "/f") == (200, b"f")
    monkeypatch.setattr(h1, "IDLE_TIMEOUT_S", 0.0)
    assert await fetch(client, srv.url + "/f") == (200, b"f")
    assert len(srv.peers) == 2
    await wait_for(srv.peers[0].eof)


async def test_at_most_max_idle_per_host_connections_are_kept(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client
) -> None:
    srv = await scripted(serving({"/f": resp(b"f")}))
    count = h1.MAX_IDLE_PER_HOST + 1
    async with contextlib.AsyncExitStack() as stack:
        responses = [await stack.enter_async_context(client.get(srv.url + "/f", {})) for _ in range(count)]
        for r in responses:
            assert await read_all(r) == b"f"
    assert len(srv.peers) == count
    assert len(client._idle[srv.key]) == h1.MAX_IDLE_PER_HOST
    await wait_for(srv.peers[0].eof)  # the oldest idle one was dropped


# -- 5. stale keep-alive connections ------------------------------------------------------------


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_stale_kept_alive_connection_is_retried_on_a_new_one(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client, how: str
) -> None:
    async def answer_once_then_drop(peer: Peer) -> None:
        await peer.request()
        await peer.answer(resp(b"first"))
        if how == "close":
            await peer.close()
        else:
            peer.abort()

    srv = await scripted(by_connection(answer_once_then_drop, serving({"/f": resp(b"second")})))
    assert await fetch(client, srv.url + "/f") == (200, b"first")
    await wait_for(srv.peers[0].closed)
    assert len(client._idle[srv.key]) == 1  # the client still holds the dropped connection
    assert await fetch(client, srv.url + "/f") == (200, b"second")
    assert len(srv.peers) == 2
    assert srv.key not in client._no_pipelining


async def test_fresh_connection_closed_without_answer(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client
) -> None:
    async def hang_up(peer: Peer) -> None:
        await peer.request()
        await peer.close()

    srv = await scripted(hang_up)
    with pytest.raises(ClosedEarly):
        async with client.get(srv.url + "/f", {}):
            pass
    assert len(srv.peers) == 1  # a fresh connection is not retried


async def test_stale_connection_then_fresh_one_closed_is_retried_once(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client
) -> None:
    async def answer_once_then_close(peer: Peer) -> None:
        await peer.request()
        await peer.answer(resp(b"first"))
        await peer.close()

    async def hang_up(peer: Peer) -> None:
        await peer.request()
        await peer.close()

    srv = await scripted(by_connection(answer_once_then_close, hang_up))
    assert await fetch(client, srv.url + "/f") == (200, b"first")
    await wait_for(srv.peers[0].closed)
    with pytest.raises(ClosedEarly):
        await fetch(client, srv.url + "/f")
    assert len(srv.peers) == 2


async def test_stale_idle_connection_does_not_turn_pipelining_off(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client
) -> None:
    routes = bodies(4)
    paths = list(routes)

    async def answer_once_then_close(peer: Peer) -> None:
        req = await peer.request()
        assert req is not None
        await peer.answer(resp(routes[req.path]))
        await peer.close()

    answers = {p: resp(b) for p, b in routes.items()}
    srv = await scripted(by_connection(answer_once_then_close, serving(answers)))
    assert await fetch(client, srv.url + paths[0]) == (200, routes[paths[0]])
    await wait_for(srv.peers[0].closed)
    for i in range(1, len(paths)):
        got = await fetch(client, srv.url + paths[i], ahead=ahead_of(srv.url, paths, i))
        assert got == (200, routes[paths[i]])
    assert srv.key not in client._no_pipelining


# -- 6. pipelining --------------------------------------------------------------------------------


async def test_requests_are_sent_ahead_after_the_connection_proved_persistent(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client
) -> None:
    routes = bodies(6)
    paths = list(routes)

    async def script(peer: Peer) -> None:
        first = await peer.request()
        assert first is not None
        await peer.answer(resp(routes[first.path]))
        await peer.wait_heads(len(paths))  # the next get sends all the others at once
        await serve(peer, {p: resp(b) for p, b in routes.items()})

    srv = await scripted(script)
    for i, path in enumerate(paths):
        async with client.get(srv.url + path, {}, ahead_of(srv.url, paths, i)) as r:
            assert str(r.url) == srv.url + path
            assert await read_all(r) == routes[path]
    assert len(srv.peers) == 1
    peer = srv.peers[0]
    assert [h.path for h in peer.heads] == paths  # each request sent exactly once, in order
    # the first request went alone; the second carried the four after it
    assert peer.queued_at_answer == [1, 5, 4, 3, 2, 1]
    assert not client._no_pipelining
    assert client._pipelined.get(srv.key, []) == []
    assert len(client._idle[srv.key]) == 1


async def test_pipelined_answers_arriving_in_one_read_are_cut_apart(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client
) -> None:
    paths = [f"/p{i}" for i in range(6)]
    answers = {
        "/p0": resp(b"zero"),
        "/p1": resp(b"one" * 1000),
        "/p2": chunked(b"tw", b"o", trailers="X-T: 1\r\n"),
        "/p3": resp(b""),
        "/p4": resp(b"", status="204 No Content", length=False),
        "/p5": resp(b"five", "X-Last: yes"),
    }
    expected = {"/p0": b"zero", "/p1": b"one" * 1000, "/p2": b"two", "/p3": b"", "/p4": b"", "/p5": b"five"}

    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.answer(answers["/p0"])
        await peer.wait_heads(len(paths))
        await peer.send(b"".join(answers[h.path] for h in peer.heads[1:]))  # all of them at once
        await peer.until_eof()

    srv = await scripted(script)
    for i, path in enumerate(paths):
        async with client.get(srv.url + path, {}, ahead_of(srv.url, paths, i)) as r:
            assert await read_all(r) == expected[path]
            assert r.status == (204 if path == "/p4" else 200)
    assert len(srv.peers) == 1
    assert [h.path for h in srv.peers[0].heads] == paths


async def test_get_other_than_what_was_sent_ahead_uses_another_connection(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client
) -> None:
    routes = bodies(4)
    srv = await scripted(serving({p: resp(b) for p, b in routes.items()}))
    url = srv.url
    assert await fetch(client, url + "/f0") == (200, routes["/f0"])
    ahead: list[tuple[str, Mapping[str, str]]] = [(url + "/f2", {}), (url + "/f3", {})]
    assert await fetch(client, url + "/f1", ahead=ahead) == (200, routes["/f1"])
    assert [h.path for h in srv.peers[0].heads] == ["/f0", "/f1", "/f2", "/f3"]
    # /f3 skips /f2, whose answer comes next on the first connection
    assert await fetch(client, url + "/f3") == (200, routes["/f3"])
    assert len(srv.peers) == 2
    assert [h.path for h in srv.peers[1].heads] == ["/f3"]
    # the same headers as sent ahead, or not: only an exact match takes the queued answer
    assert await fetch(client, url + "/f2", {"X-Other": "1"}) == (200, routes["/f2"])
    assert srv.peers[1].heads[-1].path == "/f2"
    assert await fetch(client, url + "/f2") == (200, routes["/f2"])
    assert await fetch(client, url + "/f3") == (200, routes["/f3"])
    assert len(srv.peers[0].heads) == 4  # the queued answers were taken from the first one
    assert client._pipelined.get(srv.key, []) == []


async def test_ahead_that_differs_from_what_is_in_flight_sends_nothing_more(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client
) -> None:
    routes = bodies(5)
    srv = await scripted(serving({p: resp(b) for p, b in routes.items()}))
    url = srv.url
    await fetch(client, url + "/f0")
    got = await fetch(client, url + "/f1", ahead=[(url + "/f2", {}), (url + "/f3", {})])
    assert got == (200, routes["/f1"])
    assert await fetch(client, url + "/f2", ahead=[(url + "/f4", {})]) == (200, routes["/f2"])
    assert [h.path for h in srv.peers[0].heads] == ["/f0", "/f1", "/f2", "/f3"]


async def test_pipeline_depth_zero_sends_nothing_ahead(
    scripted: Callable[[Script], Awaitable[ScriptServer]], make_client: ClientFactory
) -> None:
    routes = bodies(5)
    paths = list(routes)
    srv = await scripted(serving({p: resp(b) for p, b in routes.items()}))
    client = make_client(pipeline_depth=0)
    for i, path in enumerate(paths):
        assert await fetch(client, srv.url + path, ahead=ahead_of(srv.url, paths, i)) == (200, routes[path])
    assert len(srv.peers) == 1
    assert [h.path for h in srv.peers[0].heads] == paths
    assert srv.peers[0].queued_at_answer == [1] * len(paths)


async def test_pipeline_depth_limits_requests_in_flight(
    scripted: Callable[[Script], Awaitable[ScriptServer]], make_client: ClientFactory
) -> None:
    routes = bodies(8)
    paths = list(routes)
    srv = await scripted(serving({p: resp(b) for p, b in routes.items()}))
    client = make_client(pipeline_depth=2)
    for i, path in enumerate(paths):
        assert await fetch(client, srv.url + path, ahead=ahead_of(srv.url, paths, i)) == (200, routes[path])
        in_flight = sum(len(c.inflight) for c in client._pipelined.get(srv.key, []))
        assert in_flight <= 2
    assert len(srv.peers) == 1
    assert [h.path for h in srv.peers[0].heads] == paths
    assert max(srv.peers[0].queued_at_answer) <= 3  # the current request and two ahead


async def test_ahead_to_another_server_is_not_sent(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client
) -> None:
    srv = await scripted(serving({"/a": resp(b"a"), "/b": resp(b"b")}))
    other = await scripted(serving({"/b": resp(b"other b")}))
    await fetch(client, srv.url + "/a")
    got = await fetch(client, srv.url + "/a", ahead=[(other.url + "/b", {}), (srv.url + "/b", {})])
    assert got == (200, b"a")
    assert [h.path for h in srv.peers[0].heads] == ["/a", "/a"]
    assert await fetch(client, other.url + "/b") == (200, b"other b")


async def test_pipelined_connection_nobody_came_back_for_is_dropped(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    routes = bodies(4)
    srv = await scripted(serving({p: resp(b) for p, b in routes.items()}))
    url = srv.url
    await fetch(client, url + "/f0")
    await fetch(client, url + "/f1", ahead=[(url + "/f2", {})])
    assert len(client._pipelined[srv.key]) == 1
    monkeypatch.setattr(h1, "PIPELINED_IDLE_TIMEOUT_S", -1.0)
    assert await fetch(client, url + "/f3") == (200, routes["/f3"])
    assert client._pipelined[srv.key] == []
    await wait_for(srv.peers[0].eof)


# -- 7. pipelining failures -----------------------------------------------------------------------


async def test_server_dropping_queued_requests_turns_pipelining_off(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(h1, "PIPELINE_STRIKES", 1)  # off at the first failure (3 by default)
    routes = bodies(6)
    paths = list(routes)
    answers = {p: resp(b) for p, b in routes.items()}

    async def answer_one_pipelined_then_close(peer: Peer) -> None:
        first = await peer.request()
        assert first is not None
        await peer.answer(answers[first.path])
        await peer.wait_heads(len(paths))  # the second request and the four behind it
        second = await peer.request()
        assert second is not None
        await peer.answer(answers[second.path])
        await peer.close()  # the queued requests are dropped

    srv = await scripted(by_connection(answer_one_pipelined_then_close, serving(answers)))
    for i, path in enumerate(paths):
        assert await fetch(client, srv.url + path, ahead=ahead_of(srv.url, paths, i)) == (200, routes[path])
    assert srv.key in client._no_pipelining
    assert len(srv.peers) == 2
    first, second = srv.peers
    assert [h.path for h in first.heads] == paths
    assert first.queued_at_answer == [1, 5]
    assert [h.path for h in second.heads] == paths[2:]
    assert second.queued_at_answer == [1] * len(paths[2:])  # one request at a time from now on


async def test_server_resetting_after_pipelined_answer(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(h1, "PIPELINE_STRIKES", 1)  # off at the first failure (3 by default)
    routes = bodies(4)
    paths = list(routes)
    answers = {p: resp(b) for p, b in routes.items()}

    async def answer_then_reset(peer: Peer) -> None:
        first = await peer.request()
        assert first is not None
        await peer.answer(answers[first.path])
        await peer.wait_heads(len(paths))
        second = await peer.request()
        assert second is not None
        await peer.answer(answers[second.path])
        peer.abort()

    srv = await scripted(by_connection(answer_then_reset, serving(answers)))
    for i, path in enumerate(paths):
        # (the second answer is read in full: the reset comes after it on the wire)
        assert await fetch(client, srv.url + path, ahead=ahead_of(srv.url, paths, i)) == (200, routes[path])
    assert srv.key in client._no_pipelining
    assert len(srv.peers) == 2
    assert [h.path for h in srv.peers[1].heads] == paths[2:]


# -- 8. responses that are not acceptable HTTP ------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"garbage\r\n\r\n",
        b"HTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"http/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 20x OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1  200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nNoColonHere\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\n  folded\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\tfolded\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A : 1\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n: empty-name\r\nContent-Length: 0\r\n\r\n",
    ],
    ids=[
        "garbage",
        "bad-protocol",
        "http2",
        "lower-case-protocol",
        "no-status",
        "four-digit-status",
        "non-digit-status",
        "double-space",
        "two-lengths",
        "length-list",
        "length-not-a-number",
        "negative-length",
        "empty-length",
        "huge-length",
        "no-colon",
        "obs-fold-space",
        "obs-fold-tab",
        "space-before-colon",
        "empty-name",
    ],
)
async def test_bad_response_head(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client, head: bytes
) -> None:
    srv = await scripted(serving({"/f": head}))
    with pytest.raises(BadResponse):
        async with client.get(srv.url + "/f", {}):
            pass
    await wait_for(srv.peers[0].eof)  # the connection is not kept
    assert client._idle.get(srv.key, []) == []


async def test_superscript_digit_content_length_is_bad_response(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client
) -> None:
    srv = await scripted(serving({"/f": b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\nhi"}))
    with pytest.raises(BadResponse):
        async with client.get(srv.url + "/f", {}):
            pass


async def test_status_code_below_100_is_bad_response(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client
) -> None:
    srv = await scripted(serving({"/f": b"HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n"}))
    with pytest.raises(BadResponse):
        async with client.get(srv.url + "/f", {}):
            pass


async def test_head_longer_than_max_head_bytes(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client
) -> None:
    line = b"X-Pad: " + b"a" * 1000 + b"\r\n"
    head = b"HTTP/1.1 200 OK\r\n" + line * (h1.MAX_HEAD_BYTES // len(line) + 2)  # never ends

    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(head)
        await peer.until_eof()

    srv = await scripted(script)
    with pytest.raises(BadResponse):
        async with client.get(srv.url + "/f", {}):
            pass
    await wait_for(srv.peers[0].eof)


async def test_long_head_under_the_limit_in_many_pieces(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client
) -> None:
    line = b"X-Pad: " + b"a" * 1000 + b"\r\n"
    count = h1.MAX_HEAD_BYTES // len(line) - 2

    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r")
        for _ in range(count):
            await peer.send(b"\n" + line[:-1])  # the end of a line and the next arrive apart
        await peer.send(b"\n\r")
        await peer.send(b"\nok")
        await peer.until_eof()

    srv = await scripted(script)
    async with client.get(srv.url + "/f", {}) as r:
        assert len(r.headers.getall("X-Pad")) == count
        assert await read_all(r) == b"ok"


async def _read_head_of(client: H1Client, data: bytes) -> bytes | None:
    """``client._read_head`` on a connection whose buffer already holds ``data`` (as one
    recv of up to SMALL_READ_BYTES leaves it)."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        conn = h1._Conn(ours, ("example.invalid", 80))
        conn.buf += data
        return await client.read_head(conn)


@pytest.mark.parametrize("extra", [0, 1])
async def test_max_head_bytes_holds_for_a_head_complete_in_the_buffer(client: H1Client, extra: int) -> None:
    start = b"HTTP/1.1 200 OK\r\nX-Pad: "
    head = start + b"a" * (h1.MAX_HEAD_BYTES - len(start) - 1 + extra) + b"\r"
    assert len(head) == h1.MAX_HEAD_BYTES + extra
    following = resp(b"x" * 100_000) * 3  # pipelined answers behind it
    if extra:
        with pytest.raises(BadResponse):
            await _read_head_of(client, head + b"\n\r\n" + following)
    else:
        assert await _read_head_of(client, head + b"\n\r\n" + following) == head


async def test_bytes_after_a_complete_body_are_not_the_next_answer(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client
) -> None:
    srv = await scripted(serving({"/a": resp(b"abc") + resp(b"EVIL"), "/b": resp(b"real b")}))
    assert await fetch(client, srv.url + "/a") == (200, b"abc")
    assert await fetch(client, srv.url + "/b") == (200, b"real b")


# -- 9. short bodies and read timeouts --------------------------------------------------------------


async def test_body_shorter_than_content_length_then_close(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client
) -> None:
    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 40)
        await peer.close()

    srv = await scripted(script)
    async with client.get(srv.url + "/f", {}) as r:
        got = bytearray()
        with pytest.raises(ClosedEarly):
            while chunk := await r.content.readany():
                got += chunk
        assert got == b"x" * 40


async def test_connection_closed_inside_the_head(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client
) -> None:
    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.answer(b"HTTP/1.1 200 OK\r\nContent-Le")
        await peer.close()

    srv = await scripted(script)
    with pytest.raises(ClosedEarly):
        async with client.get(srv.url + "/f", {}):
            pass
    assert len(srv.peers) == 1


async def test_read_timeout_while_waiting_for_the_head(
    scripted: Callable[[Script], Awaitable[ScriptServer]], make_client: ClientFactory
) -> None:
    async def script(peer: Peer) -> None:
        await peer.request()
        await stall(peer)

    srv = await scripted(script)
    client = make_client(read_timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with client.get(srv.url + "/f", {}):
            pass
    assert 0.25 <= time.monotonic() - started < 2.0
    assert len(srv.peers) == 1


async def test_read_timeout_inside_the_body(
    scripted: Callable[[Script], Awaitable[ScriptServer]], make_client: ClientFactory
) -> None:
    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await stall(peer)

    srv = await scripted(script)
    client = make_client(read_timeout_s=0.3)
    async with client.get(srv.url + "/f", {}) as r:
        assert await r.content.read() == b"abc"
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await r.content.read()
        assert 0.25 <= time.monotonic() - started < 2.0


async def test_read_zero_bytes_returns_empty(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client
) -> None:
    srv = await scripted(serving({"/f": resp(b"hello")}))
    async with client.get(srv.url + "/f", {}) as r:
        assert await r.content.read(0) == b""
        assert await read_all(r) == b"hello"


# -- 10. connecting -------------------------------------------------------------------------------


async def test_connect_refused(client: H1Client) -> None:
    port = closed_port()
    with pytest.raises(ConnectFailed) as caught:
        async with client.get(f"http://{HOST}:{port}/f", {}):
            pass
    assert isinstance(caught.value.os_error, ConnectionRefusedError)
    assert isinstance(caught.value, H1Error)


async def test_connect_timeout(make_client: ClientFactory) -> None:
    # a listener whose accept queue is full drops the SYNs of further connections
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind((HOST, 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        filler.connect((HOST, port))
        client = make_client(connect_timeout_s=0.2)
        started = time.monotonic()
        with pytest.raises(ConnectFailed, match="no answer"):
            async with client.get(f"http://{HOST}:{port}/f", {}):
                pass
        assert time.monotonic() - started < 2.0


async def test_name_not_resolved(client: H1Client) -> None:
    with pytest.raises(NameNotResolved):
        async with client.get("http://no-such-host.invalid/f", {}):
            pass


async def test_host_name_is_resolved(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client
) -> None:
    srv = await scripted(serving({"/f": resp(b"by name")}))
    try:
        socket.getaddrinfo("localhost", srv.port, socket.AF_INET, socket.SOCK_STREAM)
    except OSError:
        pytest.skip("localhost does not resolve here")
    assert await fetch(client, f"http://localhost:{srv.port}/f") == (200, b"by name")
    assert srv.peers[0].heads[0].header("Host") == f"localhost:{srv.port}"


# -- 11. request format -----------------------------------------------------------------------------


async def test_request_head_bytes(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client
) -> None:
    srv = await scripted(serving({"/path/x": resp(b"")}))
    await fetch(client, srv.url + "/path/x?q=1&b#fragment")
    assert srv.peers[0].heads[0].raw == (
        b"GET /path/x?q=1&b HTTP/1.1\r\n"
        b"Host: 127.0.0.1:%d\r\n"
        b"User-Agent: openbits-test/1\r\n"
        b"Accept-Encoding: identity\r\n"
        b"\r\n" % srv.port
    )


async def test_custom_headers_override_defaults_case_insensitively(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client
) -> None:
    srv = await scripted(serving({"/": resp(b"")}))
    await fetch(client, srv.url, {"uSer-aGent": "custom/2", "Range": "bytes=0-1", "X-Empty": ""})
    req = srv.peers[0].heads[0]
    assert req.raw.startswith(b"GET / HTTP/1.1\r\n")
    names = [k.lower() for k, _ in req.headers]
    assert sorted(names) == ["accept-encoding", "host", "range", "user-agent", "x-empty"]
    assert req.header("User-Agent") == "custom/2"
    assert req.header("Accept-Encoding") == "identity"
    assert req.header("Range") == "bytes=0-1"
    assert req.header("Host") == f"{HOST}:{srv.port}"
    assert b"\r\nuSer-aGent: custom/2\r\n" in req.raw  # the caller's spelling


@pytest.mark.parametrize(
    ("userinfo", "credentials"),
    [("u:p@", "u:p"), ("us%40er:p%3Ass@", "us@er:p:ss"), ("only@", "only:")],
)
async def test_basic_auth_from_url_userinfo(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client, userinfo: str, credentials: str
) -> None:
    srv = await scripted(serving({"/a": resp(b"")}))
    await fetch(client, f"http://{userinfo}{HOST}:{srv.port}/a")
    req = srv.peers[0].heads[0]
    assert req.header("Authorization") == "Basic " + base64.b64encode(credentials.encode()).decode()
    assert req.header("Host") == f"{HOST}:{srv.port}"
    assert req.target == "/a"
    assert req.header("User-Agent") == DEFAULT_HEADERS["User-Agent"]


async def test_given_authorization_wins_over_url_userinfo(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client
) -> None:
    srv = await scripted(serving({"/a": resp(b"")}))
    await fetch(client, f"http://u:p@{HOST}:{srv.port}/a", {"authorization": "Bearer token"})
    req = srv.peers[0].heads[0]
    assert [v for k, v in req.headers if k.lower() == "authorization"] == ["Bearer token"]


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://example.com/a", "example.com"),
        ("http://example.com:80/a", "example.com"),
        ("http://example.com:8080/a", "example.com:8080"),
        ("http://[::1]:8080/a", "[::1]:8080"),
        ("http://[::1]/a", "[::1]"),
        ("http://EXAMPLE.com/a", "example.com"),  # (not simple: through yarl)
        ("http://example.com:8080/a#frag", "example.com:8080"),
    ],
)
def test_host_header(url: str, host: str) -> None:
    client = H1Client(connect_timeout_s=1, read_timeout_s=1)
    assert client._head(Target(url), {}) == f"GET /a HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    assert f"\r\nHost: {host}\r\n".encode() in client._head(Target(url), {"X": "y"})


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/a/b?c=d&e=f",
        "http://example.com:81/",
        "http://example.com",
        "http://example.com?q",
        "http://example.com/a%20b",
        "http://example.com/a b",
        "http://example.com/ä",
        "http://ÄÖ.example/x",
        "http://u:p@example.com/x",
        "http://[::1]:8080/x?y",
        "http://Example.COM:80/x",
        "http://example.com/x#f",
        "http://example.com/x|y",
    ],
)
def test_the_simple_url_path_agrees_with_yarl(url: str) -> None:
    target = Target(url)
    parsed = yarl.URL(url)
    assert target.key == (parsed.raw_host, parsed.port, 0, "")
    assert target.path_qs == (parsed.raw_path_qs or "/")
    assert target.user == (parsed.user if parsed.raw_user is not None else None)


@pytest.mark.parametrize(
    "headers",
    [
        {"X-A": "a\nb"},
        {"X-A": "a\rb"},
        {"X-A": "a\x00b"},
        {"X-A": "a\r\nX-Injected: 1"},
        {"X-A\n": "v"},
        {"X-A: 1\r\nX-Injected": "1"},
        {"X A": "v"},
        {"X-A:": "v"},
        {"": "v"},
        {"X-A": "\u20ac"},
    ],
    ids=[
        "lf-in-value",
        "cr-in-value",
        "nul-in-value",
        "crlf-in-value",
        "lf-in-name",
        "crlf-in-name",
        "space-in-name",
        "colon-in-name",
        "empty-name",
        "not-latin-1",
    ],
)
async def test_bad_request_header_is_refused_and_nothing_sent(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client, headers: dict[str, str]
) -> None:
    srv = await scripted(serving({"/ok": resp(b"ok")}))
    with pytest.raises(BadRequest):
        async with client.get(srv.url + "/f", headers):
            pass
    assert await fetch(client, srv.url + "/ok") == (200, b"ok")
    served = [p for p in srv.peers if p.heads]
    assert len(served) == 1
    assert [h.path for h in served[0].heads] == ["/ok"]
    for peer in srv.peers:
        if not peer.heads:
            await wait_for(peer.eof)
            assert peer.received == b""


async def test_bad_header_in_ahead_does_not_fail_the_current_get(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client
) -> None:
    srv = await scripted(serving({"/a": resp(b"a"), "/b": resp(b"b"), "/c": resp(b"c")}))
    await fetch(client, srv.url + "/a")
    bad: dict[str, str] = {"X": "a\nb"}
    ahead = [(srv.url + "/b", bad), (srv.url + "/c", {})]
    assert await fetch(client, srv.url + "/a", ahead=ahead) == (200, b"a")
    assert [h.path for h in srv.peers[0].heads] == ["/a", "/a"]  # nothing sent ahead
    with pytest.raises(BadRequest):
        await fetch(client, srv.url + "/b", bad, ahead=ahead[1:])
    assert await fetch(client, srv.url + "/c") == (200, b"c")


# -- 12. close() ----------------------------------------------------------------------------------


async def test_close_closes_idle_and_pipelined_connections(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client
) -> None:
    routes = {p: resp(b) for p, b in bodies(3).items()}
    idle_srv = await scripted(serving(routes))
    pipe_srv = await scripted(serving(routes))
    await fetch(client, idle_srv.url + "/f0")
    await fetch(client, pipe_srv.url + "/f0")
    await fetch(client, pipe_srv.url + "/f1", ahead=[(pipe_srv.url + "/f2", {})])
    assert len(client._idle[idle_srv.key]) == 1
    assert len(client._pipelined[pipe_srv.key]) == 1
    await client.close()
    await wait_for(idle_srv.peers[0].eof)
    await wait_for(pipe_srv.peers[0].eof)
    assert client._idle == {}
    assert client._pipelined == {}


async def test_connection_in_use_at_close_is_closed_when_released(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client
) -> None:
    srv = await scripted(serving({"/f": resp(b"body")}))
    async with client.get(srv.url + "/f", {}) as r:
        await client.close()
        assert await read_all(r) == b"body"
    await wait_for(srv.peers[0].eof)
    assert client._idle == {}


# -- hypothesis: the head parser ------------------------------------------------------------------


def _check_parse(head: bytes) -> None:
    try:
        status, reason, headers, http11 = parse_head(head)
    except BadResponse:
        return
    assert 0 <= status <= 999
    assert isinstance(reason, str)
    assert isinstance(http11, bool)
    for name, value in headers.items():
        assert name and ":" not in name and value == value.strip()


@given(st.binary(max_size=300))
def test_parse_head_of_arbitrary_bytes(head: bytes) -> None:
    _check_parse(head)


_LINE_BYTES = st.binary(max_size=40).filter(lambda b: b"\n" not in b)


@given(
    st.sampled_from([b"HTTP/1.1 ", b"HTTP/1.0 ", b"HTTP/1.1", b"HTTP/2 ", b""]),
    st.binary(max_size=8),
    st.lists(
        st.one_of(
            _LINE_BYTES,
            st.tuples(_LINE_BYTES, _LINE_BYTES).map(lambda nv: nv[0] + b":" + nv[1]),
            st.sampled_from([b"Content-Length: 5", b"Transfer-Encoding: chunked", b" folded", b""]),
        ),
        max_size=8,
    ),
    st.sampled_from([b"\r\n", b"\n"]),
)
def test_parse_head_of_head_like_bytes(version: bytes, rest: bytes, lines: list[bytes], eol: bytes) -> None:
    _check_parse(eol.join([version + rest, *lines]))


#: the header pattern before it was made greedy (its end tried at every character): the
#: reference the faster one must match exactly
_LAZY_FIELD = re.compile(r"^([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*(.*?)[ \t]*\r?$", re.MULTILINE)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["A", "x-b", "ETag"]),
            st.text(alphabet=st.sampled_from("aB: \t\r\x00é,"), max_size=12),
        ),
        max_size=6,
    ),
    st.sampled_from(["\r\n", "\n"]),
)
def test_parse_head_takes_each_value_as_the_lazy_pattern_did(fields: list[tuple[str, str]], eol: str) -> None:
    lines = [f"{name}:{value}" for name, value in fields]
    head = eol.join(["HTTP/1.1 200 OK", *lines])  # (without its final empty line)
    headers = parse_head(head.encode("latin-1"))[2]
    block = eol.join(lines)
    assert list(headers.items()) == _LAZY_FIELD.findall(block)


# -- against a real nginx -------------------------------------------------------------------------


def _files(nginx: Nginx, prefix: str, sizes: list[int]) -> dict[str, bytes]:
    """``/h1/<prefix>-<i>.bin`` -> content, written into nginx's www."""
    out = {}
    for i, size in enumerate(sizes):
        name = f"h1/{prefix}-{i}.bin"
        make_file(nginx.www, name, size, seed=size * 7 + i)
        out["/" + name] = (Path(nginx.www) / name).read_bytes()
    return out


async def _logged(nginx: Nginx, uris: Iterable[str]) -> list[dict[str, Any]]:
    """nginx's access log entries for ``uris`` (in the order given), once all are logged."""
    wanted = list(uris)
    async with asyncio.timeout(WAIT):
        while True:
            entries = {e["request_uri"]: e for e in nginx.requests() if e["request_uri"] in wanted}
            if len(entries) == len(set(wanted)):
                return [dict(entries[u]) for u in wanted]
            await asyncio.sleep(0.01)  # polling the log, under a deadline


async def test_nginx_keep_alive_reuses_one_connection(nginx: Nginx, client: H1Client) -> None:
    files = _files(nginx, "ka", [10, 0, 5000])
    for uri, data in files.items():
        async with client.get(nginx.url + uri, {}) as r:
            assert r.status == 200
            assert r.content_length == len(data)
            assert await read_all(r) == data
    entries = await _logged(nginx, files)
    assert len({e["connection"] for e in entries}) == 1
    counts = [e["connection_requests"] for e in entries]
    assert counts == list(range(counts[0], counts[0] + len(files)))


async def test_nginx_pipelining_many_small_files(nginx: Nginx, client: H1Client) -> None:
    files = _files(nginx, "pipe", [(i * 397) % 3000 for i in range(60)])
    uris = list(files)
    key = (HOST, nginx.port, 0, "")
    sent_ahead = 0
    for i, uri in enumerate(uris):
        async with client.get(nginx.url + uri, {}, ahead_of(nginx.url, uris, i)) as r:
            assert r.status == 200
            assert await read_all(r) == files[uri]
        sent_ahead = max(sent_ahead, sum(len(c.inflight) for c in client._pipelined.get(key, [])))
    assert sent_ahead > 0
    assert key not in client._no_pipelining
    entries = await _logged(nginx, uris)
    assert len({e["connection"] for e in entries}) == 1
    assert all(e["status"] == 200 and e["bytes_sent"] == len(files[e["uri"]]) for e in entries)


async def test_nginx_range_206_and_304_on_one_connection(nginx: Nginx, client: H1Client) -> None:
    files = _files(nginx, "range", [10_000])
    uri, data = next(iter(files.items()))
    async with client.get(nginx.url + uri, {"Range": "bytes=100-1099"}) as r:
        assert r.status == 206
        assert r.headers["Content-Range"] == f"bytes 100-1099/{len(data)}"
        assert r.content_length == 1000
        assert await read_all(r) == data[100:1100]
        etag = r.headers["ETag"]
    async with client.get(nginx.url + uri, {"Range": "bytes=-10"}) as r:
        assert r.status == 206
        assert await read_all(r) == data[-10:]
    async with client.get(nginx.url + uri, {"If-None-Match": etag}) as r:
        assert r.status == 304
        assert await read_all(r) == b""
    async with client.get(nginx.url + uri + "?again", {}) as r:
        assert await read_all(r) == data
    await _logged(nginx, [uri + "?again"])  # the last one: the others were logged before it
    entries = [e for e in nginx.requests() if e["uri"] == uri]
    assert [e["status"] for e in entries] == [206, 206, 304, 200]
    assert entries[0]["range"] == "bytes=100-1099"
    assert len({e["connection"] for e in entries}) == 1


async def test_nginx_basic_auth_from_userinfo(nginx: Nginx, client: H1Client) -> None:
    files = _files(nginx, "auth", [123])
    uri, data = next(iter(files.items()))
    protected = uri.replace("/h1/", "/basic/h1/", 1)
    async with client.get(nginx.url + protected, {}) as r:
        assert r.status == 401
        await read_all(r)
    authed = f"http://alice:s3cret@{HOST}:{nginx.port}{protected}"
    assert await fetch(client, authed) == (200, data)


# -- TLS ------------------------------------------------------------------------------------------


def _trusting(nginx: Nginx) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(nginx.ca_path))


async def test_tls_keep_alive_and_pipelining_on_one_connection(nginx: Nginx, client: H1Client) -> None:
    files = _files(nginx, "tls", [(i * 811) % 40_000 for i in range(30)])
    uris = list(files)
    tls = _trusting(nginx)
    for i, uri in enumerate(uris):
        ahead = [(nginx.https_url + u, {}) for u in uris[i + 1 : i + 9]]
        async with client.get(nginx.https_url + uri, {}, ahead, tls) as r:
            assert r.status == 200
            assert await read_all(r) == files[uri]
    entries = await _logged(nginx, files)
    assert len({e["connection"] for e in entries}) == 1  # one TLS connection for all
    assert (HOST, nginx.https_port, id(tls)) not in client._no_pipelining


async def test_tls_big_body_read_whole(nginx: Nginx, client: H1Client) -> None:
    files = _files(nginx, "tlsbig", [3_000_000])
    ((uri, data),) = files.items()
    async with client.get(nginx.https_url + uri, {}, (), _trusting(nginx)) as r:
        assert r.content_length == len(data)
        assert await read_all(r) == data


async def test_tls_untrusted_certificate_is_a_verification_error(nginx: Nginx, client: H1Client) -> None:
    _files(nginx, "tlsbad", [10])
    with pytest.raises(ssl.SSLCertVerificationError):
        async with client.get(nginx.https_url + "/h1/tlsbad-0.bin", {}, (), ssl.create_default_context()):
            pass


async def test_tls_to_a_plain_http_port_fails_the_handshake(nginx: Nginx, client: H1Client) -> None:
    tls = _trusting(nginx)
    with pytest.raises(h1.TLSFailed):
        async with client.get(f"https://{HOST}:{nginx.port}/", {}, (), tls):
            pass


def test_an_https_url_needs_a_context_and_an_http_url_none() -> None:
    with pytest.raises(h1.BadRequest):
        Target("https://example.com/x")
    with pytest.raises(h1.BadRequest):
        Target("http://example.com/x", ssl.create_default_context())
    target = Target("https://example.com:443/x", ssl.create_default_context())
    assert (target.key[:2], target.host_header) == (("example.com", 443), "example.com")


# -- expiry (found in review) ---------------------------------------------------------------------


def _open_conns(client: H1Client) -> list[h1._Conn]:
    pools = list(client._idle.values()) + list(client._pipelined.values())
    return [c for conns in pools for c in conns if c.sock.fileno() != -1]


async def test_idle_connections_are_closed_after_the_idle_timeout(
    scripted: Callable[[Script], Awaitable[ScriptServer]],
    client: H1Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(h1, "IDLE_TIMEOUT_S", 0.05)
    monkeypatch.setattr(h1, "PIPELINED_IDLE_TIMEOUT_S", 0.05)

    async def serve(peer: Peer) -> None:
        while (await peer.request()) is not None:
            await peer.answer(resp(b"x"))

    servers = [await scripted(serve) for _ in range(5)]  # five "hosts"
    for srv in servers:
        assert await fetch(client, srv.url + "/f") == (200, b"x")
    assert len(_open_conns(client)) == 5
    # no request to any of them again: the sweeper closes them all, within a deadline
    async with asyncio.timeout(WAIT):
        while True:
            if not _open_conns(client):
                break
            await asyncio.sleep(0.01)  # polling the pool, under a deadline


async def test_answer_queued_longer_than_the_pipelined_timeout_is_not_used(
    scripted: Callable[[Script], Awaitable[ScriptServer]],
    client: H1Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    content = {"/f0": b"zero", "/f1": b"one", "/f2": b"version 1"}

    async def serve(peer: Peer) -> None:
        while (req := await peer.request()) is not None:
            await peer.answer(resp(content[req.path]))

    srv = await scripted(serve)
    url = srv.url
    await fetch(client, url + "/f0")  # proves the connection persistent
    # f1, with f2 sent ahead; the server answers f2 at once (version 1)
    assert await fetch(client, url + "/f1", ahead=[(url + "/f2", {})]) == (200, b"one")
    await asyncio.sleep(0.1)
    content["/f2"] = b"version 2"  # the file changes on the server
    # ... and the job comes back for f2 long after (suspended, say): the queued answer is
    # older than PIPELINED_IDLE_TIMEOUT_S (made "expired" here, as test_h1 does)
    monkeypatch.setattr(h1, "PIPELINED_IDLE_TIMEOUT_S", -1.0)
    assert await fetch(client, url + "/f2") == (200, b"version 2")
