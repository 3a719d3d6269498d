"""Whether and where to follow a redirect: a pure decision, as the job's SecurityFlags say
(bits-spec §5.5), testable without I/O.

ALLOW_SILENT follows, ALLOW_REPORT follows and reports the final URL (which becomes the
file's RemoteUrl), DISALLOW fails; HTTPS to HTTP fails unless allowed; only HTTP(S) targets.
"""

from __future__ import annotations

import yarl

from openbits.model import REDIRECT_POLICY_MASK, SecurityFlags
from openbits.transfer.http import invalid_response, redirect_error

MAX_REDIRECTS = 10
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


def next_url(status: int, location: str | None, base: yarl.URL, url: str, security_flags: int) -> str | None:
    """Where an answer (``status``, its Location) to a request for ``url`` sends the request
    next, resolved against ``base`` (the URL that answered); None when it is not a redirect
    (it is the answer).  Raises the BitsError of a redirect the flags refuse."""
    if status not in REDIRECT_STATUSES or not location:
        return None
    try:
        target = str(base.join(yarl.URL(location)))
    except ValueError as e:  # a Location no URL parser takes: the server's fault
        raise invalid_response(f"the server redirected to a malformed URL ({e})") from None
    if security_flags & REDIRECT_POLICY_MASK == SecurityFlags.REDIRECT_POLICY_DISALLOW:
        raise redirect_error(status, "the job's SecurityFlags disallow redirects")
    if (
        url.lower().startswith("https:")
        and target.lower().startswith("http:")
        and not security_flags & SecurityFlags.REDIRECT_POLICY_ALLOW_HTTPS_TO_HTTP
    ):
        raise redirect_error(status, "a redirect from HTTPS to HTTP is not allowed")
    if target.split(":", 1)[0].lower() not in ("http", "https"):
        raise redirect_error(status, "a redirect to a scheme other than HTTP(S)")
    return target


def same_origin(url: str, other: str) -> bool:
    """``url`` and ``other`` have one origin (scheme, host, port: RFC 6454): a server's
    credentials go to its own origin only, never where it redirects elsewhere."""
    try:
        a, b = yarl.URL(url), yarl.URL(other)
    except ValueError:
        return False
    return (a.scheme.lower(), a.host, a.port) == (b.scheme.lower(), b.host, b.port) and a.host is not None


def reported(security_flags: int) -> bool:
    """The final URL of a followed redirect becomes the file's RemoteUrl (ALLOW_REPORT)."""
    return security_flags & REDIRECT_POLICY_MASK == SecurityFlags.REDIRECT_POLICY_ALLOW_REPORT
