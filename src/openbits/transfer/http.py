"""The HTTP edge: the TLS contexts, header parsers, the daemon's environment proxies (for
the notification webhooks), and error translation.

``h1``'s exceptions (and the socket and TLS errors under it) are translated here, once, into
BitsError (DESIGN rule 1).
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
import types
import urllib.parse
import urllib.request
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

from openbits import __version__
from openbits.errors import (
    TRANSIENT_HTTP_STATUSES,
    BitsError,
    ConnectError,
    HResult,
    HttpStatusError,
    InvalidResponse,
    InvalidUrl,
    NameResolutionError,
    NetworkError,
    Timeout,
    TLSError,
    UnknownNetworkError,
    UntrustedCertificate,
    http_status_hresult,
)
from openbits.model import ErrorContext
from openbits.redaction import redact_url
from openbits.transfer import h1

USER_AGENT = f"openbits/{__version__}"
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE | re.ASCII)
_UNSATISFIED_RANGE = re.compile(r"^\s*bytes\s+\*/(\d+)\s*$", re.IGNORECASE | re.ASCII)
_DELTA_SECONDS = re.compile(r"[0-9]+", re.ASCII)
#: A Retry-After longer than this is treated as this (one day).
RETRY_AFTER_MAX_S = 86400.0


def env_proxies() -> Mapping[str, str]:
    """The proxies the environment names (http_proxy, https_proxy, no_proxy), by scheme: read
    by the composition root once, at start-up, for the notification webhooks (transfers take
    theirs from ``proxy.Proxies``)."""
    return types.MappingProxyType(urllib.request.getproxies_environment())


def env_proxy_for(url: str, proxies: Mapping[str, str]) -> str | None:
    """The proxy ``proxies`` (from ``env_proxies``) name for ``url``; None for a malformed URL
    (its request fails on its own)."""
    if not proxies:
        return None
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # an unbalanced IPv6 bracket, say
        return None
    proxy = proxies.get(parts.scheme.lower())
    if not proxy or urllib.request.proxy_bypass_environment(  # type: ignore[attr-defined]
        parts.hostname or "", proxies
    ):
        return None
    return proxy


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """``bytes a-b/total`` -> (a, b, total or None for ``*``); None if malformed."""
    if not value:
        return None
    m = _CONTENT_RANGE.match(value)
    if not m:
        return None
    start, end = int(m.group(1)), int(m.group(2))
    total = None if m.group(3) == "*" else int(m.group(3))
    if end < start or (total is not None and end >= total):
        return None
    return start, end, total


def parse_unsatisfied_range(value: str | None) -> int | None:
    """``bytes */total`` of a 416 answer -> total."""
    if not value:
        return None
    m = _UNSATISFIED_RANGE.match(value)
    return int(m.group(1)) if m else None


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return min(float(value), RETRY_AFTER_MAX_S)
    try:
        seconds = parsedate_to_datetime(value).timestamp() - time.time()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(0.0, seconds), RETRY_AFTER_MAX_S)


def status_error(status: int, reason: str | None, retry_after: str | None) -> BitsError:
    """BG_E_HTTP_ERROR_<status> with context REMOTE_FILE, transient per SPEC §3."""
    message = f"the server answered HTTP {status} {reason or ''}".rstrip()
    if status in TRANSIENT_HTTP_STATUSES:
        return HttpStatusError(
            message,
            hresult=http_status_hresult(status),
            context=ErrorContext.REMOTE_FILE,
            retry_after_s=parse_retry_after(retry_after),
        )
    return HttpStatusError(message, hresult=http_status_hresult(status))


def auth_error(status: int, problem: str) -> BitsError:
    """A 401 (407) the job's credentials did not get past: ``problem`` says why (no usable
    credential for the offered schemes, a refused or lost one); BG_E_HTTP_ERROR_401 (407),
    REMOTE_FILE, not retried (SPEC §7)."""
    return HttpStatusError(f"HTTP {status}: {problem}", hresult=http_status_hresult(status))


def redirect_error(status: int, why: str) -> BitsError:
    """A redirect the job's policy refuses: fatal, BG_E_HTTP_ERROR_<status>, REMOTE_FILE."""
    return HttpStatusError(f"the server redirected ({status}) but {why}", hresult=http_status_hresult(status))


class TLSContexts:
    """The TLS contexts of the jobs' requests, one per set of SecurityFlags relaxations,
    made on first use (a default context reads the system's CA store, or SSL_CERT_FILE).
    Owned by the composition root, which ``close``-s it."""

    __slots__ = ("_default", "_relaxed")

    def __init__(self) -> None:
        self._relaxed: dict[int, ssl.SSLContext] = {}
        self._default: ssl.SSLContext | None = None

    def for_h1(self, security_flags: int) -> ssl.SSLContext:
        """The TLS verification a job's SecurityFlags ask for (0: full, a default context).

        IGNORE_CERT_CN_INVALID skips the host-name check only.  IGNORE_UNKNOWN_CA,
        IGNORE_CERT_DATE_INVALID and IGNORE_CERT_WRONG_USAGE cannot be told apart by
        OpenSSL's verifier from Python, so any of them turns chain verification off (and the
        host-name check with it); each is an explicit, per-job choice.
        """
        relax = security_flags & 0x1E
        if not relax:
            if self._default is None:
                self._default = ssl.create_default_context()
            return self._default
        ctx = self._relaxed.get(relax)
        if ctx is None:
            ctx = self._relaxed[relax] = self.fresh(security_flags)
        return ctx

    @staticmethod
    def fresh(security_flags: int) -> ssl.SSLContext:
        """A new context verifying as ``security_flags`` say, as ``for_h1``'s do: for a job
        that adds to it (a client certificate, ``certs.ClientContexts``)."""
        ctx = ssl.create_default_context()
        relax = security_flags & 0x1E
        if relax:
            ctx.check_hostname = False
            if relax & 0x1C:
                ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def close(self) -> None:
        """Let go of the contexts (a context in use by a connection stays valid for it)."""
        self._relaxed.clear()
        self._default = None


def invalid_response(message: str) -> BitsError:
    return InvalidResponse(message)


def network_error(e: BaseException, url: str) -> BitsError:
    """Translate an ``h1`` / socket / TLS / timeout exception (the message never holds a
    password)."""
    url = redact_url(url)
    if isinstance(e, h1.H1Error):
        return _h1_error(e, url)
    if isinstance(e, ssl.SSLCertVerificationError):
        return UntrustedCertificate(f"the server's certificate is not trusted: {e}")
    if isinstance(e, ssl.SSLError):
        return TLSError(f"TLS failed: {e}")
    if isinstance(e, asyncio.TimeoutError):
        return Timeout("the server sent nothing for too long")
    if isinstance(e, ConnectionError):
        return NetworkError(f"the connection closed early: {e}")
    return UnknownNetworkError(f"transfer failed: {e}")


def _h1_error(e: h1.H1Error, url: str) -> BitsError:
    if isinstance(e, h1.ProxyNameNotResolved):
        return NameResolutionError(str(e), hresult=HResult.BG_E_PROXY_NAME_RESOLUTION_FAILURE)
    if isinstance(e, h1.TunnelRefused):
        return status_error(e.status, f"from the proxy: {e.reason}", None)
    if isinstance(e, h1.NameNotResolved):
        return NameResolutionError(f"cannot resolve the host of {url}")
    if isinstance(e, h1.ConnectFailed):
        return ConnectError(str(e))
    if isinstance(e, h1.BadResponse):
        return invalid_response(f"the server's response is not valid HTTP: {e}")
    if isinstance(e, h1.HandshakeTimeout):
        return Timeout(str(e))
    if isinstance(e, h1.TLSFailed):
        return TLSError(str(e))
    if isinstance(e, h1.BadRequest):
        return InvalidUrl(str(e))
    return NetworkError(f"the connection closed early: {e}")


NETWORK_EXCEPTIONS: tuple[type[BaseException], ...] = (
    h1.H1Error,
    asyncio.TimeoutError,
    ConnectionError,
    ssl.SSLError,
)
