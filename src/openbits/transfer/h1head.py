"""HTTP/1.1 message heads for ``h1``, sans I/O: the request head we send, the response head we
read and the framing it announces (RFC 9112 §6), what a request needs of its URL, and the
``H1Error`` tree every failure of the client is one of.

Nothing here touches a socket: ``h1.H1Client`` feeds bytes in and gets values or errors out, and
tests/unit/test_h1.py and tests/fuzz drive these functions directly, as byteranges.py is driven.
"""

from __future__ import annotations

import base64
import re
import ssl
from collections.abc import Mapping

import yarl
from multidict import CIMultiDict


class H1Error(Exception):
    """A request failed on the network or the server's answer was not acceptable HTTP."""


class ConnectFailed(H1Error):
    def __init__(self, message: str, os_error: OSError | None = None) -> None:
        super().__init__(message)
        self.os_error = os_error


class NameNotResolved(H1Error):
    pass


class ClosedEarly(H1Error):
    """The connection closed (or was reset) before the response was complete."""


class BadResponse(H1Error):
    """The server's bytes are not an HTTP/1.1 response we accept."""


class TLSFailed(H1Error):
    """The TLS handshake failed (other than on the server's certificate)."""


class HandshakeTimeout(TLSFailed):
    """The server's side of the TLS handshake did not come within the connect timeout: the
    server went silent (BG_E_TIMEOUT, as silence anywhere else), no fault of the channel."""


class BadRequest(H1Error):
    """The request cannot be written as HTTP/1.1 (a header with a line break, say)."""


class ProxyUnreachable(ConnectFailed):
    """The proxy itself cannot be connected to (refused, unreachable, silent): the next route
    may be tried."""


class ProxyNameNotResolved(ProxyUnreachable):
    """The proxy's host name does not resolve (BG_E_PROXY_NAME_RESOLUTION_FAILURE)."""


class TunnelRefused(H1Error):
    """The proxy answered CONNECT (or a SOCKS request) with a refusal: ``status`` is the HTTP
    status it gave (407 for a SOCKS login refused, 502 for a SOCKS destination it could not
    reach)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"the proxy answered {status} {reason}".rstrip())
        self.status = status
        self.reason = reason


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BAD_VALUE = re.compile(r"[\r\n\0]")
#: one header line: a token, a colon, blanks, then the rest of the line (its final CR and the
#: blanks before it are cut by ``_field``: a lazy match here tries the end at every character)
_HEADER_FIELD = re.compile(r"^([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*(.*)$", re.MULTILINE)


#: a connection pool: (host, port, 0 for plain HTTP or the id of the TLS context, the route
#: and partition: "" for a direct connection any job may reuse)
Key = tuple[str, int, int, str]


def parse_head(head: bytes) -> tuple[int, str, CIMultiDict[str], bool]:
    """(status, reason, headers, HTTP/1.1?) of a response head without its final empty line."""
    text = head.decode("latin-1")
    lines = text.split("\n")
    status_line = lines[0].rstrip("\r")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or parts[0] not in ("HTTP/1.1", "HTTP/1.0"):
        raise BadResponse(f"not an HTTP/1.x status line: {status_line[:80].encode('latin-1')!r}")
    code = parts[1]
    if len(code) != 3 or not (code.isascii() and code.isdigit()) or not "100" <= code <= "599":
        raise BadResponse(f"bad status code {code[:20].encode('latin-1')!r}")
    reason = parts[2] if len(parts) > 2 else ""
    block = text[len(lines[0]) + 1 :] if len(lines) > 1 else ""
    fields = [
        (n, v[:-1].rstrip(" \t") if v.endswith("\r") else v.rstrip(" \t"))
        for n, v in _HEADER_FIELD.findall(block)
    ]
    if len(fields) != len(lines) - 1 - block.count("\n\n") - block.count("\n\r\n"):
        _bad_header_line(lines[1:])  # (the one line the pattern did not take says what)
    headers: CIMultiDict[str] = CIMultiDict(fields)
    return int(code), reason, headers, parts[0] == "HTTP/1.1"


def _bad_header_line(lines: list[str]) -> None:
    token = _TOKEN.fullmatch
    for raw in lines:
        line = raw.rstrip("\r")
        if not line:
            continue
        name, sep, _value = line.partition(":")
        if not sep or not token(name):
            if line[0] in " \t":
                raise BadResponse("obsolete line folding in the response headers")
            raise BadResponse(f"bad header line {line[:80].encode('latin-1')!r}")
    raise BadResponse("bad header lines")


def framing(status: int, headers: CIMultiDict[str], head_request: bool) -> tuple[str, int]:
    """("length", n), ("chunked", 0) or ("close", 0) for a response (RFC 9112 §6.3)."""
    if head_request or status in (204, 304) or 100 <= status < 200:
        return "length", 0
    encodings = headers.getall("Transfer-Encoding", [])
    if encodings:
        last = ",".join(encodings).split(",")[-1].strip().lower()
        if last != "chunked":
            return "close", 0
        return "chunked", 0
    lengths = {v.strip() for v in headers.getall("Content-Length", []) for v in v.split(",")}
    if not lengths:
        return "close", 0
    if len(lengths) > 1:
        raise BadResponse(f"conflicting Content-Length values {sorted(lengths)}")
    value = lengths.pop()
    if not (value.isascii() and value.isdigit()) or len(value) > 19:
        raise BadResponse(f"bad Content-Length {value[:40]!r}")
    return "length", int(value)


_SIMPLE_URL = re.compile(
    r"(?P<scheme>https?)://(?P<host>[a-z0-9.-]+|\[[0-9a-f:.]+\])(?::(?P<port>[0-9]{1,5}))?"
    r"(?P<path>/[A-Za-z0-9._~!$&'()*+,;=:@/?-]*)?",
    re.ASCII,
)


class Target:
    """What a request needs of its URL: the connection key, the Host header, the request
    target and any credentials."""

    __slots__ = ("host_header", "key", "password", "path_qs", "tls", "user")

    def __init__(self, url: str, tls: ssl.SSLContext | None = None, via: str = "") -> None:
        """``tls``: the context of an https:// URL (None for http://); ``via``: the route and
        partition of its connections (``Key``'s last part)."""
        self.tls = tls
        tag = 0 if tls is None else id(tls)
        m = _SIMPLE_URL.fullmatch(url)
        if m is not None and (m["port"] is None or 0 < int(m["port"]) < 65536):
            if (m["scheme"] == "https") != (tls is not None):
                raise BadRequest("an https:// URL needs a TLS context, an http:// one none")
            default = 443 if tls is not None else 80
            host, port = m["host"], int(m["port"] or default)
            self.key: Key = (host.strip("[]"), port, tag, via)
            self.host_header = host if port == default else f"{host}:{port}"
            self.path_qs = m["path"] or "/"
            self.user: str | None = None
            self.password: str | None = None
            return
        parsed = yarl.URL(url)  # anything else: yarl normalises it (IDNA, quoting)
        if parsed.scheme != ("http" if tls is None else "https"):
            raise BadRequest(f"not an {'https' if tls else 'http'}:// URL: {parsed.scheme}")
        default = 443 if tls is not None else 80
        raw = parsed.raw_host or ""
        host = f"[{raw}]" if ":" in raw else raw
        if parsed.explicit_port and parsed.port != default:
            host = f"{host}:{parsed.port}"
        self.key = (raw, parsed.port or default, tag, via)
        self.host_header = host
        self.path_qs = parsed.raw_path_qs or "/"
        self.user = parsed.user if parsed.raw_user is not None else None
        self.password = parsed.password if parsed.raw_user is not None else None
        if parsed.raw_user is not None and self.user is None:
            self.user = ""


def request_head(
    url: Target,
    headers: Mapping[str, str],
    default_headers: Mapping[str, str],
    default_block: str,
    method: str = "GET",
) -> bytes:
    """The head of a ``method`` (GET, BITS_POST) request of ``url``: ``headers`` over
    ``default_headers`` (whose lines, ready made, are ``default_block``), Basic credentials
    from the URL unless an Authorization is given. Raises ``BadRequest`` for what HTTP/1.1 cannot carry."""
    host = url.host_header
    if _BAD_VALUE.search(host):
        raise BadRequest("a line break in the host name")
    if not headers and url.user is None:  # the common case, without the merging
        head = f"{method} {url.path_qs} HTTP/1.1\r\nHost: {host}\r\n{default_block}\r\n"
        return head.encode("latin-1")
    merged: dict[str, tuple[str, str]] = {k.lower(): (k, v) for k, v in default_headers.items()}
    merged["host"] = ("Host", host)
    if url.user is not None and "authorization" not in {k.lower() for k in headers}:
        cred = f"{url.user}:{url.password or ''}".encode()
        merged["authorization"] = ("Authorization", "Basic " + base64.b64encode(cred).decode("ascii"))
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
            raise BadRequest(f"the request header {name[:40]!r} is not valid in HTTP")
        merged[name.lower()] = (name, value)
    lines = [f"{method} {url.path_qs} HTTP/1.1"]
    lines.extend(f"{name}: {value}" for name, value in merged.values())
    text = "\r\n".join(lines) + "\r\n\r\n"
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        raise BadRequest("a request header holds characters HTTP/1.1 cannot carry") from None
