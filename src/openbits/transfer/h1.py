"""A lean HTTP/1.1 client for ``http://`` and ``https://`` downloads, with keep-alive and
pipelining.

It carries every download request (HTTP, and HTTPS over the TLS context the job's
SecurityFlags pick), directly or through a proxy (``h1proxy``: the connection differs, the
requests and bodies do not).  It does far less work per request and per byte:

- bodies of known length are read straight from the socket in reads of up to
  ``read_bytes``, never through an intermediate stream buffer;
- many small responses arriving in one read are cut out of one buffer;
- a job with more files on the same server sends their requests ahead on the connection
  (pipelining, RFC 9112 §9.3.2), so the server never waits for the next request.

Pipelining is used only on a connection whose first response proved it persistent, and is
turned off for a server at the first sign of trouble (an answer cut short while requests
were queued behind it); a request that got no answer is sent again on a new connection
(GET is idempotent).  Framing follows RFC 9112 §6: ``Transfer-Encoding: chunked``, else
``Content-Length`` (conflicting values are refused), else the body runs to the close.

Errors are :class:`H1Error` subclasses, translated to BITS codes by ``http.network_error``.
The message heads (request head, response head, framing, URL target) and the error tree are
sans-I/O, in ``h1head``; this module owns the sockets, TLS, the pool and the bodies.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import ipaddress
import os
import re
import socket
import ssl
import time
from collections.abc import Iterable, Mapping

import yarl
from multidict import CIMultiDict, CIMultiDictProxy

from openbits.transfer.auth import Authenticator
from openbits.transfer.h1head import (
    BadRequest,
    BadResponse,
    ClosedEarly,
    ConnectFailed,
    H1Error,
    HandshakeTimeout,
    Key,
    NameNotResolved,
    ProxyNameNotResolved,
    ProxyUnreachable,
    Target,
    TLSFailed,
    TunnelRefused,
    framing,
    parse_head,
    request_head,
)
from openbits.transfer.h1proxy import ProxyAuth, Via, answer_proxy, open_via

__all__ = [
    "BadRequest",
    "BadResponse",
    "Body",
    "ClosedEarly",
    "ConnectFailed",
    "H1Client",
    "H1Error",
    "HandshakeTimeout",
    "NameNotResolved",
    "ProxyAuth",
    "ProxyNameNotResolved",
    "ProxyUnreachable",
    "Response",
    "TLSFailed",
    "TunnelRefused",
    "Via",
]

#: the longest response head accepted (status line and headers)
MAX_HEAD_BYTES = 64 * 1024
#: bytes asked of the socket when the buffer runs dry between small responses
SMALL_READ_BYTES = 256 * 1024
#: idle keep-alive connections kept per server, and for how long
MAX_IDLE_PER_HOST = 8
IDLE_TIMEOUT_S = 30.0
#: a connection with requests queued that nobody came back for is dropped after this
PIPELINED_IDLE_TIMEOUT_S = 5.0
DNS_CACHE_S = 60.0
#: requests sent ahead that got no answer before a server is no longer sent any ahead
PIPELINE_STRIKES = 3
#: the most of a 401's body read to keep its connection for the next leg of a handshake
MAX_AUTH_BODY_BYTES = 1024 * 1024
#: socket → pipe without waiting; the pipe is always drained before the next call
_SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK


_HEX = re.compile(rb"[0-9A-Fa-f]+")

#: a request as the caller names it: (URL, its headers)
Ident = tuple[str, tuple[tuple[str, str], ...]]


class _Conn:
    __slots__ = (
        "buf",
        "eof",
        "inflight",
        "key",
        "outer",
        "outer_in",
        "outer_out",
        "pipelined_ok",
        "pos",
        "since",
        "sock",
        "tls",
        "tls_in",
        "tls_out",
    )

    def __init__(self, sock: socket.socket, key: Key) -> None:
        self.sock = sock
        self.key = key
        self.tls: ssl.SSLObject | None = None  # TLS through memory BIOs over the raw socket
        self.tls_in = ssl.MemoryBIO()
        self.tls_out = ssl.MemoryBIO()
        #: TLS to an https:// proxy under the origin's TLS (a CONNECT tunnel through it)
        self.outer: ssl.SSLObject | None = None
        self.outer_in: ssl.MemoryBIO | None = None
        self.outer_out: ssl.MemoryBIO | None = None
        self.buf = bytearray()
        self.pos = 0  # bytes of buf already consumed
        self.eof = False
        self.pipelined_ok = False  # a response proved the connection persistent
        self.inflight: collections.deque[Ident] = collections.deque()  # requests sent ahead
        self.since = 0.0  # when it went idle

    def buffered(self) -> int:
        return len(self.buf) - self.pos

    def take(self, n: int) -> bytes:
        """Up to ``n`` buffered bytes."""
        end = min(len(self.buf), self.pos + n)
        data = bytes(self.buf[self.pos : end])
        self.pos = end
        if self.pos == len(self.buf):
            self.buf.clear()
            self.pos = 0
        return data

    def nest_tls(self) -> None:
        """The TLS to the proxy becomes the outer layer: the origin's TLS goes inside it."""
        self.outer, self.outer_in, self.outer_out = self.tls, self.tls_in, self.tls_out
        self.tls, self.tls_in, self.tls_out = None, ssl.MemoryBIO(), ssl.MemoryBIO()

    def close(self) -> None:
        self.inflight.clear()
        with contextlib.suppress(OSError):
            self.sock.close()


class Body:
    """A response body: ``read(n)`` and ``readany()`` as aiohttp's StreamReader has them;
    an empty bytes object means the body is complete (its framing was checked)."""

    __slots__ = ("_chunk_left", "_client", "_conn", "_mode", "_remaining", "_response", "done")

    def __init__(self, client: H1Client, conn: _Conn, mode: str, length: int, response: Response) -> None:
        self._client = client
        self._conn = conn
        self._mode = mode  # "length", "chunked" or "close"
        self._remaining = length  # "length": body bytes still to come
        self._chunk_left = 0  # "chunked": bytes left in the current chunk; -1: trailers done
        self._response = response
        self.done = False
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

    def buffered(self) -> int:
        """Body bytes already read from the socket (with the head): ``read`` them first."""
        return min(self._conn.buffered(), self._remaining) if self._mode == "length" else 0

    def spliceable(self) -> bool:
        """The rest of the body can move from the socket into a pipe inside the kernel
        (plain TCP, a Content-Length, nothing of it buffered): see :meth:`splice`."""
        return (
            self._mode == "length"
            and not self.done
            and self._conn.tls is None
            and not self._conn.buffered()
            and self._client.splice_ok
        )

    async def splice(self, pipe_w: int, n: int) -> int:
        """Move up to ``n`` body bytes from the socket into the pipe ``pipe_w`` without
        copying them through Python (``splice(2)``; the caller drains the pipe into the
        file, so it is empty on every call).  0 only when splice is refused before any
        byte moved (``spliceable`` turns false: read the body instead)."""
        conn = self._conn
        n = min(n, self._remaining)
        fd = conn.sock.fileno()
        while True:
            try:
                moved = os.splice(fd, pipe_w, n, flags=_SPLICE_FLAGS)
                break
            except (BlockingIOError, InterruptedError):
                await self._client.readable(conn)
            except OSError as e:
                if e.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    self._client.splice_ok = False
                    return 0
                raise ClosedEarly(f"the connection failed: {e.strerror or e}") from e
        if not moved:
            conn.eof = True
            raise ClosedEarly(f"the connection closed with {self._remaining} bytes of the body missing")
        self._remaining -= moved
        self._client.spliced_bytes += moved
        if self._remaining == 0:
            self._finish()
        return moved

    def _finish(self) -> None:
        self.done = True
        self._response.body_done()


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

    def __init__(self, client: H1Client, conn: _Conn, url: str) -> None:
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


class _Get:
    """The context of one GET (a class, not a generator: it is entered once per file)."""

    __slots__ = ("_ahead", "_auth", "_client", "_headers", "_partition", "_response", "_tls", "_url", "_via")

    def __init__(
        self,
        client: H1Client,
        url: str,
        headers: Mapping[str, str],
        ahead: Iterable[tuple[str, Mapping[str, str]]],
        tls: ssl.SSLContext | None,
        auth: Authenticator | None,
        via: Via | None,
        partition: str,
    ) -> None:
        self._client, self._url, self._headers, self._ahead = client, url, headers, ahead
        self._tls, self._auth, self._via, self._partition = tls, auth, via, partition
        self._response: Response | None = None

    async def __aenter__(self) -> Response:
        url, headers, via, client, auth = self._url, self._headers, self._via, self._client, self._auth
        if via is None:
            target = Target(url, self._tls, self._partition)
            ahead = self._ahead if auth is None else ()  # (none ahead of a handshake)
            response = await client._send_and_read(url, target, (url, tuple(headers.items())), headers, ahead)
        else:
            target = via.target(url, self._tls, self._partition)
            if target.tls is None:
                headers = via.request_headers(headers)
            # (no pipelining through a proxy that reads each request: each may go to another
            # connection; none ahead of a handshake)
            tunnel = target.tls is not None or via.is_socks
            ahead = self._ahead if tunnel and auth is None else ()
            response = await client._send_and_read(
                url, target, (url, tuple(headers.items())), headers, ahead, via
            )
            if response.status == 407 and via.auth is not None and not tunnel:
                response, headers = await answer_proxy(client, response, url, target, headers, via)
        self._response = response
        if auth is not None:
            self._response = await client._authenticate(response, url, target, headers, auth, via)
        return self._response

    async def __aexit__(self, *exc_info: object) -> None:
        if self._response is not None:
            self._response.close()


class H1Client:
    """Plain-HTTP connections by (host, port): a few idle ones kept alive, and the
    connections whose pipelined requests wait for their owner to come back."""

    def __init__(
        self,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        read_bytes: int = 4 * 1024 * 1024,
        default_headers: Mapping[str, str] | None = None,
        pipeline_depth: int = 8,
        splice: bool = True,
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        #: bodies may move socket → pipe → file inside the kernel (off once refused)
        self.splice_ok = splice
        self.spliced_bytes = 0  # moved by splice since the start
        self.connections_opened = 0  # TCP connections made since the start
        self.read_timeout_s = read_timeout_s
        self.read_bytes = read_bytes
        self.default_headers = dict(default_headers or {})
        self._default_block = "".join(f"{k}: {v}\r\n" for k, v in self.default_headers.items())
        self.pipeline_depth = pipeline_depth
        self._idle: dict[Key, list[_Conn]] = {}
        self._pipelined: dict[Key, list[_Conn]] = {}
        self._no_pipelining: set[Key] = set()
        self._pipeline_failures: dict[Key, int] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._dns: dict[tuple[str, int], tuple[float, list[tuple[int, tuple[str, int]]]]] = {}
        self._closed = False

    # -- connections --------------------------------------------------------------------

    def wrap(self, sock: socket.socket, key: Key) -> _Conn:
        """A connection of the pool ``key`` over a connected socket."""
        return _Conn(sock, key)

    async def _connect(self, key: Key, tls: ssl.SSLContext | None = None, via: Via | None = None) -> _Conn:
        self.connections_opened += 1
        if via is not None:
            return await open_via(self, key, tls, via)
        conn = _Conn(await self.connect_tcp(key[0], key[1]), key)
        if tls is not None:
            try:
                await self.handshake(conn, tls)
            except BaseException:
                conn.close()
                raise
        return conn

    async def handshake(self, conn: _Conn, tls: ssl.SSLContext, server_hostname: str | None = None) -> None:
        """TLS on ``conn`` (to the origin, or to ``server_hostname``: an https:// proxy)."""
        host = server_hostname or conn.key[0]
        conn.tls = tls.wrap_bio(conn.tls_in, conn.tls_out, server_hostname=host)
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                while True:
                    try:
                        conn.tls.do_handshake()
                        break
                    except ssl.SSLWantReadError:
                        await self._flush_tls(conn)
                        data = await self.raw_recv(conn, SMALL_READ_BYTES)
                        if not data:
                            raise TLSFailed(
                                f"{host} closed the connection during the TLS handshake"
                            ) from None
                        conn.tls_in.write(data)
            await self._flush_tls(conn)
        except TimeoutError:
            raise HandshakeTimeout(
                f"no TLS handshake with {host} within {self.connect_timeout_s:g} s"
            ) from None
        except ssl.SSLCertVerificationError:
            raise  # BG_E_TRUST_FAILURE (http.network_error)
        except (ssl.SSLError, ClosedEarly) as e:
            raise TLSFailed(f"TLS handshake with {host} failed: {e}") from e

    async def _flush_tls(self, conn: _Conn) -> None:
        data = conn.tls_out.read()
        if data:
            await self.raw_send(conn, data)

    async def connect_tcp(self, host: str, port: int) -> socket.socket:
        """A connected non-blocking socket to ``host:port`` (its addresses in turn)."""
        loop = asyncio.get_running_loop()
        addresses = await self.resolve(host, port)
        last: OSError | None = None
        for family, address in addresses:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                async with asyncio.timeout(self.connect_timeout_s):
                    await loop.sock_connect(sock, address)
            except TimeoutError:
                sock.close()
                raise ConnectFailed(
                    f"no answer from {host}:{port} within {self.connect_timeout_s:g} s"
                ) from None
            except OSError as e:
                sock.close()
                last = e
                continue
            except BaseException:
                sock.close()
                raise
            return sock
        # (asyncio's sock_connect words every failure "Connect call failed (address)": the errno
        # says what happened, "Connection refused" or "Connection reset by peer")
        reason = (os.strerror(last.errno) if last.errno else last.strerror) if last else ""
        raise ConnectFailed(f"cannot connect to {host}:{port}: {reason}", last)

    async def resolve(self, host: str, port: int) -> list[tuple[int, tuple[str, int]]]:
        key = (host, port)
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            return [(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, (host, port))]
        now = time.monotonic()
        cached = self._dns.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as e:
            raise NameNotResolved(f"cannot resolve {host}: {e}") from e
        found: list[tuple[int, tuple[str, int]]] = [
            (family, (str(addr[0]), int(addr[1]))) for family, _t, _p, _c, addr in infos
        ]
        if not found:
            raise NameNotResolved(f"cannot resolve {host}")
        self._dns[key] = (now + DNS_CACHE_S, found)
        return found

    def _idle_conn(self, key: Key) -> _Conn | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if now - conn.since < IDLE_TIMEOUT_S and not conn.eof:
                return conn
            conn.close()
        return None

    def _pipelined_conn(self, key: Key, ident: Ident) -> _Conn | None:
        """The connection whose next answer is to ``ident`` (sent ahead for this request);
        pipelined connections nobody came back for are dropped on the way."""
        waiting = self._pipelined.get(key)
        if not waiting:
            return None
        now = time.monotonic()
        found = None
        for conn in list(waiting):
            if now - conn.since > PIPELINED_IDLE_TIMEOUT_S:
                # (an answer that waited this long may be stale: ask again)
                waiting.remove(conn)
                conn.close()
            elif found is None and conn.inflight and conn.inflight[0] == ident:
                waiting.remove(conn)
                found = conn
        return found

    def release(self, conn: _Conn, *, reusable: bool) -> None:
        if conn.buffered() and not conn.inflight:
            reusable = False  # bytes after the body that nothing asked for (RFC 9112 §6.3)
        if not reusable or self._closed or conn.eof:
            conn.close()
            return
        conn.pipelined_ok = True
        conn.since = time.monotonic()
        if conn.inflight:
            self._pipelined.setdefault(conn.key, []).append(conn)
            self._sweep_later()
            return
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= MAX_IDLE_PER_HOST:
            idle.pop(0).close()
        idle.append(conn)
        self._sweep_later()

    def _sweep_later(self) -> None:
        """Close kept connections once they expire, even if their server is never asked
        again (no sockets left in CLOSE_WAIT for the daemon's life)."""
        if self._sweeper is None and not self._closed:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(PIPELINED_IDLE_TIMEOUT_S, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        now = time.monotonic()
        left = False
        for pool, ttl in ((self._idle, IDLE_TIMEOUT_S), (self._pipelined, PIPELINED_IDLE_TIMEOUT_S)):
            for key in list(pool):
                conns = pool[key]
                for conn in list(conns):
                    if now - conn.since > ttl or conn.eof:
                        conns.remove(conn)
                        conn.close()
                if conns:
                    left = True
                else:
                    del pool[key]
        if left:
            self._sweep_later()

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for pool in (self._idle, self._pipelined):
            for conns in pool.values():
                for conn in conns:
                    conn.close()
            pool.clear()

    # -- socket I/O ---------------------------------------------------------------------

    async def recv(self, conn: _Conn, n: int) -> bytes:
        """Up to ``n`` bytes from the connection (b"" at its end), within the read timeout."""
        tls = conn.tls
        if tls is None:
            return await self._sock_recv(conn, n)
        while True:
            try:
                return tls.read(n)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                return b""  # close_notify: a clean end
            except ssl.SSLEOFError as e:
                # the TCP connection ended without close_notify: for a body that runs to the
                # close, this may be a truncation, so never a clean end
                raise ClosedEarly("the connection closed without a TLS close_notify") from e
            except ssl.SSLError as e:
                raise ClosedEarly(f"TLS error: {e}") from e
            await self._flush_tls(conn)
            data = await self.raw_recv(conn, max(n, SMALL_READ_BYTES))
            if data:
                conn.tls_in.write(data)
            else:
                conn.tls_in.write_eof()

    async def readable(self, conn: _Conn) -> None:
        """Until the socket has bytes to read (or its end), within the read timeout."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        fd = conn.sock.fileno()
        loop.add_reader(fd, _set_ready, ready)
        try:
            async with asyncio.timeout(self.read_timeout_s):
                await ready
        finally:
            loop.remove_reader(fd)

    async def raw_recv(self, conn: _Conn, n: int) -> bytes:
        """Up to ``n`` bytes under the TLS to the origin (from the socket, or through the TLS
        to an https:// proxy)."""
        outer = conn.outer
        if outer is None:
            return await self._sock_recv(conn, n)
        assert conn.outer_in is not None
        while True:
            try:
                return outer.read(n)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                return b""
            except ssl.SSLError as e:
                raise ClosedEarly(f"TLS error with the proxy: {e}") from e
            await self._flush_outer(conn)
            data = await self._sock_recv(conn, max(n, SMALL_READ_BYTES))
            if data:
                conn.outer_in.write(data)
            else:
                conn.outer_in.write_eof()

    async def _flush_outer(self, conn: _Conn) -> None:
        assert conn.outer_out is not None
        data = conn.outer_out.read()
        if data:
            await self._sock_send(conn, data)

    async def _sock_recv(self, conn: _Conn, n: int) -> bytes:
        sock = conn.sock
        try:
            try:
                return sock.recv(n)
            except (BlockingIOError, InterruptedError):
                pass
            async with asyncio.timeout(self.read_timeout_s):
                return await asyncio.get_running_loop().sock_recv(sock, n)
        except TimeoutError:
            raise
        except OSError as e:
            raise ClosedEarly(f"the connection failed: {e.strerror or e}") from e

    async def fill(self, conn: _Conn) -> bool:
        """Append what the socket has to the buffer; False at its end."""
        if conn.eof:
            return False
        data = await self.recv(conn, SMALL_READ_BYTES)
        if not data:
            conn.eof = True
            return False
        if conn.pos and conn.pos == len(conn.buf):
            conn.buf.clear()
            conn.pos = 0
        elif conn.pos > 1024 * 1024:
            del conn.buf[: conn.pos]
            conn.pos = 0
        conn.buf += data
        return True

    async def read_line(self, conn: _Conn, limit: int = 8192) -> bytes:
        """One line of a chunked body's framing, without its end."""
        while True:
            end = conn.buf.find(b"\n", conn.pos)
            if end >= 0:
                line = bytes(conn.buf[conn.pos : end]).rstrip(b"\r")
                conn.pos = end + 1
                return line
            if conn.buffered() > limit:
                raise BadResponse("a line of the chunked framing is too long")
            if not await self.fill(conn):
                raise ClosedEarly("the connection closed inside the chunked framing")

    async def read_head(self, conn: _Conn) -> bytes | None:
        """The next response head (None if the connection closed before any byte of it)."""
        start = conn.pos
        searched = 0  # bytes after start known to hold no end of head
        while True:
            search = start + searched
            # (bounded searches: the buffer may hold many pipelined responses after this one)
            limit = min(len(conn.buf), start + MAX_HEAD_BYTES + 3)
            end = conn.buf.find(b"\n\r\n", search, limit)
            bare = conn.buf.find(b"\n\n", search, end + 2 if end >= 0 else limit)
            if bare >= 0 and (end < 0 or bare < end):
                head = bytes(conn.buf[start:bare])
                conn.pos = bare + 2
                return head
            if end >= 0:
                head = bytes(conn.buf[start:end])
                conn.pos = end + 3
                return head
            if len(conn.buf) - start > MAX_HEAD_BYTES:
                raise BadResponse(f"the response head is longer than {MAX_HEAD_BYTES} bytes")
            searched = max(0, len(conn.buf) - start - 2)
            if not await self.fill(conn):
                if len(conn.buf) == start:
                    return None
                raise ClosedEarly("the connection closed inside the response head")
            start = conn.pos  # _fill may have moved what was buffered to the front

    # -- requests -----------------------------------------------------------------------

    def _head(self, url: Target, headers: Mapping[str, str]) -> bytes:
        return request_head(url, headers, self.default_headers, self._default_block)

    def get(
        self,
        url: str,
        headers: Mapping[str, str],
        ahead: Iterable[tuple[str, Mapping[str, str]]] = (),
        tls: ssl.SSLContext | None = None,
        via: Via | None = None,
        *,
        auth: Authenticator | None = None,
        partition: str = "",
    ) -> _Get:
        """``async with client.get(url, headers, ahead) as response``: GET ``url``; ``ahead``
        lists requests the caller will make next, in order, which may be sent now on the same
        connection; ``tls`` is the context of an https:// URL; ``via`` the proxy to go
        through (None: direct).  Leaving the context without reading the body to its end
        closes the connection.

        ``auth`` answers the server's 401s (the request is sent again with its credentials,
        on the same connection while it stays open; nothing is sent ahead); ``partition``
        keeps the connections apart from every other job's (a job with credentials or a client
        certificate names itself: its connections serve no other job)."""
        return _Get(self, url, headers, ahead, tls, auth, via, partition)

    async def _authenticate(
        self,
        response: Response,
        url: str,
        target: Target,
        headers: Mapping[str, str],
        auth: Authenticator,
        via: Via | None = None,
    ) -> Response:
        """Answer 401s with ``auth`` until the server answers otherwise or ``auth`` gives up
        (then the last 401 is the answer, its body read).  Each leg goes over the connection
        of the one before while the server keeps it open: NTLM and Negotiate authenticate the
        connection, not the request; a new connection restarts their handshake."""
        while response.status == auth.status:
            if response._conn.tls is not None and auth.server_certificate is None:
                auth.server_certificate = response._conn.tls.getpeercert(binary_form=True)
            conn = await self._drain(response)
            try:
                if conn is None:
                    auth.connection_lost()
                value = auth.answer(response.status, response.headers, "GET", target.path_qs)
                head = None if value is None else self._head(target, {**headers, auth.header_name: value})
            except BaseException:
                if conn is not None:
                    conn.close()
                raise
            if head is None:
                if conn is not None:
                    self.release(conn, reusable=True)
                return response
            response = await self._resend(conn, target, url, head, via)
        auth.verify(response.status, response.headers)
        return response

    async def _drain(self, response: Response) -> _Conn | None:
        """Read (and drop) the body of a 401 to free its connection: the connection when it
        can carry the next leg, else None (it is closed)."""
        conn = response._conn
        response._released = True  # the connection stays with the exchange
        body = response.content
        read = 0
        try:
            while not body.done and read <= MAX_AUTH_BODY_BYTES:
                chunk = await body.read(SMALL_READ_BYTES)
                if not chunk:
                    break
                read += len(chunk)
        except (H1Error, TimeoutError):
            pass  # (the next leg goes over a new connection)
        except BaseException:
            conn.close()
            raise
        if body.done and response.keep_alive and not (conn.eof or conn.buffered() or conn.inflight):
            return conn
        conn.close()
        return None

    async def _resend(
        self, conn: _Conn | None, target: Target, url: str, head: bytes, via: Via | None = None
    ) -> Response:
        """Send ``head`` over ``conn`` (a new connection when None) and read its answer."""
        if conn is None:
            conn = await self._connect(target.key, target.tls, via)
        try:
            await self.send(conn, head)
            response = await self._read_response(conn, url)
        except BaseException:
            conn.close()
            raise
        if response is None:
            conn.close()
            raise ClosedEarly("the server closed the connection without answering")
        return response

    async def _send_and_read(
        self,
        url: str,
        target: Target,
        ident: Ident,
        headers: Mapping[str, str],
        ahead: Iterable[tuple[str, Mapping[str, str]]],
        via: Via | None = None,
    ) -> Response:
        key = target.key
        head = self._head(target, headers)  # a bad request fails before any connection
        for attempt in range(2):
            conn = self._pipelined_conn(key, ident) if attempt == 0 else None
            sent = conn is not None
            if conn is None and attempt == 0:
                conn = self._idle_conn(key)
            reused = conn is not None
            if conn is None:
                conn = await self._connect(key, target.tls, via)
            try:
                if sent:
                    conn.inflight.popleft()
                    extra = self._ahead(conn, key, ahead, target.tls)
                else:
                    extra = self._ahead(conn, key, ahead, target.tls)
                    extra.insert(0, head)
                if extra:
                    await self.send(conn, b"".join(extra))
                response = await self._read_response(conn, url)
            except (ClosedEarly, TimeoutError) as e:
                conn.close()
                if sent:
                    self._pipelining_failed(key)
                if attempt == 0 and (reused or sent) and not isinstance(e, TimeoutError):
                    continue  # a kept-alive connection the server had closed: try a new one
                raise
            except BaseException:
                conn.close()
                raise
            if response is None:
                conn.close()
                if sent:
                    self._pipelining_failed(key)
                if attempt == 0 and (reused or sent):
                    continue
                raise ClosedEarly("the server closed the connection without answering")
            return response
        raise AssertionError("unreachable")

    def _pipelining_failed(self, key: Key) -> None:
        """A request sent ahead got no (whole) answer: after a few, none are sent ahead to
        that server any more (a closed idle connection is not counted: nothing was sent
        ahead on it when it closed)."""
        count = self._pipeline_failures.get(key, 0) + 1
        self._pipeline_failures[key] = count
        if count >= PIPELINE_STRIKES:
            self._no_pipelining.add(key)

    def _ahead(
        self,
        conn: _Conn,
        key: Key,
        ahead: Iterable[tuple[str, Mapping[str, str]]],
        tls: ssl.SSLContext | None = None,
    ) -> list[bytes]:
        """Heads of requests to send ahead on ``conn`` (only on a proven connection to a
        server that did not fail us), recorded as in flight; topped up when half spent, so
        one send carries several."""
        depth = self.pipeline_depth
        inflight = conn.inflight
        if len(inflight) > depth // 2 or not conn.pipelined_ok or key in self._no_pipelining:
            return []
        heads: list[bytes] = []
        queued = len(inflight)
        for i, (url, headers) in enumerate(ahead):
            if i < queued:
                if inflight[i] != (url, tuple(headers.items())):
                    return []  # the caller goes another way than what was sent ahead
                continue
            if len(inflight) >= depth:
                break
            try:
                target = Target(url, tls, key[3])
            except (BadRequest, ValueError):
                break
            if target.key != key:
                break
            try:
                heads.append(self._head(target, headers))
            except BadRequest:
                break  # that request will fail on its own turn
            inflight.append((url, tuple(headers.items())))
        return heads

    async def send(self, conn: _Conn, data: bytes) -> None:
        if conn.tls is None:
            await self.raw_send(conn, data)
            return
        try:
            conn.tls.write(data)
        except ssl.SSLError as e:
            raise ClosedEarly(f"TLS error: {e}") from e
        await self._flush_tls(conn)

    async def raw_send(self, conn: _Conn, data: bytes) -> None:
        """``data`` under the TLS to the origin (to the socket, or through the proxy's TLS)."""
        outer = conn.outer
        if outer is None:
            await self._sock_send(conn, data)
            return
        try:
            outer.write(data)
        except ssl.SSLError as e:
            raise ClosedEarly(f"TLS error with the proxy: {e}") from e
        await self._flush_outer(conn)

    async def _sock_send(self, conn: _Conn, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.read_timeout_s):
                await loop.sock_sendall(conn.sock, data)
        except OSError as e:
            if isinstance(e, TimeoutError):
                raise
            raise ClosedEarly(f"cannot send the request: {e.strerror or e}") from e

    async def _read_response(self, conn: _Conn, url: str) -> Response | None:
        while True:
            head = await self.read_head(conn)
            if head is None:
                return None
            status, reason, headers, http11 = parse_head(head)
            if 100 <= status < 200:
                continue  # interim answers (100 Continue, 103 Early Hints)
            break
        response = Response(self, conn, url)
        response.status, response.reason = status, reason
        response.headers = CIMultiDictProxy(headers)
        mode, length = framing(status, headers, head_request=False)
        connection = headers.get("Connection", "").lower()
        response.keep_alive = http11 and mode != "close" and "close" not in connection
        response._length = length if mode == "length" else None
        response.content = Body(self, conn, mode, length, response)
        return response


def _set_ready(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)
