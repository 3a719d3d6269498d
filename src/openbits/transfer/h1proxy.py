"""``h1`` through proxies: what a route is to the client (:class:`Via`), and the connections
it opens through one.

- ``http://`` URLs through an HTTP(S) proxy: requests in absolute form
  (``GET http://host/path HTTP/1.1``) on a connection to the proxy, TLS to it for an
  ``https://`` proxy;
- ``https://`` URLs through an HTTP(S) proxy: ``CONNECT host:port``, then TLS to the origin
  inside the tunnel (inside the TLS to an ``https://`` proxy: two layers of memory BIOs);
- SOCKS5 (``socks5://``: names resolved here; ``socks5h://``: by the proxy) through
  ``python-socks``, which hands back a connected socket, with the username and password the
  route carries; a refused login is a 407, as BITS reports it.

Proxy authentication beyond a preemptive Basic header is a seam: a :class:`ProxyAuth` object
(``transfer/auth.py``) answers a 407 to CONNECT or to an absolute-form request, and the
request is sent again with its header, on the same connection while the proxy keeps it open;
when the server then asks (401), each of its legs in absolute form carries the proxy's Basic or
Digest header again (NTLM and Negotiate authenticated the connection: not again).
Without one a 407 stands (BG_E_HTTP_ERROR_407).

A proxy that cannot be connected to raises :class:`ProxyUnreachable` (its name not resolved:
:class:`ProxyNameNotResolved`), on which the caller tries its next route.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from multidict import CIMultiDict, CIMultiDictProxy

from openbits.transfer.h1head import (
    BadRequest,
    BadResponse,
    ClosedEarly,
    ConnectFailed,
    Key,
    NameNotResolved,
    ProxyNameNotResolved,
    ProxyUnreachable,
    Target,
    TunnelRefused,
    framing,
    parse_head,
)

if TYPE_CHECKING:
    from openbits.transfer.h1 import H1Client, Response, _Conn

#: a 407's body longer than this is not read: the connection is dropped instead
DRAIN_MAX_BYTES = 64 * 1024
#: rounds of a multi-step proxy authentication (NTLM takes two)
AUTH_ROUNDS = 3
_BAD_VALUE = re.compile(r"[\r\n\0]")


class ProxyAuth(Protocol):
    """Answers a proxy's 407 (``transfer/auth.py``): the header to send again with, or None
    (no credential fits: the 407 stands)."""

    @property
    def header_name(self) -> str: ...

    @property
    def authenticates_connection(self) -> bool:
        """The scheme settled on authenticates the connection (NTLM, Negotiate), not each
        request (Basic, Digest: a further request through the proxy carries the answer again)."""
        ...

    def answer(self, status: int, headers: CIMultiDictProxy[str], method: str, uri: str) -> str | None: ...


@dataclass(frozen=True, slots=True, eq=False)
class Via:
    """A proxy a request goes through, as ``h1`` needs it."""

    scheme: str  # http, https (TLS to the proxy), socks5, socks5h
    host: str
    port: int
    #: what partitions the connections: the proxy, and the job when it has an identity
    tag: str
    #: TLS to an https:// proxy
    tls: ssl.SSLContext | None = None
    #: SOCKS5 username and password
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    #: a Proxy-Authorization value sent from the start (Basic, from a proxy URL's userinfo)
    basic: str | None = field(default=None, repr=False)
    auth: ProxyAuth | None = None

    @property
    def is_socks(self) -> bool:
        return self.scheme.startswith("socks")

    def target(self, url: str, tls: ssl.SSLContext | None, partition: str) -> Target:
        """The request's target through this proxy: an http:// URL goes in absolute form
        to an HTTP proxy (which reads it), anything else as to the origin."""
        target = Target(url, tls, f"{self.tag}|{partition}")
        if tls is None and not self.is_socks:
            target.path_qs = f"http://{target.host_header}{target.path_qs}"
        return target

    def request_headers(self, headers: Mapping[str, str]) -> Mapping[str, str]:
        """An absolute-form request's headers (with the preemptive Basic, if any)."""
        if self.basic is None or self.is_socks:
            return headers
        return {**headers, "Proxy-Authorization": self.basic}


async def open_via(client: H1Client, key: Key, tls: ssl.SSLContext | None, via: Via) -> _Conn:
    """A connection for requests to ``key`` through ``via``: to the proxy (a tunnel to the
    origin for https://), with the origin's TLS when ``tls`` is given."""
    if via.is_socks:
        conn = client.wrap(await _socks(client, key, via), key)
    else:
        conn = await _to_proxy(client, key, via)
        if tls is not None:
            conn = await _tunnel(client, conn, key, via)
    if tls is not None:
        try:
            if conn.tls is not None:
                conn.nest_tls()
            await client.handshake(conn, tls)
        except BaseException:
            conn.close()
            raise
    return conn


async def _to_proxy(client: H1Client, key: Key, via: Via) -> _Conn:
    try:
        sock = await client.connect_tcp(via.host, via.port)
    except NameNotResolved as e:
        raise ProxyNameNotResolved(f"cannot resolve the proxy {via.host}") from e
    except ConnectFailed as e:
        raise ProxyUnreachable(f"the proxy {via.host}:{via.port} cannot be reached: {e}", e.os_error) from e
    conn = client.wrap(sock, key)
    if via.tls is not None:
        try:
            await client.handshake(conn, via.tls, via.host)
        except BaseException:
            conn.close()
            raise
    return conn


async def _tunnel(client: H1Client, conn: _Conn, key: Key, via: Via) -> _Conn:
    """``CONNECT`` to the origin; a 407 answered through ``via.auth``.  The connection the
    tunnel runs on (a new one when the proxy closed the first after its 407)."""
    host, port = key[0], key[1]
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    extra: dict[str, str] = {}
    if via.basic is not None:
        extra["Proxy-Authorization"] = via.basic
    try:
        for round_ in range(AUTH_ROUNDS + 1):
            lines = "".join(f"{name}: {value}\r\n" for name, value in extra.items())
            head = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{lines}\r\n"
            await client.send(conn, head.encode("latin-1"))
            raw = await client.read_head(conn)
            if raw is None:
                raise ClosedEarly("the proxy closed the connection without answering CONNECT")
            status, reason, headers, http11 = parse_head(raw)
            if status == 401:  # (tinyproxy refuses a wrong login so): the proxy's, a 407
                status = 407
            if 200 <= status < 300:
                if conn.buffered():
                    raise BadResponse("the proxy sent bytes after its answer to CONNECT")
                return conn
            answer = None
            if status == 407 and via.auth is not None and round_ < AUTH_ROUNDS:
                answer = via.auth.answer(status, CIMultiDictProxy(headers), "CONNECT", authority)
            if answer is None:
                raise TunnelRefused(status, reason)
            if _BAD_VALUE.search(answer):
                raise BadRequest("the proxy authentication header holds a line break")
            extra[via.auth.header_name if via.auth else "Proxy-Authorization"] = answer
            if not await _drain(client, conn, status, headers, http11):
                conn.close()
                conn = await _to_proxy(client, key, via)
    except BaseException:
        conn.close()
        raise
    raise AssertionError("unreachable")


async def _drain(client: H1Client, conn: _Conn, status: int, headers: CIMultiDict[str], http11: bool) -> bool:
    """Read a (small, Content-Length framed) 407 body off a connection the proxy keeps
    open; False when it cannot be reused (the caller connects again)."""
    mode, length = framing(status, headers, head_request=False)
    keep = http11 and "close" not in headers.get("Connection", "").lower()
    if mode != "length" or not keep or length > DRAIN_MAX_BYTES:
        return False
    while conn.buffered() < length:
        if not await client.fill(conn):
            return False
    conn.take(length)
    return True


async def answer_proxy(
    client: H1Client, response: Response, url: str, target: Target, headers: Mapping[str, str], via: Via
) -> tuple[Response, Mapping[str, str]]:
    """A 407 to an absolute-form request, answered through ``via.auth`` and sent again (on
    the same connection when the proxy kept it: the drained response put it back in the
    pool, where the next request takes it first).  The answer, and the headers a server's
    401 that follows is answered with: with the proxy's header when its scheme authenticates
    each request (Basic, Digest: the proxy reads every absolute-form request), without it when
    it authenticated the connection (NTLM, Negotiate: sent again, it would start over)."""
    assert via.auth is not None
    original = headers
    for _round in range(AUTH_ROUNDS):
        answer = via.auth.answer(407, response.headers, "GET", target.path_qs)
        if answer is None:
            return response, headers
        if _BAD_VALUE.search(answer):
            response.close()
            raise BadRequest("the proxy authentication header holds a line break")
        drained = 0
        while drained <= DRAIN_MAX_BYTES:
            chunk = await response.content.read()
            if not chunk:
                break
            drained += len(chunk)
        response.close()  # (no-op when read to the end: the connection went back to the pool)
        headers = {**headers, via.auth.header_name: answer}
        response = await client._send_and_read(url, target, (url, tuple(headers.items())), headers, (), via)
        if response.status != 407:
            return response, (original if via.auth.authenticates_connection else headers)
    return response, headers


async def _socks(client: H1Client, key: Key, via: Via) -> socket.socket:
    """A socket connected through the SOCKS5 proxy to ``key``'s host and port."""
    from python_socks import ProxyConnectionError, ProxyError, ProxyTimeoutError, ProxyType
    from python_socks.async_.asyncio import Proxy

    try:
        _family, (address, port) = (await client.resolve(via.host, via.port))[0]
    except NameNotResolved as e:
        raise ProxyNameNotResolved(f"cannot resolve the proxy {via.host}") from e
    host = key[0]
    if via.scheme == "socks5":  # names resolved here (socks5h: by the proxy)
        host = (await client.resolve(key[0], key[1]))[0][1][0]
    proxy = Proxy(ProxyType.SOCKS5, address, port, via.user, via.password, rdns=via.scheme == "socks5h")
    try:
        sock = await proxy.connect(host, key[1], timeout=client.connect_timeout_s)
    except ProxyTimeoutError as e:
        raise ProxyUnreachable(f"the SOCKS proxy {via.host}:{via.port} did not answer in time") from e
    except ProxyConnectionError as e:
        reason = os.strerror(e.errno) if isinstance(e.errno, int) else str(e)
        raise ProxyUnreachable(f"the SOCKS proxy {via.host}:{via.port} cannot be reached: {reason}", e) from e
    except ProxyError as e:
        text = str(e).lower()
        if "authentication" in text:
            raise TunnelRefused(407, "the SOCKS proxy refused the login") from None
        raise ConnectFailed(f"the SOCKS proxy cannot connect to {key[0]}:{key[1]}: {e}") from None
    except UnicodeEncodeError:  # (SOCKS5 names and passwords are ASCII)
        raise TunnelRefused(407, "the SOCKS login cannot carry these credentials") from None
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock
