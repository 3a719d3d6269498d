"""``h1``'s responses: :class:`Response` (the parts of aiohttp's ClientResponse the downloader
uses) and :class:`Body`, read from the connection as its framing says (RFC 9112 §6:
Content-Length, chunked, or to the close), or moved socket → pipe by ``splice(2)``.

A body read to its end hands its connection back to the :class:`~openbits.transfer.h1conn.Wire`
that read it (``H1Client``'s pool keeps it for the next request); a response closed before
its end closes the connection.  :func:`read_response` reads the next response head off a
connection (interim 1xx answers skipped) and frames its body.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import os
import re
import select
import socket
import time
from collections.abc import Callable
from typing import Protocol

import yarl
from multidict import CIMultiDict, CIMultiDictProxy

from openbits.outlast import waited_through
from openbits.transfer.h1conn import Conn, Wire
from openbits.transfer.h1head import BadResponse, ClosedEarly, framing, parse_head

__all__ = [
    "Body",
    "FileWriteFailed",
    "Response",
    "Whole",
    "read_response",
    "read_whole_head",
]

#: socket → pipe without waiting (``_pump``); the pipe is always drained before the next call
_SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
#: how long a splicing thread waits for more of the body before it hands back to the loop
_PUMP_WAIT_MS = 2
#: how long a splicing thread moves bytes before it hands back to the loop (progress, pacing,
#: the yield controller's samples: at least ~100 a second however slow the path)
_PUMP_BUDGET_S = 0.01


class FilePosition(Protocol):
    """Where spliced bytes go: the file, and the offset it holds up to (``sink.Sink``)."""

    fd: int
    offset: int


_HEX = re.compile(rb"[0-9A-Fa-f]+")


class Body:
    """A response body: ``read(n)`` and ``readany()`` as aiohttp's StreamReader has them;
    an empty bytes object means the body is complete (its framing was checked)."""

    __slots__ = (
        "_chunk_left",
        "_client",
        "_conn",
        "_mode",
        "_remaining",
        "_response",
        "done",
        "longest_wait_s",
        "waited_s",
    )

    def __init__(self, client: Wire, conn: Conn, mode: str, length: int, response: Response) -> None:
        self._client = client
        self._conn = conn
        self._mode = mode  # "length", "chunked" or "close"
        self._remaining = length  # "length": body bytes still to come
        self._chunk_left = 0  # "chunked": bytes left in the current chunk; -1: trailers done
        self._response = response
        self.done = False
        #: how long the last ``splice_into`` waited for the server's bytes (not for the disk),
        #: in all (a share of its time: the arrival rate's signal) ...
        self.waited_s = 0.0
        #: ... and the longest of its single waits (a pause of the sender's: an RTT sample no
        #: longer than about that is the pause, not the path; the sum of a call's waits is not)
        self.longest_wait_s = 0.0
        if mode == "length" and length == 0:
            self._finish()

    async def readany(self) -> bytes:
        return await self.read(-1)

    async def read(self, n: int = -1) -> bytes:
        if self.done or n == 0:
            return b""
        limit = self._client.read_bytes if n < 0 else n
        if self._mode == "length":
            data = await self._read_some(min(limit, self._remaining))
            if not data:
                raise ClosedEarly(f"the connection closed with {self._remaining} bytes of the body missing")
            self._remaining -= len(data)
            if self._remaining == 0:
                self._finish()
            return data
        if self._mode == "close":
            data = await self._read_some(limit)
            if not data:
                self._finish()
            return data
        return await self._read_chunked(limit)

    async def _read_some(self, n: int) -> bytes:
        conn = self._conn
        if conn.buffered():
            return conn.take(n)
        if conn.eof:
            return b""
        data = await self._client.recv(conn, n)
        if not data:
            conn.eof = True
        return data

    async def _read_chunked(self, limit: int) -> bytes:
        conn = self._conn
        client = self._client
        while self._chunk_left == 0:
            line = await client.read_line(conn)
            size_text = line.split(b";", 1)[0].strip()
            if not _HEX.fullmatch(size_text) or len(size_text) > 16:
                raise BadResponse(f"bad chunk size {size_text[:40]!r}")
            size = int(size_text, 16)
            if size == 0:
                while await client.read_line(conn):  # trailers, up to the empty line
                    pass
                self._finish()
                return b""
            self._chunk_left = size
        data = await self._read_some(min(limit, self._chunk_left))
        if not data:
            raise ClosedEarly("the connection closed inside a chunk")
        self._chunk_left -= len(data)
        if self._chunk_left == 0 and await client.read_line(conn):
            raise BadResponse("a chunk is longer than its size")
        return data

    def socket(self) -> socket.socket:
        """The TCP socket the body arrives on (under any TLS): ``pace`` samples its RTT."""
        return self._conn.sock

    def buffered(self) -> int:
        """Body bytes already read from the socket (with the head): ``read`` them first."""
        return min(self._conn.buffered(), self._remaining) if self._mode == "length" else 0

    def spliceable(self) -> bool:
        """The rest of the body can move from the socket into a pipe inside the kernel
        (plain TCP, a Content-Length, nothing of it buffered): see :meth:`splice_into`."""
        return (
            self._mode == "length"
            and not self.done
            and self._conn.tls is None
            and not self._conn.buffered()
            and self._client.splice_ok
        )

    async def splice_into(self, pipe: tuple[int, int], sink: FilePosition, n: int) -> int:
        """Move up to ``n`` body bytes from the socket through the (empty) ``pipe`` into the
        file ``sink.fd`` at ``sink.offset``, inside the kernel (``splice(2)``: no copy through
        Python), in a worker thread: a write into the page cache can wait long on the
        kernel's dirty-page throttling (a loaded disk: seconds), and the event loop must not
        wait with it.  The thread takes what the socket holds (and what arrives within a few
        ms) in one hop; when it holds nothing, this waits on the loop (the read timeout).
        ``sink.offset`` moves by exactly the bytes that reached the file, also when the caller
        is cancelled meanwhile (the thread is waited for, a few ms); the bytes moved, 0 only
        when splice is refused before any byte moved (``spliceable`` turns false: read the
        body instead)."""
        conn = self._conn
        n = min(n, self._remaining)
        self.waited_s = self.longest_wait_s = 0.0
        while True:
            done, waited = [0], [0.0, 0.0]
            try:
                eof, error = await _seen_through(
                    self._client.pump_threads, conn.sock.fileno(), pipe, sink.fd, sink.offset, n, done, waited
                )
            finally:
                self.waited_s += waited[0]
                self.longest_wait_s = max(self.longest_wait_s, waited[1])
                sink.offset += done[0]
                self._remaining -= done[0]
                self._client.spliced_bytes += done[0]
                if self._remaining == 0:
                    self._finish()
            if error is not None:
                if not done[0] and error.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    self._client.splice_ok = False
                    return 0
                raise ClosedEarly(f"the connection failed: {error.strerror or error}") from error
            if done[0]:
                return done[0]
            if eof:
                conn.eof = True
                raise ClosedEarly(f"the connection closed with {self._remaining} bytes of the body missing")
            asked = time.monotonic()
            await self._client.readable(conn)
            wait_s = time.monotonic() - asked
            self.waited_s += wait_s
            self.longest_wait_s = max(self.longest_wait_s, wait_s)

    def _finish(self) -> None:
        self.done = True
        self._response.body_done()


async def _seen_through(
    threads: concurrent.futures.Executor,
    sock: int,
    pipe: tuple[int, int],
    fd: int,
    offset: int,
    n: int,
    done: list[int],
    waited: list[float],
) -> tuple[bool, OSError | None]:
    """``_pump`` in a worker thread, waited for even when the caller is cancelled (then the
    CancelledError is raised after it: ``done`` counts what it moved either way).  (at the
    socket's end, the socket's or the file's error)"""
    future = asyncio.get_running_loop().run_in_executor(
        threads, _pump, sock, pipe, fd, offset, n, done, waited
    )
    cancelled = await waited_through(future)
    if cancelled is not None:
        raise cancelled
    error = future.exception()
    if error is None:
        return future.result(), None
    if isinstance(error, _SocketFailed):
        return False, error.error
    raise error  # (FileWriteFailed: the caller translates it)


class FileWriteFailed(Exception):
    """(From ``splice_into``) The file could not take the bytes (``error``: the caller
    translates it, as any write of its file)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class _SocketFailed(Exception):
    """(From ``_pump``) The socket failed, not the file."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def _pump(
    sock: int, pipe: tuple[int, int], fd: int, offset: int, n: int, done: list[int], waited: list[float]
) -> bool:
    """(A worker thread) Socket → pipe → file until ``n`` bytes moved, ``_PUMP_BUDGET_S``
    passed, or the socket has had nothing for ``_PUMP_WAIT_MS``; ``done[0]`` counts the
    bytes in the file, ``waited[0]`` the seconds spent waiting for the socket in all and
    ``waited[1]`` the longest single wait (a sender pausing ~1 ms between writes makes ten
    waits in one call: their sum is no pause of the sender's).  True at the socket's end."""
    pipe_r, pipe_w = pipe
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    until = time.monotonic() + _PUMP_BUDGET_S
    while done[0] < n:
        try:
            moved = os.splice(sock, pipe_w, n - done[0], flags=_SPLICE_FLAGS)
        except (BlockingIOError, InterruptedError):
            asked = time.monotonic()
            ready = poller.poll(_PUMP_WAIT_MS)
            wait_s = time.monotonic() - asked
            waited[0] += wait_s
            waited[1] = max(waited[1], wait_s)
            if not ready:
                return False
            continue
        except OSError as e:
            raise _SocketFailed(e) from e
        if not moved:
            return True
        while moved:
            try:
                written = os.splice(pipe_r, fd, moved, offset_dst=offset + done[0])
            except OSError as e:
                raise FileWriteFailed(e) from e
            done[0] += written
            moved -= written
        if time.monotonic() >= until:
            break
    return False


class Response:
    """The parts of aiohttp's ClientResponse the downloader uses."""

    __slots__ = (
        "_client",
        "_conn",
        "_length",
        "_released",
        "_url",
        "content",
        "headers",
        "keep_alive",
        "reason",
        "status",
        "url_text",
    )

    def __init__(self, client: Wire, conn: Conn, url: str) -> None:
        self._client = client
        self._conn = conn
        self.url_text = url
        self._url: yarl.URL | None = None
        self._released = False
        self.status = 0
        self.reason = ""
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
        self.keep_alive = False
        self._length: int | None = None
        self.content: Body

    @property
    def content_length(self) -> int | None:
        """The body's length when Content-Length frames it (None when chunked or to the close)."""
        return self._length

    @property
    def url(self) -> yarl.URL:
        """The URL asked for (parsed when asked: only redirects need it)."""
        if self._url is None:
            self._url = yarl.URL(self.url_text)
        return self._url

    def body_done(self) -> None:
        """The body was read to its end: the connection may serve the next request."""
        if not self._released:
            self._released = True
            self._client.release(self._conn, reusable=self.keep_alive)

    def close(self) -> None:
        """Stop here: a connection with an unread body is closed, not reused."""
        if not self._released:
            self._released = True
            self._client.release(self._conn, reusable=False)


async def read_response(
    client: Wire, conn: Conn, url: str, *, held: bool = False, reusable: Callable[[int], bool] | None = None
) -> Response | None:
    """The next response on ``conn`` to a request for ``url`` (None if the connection closed
    before any byte of it).  ``held``: the connection stays with the caller (an exchange
    that sends its next leg on it), never handed back when the body ends.  ``reusable``:
    whether, given the status, the request left the connection fit for another one (not
    when its body was cut short); decided before the body, for an empty body is done (and
    its connection handed back) at once."""
    while True:
        head = await client.read_head(conn)
        if head is None:
            return None
        status, reason, headers, http11 = parse_head(head)
        if 100 <= status < 200:
            continue  # interim answers (100 Continue, 103 Early Hints)
        break
    response = Response(client, conn, url)
    response._released = held
    response.status, response.reason = status, reason
    response.headers = CIMultiDictProxy(headers)
    mode, length = framing(status, headers, head_request=False)
    connection = headers.get("Connection", "").lower()
    response.keep_alive = http11 and mode != "close" and "close" not in connection
    if reusable is not None and not reusable(status):
        response.keep_alive = False
    response._length = length if mode == "length" else None
    response.content = Body(client, conn, mode, length, response)
    return response


class Whole:
    """A small answer taken whole (``H1Client.get_small``): what ``checks.Head`` reads of a
    response, then its body at once (``read``), as ``Response`` with its ``Body`` gives them:
    the connection handed back at the body's end, closed if the body is not read or fails."""

    __slots__ = ("_client", "_conn", "_done", "content_length", "headers", "keep_alive", "reason", "status")

    def __init__(
        self,
        client: Wire,
        conn: Conn,
        status: int,
        reason: str,
        headers: CIMultiDict[str],
        length: int,
        keep_alive: bool,
    ) -> None:
        self._client, self._conn, self._done = client, conn, False
        self.status, self.reason, self.headers = status, reason, CIMultiDictProxy(headers)
        self.content_length, self.keep_alive = length, keep_alive

    async def read(self) -> bytes:
        """The whole body (ClosedEarly if the connection ends before it)."""
        conn, client = self._conn, self._client
        parts: list[bytes] = []
        need = self.content_length
        try:
            while need:
                if not conn.buffered() and not await client.fill(conn):
                    raise ClosedEarly(f"the connection closed with {need} bytes of the body missing")
                part = conn.take(need)
                need -= len(part)
                parts.append(part)
        except BaseException:
            self.close()
            raise
        self._done = True
        client.release(conn, reusable=self.keep_alive)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        """Stop here: a connection whose body was not read is closed, not reused."""
        if not self._done:
            self._done = True
            self._client.release(self._conn, reusable=False)


async def read_whole_head(client: Wire, conn: Conn, max_bytes: int) -> tuple[Whole | None, bool]:
    """The next response head on ``conn``, taken if it is a 200 with a Content-Length of at
    most ``max_bytes`` (``(whole, False)``: its body next, ``Whole.read``).  Any other
    answer is left unread where it was, ``conn.pos`` back at its head, for ``read_response``
    to read (``(None, False)``); ``(None, True)``: the connection closed before any byte of
    it.  Interim 1xx answers are skipped, as ``read_response`` does."""
    while True:
        head = await client.read_head(conn)
        if head is None:
            return None, True
        status, reason, headers, http11 = parse_head(head)
        if not 100 <= status < 200:
            break
    mode, length = framing(status, headers, head_request=False)
    if status != 200 or mode != "length" or length > max_bytes:
        # (no fill since read_head: the head and its end, "\n\r\n" or a bare "\n\n", lie
        # just before conn.pos)
        end = 3 if conn.buf[conn.pos - 3 : conn.pos] == b"\n\r\n" else 2
        conn.pos -= len(head) + end
        return None, False
    keep_alive = http11 and "close" not in headers.get("Connection", "").lower()
    return Whole(client, conn, status, reason, headers, length, keep_alive), False
