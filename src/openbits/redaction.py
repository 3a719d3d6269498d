"""URLs as they may be shown or logged: secrets are never returned or logged (SPEC §7).

``redact_url`` hides a URL's password; ``redact_webhook`` keeps a webhook's scheme and host
alone (its path or query is often its secret).  Pure string work: no parsing library, so a
malformed URL is shown as safely as a good one.
"""

from __future__ import annotations

__all__ = ["redact_url", "redact_webhook"]


def _authority(url: str) -> tuple[int, int] | None:
    """Where the authority (``user:password@host:port``) of ``url`` starts and ends, or None
    when it has no ``scheme://``."""
    scheme_end = url.find("://")
    if scheme_end < 0:
        return None
    start = scheme_end + 3
    end = len(url)
    for stop in "/?#":
        i = url.find(stop, start)
        if i >= 0:
            end = min(end, i)
    return start, end


def redact_webhook(url: str) -> str:
    """A webhook URL as it may be shown: its scheme and host only (a webhook's path or
    query is often its secret, as in chat services' incoming webhooks)."""
    authority = _authority(url)
    if authority is None:
        return "***"
    start, end = authority
    host = url[start:end].rpartition("@")[2]
    return url[:start] + host + ("/***" if end < len(url) else "")


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``: secrets are never returned or logged."""
    if "@" not in url:
        return url
    authority = _authority(url)
    if authority is None:
        return url
    start, end = authority
    at = url.rfind("@", start, end)
    if at < 0:
        return url
    colon = url.find(":", start, at)
    if colon < 0:
        return url
    return url[: colon + 1] + "***" + url[at:]
