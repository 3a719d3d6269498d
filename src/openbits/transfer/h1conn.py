"""The connection layer of ``h1``: a connection (:class:`Conn`: the socket, TLS through
memory BIOs, the bytes read ahead) and :class:`Wire`, the socket and TLS I/O over it.

:class:`Wire` connects (names resolved and cached, addresses in turn), runs TLS handshakes
over memory BIOs on the raw non-blocking socket (two layers of them for the origin's TLS
inside an ``https://`` proxy's), and reads and writes within the timeouts: bytes, a response
head, a line of the chunked framing.  It keeps no connections: ``h1.H1Client`` adds the pool
and pipelining over it, ``h1proxy`` opens connections through proxies with it, and
``h1body`` reads bodies through it.  Errors are ``h1head``'s :class:`H1Error` subclasses.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import errno
import ipaddress
import os
import socket
import ssl
import time

from openbits.transfer.h1head import (
    BadResponse,
    ClosedEarly,
    ConnectFailed,
    HandshakeTimeout,
    Key,
    NameNotResolved,
    TLSFailed,
)

__all__ = ["MAX_HEAD_BYTES", "SMALL_READ_BYTES", "Conn", "Ident", "Wire"]

#: the longest response head accepted (status line and headers)
MAX_HEAD_BYTES = 64 * 1024
#: bytes asked of the socket when the buffer runs dry between small responses
SMALL_READ_BYTES = 256 * 1024
DNS_CACHE_S = 60.0

#: a request as the caller names it: (URL, its headers)
Ident = tuple[str, tuple[tuple[str, str], ...]]


#: splicing threads at most (every spliced body in flight has one while it moves a batch)
PUMP_THREADS = 64


class Conn:
    """One connection: its socket, its TLS layers and the bytes read ahead of what was asked."""

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
        "quickack",
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
        self.quickack = sock.family in (socket.AF_INET, socket.AF_INET6)  # (``_sock_recv``)

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


class Wire:
    """Socket and TLS I/O over :class:`Conn` objects, within the timeouts; closes a
    connection it is handed back (:meth:`release`: ``H1Client`` keeps them instead)."""

    def __init__(
        self,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        read_bytes: int = 4 * 1024 * 1024,
        splice: bool = True,
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.read_bytes = read_bytes
        #: bodies may move socket → pipe → file inside the kernel (off once refused)
        self.splice_ok = splice
        self.spliced_bytes = 0  # moved by splice since the start
        self._pumps: concurrent.futures.ThreadPoolExecutor | None = None
        self._dns: dict[tuple[str, int], tuple[float, list[tuple[int, tuple[str, int]]]]] = {}

    @property
    def pump_threads(self) -> concurrent.futures.ThreadPoolExecutor:
        """The threads that splice bodies into files (``h1body.Body.splice_into``), made when
        first needed: their own, so a disk that throttles those writes holds up no checkpoint
        sync, Complete's directory fsync or DNS look-up of the default executor."""
        if self._pumps is None:
            self._pumps = concurrent.futures.ThreadPoolExecutor(
                PUMP_THREADS, thread_name_prefix="openbits-splice"
            )
        return self._pumps

    def stop_pumps(self) -> None:
        """(At close) The splicing threads end (each batch is ~10 ms at most)."""
        if self._pumps is not None:
            self._pumps.shutdown(wait=True)
            self._pumps = None

    def wrap(self, sock: socket.socket, key: Key) -> Conn:
        """A connection of the pool ``key`` over a connected socket."""
        return Conn(sock, key)

    def release(self, conn: Conn, *, reusable: bool) -> None:
        """``conn`` is no longer needed by its response: closed (a pool keeps it instead)."""
        conn.close()

    # -- connecting ---------------------------------------------------------------------

    async def handshake(self, conn: Conn, tls: ssl.SSLContext, server_hostname: str | None = None) -> None:
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

    async def _flush_tls(self, conn: Conn) -> None:
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

    # -- socket I/O ---------------------------------------------------------------------

    async def recv(self, conn: Conn, n: int) -> bytes:
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

    async def readable(self, conn: Conn) -> None:
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

    async def raw_recv(self, conn: Conn, n: int) -> bytes:
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

    async def _flush_outer(self, conn: Conn) -> None:
        assert conn.outer_out is not None
        data = conn.outer_out.read()
        if data:
            await self._sock_send(conn, data)

    async def _sock_recv(self, conn: Conn, n: int) -> bytes:
        sock = conn.sock
        try:
            try:
                data = sock.recv(n)
            except (BlockingIOError, InterruptedError):
                async with asyncio.timeout(self.read_timeout_s):
                    data = await asyncio.get_running_loop().sock_recv(sock, n)
        except TimeoutError:
            raise
        except OSError as e:
            raise ClosedEarly(f"the connection failed: {e.strerror or e}") from e
        if conn.quickack:
            # A server answering pipelined requests back to back (nginx: sendfile,
            # tcp_nopush, and Nagle on a connection that never goes idle) holds its next
            # small answer until this one is acknowledged, and Linux delays that ACK up to
            # 40 ms when no request of ours goes out to carry it: measured, a 40 ms stall at
            # the end of each run of requests.  Quick ACKs are not sticky: asked again after
            # each read.  A hint: a socket that refuses it still gave its bytes.
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            except OSError:
                conn.quickack = False
        return data

    async def fill(self, conn: Conn) -> bool:
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

    async def read_line(self, conn: Conn, limit: int = 8192) -> bytes:
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

    async def read_head(self, conn: Conn) -> bytes | None:
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

    async def send(self, conn: Conn, data: bytes | bytearray) -> None:
        if conn.tls is None:
            await self.raw_send(conn, data)
            return
        try:
            conn.tls.write(data)
        except ssl.SSLError as e:
            raise ClosedEarly(f"TLS error: {e}") from e
        await self._flush_tls(conn)

    async def raw_send(self, conn: Conn, data: bytes | bytearray) -> None:
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

    async def _sock_send(self, conn: Conn, data: bytes | bytearray) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.read_timeout_s):
                await loop.sock_sendall(conn.sock, data)
        except OSError as e:
            if isinstance(e, TimeoutError):
                raise
            raise ClosedEarly(f"cannot send the request: {e.strerror or e}") from e

    async def sendfile(self, conn: Conn, fd: int, offset: int, count: int) -> int:
        """``count`` bytes of ``fd`` from ``offset`` to a plain connection's socket by
        sendfile(2): from the page cache to the socket, no copy through Python (the caller
        checks that the pages are cached: a read from the disk would stall the loop).  The
        bytes sent: fewer only when the file ended first; SendfileUnsupported when the file
        cannot be sent so (nothing was).  Each wait for room in the socket's buffer has the
        read timeout, as ``sock_sendall`` has."""
        loop = asyncio.get_running_loop()
        sock_fd = conn.sock.fileno()
        sent = 0
        try:
            while sent < count:
                try:
                    n = os.sendfile(sock_fd, fd, offset + sent, count - sent)
                except BlockingIOError:
                    await self._writable(loop, sock_fd)
                    continue
                except OSError as e:
                    if sent == 0 and e.errno in _NO_SENDFILE:
                        raise SendfileUnsupported(e.errno, e.strerror) from e
                    raise
                if n == 0:
                    break  # (the file ended)
                sent += n
        except SendfileUnsupported:
            raise
        except OSError as e:
            if isinstance(e, TimeoutError):
                raise
            raise ClosedEarly(f"cannot send the request: {e.strerror or e}") from e
        return sent

    async def _writable(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_writer(fd, _set_ready, ready)
        try:
            async with asyncio.timeout(self.read_timeout_s):
                await ready
        finally:
            loop.remove_writer(fd)


#: what sendfile answers for a file it cannot send (a file system without splice reads)
_NO_SENDFILE = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})


class SendfileUnsupported(OSError):
    """sendfile cannot send this file (nothing was sent): read and send it instead."""


def _set_ready(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)
