"""A lean HTTP/1.1 client for ``http://`` and ``https://`` transfers, with keep-alive and
pipelining.

It carries every download request, and the upload protocol's ``BITS_POST`` packets with
their bodies (``request``, ``h1send``) (HTTP, and HTTPS over the TLS context the job's
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
(GET is idempotent; so is a BITS packet: the server acknowledges a fragment's offset).
Framing follows RFC 9112 §6: ``Transfer-Encoding: chunked``, else
``Content-Length`` (conflicting values are refused), else the body runs to the close.

Errors are :class:`H1Error` subclasses, translated to BITS codes by ``http.network_error``.
The client is in layers, one module each: ``h1head`` (sans-I/O: request and response heads,
framing, URL targets, the error tree), ``h1conn`` (a connection and its socket/TLS I/O:
``Wire``), ``h1body`` (``Response`` and ``Body``), ``h1auth`` (the exchange that answers
401s and 407s), ``h1proxy`` (connections through proxies); this module is the pool,
pipelining and the requests that tie them together (``H1Client`` is a ``Wire`` with a pool).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Iterable, Mapping

from openbits.transfer.auth import Authenticator
from openbits.transfer.h1auth import Answerer, exchange
from openbits.transfer.h1body import Body, Response, Whole, read_response, read_whole_head
from openbits.transfer.h1conn import MAX_HEAD_BYTES, SMALL_READ_BYTES, Ident, Wire
from openbits.transfer.h1conn import Conn as _Conn
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
    request_head,
)
from openbits.transfer.h1proxy import ProxyAuth, Via, open_via
from openbits.transfer.h1send import RequestBody

__all__ = [
    "MAX_HEAD_BYTES",
    "SMALL_READ_BYTES",
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
    "RequestBody",
    "Response",
    "TLSFailed",
    "TunnelRefused",
    "Via",
    "Whole",
]

#: idle keep-alive connections kept per server, and for how long
MAX_IDLE_PER_HOST = 8
IDLE_TIMEOUT_S = 30.0
#: a connection with requests queued that nobody came back for is dropped after this
PIPELINED_IDLE_TIMEOUT_S = 5.0
#: requests sent ahead that got no answer before a server is no longer sent any ahead
PIPELINE_STRIKES = 3
#: URLs whose parsed ``Target`` is kept (``H1Client.target``: a run of files sent ahead)
TARGETS_KEPT = 256


class _Request:
    """The context of one request (a class, not a generator: it is entered once per file):
    a GET, or another ``method`` with an optional ``body`` (``h1send.RequestBody``; such
    requests are never pipelined)."""

    __slots__ = (
        "_ahead",
        "_auth",
        "_body",
        "_client",
        "_headers",
        "_method",
        "_partition",
        "_response",
        "_tls",
        "_url",
        "_via",
    )

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
        method: str = "GET",
        body: RequestBody | None = None,
    ) -> None:
        if method != "GET":
            headers = {**headers, "Content-Length": str(0 if body is None else body.length)}
            ahead = ()
        self._client, self._url, self._headers, self._ahead = client, url, headers, ahead
        self._tls, self._auth, self._via, self._partition = tls, auth, via, partition
        self._method, self._body = method, body
        self._response: Response | None = None

    async def __aenter__(self) -> Response:
        url, headers, via, client, auth = self._url, self._headers, self._via, self._client, self._auth
        answerers: tuple[Answerer, ...]
        if via is None:
            target = client.target(url, self._tls, self._partition)
            ahead = self._ahead if auth is None else ()  # (none ahead of a handshake)
            response = await client._send_and_read(
                url, target, (url, tuple(headers.items())), headers, ahead, None, self._method, self._body
            )
            self._response = response
            if auth is None:
                return response
            answerers = (auth,)
        else:
            target = via.target(url, self._tls, self._partition)
            if target.tls is None:
                headers = via.request_headers(headers)
            # (no pipelining through a proxy that reads each request: each may go to another
            # connection; none ahead of a handshake)
            tunnel = target.tls is not None or via.is_socks
            ahead = self._ahead if tunnel and auth is None else ()
            response = await client._send_and_read(
                url, target, (url, tuple(headers.items())), headers, ahead, via, self._method, self._body
            )
            self._response = response
            # (the proxy reads an absolute-form request and may answer 407; a tunnel's 407s
            # came to CONNECT: h1proxy)
            proxy = None if tunnel else via.auth
            answerers = tuple(a for a in (proxy, auth) if a is not None)
            if not answerers:
                return response
        self._response = await client._authenticate(
            response, url, target, headers, answerers, via, self._method, self._body
        )
        return self._response

    async def __aexit__(self, *exc_info: object) -> None:
        if self._response is not None:
            self._response.close()


class H1Client(Wire):
    """Connections by server (``h1head.Key``), over :class:`~openbits.transfer.h1conn.Wire`'s
    I/O: a few idle ones kept alive, and the connections whose pipelined requests wait for
    their owner to come back."""

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
        super().__init__(
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
            read_bytes=read_bytes,
            splice=splice,
        )
        self.connections_opened = 0  # TCP connections made since the start
        self.small_answers = 0  # answers get_small took since the start
        self.default_headers = dict(default_headers or {})
        self._default_block = "".join(f"{k}: {v}\r\n" for k, v in self.default_headers.items())
        self.pipeline_depth = pipeline_depth
        self._idle: dict[Key, list[_Conn]] = {}
        self._pipelined: dict[Key, list[_Conn]] = {}
        self._no_pipelining: set[Key] = set()
        self._pipeline_failures: dict[Key, int] = {}
        self._targets: dict[tuple[str, ssl.SSLContext | None], Target] = {}  # (``target``)
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    # -- connections --------------------------------------------------------------------

    async def _connect(self, key: Key, tls: ssl.SSLContext | None = None, via: Via | None = None) -> _Conn:
        self.connections_opened += 1
        if via is not None:
            return await open_via(self, key, tls, via)
        conn = self.wrap(await self.connect_tcp(key[0], key[1]), key)
        if tls is not None:
            try:
                await self.handshake(conn, tls)
            except BaseException:
                conn.close()
                raise
        return conn

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
        self.stop_pumps()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for pool in (self._idle, self._pipelined):
            for conns in pool.values():
                for conn in conns:
                    conn.close()
            pool.clear()

    # -- requests -----------------------------------------------------------------------

    def _head(self, url: Target, headers: Mapping[str, str], method: str = "GET") -> bytes:
        return request_head(url, headers, self.default_headers, self._default_block, method)

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
    ) -> _Request:
        """``async with client.get(url, headers, ahead) as response``: GET ``url``; ``ahead``
        lists requests the caller will make next, in order, which may be sent now on the same
        connection; ``tls`` is the context of an https:// URL; ``via`` the proxy to go
        through (None: direct).  Leaving the context without reading the body to its end
        closes the connection.

        ``auth`` answers the server's 401s (the request is sent again with its credentials,
        on the same connection while it stays open; nothing is sent ahead); ``partition``
        keeps the connections apart from every other job's (a job with credentials or a client
        certificate names itself: its connections serve no other job)."""
        return _Request(self, url, headers, ahead, tls, auth, via, partition)

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: RequestBody | None = None,
        tls: ssl.SSLContext | None = None,
        via: Via | None = None,
        *,
        auth: Authenticator | None = None,
        partition: str = "",
    ) -> _Request:
        """``async with client.request(method, url, headers, body) as response``: as
        :meth:`get` (the same connections, proxies, authentication and partitions), for any
        ``method`` with an optional ``body`` sent after the head (its Content-Length is set
        here); nothing is sent ahead of it or behind it on the connection.  A kept-alive
        connection the server had closed, and every authentication leg, send it again."""
        return _Request(self, url, headers, (), tls, auth, via, partition, method, body)

    async def _send_and_read(
        self,
        url: str,
        target: Target,
        ident: Ident,
        headers: Mapping[str, str],
        ahead: Iterable[tuple[str, Mapping[str, str]]],
        via: Via | None = None,
        method: str = "GET",
        body: RequestBody | None = None,
    ) -> Response:
        key = target.key
        pipelined = self._pipelined_conn(key, ident) if method == "GET" else None
        # a bad request fails before any connection (one sent ahead was built then already)
        head = self._head(target, headers, method) if pipelined is None else b""
        for attempt in range(2):
            conn = pipelined if attempt == 0 else None
            sent = conn is not None
            if conn is None and attempt == 0:
                conn = self._idle_conn(key)
            reused = conn is not None
            if conn is None:
                conn = await self._connect(key, target.tls, via)
            try:
                first = None if sent else head or self._head(target, headers, method)
                await self._send_ahead(conn, key, ahead, target.tls, first)
                early = body is not None and await body.send(self, conn)

                def reusable(status: int, early: bool = early) -> bool:
                    # not when the rest of the body was not sent; nor after a challenge to a
                    # request with a body, which a proxy may not have read to its end: the
                    # next leg goes on a new connection
                    return not (early or (body is not None and status in (401, 407)))

                response = await read_response(self, conn, url, reusable=reusable)
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

    def target(self, url: str, tls: ssl.SSLContext | None = None, via: str = "") -> Target:
        """``Target(url, tls, via)``, parsed once for a request sent ahead and again for the
        file's own: kept for the connections every job shares (``via`` "": direct, a job
        without credentials or client certificate, so ``tls`` is a context of SecurityFlags,
        never one holding a job's key), the last few hundred URLs."""
        if via:
            return Target(url, tls, via)
        targets = self._targets
        found = targets.get((url, tls))
        if found is None:
            found = Target(url, tls)
            if found.user is not None:
                return found  # (credentials in the URL are not kept beyond their request)
            if len(targets) >= TARGETS_KEPT:
                targets.clear()
            targets[url, tls] = found
        return found

    def warm(self, key: Key) -> bool:
        """Whether a connection to ``key`` is kept open (idle, or with requests sent ahead)."""
        return bool(self._pipelined.get(key) or self._idle.get(key))

    async def get_small(
        self,
        url: str,
        target: Target,
        headers: Mapping[str, str],
        ahead: Iterable[tuple[str, Mapping[str, str]]],
        max_bytes: int,
    ) -> Whole | None:
        """A GET of ``url`` (direct, no credentials) on a connection kept open to its server
        (its request sent ahead on it, else an idle one), for a caller that takes a small
        file's answer whole (``fetch.FileDownload.small``): a 200 with a Content-Length of at
        most ``max_bytes``, its body then read at once (``Whole.read``), the connection
        handed back at its end.

        None, and nothing lost, otherwise: when no connection is open (``get`` makes one),
        when the connection closed before answering (``get`` asks again, on another kept
        connection or a new one), or when the answer is any other (a redirect, an error,
        a chunked or larger body): that one stays unread at the head of the connection,
        which ``get`` with the same URL and headers takes next, so nothing is asked twice.
        Errors otherwise as ``get``'s."""
        key = target.key
        ident = (url, tuple(headers.items()))
        conn = self._pipelined_conn(key, ident)
        sent = conn is not None
        if conn is None:
            head = self._head(target, headers)  # (a bad request fails before any connection)
            conn = self._idle_conn(key)
            if conn is None:
                return None
        try:
            await self._send_ahead(conn, key, ahead, target.tls, None if sent else head)
            whole, closed = await read_whole_head(self, conn, max_bytes)
        except ClosedEarly:
            whole, closed = None, True
        except BaseException as e:
            conn.close()
            if sent and isinstance(e, TimeoutError):
                self._pipelining_failed(key)
            raise
        if closed:  # (as get's request on a kept connection: asked again, by get)
            conn.close()
            if sent:
                self._pipelining_failed(key)
            return None
        if whole is None:  # (its answer unread: get finds it where a request sent ahead waits)
            conn.inflight.appendleft(ident)
            conn.since = time.monotonic()
            self._pipelined.setdefault(key, []).insert(0, conn)
            self._sweep_later()
            return None
        self.small_answers += 1
        return whole

    async def _authenticate(
        self,
        response: Response,
        url: str,
        target: Target,
        headers: Mapping[str, str],
        answerers: tuple[Answerer, ...],
        via: Via | None,
        method: str = "GET",
        body: RequestBody | None = None,
    ) -> Response:
        """Answer a request's 401s (and through a proxy in absolute form its 407s) with
        ``h1auth.exchange``: the request written again with the answers' headers, over the
        connection of the leg before while it stays open (a new one only when it closed)."""
        return await exchange(
            self,
            response,
            answerers,
            method,
            target.path_qs,
            lambda extra: self._head(target, {**headers, **extra}, method) + (body.whole() if body else b""),
            lambda conn: read_response(self, conn, url),
            lambda: self._connect(target.key, target.tls, via),
        )

    def _pipelining_failed(self, key: Key) -> None:
        """A request sent ahead got no (whole) answer: after a few, none are sent ahead to
        that server any more (a closed idle connection is not counted: nothing was sent
        ahead on it when it closed)."""
        count = self._pipeline_failures.get(key, 0) + 1
        self._pipeline_failures[key] = count
        if count >= PIPELINE_STRIKES:
            self._no_pipelining.add(key)

    async def _send_ahead(
        self,
        conn: _Conn,
        key: Key,
        ahead: Iterable[tuple[str, Mapping[str, str]]],
        tls: ssl.SSLContext | None,
        head: bytes | None,
    ) -> None:
        """Send ``head`` (None: the request was sent ahead on ``conn``, its answer is next)
        and the requests of ``ahead`` that may go now, in one send."""
        if head is None:
            conn.inflight.popleft()
        extra = self._ahead(conn, key, ahead, tls)
        if head is not None:
            extra.insert(0, head)
        if extra:
            await self.send(conn, b"".join(extra))

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
                target = self.target(url, tls, key[3])
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
