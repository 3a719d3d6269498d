"""The BITS upload protocol, sans I/O (SPEC §8, bits-spec §6, [MC-BUP]): what the client
sends next, and what an answer (an Ack) means.

:func:`next_packet` reads the job's :class:`~openbits.model.UploadState`, the offset the
server acknowledged and the fragment size, and names the next step: Ping (once per run,
as Windows opens a connection with it), Create-Session, a Fragment from the acknowledged
offset, the reply's download (upload-reply), Close-Session, or done.  :func:`interpret`
reads an Ack: header names are matched case-insensitively, error headers are ignored on
a 2xx, a Fragment's Ack moves the offset to BITS-Received-Content-Range either way (200 and
416; the one to the last byte of an upload-reply job names the reply, BITS-Reply-URL, http(s)
only), 413 shrinks the fragments (unless it is the application's, context 0x7, or
BG_E_TOO_LARGE: the job's error), 500 with BG_E_SESSION_NOT_FOUND starts a new session from
byte 0, any other failure is a :class:`~openbits.errors.BitsError` with the server's code
(BITS-Error-Code, or [MC-BUP]'s BITS-Error) and context, else BG_E_HTTP_ERROR_<status>.
:class:`FragmentSizer` adapts the fragment size.  Nothing here does I/O: ``upload.py``
drives it.
"""

from __future__ import annotations

import enum
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

from openbits.errors import TRANSIENT_HTTP_STATUSES, BitsError, HResult, InvalidResponse, RemoteFileError
from openbits.model import UPLOAD_FRAGMENT_START_BYTES, ErrorContext, UploadState
from openbits.transfer.http import invalid_response, status_error

__all__ = [
    "FRAGMENT_MAX_BYTES",
    "FRAGMENT_MIN_BYTES",
    "PROTOCOL",
    "Ack",
    "Advance",
    "FragmentSizer",
    "Kind",
    "NewSession",
    "Opened",
    "Packet",
    "ServerError",
    "Shrink",
    "checked_reply_url",
    "interpret",
    "next_packet",
]

#: the only upload protocol there is: "BITS 1.5 Upload Protocol"
PROTOCOL = "{7df0354d-249b-430f-820d-3d2a9bef4931}"
#: fragments never grow beyond this, nor shrink (at a 413) below that
FRAGMENT_MAX_BYTES = 64 * 1024 * 1024
FRAGMENT_MIN_BYTES = 16 * 1024
#: a whole fragment acknowledged within this long: the next one may be twice as long
FAST_FRAGMENT_S = 2.0

_HEX = re.compile(r"\s*(?:0x)?([0-9a-f]{1,8})\s*", re.IGNORECASE | re.ASCII)
_OFFSET = re.compile(r"\s*(?:bytes\s*)?(?:0-)?(\d{1,19})\s*", re.IGNORECASE | re.ASCII)


class Kind(enum.Enum):
    """The next step of an upload (BITS-Packet-Type for those that are packets)."""

    PING = "Ping"
    CREATE_SESSION = "Create-Session"
    FRAGMENT = "Fragment"
    FETCH_REPLY = "reply"  # not a packet: the reply's GET
    CLOSE_SESSION = "Close-Session"
    CANCEL_SESSION = "Cancel-Session"
    DONE = "done"


@dataclass(frozen=True, slots=True)
class Packet:
    """A step; a Fragment carries bytes ``start`` .. ``start + length - 1`` of ``total``."""

    kind: Kind
    start: int = 0
    length: int = 0
    total: int = 0

    @property
    def content_range(self) -> str:
        """Content-Range of a Fragment (``bytes */0`` for an empty source: no byte to send)."""
        if self.length == 0:
            return f"bytes */{self.total}"
        return f"bytes {self.start}-{self.start + self.length - 1}/{self.total}"


def next_packet(
    state: UploadState, offset: int, total: int, fragment_bytes: int, *, pinged: bool, reply: bool
) -> Packet:
    """What to do next: ``offset`` is what the server acknowledged of the ``total`` bytes of
    the source, ``fragment_bytes`` the size of a Fragment now; ``pinged``: this run sent its
    Ping; ``reply``: an upload-reply job."""
    if state.closed:
        return Packet(Kind.DONE)
    if not pinged:
        return Packet(Kind.PING)
    if state.session_id is None:
        return Packet(Kind.CREATE_SESSION)
    if not state.fragments_done or (reply and not state.reply_done and not state.reply_url):
        # (every byte in but no reply named, as after a crash between checkpoints: the final
        # byte again, whose Ack names it; a state stored so by an older version too)
        start = min(max(0, offset), max(0, total - 1))
        return Packet(Kind.FRAGMENT, start, min(fragment_bytes, total - start), total)
    if reply and not state.reply_done:
        return Packet(Kind.FETCH_REPLY)
    return Packet(Kind.CLOSE_SESSION)


@dataclass(frozen=True, slots=True)
class Ack:
    """An answer: its status, reason and headers (looked up case-insensitively)."""

    status: int
    reason: str
    headers: Mapping[str, str]

    def header(self, name: str) -> str | None:
        value = self.headers.get(name)
        if value is not None:
            return value
        lower = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == lower), None)


@dataclass(frozen=True, slots=True)
class Opened:
    """Create-Session's Ack: the session, and the host of its later packets (BITS-Host-Id)."""

    session_id: str
    host_id: str | None
    #: BITS-Host-Id-Fallback-Timeout (seconds): None, never go back to the URL's host
    fallback_s: int | None = None


@dataclass(frozen=True, slots=True)
class Advance:
    """The server has ``offset`` bytes (Fragment's Ack; any other Ack: None, nothing to move);
    the last Fragment's Ack of an upload-reply job names the reply."""

    offset: int | None = None
    reply_url: str | None = None


@dataclass(frozen=True, slots=True)
class Shrink:
    """413: the fragment was too long for the server."""

    error: BitsError


@dataclass(frozen=True, slots=True)
class NewSession:
    """BG_E_SESSION_NOT_FOUND: the server forgot the session; a new one starts from 0."""


class ServerError(RemoteFileError):
    """The server's own code (BITS-Error-Code) for a packet it refused: retried as the HTTP
    status of its answer would be (``errors.TRANSIENT_HTTP_STATUSES``)."""

    def __init__(self, message: str, *, hresult: int, context: ErrorContext, status: int) -> None:
        self.status = status
        super().__init__(message, hresult=hresult, context=context)

    def retried(self) -> bool:
        return self.status in TRANSIENT_HTTP_STATUSES


def server_error(ack: Ack, what: str) -> BitsError:
    """The job's error for a refused packet: the server's code and context when it gave
    one (context 0x7: its application), else BG_E_HTTP_ERROR_<status>."""
    code = _hex(ack.header("BITS-Error-Code") or ack.header("BITS-Error"))
    context_code = _hex(ack.header("BITS-Error-Context"))
    context = ErrorContext.REMOTE_APPLICATION if context_code == 7 else ErrorContext.REMOTE_FILE
    if code:
        message = f"the server refused the {what} (HTTP {ack.status}, 0x{code:08X})"
        return ServerError(message, hresult=code, context=context, status=ack.status)
    error = status_error(ack.status, f"{ack.reason} to the {what}".strip(), ack.header("Retry-After"))
    error.context = context
    return error


def _hex(value: str | None) -> int:
    if value is None:
        return 0
    m = _HEX.fullmatch(value)
    return int(m.group(1), 16) if m else 0


def interpret(packet: Packet, ack: Ack, url: str, *, reply: bool) -> Opened | Advance | Shrink | NewSession:
    """What ``ack`` (the answer to ``packet``, sent to ``url``) means; a failure the job
    cannot go past is raised."""
    kind = packet.kind
    what = kind.value
    status = ack.status
    if kind is Kind.FRAGMENT and status == 416:
        offset = _received(ack, packet)
        return Advance(offset, _reply_url(ack, url) if reply and offset == packet.total else None)
    if status == 413 and kind is Kind.FRAGMENT and not _whole_upload_refused(ack):
        return Shrink(server_error(ack, what))
    if not 200 <= status < 300:
        code = _hex(ack.header("BITS-Error-Code") or ack.header("BITS-Error"))
        if code == HResult.BG_E_SESSION_NOT_FOUND and kind is not Kind.CANCEL_SESSION:
            return NewSession()
        raise server_error(ack, what)
    # (a 2xx: error headers are ignored)
    if kind is Kind.CREATE_SESSION:
        session = (ack.header("BITS-Session-Id") or "").strip()
        if not session:
            raise invalid_response("the server's Create-Session Ack has no BITS-Session-Id")
        protocol = ack.header("BITS-Protocol")
        if protocol is not None and protocol.strip().lower() != PROTOCOL:
            raise invalid_response(f"the server chose an unknown upload protocol {protocol[:60]!r}")
        host = (ack.header("BITS-Host-Id") or "").strip() or None
        return Opened(session, host, _seconds(ack.header("BITS-Host-Id-Fallback-Timeout")) if host else None)
    if kind is not Kind.FRAGMENT:
        return Advance()
    offset = _received(ack, packet)
    return Advance(offset, _reply_url(ack, url) if reply and offset == packet.total else None)


def _seconds(value: str | None) -> int | None:
    """A header's decimal seconds (BITS-Host-Id-Fallback-Timeout); None when absent or not
    one (bits-spec §6.3: no timeout given, never revert)."""
    if value is None or not value.strip().isdigit() or not value.strip().isascii():
        return None
    return min(int(value.strip()), 0xFFFFFFFF)


def _whole_upload_refused(ack: Ack) -> bool:
    """A 413 that no shorter fragment gets past: the server's application refused the
    upload (context 0x7), or the whole file is over the server's limit (BG_E_TOO_LARGE)."""
    code = _hex(ack.header("BITS-Error-Code") or ack.header("BITS-Error"))
    return code == HResult.BG_E_TOO_LARGE or _hex(ack.header("BITS-Error-Context")) == 7


def _reply_url(ack: Ack, url: str) -> str | None:
    """The Ack's BITS-Reply-URL, resolved against ``url`` (the packet's); None when it names
    none (the caller asks again with the final byte, then fails)."""
    given = (ack.header("BITS-Reply-URL") or "").strip()
    if not given:
        return None
    try:
        joined = urllib.parse.urljoin(url, given)  # (absolute: as given, not re-quoted)
    except ValueError:
        joined = given  # (refused just below)
    return checked_reply_url(joined)


def checked_reply_url(url: str) -> str:
    """The reply is fetched from http:// or https:// only (never file:// or the like: the
    server names it), else BG_E_INVALID_SERVER_RESPONSE, as a malformed redirect is."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
    except ValueError:
        host = None
    if not host or parts.scheme.lower() not in ("http", "https"):
        raise invalid_response(f"the server's BITS-Reply-URL is not an http(s) URL: {url[:80]!r}")
    return url


def _received(ack: Ack, packet: Packet) -> int:
    """BITS-Received-Content-Range: the offset of the next byte the server wants, within the
    file; a 200 without it acknowledged the whole fragment."""
    value = ack.header("BITS-Received-Content-Range")
    if value is None:
        if ack.status == 416:
            raise invalid_response("the server's 416 has no BITS-Received-Content-Range")
        return packet.start + packet.length
    m = _OFFSET.fullmatch(value)
    offset = int(m.group(1)) if m else -1
    if not 0 <= offset <= packet.total:
        raise InvalidResponse(
            f"the server acknowledged an impossible offset {value[:40]!r} of {packet.total}"
        )
    return offset


class FragmentSizer:
    """The size of the next Fragment: from ``start_bytes``, twice as long after a whole one
    acknowledged within :data:`FAST_FRAGMENT_S` (up to :data:`FRAGMENT_MAX_BYTES`, and
    never again up to a size the server refused), half as long after a 413."""

    __slots__ = ("bytes", "ceiling")

    def __init__(self, start_bytes: int = UPLOAD_FRAGMENT_START_BYTES) -> None:
        self.bytes = max(FRAGMENT_MIN_BYTES, min(start_bytes, FRAGMENT_MAX_BYTES))
        self.ceiling = FRAGMENT_MAX_BYTES

    def acknowledged(self, length: int, elapsed_s: float) -> None:
        if length >= self.bytes and elapsed_s < FAST_FRAGMENT_S:
            self.bytes = min(self.bytes * 2, self.ceiling)

    def refused(self, length: int) -> bool:
        """A 413 to a fragment of ``length``: False when it cannot get any shorter."""
        if length <= FRAGMENT_MIN_BYTES:
            return False
        self.ceiling = max(FRAGMENT_MIN_BYTES, length // 2)
        self.bytes = min(self.bytes, self.ceiling)
        return True
