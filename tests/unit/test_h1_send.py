"""h1 requests with a method and a body (``H1Client.request``, ``h1send.RequestBody``): the
body read from a file as it is sent, and an answer that comes before the whole body (a
server that refuses it without reading it) read at once, the connection not reused."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest

from openbits.transfer import diskio
from openbits.transfer.h1 import BadRequest, H1Client, RequestBody
from openbits.transfer.h1send import FileShrank
from tests.support.rawserver import raw_server


async def test_a_body_from_a_file_is_sent_after_the_head(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    (tmp_path / "f").write_bytes(data)
    received: list[bytes] = []

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        received.append(head)
        received.append(await reader.readexactly(len(data) - 5))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(accepted, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    h1 = H1Client(connect_timeout_s=5, read_timeout_s=5)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        body = RequestBody(fd=fd, offset=5, length=len(data) - 5)
        async with h1.request("BITS_POST", f"http://127.0.0.1:{port}/x", {"A": "b"}, body) as resp:
            assert resp.status == 200 and await resp.content.read() == b"ok"
    finally:
        os.close(fd)
        await h1.close()
        server.close()
    assert received[0].startswith(b"BITS_POST /x HTTP/1.1\r\n")
    assert f"Content-Length: {len(data) - 5}\r\n".encode() in received[0]
    assert received[1] == data[5:]


async def test_a_body_of_a_file_out_of_the_page_cache_is_read_off_the_loop_and_whole(tmp_path: Path) -> None:
    """The slices the page cache does not hold are read in a thread (RWF_NOWAIT says so): the
    bytes sent are the file's all the same."""
    data = os.urandom(4 * 1024 * 1024)
    (tmp_path / "f").write_bytes(data)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        body = RequestBody(fd=fd, length=len(data))
        chunks = [await body._file_slice(offset, 1024 * 1024) for offset in range(0, len(data), 1024 * 1024)]
        assert b"".join(chunks) == data
    finally:
        os.close(fd)


async def test_a_file_that_shrank_under_the_body_says_so(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"0123456789")
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        body = RequestBody(fd=fd, offset=4, length=20)
        with pytest.raises(BadRequest):
            await body._file_slice(4, 20)
        assert isinstance(body.read_failure, FileShrank)
    finally:
        os.close(fd)


async def test_an_answer_before_the_whole_body_is_read_at_once() -> None:
    """The server answers 413 to the head and reads nothing more: the client stops sending
    (it would wait for ever on a full socket buffer) and reads the answer."""
    done = asyncio.Event()

    async def respond(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await done.wait()

    async with raw_server(respond) as url:
        h1 = H1Client(connect_timeout_s=5, read_timeout_s=5)
        try:
            body = RequestBody(b"x" * (64 * 1024 * 1024))
            async with asyncio.timeout(20):
                async with h1.request("BITS_POST", f"{url}/x", {}, body) as resp:
                    assert resp.status == 413
                    assert not resp.keep_alive
            assert body.sent < body.length
        finally:
            done.set()
            await h1.close()


async def test_an_empty_early_answer_does_not_hand_the_connection_back() -> None:
    """An answer with an empty body (every BITS Ack: a 416 to a fragment off the server's
    offset) that came before the body was sent: the next request goes on a new connection,
    never after a body cut short (the server would read its head as the old body's rest)."""
    connections: list[bytes] = []
    done = asyncio.Event()

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        connections.append(head)
        if len(connections) == 1:
            writer.write(b"HTTP/1.1 416 Off\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            await done.wait()  # (reads nothing more: the body is never taken)
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(accepted, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    h1 = H1Client(connect_timeout_s=5, read_timeout_s=5)
    try:
        async with asyncio.timeout(20):
            body = RequestBody(b"x" * (64 * 1024 * 1024))
            async with h1.request("BITS_POST", f"http://127.0.0.1:{port}/a", {}, body) as resp:
                assert resp.status == 416 and await resp.content.read() == b""
            assert body.sent < body.length
            async with h1.request("BITS_POST", f"http://127.0.0.1:{port}/b", {}, RequestBody(b"y")) as resp:
                assert resp.status == 200 and await resp.content.read() == b"ok"
    finally:
        done.set()
        await h1.close()
        server.close()
    assert len(connections) == 2 and connections[1].startswith(b"BITS_POST /b ")


async def test_a_body_the_page_cache_holds_goes_by_sendfile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a plain connection the cached slices of a file body go from the page cache to the
    socket by sendfile(2) (no copy through Python), waiting for room in the socket's buffer:
    the server, reading slowly, receives the file's bytes all the same. (``os.sendfile`` is
    wrapped to count its bytes; it still does the sending.)"""
    data = os.urandom(8 * 1024 * 1024 + 3)
    (tmp_path / "f").write_bytes(data)
    by_sendfile: list[int] = []
    real_sendfile = os.sendfile

    def counting_sendfile(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        sent = real_sendfile(out_fd, in_fd, offset, count)
        by_sendfile.append(sent)
        return sent

    monkeypatch.setattr(os, "sendfile", counting_sendfile)
    received = bytearray()

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        while len(received) < len(data):
            received.extend(await reader.read(65536))
            await asyncio.sleep(0)  # (a slow reader: the sender meets a full socket buffer)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(accepted, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    h1 = H1Client(connect_timeout_s=5, read_timeout_s=5)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        if not diskio.page_cached(fd, 0, len(data)):
            pytest.skip("cachestat(2) cannot tell here (before Linux 6.5, or refused)")
        body = RequestBody(fd=fd, length=len(data))
        async with h1.request("BITS_POST", f"http://127.0.0.1:{port}/x", {}, body) as resp:
            assert resp.status == 200
    finally:
        os.close(fd)
        await h1.close()
        server.close()
    assert bytes(received) == data
    assert sum(by_sendfile) == len(data)
    assert len(by_sendfile) > 8  # (1 MiB slices, some sent in several calls)


async def test_a_file_sendfile_refuses_is_read_and_sent_instead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system whose files sendfile cannot send (EINVAL: no splice reads; simulated
    here) costs one refused call: the body is read and sent as before, whole."""
    data = os.urandom(3 * 1024 * 1024 + 1)
    (tmp_path / "f").write_bytes(data)
    calls: list[int] = []

    def refusing_sendfile(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        calls.append(count)
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "sendfile", refusing_sendfile)
    received: list[bytes] = []

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        received.append(await reader.readexactly(len(data)))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(accepted, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    h1 = H1Client(connect_timeout_s=5, read_timeout_s=5)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        if not diskio.page_cached(fd, 0, len(data)):
            pytest.skip("cachestat(2) cannot tell here (before Linux 6.5, or refused)")
        body = RequestBody(fd=fd, length=len(data))
        async with h1.request("BITS_POST", f"http://127.0.0.1:{port}/x", {}, body) as resp:
            assert resp.status == 200
    finally:
        os.close(fd)
        await h1.close()
        server.close()
    assert received == [data]
    assert len(calls) == 1 and body.no_sendfile
