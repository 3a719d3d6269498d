"""The BITS upload protocol without I/O: request parsing and the Acks the server answers.

Facts from bits-spec §6 and SPEC §8: every request is ``BITS_POST`` with a
``BITS-Packet-Type`` (matched case-insensitively); every answer is an Ack
(``BITS-Packet-Type: Ack``, ``Content-Length: 0``); errors carry ``BITS-Error-Code``
(an HRESULT in hex) and ``BITS-Error-Context`` (0x5 the server, 0x7 the server
application). Header names are matched case-insensitively by the caller's mapping.
"""

from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from openbits.errors import HResult

METHOD = "BITS_POST"
PROTOCOL_GUID = "{7df0354d-249b-430f-820d-3d2a9bef4931}"
CONTEXT_REMOTE_FILE = 0x5
CONTEXT_REMOTE_APPLICATION = 0x7
HTTP_ERROR_BASE = 0x80190000  # BG_E_HTTP_ERROR_xxx = base + status
ERROR_PATH_NOT_FOUND = 0x80070003  # HRESULT_FROM_WIN32(ERROR_PATH_NOT_FOUND)

_RANGE = re.compile(r"\s*bytes\s+(\d{1,20})-(\d{1,20})/(\d{1,20})\s*", re.IGNORECASE)
_EMPTY_RANGE = re.compile(r"\s*bytes\s+(\*|0--1)/0\s*", re.IGNORECASE)
_SESSION_ID = re.compile(r"\{[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}\}")


class Packet(enum.Enum):
    """The request packet types (the values lower-cased: they are matched without case)."""

    PING = "ping"
    CREATE_SESSION = "create-session"
    FRAGMENT = "fragment"
    CLOSE_SESSION = "close-session"
    CANCEL_SESSION = "cancel-session"


class UploadFailure(Exception):
    """A request refused: the HTTP status and the BITS error the Ack carries.

    ``offset`` is set for 416, where the Ack says where the client must go on from.
    """

    def __init__(
        self,
        status: int,
        hresult: int,
        message: str,
        context: int = CONTEXT_REMOTE_FILE,
        offset: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.hresult = hresult
        self.context = context
        self.offset = offset


def invalid(message: str) -> UploadFailure:
    """A malformed request: 400 and E_INVALIDARG (context 0x5), as [MC-BUP] §3.2.5.2.6."""
    return UploadFailure(400, HResult.E_INVALIDARG, message)


def session_not_found() -> UploadFailure:
    """An unknown session: 500 and BG_E_SESSION_NOT_FOUND ([MC-BUP] §3.1.5.2.1)."""
    return UploadFailure(500, HResult.BG_E_SESSION_NOT_FOUND, "no such session")


def packet_type(headers: Mapping[str, str]) -> Packet:
    """The request's packet type; unknown or missing → 400 (bits-spec §6.1)."""
    value = headers.get("BITS-Packet-Type", "").strip().lower()
    try:
        return Packet(value)
    except ValueError:
        raise invalid("unknown BITS-Packet-Type") from None


def choose_protocol(headers: Mapping[str, str]) -> str:
    """The protocol GUID of Create-Session, from the client's list (spaces or commas).

    None we speak → 400 E_INVALIDARG context 0x5 ([MC-BUP] §3.2.5.2.4).
    """
    offered = re.split(r"[\s,]+", headers.get("BITS-Supported-Protocols", "").strip())
    if any(p.lower() == PROTOCOL_GUID for p in offered):
        return PROTOCOL_GUID
    raise invalid("no supported protocol")


def new_session_id() -> str:
    """A session id as IIS writes them: ``{UPPER-CASE GUID}``."""
    return "{" + str(uuid.uuid4()).upper() + "}"


def session_id(headers: Mapping[str, str]) -> str:
    """The request's BITS-Session-Id, normalised; absent or not a GUID → session not found.

    The id names files in the state directory: nothing but a GUID gets that far.
    """
    value = headers.get("BITS-Session-Id", "").strip().upper()
    if not value.startswith("{"):
        value = "{" + value + "}"
    if not _SESSION_ID.fullmatch(value):
        raise session_not_found()
    return value


@dataclass(frozen=True, slots=True)
class Range:
    """A fragment's ``Content-Range: bytes first-last/total`` (inclusive, zero-based)."""

    first: int
    last: int
    total: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    @property
    def is_last(self) -> bool:
        return self.last == self.total - 1


def fragment_range(headers: Mapping[str, str]) -> Range | None:
    """The fragment's range; None for the empty file's single empty fragment.

    A 0-byte upload has no byte to name: a Fragment without Content-Range (or with any
    range of total 0: ``bytes */0``, ``bytes 0-0/0``) and Content-Length 0 is its whole
    content. Anything else that does not parse, names bytes past the total, or disagrees with
    Content-Length → 400.
    """
    raw = headers.get("Content-Range")
    length = _content_length(headers)
    if raw is None or _EMPTY_RANGE.fullmatch(raw):
        if length != 0:
            raise invalid("a fragment without Content-Range must be empty")
        return None
    match = _RANGE.fullmatch(raw)
    if match is None:
        raise invalid("malformed Content-Range")
    first, last, total = (int(g) for g in match.groups())
    if total == 0 and not length:  # "bytes 0-0/0" and the like: the empty file too
        return None
    if first > last or last >= total:
        raise invalid("Content-Range out of bounds")
    if length is not None and length != last - first + 1:
        raise invalid("Content-Length disagrees with Content-Range")
    return Range(first, last, total)


def _content_length(headers: Mapping[str, str]) -> int | None:
    raw = headers.get("Content-Length")
    if raw is None:
        return None
    if not raw.strip().isdigit():
        raise invalid("malformed Content-Length")
    return int(raw)


def check_encoding(headers: Mapping[str, str]) -> None:
    """Only the identity encoding is accepted (what Create-Session's Ack announces)."""
    encoding = headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise invalid("only the identity encoding is accepted")


# -- the Acks --------------------------------------------------------------------------------------


def ack(**extra: str) -> dict[str, str]:
    """An Ack's headers (Content-Length 0 is the response's own)."""
    return {"BITS-Packet-Type": "Ack", **extra}


def create_session_ack(session: str, host_id: str = "", fallback_timeout_s: int = 0) -> dict[str, str]:
    """Create-Session's Ack, as IIS answers it (200); BITS-Host-Id when one is configured."""
    headers = ack(
        **{"BITS-Protocol": PROTOCOL_GUID, "BITS-Session-Id": session, "Accept-Encoding": "identity"}
    )
    if host_id:
        headers["BITS-Host-Id"] = host_id
        if fallback_timeout_s:
            headers["BITS-Host-Id-Fallback-Timeout"] = str(fallback_timeout_s)
    return headers


def fragment_ack(offset: int, reply_url: str | None = None) -> dict[str, str]:
    """A Fragment's Ack: the next offset wanted; the reply URL on the last one of upload-reply.

    IIS sends no BITS-Session-Id here (the issue's captures): neither do we.
    """
    headers = ack(**{"BITS-Received-Content-Range": str(offset)})
    if reply_url is not None:
        headers["BITS-Reply-URL"] = reply_url
    return headers


def error_ack(failure: UploadFailure) -> dict[str, str]:
    """The Ack of a refused request: the BITS error headers (and the offset on a 416)."""
    headers = ack(
        **{
            "BITS-Error-Code": f"0x{failure.hresult & 0xFFFFFFFF:08X}",
            "BITS-Error-Context": f"0x{failure.context:X}",
        }
    )
    if failure.offset is not None:
        headers["BITS-Received-Content-Range"] = str(failure.offset)
    return headers
