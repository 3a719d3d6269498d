"""A job's HTTP requests as every transfer sends them: by its routes (direct, proxies,
PAC), with its credentials (401s; a proxy's 407s), its client certificate and its
connection partition.  Downloads (``fetch.FileDownload``) and uploads (``upload.Uploader``)
share it: :class:`Requester` is one request without redirects; the caller decides what its
answer means (a download follows redirects, an upload does not).

:class:`Transport` is what every transfer shares (the client, routes, TLS contexts,
throttle, owners' file-system actions); :class:`Owner` and :class:`Tuning` are a transfer's
identity and knobs.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import logging
import os
import ssl
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field

import yarl

from openbits.model import AuthScheme, AuthTarget
from openbits.redaction import redact_url
from openbits.transfer import files as fs
from openbits.transfer import redirects
from openbits.transfer.auth import Authenticator, basic_value
from openbits.transfer.certs import ClientContexts
from openbits.transfer.h1 import BadRequest, H1Client, ProxyUnreachable, RequestBody, Response, Via
from openbits.transfer.http import TLSContexts, auth_error
from openbits.transfer.options import ProxyAuthFactory, RequestOptions, digest
from openbits.transfer.owner import Owners
from openbits.transfer.proxy import DIRECT, Proxies, Route
from openbits.transfer.throttle import Throttle
from openbits.transfer.tickets import PROCESS, DefaultCredentials, OwnerTickets

log = logging.getLogger("openbits.transfer")

__all__ = ["Notices", "Owner", "Requester", "Transport", "Tuning"]


@dataclass(slots=True)
class Owner:
    uid: int
    gid: int


@dataclass(slots=True)
class Tuning:
    checkpoint_interval_s: float = 1.0
    checkpoint_bytes: int = 64 * 1024 * 1024
    write_block_bytes: int = 1024 * 1024
    read_buffer_bytes: int = 4 * 1024 * 1024
    #: a file at least this long may be fetched in segments over several connections
    segment_min_bytes: int = 8 * 1024 * 1024


class Notices:
    """What was already logged about a job (a warning once per job, not per request): a
    bounded memory, the oldest forgotten first."""

    __slots__ = ("_seen",)

    LIMIT = 4096

    def __init__(self) -> None:
        self._seen: collections.OrderedDict[tuple[str, str], None] = collections.OrderedDict()

    def first(self, job_id: str, what: str) -> bool:
        """True the first time ``what`` is told of ``job_id``."""
        key = (job_id, what)
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > self.LIMIT:
            self._seen.popitem(last=False)
        return True


@dataclass(frozen=True, slots=True)
class Transport:
    """What every transfer shares: the HTTP client (``h1``, direct and through proxies), the
    routes (``proxy.Proxies``), the TLS contexts, the bandwidth throttle, the tuning, the
    free-space check, the owners' file-system actions; the contexts of jobs that present a
    client certificate (``certs``)."""

    h1: H1Client
    proxies: Proxies
    tls: TLSContexts
    throttle: Throttle
    tuning: Tuning
    free_space: fs.FreeSpace
    #: the file-system actions with the owner's rights (``owner.Owners``)
    owners: Owners
    notices: Notices = field(default_factory=Notices)
    certs: ClientContexts | None = None
    proxy_auth: ProxyAuthFactory | None = None
    #: the owners' Kerberos tickets for a daemon that is not them (None: the process's own
    #: for a job of the daemon's user, none for another's)
    tickets: OwnerTickets | None = None


class Requester:
    """One job's requests: its routes, credentials, client certificate and partition, for
    ``owner`` (whose uid decides whether the default credentials may be used).

    Once a server (or proxy) answered ``send``'s request with a Basic challenge that the
    job's credential got past, the later requests of ``send`` to that origin (through that
    job's proxies) carry that credential from the start: an upload's fragment is not sent
    once in vain to meet each 401 (407) again.  Another origin (a BITS-Host-Id host) gets
    it only when it asks."""

    __slots__ = ("_preemptive", "_proxy_auth", "defaults", "options", "owner", "transport")

    def __init__(self, transport: Transport, options: RequestOptions, owner: Owner) -> None:
        self.transport, self.options, self.owner = transport, options, owner
        #: what the job's credentials with no names use (``resolve_defaults``, per request)
        self.defaults = PROCESS
        #: the Basic header values the server (SERVER, with its origin) or proxy (PROXY,
        #: with "") asked for
        self._preemptive: dict[tuple[AuthTarget, str], str] = {}
        self._proxy_auth: Authenticator | None = None  # (the last request's, through a proxy)

    @contextlib.asynccontextmanager
    async def send(
        self,
        url: str,
        headers: dict[str, str],
        *,
        method: str = "GET",
        body: RequestBody | None = None,
    ) -> AsyncIterator[Response]:
        """One request of ``url`` whose answer is final (a redirect is an answer like any
        other: uploads follow none), by its routes, answering 401s with the job's server
        credentials; a 401 they did not get past is raised (``auth_error``).  Network
        errors are the caller's to translate (``http.network_error``)."""
        await self.resolve_defaults()
        routes = await self.routes(url)
        auth = self.authenticator(url, url)
        client_tls = await self.client_tls(url)
        origin = _origin(url)
        basic = self._preemptive.get((AuthTarget.SERVER, origin))
        if basic is not None and auth is not None:
            headers = {**headers, "Authorization": basic}
        self._proxy_auth = None
        async with self.request(url, headers, (), routes, auth, client_tls, method, body) as resp:
            if auth is not None:
                self.authenticated(auth, resp.status, url)
            self._learn(auth, resp.status, origin)
            self._learn(self._proxy_auth, resp.status, "")
            yield resp

    def _learn(self, auth: Authenticator | None, status: int, origin: str) -> None:
        """Basic got past ``auth``'s target: its header goes with the next requests to
        ``origin`` (a server's; "" for the proxy)."""
        if auth is None or auth.scheme is not AuthScheme.BASIC or auth.problem or status == auth.status:
            return
        for c in self.options.credentials:
            if c.target == auth.target and c.scheme is AuthScheme.BASIC and c.user_name is not None:
                password = c.password.reveal() if c.password is not None else ""
                self._preemptive[auth.target, origin] = basic_value(c.user_name, password)
                return

    async def resolve_defaults(self) -> None:
        """Find what the job's NTLM/Negotiate credentials with no names use, before a
        request: the process's own when the daemon runs as the owner, else a copy of his
        Kerberos tickets (``tickets.OwnerTickets``), else none (saying why)."""
        owner, tickets, options = self.owner, self.transport.tickets, self.options
        if not options.credentials or owner.uid == os.geteuid() or not options.default_credentials():
            self.defaults = PROCESS
        elif tickets is None:
            self.defaults = DefaultCredentials(False, why="the daemon runs as another user")
        else:
            self.defaults = await tickets.for_owner(owner.uid, owner.gid)

    async def routes(self, url: str) -> tuple[Route, ...]:
        """The routes of a request to ``url``: the job's fixed ones, else AUTODETECT's."""
        proxies = self.transport.proxies
        routes = proxies.fixed(url, self.options)
        if routes is None:
            routes = await proxies.autodetect(url)
        return routes

    async def client_tls(self, url: str) -> ssl.SSLContext | None:
        """The job's own context when it presents a client certificate to an https:// URL
        (found again in its store as the owner, kept by ``ClientContexts``); else None."""
        cert, certs = self.options.client_certificate, self.transport.certs
        if cert is None or certs is None or url[:6].lower() != "https:":
            return None
        options, owner = self.options, self.owner
        return await certs.context(options.job_id, cert, options.security_flags, owner.uid, owner.gid)

    def request(
        self,
        url: str,
        headers: dict[str, str],
        ahead: Iterable[tuple[str, Mapping[str, str]]],
        routes: tuple[Route, ...],
        auth: Authenticator | None = None,
        client_tls: ssl.SSLContext | None = None,
        method: str = "GET",
        body: RequestBody | None = None,
    ) -> contextlib.AbstractAsyncContextManager[Response]:
        """One request, by the first of ``routes`` that connects; ``auth`` answers the
        server's 401s; ``client_tls``: the job's context with its client certificate."""
        transport = self.transport
        scheme = url[:6].lower()
        tls = None
        if scheme == "https:":
            tls = client_tls or transport.tls.for_h1(self.options.security_flags)
        elif not scheme.startswith("http:"):
            raise BadRequest(f"not an http:// or https:// URL: {redact_url(url)[:80]}")
        if routes is DIRECT:  # (the fast path: no per-request work)
            return self._one(url, headers, ahead, tls, None, auth, method, body)
        return self._routed(url, headers, ahead, tls, routes, auth, method, body)

    def _one(
        self,
        url: str,
        headers: dict[str, str],
        ahead: Iterable[tuple[str, Mapping[str, str]]],
        tls: ssl.SSLContext | None,
        via: Via | None,
        auth: Authenticator | None,
        method: str,
        body: RequestBody | None,
    ) -> contextlib.AbstractAsyncContextManager[Response]:
        h1, partition = self.transport.h1, self.options.partition
        if method == "GET":
            return h1.get(url, headers, ahead, tls, via, auth=auth, partition=partition)
        return h1.request(method, url, headers, body, tls, via, auth=auth, partition=partition)

    @contextlib.asynccontextmanager
    async def _routed(
        self,
        url: str,
        headers: dict[str, str],
        ahead: Iterable[tuple[str, Mapping[str, str]]],
        tls: ssl.SSLContext | None,
        routes: tuple[Route, ...],
        auth: Authenticator | None,
        method: str,
        body: RequestBody | None,
    ) -> AsyncIterator[Response]:
        """Through the routes in turn: a proxy that cannot be connected to (refused,
        unreachable, its name not resolved) hands over to the next; the last one's failure
        is the error."""
        for i, route in enumerate(routes):
            via = self._via(route) if route.proxy is not None else None
            request = self._one(url, headers, ahead, tls, via, auth, method, body)
            try:
                response = await request.__aenter__()
            except ProxyUnreachable:
                if i == len(routes) - 1:
                    raise
                continue
            try:
                yield response
            finally:
                await request.__aexit__(None, None, None)
            return

    def _via(self, route: Route) -> Via:
        entry = route.proxy
        assert entry is not None
        user, password = self.options.proxy_login()
        if user is None and route.user is not None:
            user, password = route.user, route.password
        basic = None
        tag = entry.url
        if route.user is not None:
            # (a tunnel opened with one login is never reused with another, or none)
            tag += "#" + digest(repr((route.user, route.password)))
            if not entry.is_socks:
                # (the proxy URL's login, as curl sends it: before the proxy asks)
                token = f"{route.user}:{route.password or ''}".encode()
                basic = "Basic " + base64.b64encode(token).decode("ascii")
                if entry.scheme == "http" and self.transport.notices.first(
                    self.options.job_id, "proxy-basic"
                ):
                    log.warning(
                        "job %s: the login of its proxy %s goes with every request, readable on the way",
                        self.options.job_id,
                        entry.url,
                    )
        if basic is None and not entry.is_socks:
            basic = self._preemptive.get((AuthTarget.PROXY, ""))
        factory = self.transport.proxy_auth
        auth = factory(self.options, entry, self.defaults) if factory is not None else None
        if isinstance(auth, Authenticator):
            self._proxy_auth = auth
        return Via(
            entry.scheme,
            entry.host,
            entry.port,
            tag=tag,
            tls=self.transport.tls.for_h1(0) if entry.scheme == "https" else None,
            user=user,
            password=password,
            basic=basic,
            auth=auth,
        )

    def authenticator(self, url: str, start: str) -> Authenticator | None:
        """The authentication of a request to ``url``: the job's server credentials answer
        the origin of ``start``, the URL the request began with, only (never another one a
        redirect leads to, reported or not); None without any."""
        options = self.options
        if not options.server_credentials() or not redirects.same_origin(url, start):
            return None
        parts = yarl.URL(url)
        return Authenticator(
            AuthTarget.SERVER,
            options.credentials,
            parts.host or "",
            secure=parts.scheme.lower() == "https",
            defaults=self.defaults,
        )

    def authenticated(self, auth: Authenticator, status: int, shown_url: str) -> None:
        """After the exchange: a 401 its credentials did not get past (or a server that
        failed mutual authentication) is the job's error, saying why; Basic in the clear is
        worth a warning, once per job."""
        if auth.basic_in_clear and self.transport.notices.first(self.options.job_id, "basic-in-clear"):
            log.warning(
                "job %s: its Basic credentials went to %s over plain http:// (readable on the way)",
                self.options.job_id,
                redact_url(shown_url),
            )
        if auth.problem is not None and (status == auth.status or not auth.verified):
            raise auth_error(auth.status, auth.problem)


def _origin(url: str) -> str:
    """``url``'s origin (scheme, host, port: RFC 6454) as a key; "" when it has none."""
    try:
        parts = yarl.URL(url)
    except ValueError:
        return ""
    return f"{parts.scheme.lower()}://{parts.host}:{parts.port}" if parts.host else ""
