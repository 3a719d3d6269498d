"""The URLs a request's upload goes by: for its client, for the server's own use, for the
application (why: a client must never choose where the server sends anything).

- ``client``: the upload URL as the client used it (its Host header; behind a trusted proxy
  the scheme of X-Forwarded-Proto), or on ``public_base_url``. Only the client sees what is
  built on it: the BITS-Reply-URL of the last Ack.
- ``own``: the upload URL on the server's own origin: ``public_base_url``, else the scheme
  and the local address the request came in on. A relative ``notification_url`` resolves
  against it, never against the Host header (which would let any client point the
  notification, and the uploaded file with it, at a host and port of its choosing).
- ``original``: BITS-Original-Request-URL for the application: ``public_base_url``, else
  the client's URL behind a trusted proxy (``trust_forwarded``), else ``own``.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from yarl import URL

from openbits.uploadserver.config import ServerSettings


@dataclass(frozen=True, slots=True)
class RequestUrls:
    client: URL
    own: URL
    original: URL


def request_urls(request: web.Request, settings: ServerSettings) -> RequestUrls:
    """The three URLs of ``request`` (see the module's docstring)."""
    rel = request.rel_url.raw_path_qs
    if settings.public_base_url:
        public = URL(settings.public_base_url.rstrip("/") + rel, encoded=True)
        return RequestUrls(public, public, public)
    own = URL(_own_origin(request) + rel, encoded=True)
    client = _client_url(request, settings)
    return RequestUrls(client, own, client if settings.trust_forwarded else own)


def _own_origin(request: web.Request) -> str:
    """``scheme://local-address:port`` of the connection the request came in on."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    scheme = "https" if request.transport and request.transport.get_extra_info("sslcontext") else "http"
    if not isinstance(sockname, tuple) or len(sockname) < 2:
        # a Unix socket: no address of ours to name (set public_base_url there)
        return f"{scheme}://localhost"
    return str(URL.build(scheme=scheme, host=str(sockname[0]), port=int(sockname[1])))


def _client_url(request: web.Request, settings: ServerSettings) -> URL:
    """The upload URL as the client used it (behind a trusted proxy, its scheme too)."""
    url = request.url
    proto = request.headers.get("X-Forwarded-Proto", "").strip().lower()
    if settings.trust_forwarded and proto in ("http", "https"):
        url = url.with_scheme(proto).with_port(url.explicit_port)
    return url
