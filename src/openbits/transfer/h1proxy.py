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
(``transfer/auth.py``'s Authenticator) answers the 407s to CONNECT (here) and to an
absolute-form request (``h1``), both through ``h1auth.exchange``, the loop that answers a
server's 401s: the request is sent again with its header on the same connection while the
proxy keeps it open (NTLM and Negotiate legs stay on one connection).  Without one a 407
stands (BG_E_HTTP_ERROR_407).

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

from openbits.transfer.h1auth import Answerer, exchange
from openbits.transfer.h1body import Response, read_response
from openbits.transfer.h1conn import Conn, Wire
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
)

_BAD_VALUE = re.compile(r"[\r\n\0]")


#: answers a proxy's 407s (``transfer/auth.py``'s Authenticator for AuthTarget.PROXY): the
#: header to send again with, or None (no credential fits: the 407 stands)
ProxyAuth = Answerer


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


async def open_via(client: Wire, key: Key, tls: ssl.SSLContext | None, via: Via) -> Conn:
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


async def _to_proxy(client: Wire, key: Key, via: Via) -> Conn:
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


async def _tunnel(client: Wire, conn: Conn, key: Key, via: Via) -> Conn:
    """``CONNECT`` to the origin, its 407s answered through ``via.auth`` by the exchange
    that answers a GET's (``h1auth.exchange``: on the same connection while the proxy keeps
    it open, a new one when it closed it).  The connection the tunnel runs on."""
    host, port = key[0], key[1]
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    first = {} if via.basic is None else {"Proxy-Authorization": via.basic}

    def rewrite(extra: Mapping[str, str]) -> bytes:
        if any(_BAD_VALUE.search(value) for value in extra.values()):
            raise BadRequest("the proxy authentication header holds a line break")
        lines = "".join(f"{name}: {value}\r\n" for name, value in {**first, **extra}.items())
        return f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{lines}\r\n".encode("latin-1")

    async def read(conn: Conn) -> Response:
        # (held: a connection to the proxy never goes back to the pool as the origin's)
        response = await read_response(client, conn, authority, held=True)
        if response is None:
            raise ClosedEarly("the proxy closed the connection without answering CONNECT")
        if response.status == 401:  # (tinyproxy refuses a wrong login so): the proxy's, a 407
            response.status = 407
        return response

    async def reconnect() -> Conn:
        return await _to_proxy(client, key, via)

    try:
        await client.send(conn, rewrite({}))
        response = await read(conn)
    except BaseException:
        conn.close()
        raise
    if via.auth is not None:
        response = await exchange(
            client, response, (via.auth,), "CONNECT", authority, rewrite, read, reconnect, pooled=False
        )
    conn = response._conn
    if not 200 <= response.status < 300:
        conn.close()
        raise TunnelRefused(response.status, response.reason)
    if conn.buffered():
        conn.close()
        raise BadResponse("the proxy sent bytes after its answer to CONNECT")
    return conn


async def _socks(client: Wire, key: Key, via: Via) -> socket.socket:
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
        # (python-socks sets error_code only for the proxy's reply to the connect request; a
        # failure before it, in the method negotiation or the login, is the login refused
        # when there was one to refuse or the proxy wanted one)
        handshake = getattr(e, "error_code", None) is None
        if handshake and (via.user is not None or "authentication" in str(e).lower()):
            raise TunnelRefused(407, "the SOCKS proxy refused the login") from None
        raise ConnectFailed(f"the SOCKS proxy cannot connect to {key[0]}:{key[1]}: {e}") from None
    except UnicodeEncodeError:  # (SOCKS5 names and passwords are ASCII)
        raise TunnelRefused(407, "the SOCKS login cannot carry these credentials") from None
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock
