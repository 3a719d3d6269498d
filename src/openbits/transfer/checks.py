"""Pure checks of an HTTP answer against the file it continues: no I/O, like byteranges.py.

Each reads a response's head (status, headers, length) and the file as the store knows it,
and says what the answer means for the download, or raises the BitsError that says why it
cannot be used (BG_E_INVALID_SERVER_RESPONSE, BG_E_INVALID_RANGE, BG_E_HTTP_ERROR_<status>).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from openbits.errors import BitsError, RangeOutsideFile
from openbits.model import BG_LENGTH_TO_EOF, JobFile
from openbits.transfer.http import (
    invalid_response,
    parse_content_range,
    parse_unsatisfied_range,
    status_error,
)

#: the response headers kept for a file (GetReplyData-like), at most this long
RESPONSE_HEADERS_MAX = 16 * 1024


class Head(Protocol):
    """What the checks read of a response (``h1`` and aiohttp responses both have it)."""

    @property
    def status(self) -> int: ...

    @property
    def reason(self) -> str | None: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def content_length(self) -> int | None: ...


class Restart:
    """The content changed under the download: the file starts again from byte 0."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "RESTART"


RESTART: Final = Restart()


@dataclass(frozen=True, slots=True)
class Accepted:
    """A response the download goes on with: its body starts at ``start`` of a file of
    ``total`` bytes (None: unknown); ``whole`` when it is the whole file again (a 200): the
    temporary file is cut back to 0 and the file begins anew with this response's validators."""

    start: int
    total: int | None
    whole: bool = False


def if_range(file: JobFile) -> str | None:
    """The validator a resumed request sends in If-Range: the strong ETag, else Last-Modified."""
    if file.etag and not file.etag.startswith("W/"):
        return file.etag
    return file.last_modified


def accept(head: Head, file: JobFile, offset: int) -> Accepted | Restart:
    """The answer to a request for ``file`` from ``offset`` (with Range and If-Range when
    ``offset`` > 0): go on with it, or start the file again (a 416 for a file that shrank)."""
    status = head.status
    headers = head.headers
    if status == 206 and offset > 0:
        return _resumed(head, file, offset)
    if status == 200:
        # Full content: the first request, changed content (If-Range failed) or a
        # server that ignores Range.  Never appended: start again from byte 0.
        return Accepted(0, head.content_length, whole=True)
    if status == 416 and offset > 0:
        total = parse_unsatisfied_range(headers.get("Content-Range"))
        if total is not None and total == offset:
            return Accepted(offset, total)  # every byte was already here
        return RESTART
    if status == 206:
        raise invalid_response("the server sent 206 Partial Content to a request without Range")
    raise status_error(status, head.reason, headers.get("Retry-After"))


def _resumed(head: Head, file: JobFile, offset: int) -> Accepted:
    """A 206 to ``bytes=offset-``: exactly the rest of the same file."""
    content_range = head.headers.get("Content-Range")
    parsed = parse_content_range(content_range)
    if parsed is None:
        raise invalid_response(f"bad Content-Range {content_range!r}")
    start, end, total = parsed
    if start != offset or total is None or end != total - 1:
        raise invalid_response(f"asked for bytes {offset}- but the server sent {content_range}")
    if file.bytes_total is not None and total != file.bytes_total:
        raise invalid_response(f"the file's size changed from {file.bytes_total} to {total}")
    check_same_content(head, file)
    length = head.content_length
    if length is not None and length != end - start + 1:
        raise invalid_response("Content-Length does not match Content-Range")
    return Accepted(offset, total)


def check_same_content(head: Head, file: JobFile) -> None:
    """A 206 resuming a file must be of the same content as what is already there: If-Range
    should have brought the whole new content; never splice two versions."""
    etag = head.headers.get("ETag")
    if etag and file.etag and etag != file.etag:
        raise invalid_response(f"a part of a changed file (ETag {file.etag} -> {etag})")
    modified = head.headers.get("Last-Modified")
    if modified and file.last_modified and modified != file.last_modified:
        raise invalid_response("a part of a changed file (Last-Modified changed)")


def same_content(head: Head, file: JobFile) -> bool:
    """A whole (200) answer is of the content the file holds: same ETag, or without one the
    same Last-Modified."""
    etag = head.headers.get("ETag")
    if etag:
        return etag == file.etag
    modified = head.headers.get("Last-Modified")
    return bool(modified and modified == file.last_modified)


def range_support(head: Head, file: JobFile, offset: int) -> bool | None:
    """Can the server resume this file? 206: yes; a 200 to a Range with unchanged validators,
    no length, or Accept-Ranges: none: no (an interruption restarts it from byte 0)."""
    if head.status == 206:
        return True
    etag = head.headers.get("ETag")
    if offset > 0 and etag is not None and etag == file.etag and not etag.startswith("W/"):
        return False  # same content, yet the whole of it: Range was ignored
    accept_ranges = (head.headers.get("Accept-Ranges") or "").strip().lower()
    if head.content_length is None or accept_ranges == "none":
        return False
    return True if accept_ranges == "bytes" else None


def piece_end(head: Head, asked: str, first: int, start: int, length: int) -> int:
    """The last byte of a 206 answer to one range (``first`` to the end of the range
    ``start``, ``length``), checked to be exactly what was asked."""
    got = head.headers.get("Content-Range")
    parsed = parse_content_range(got)
    if parsed is None:
        raise invalid_response(f"asked for {asked}, got {got}")
    begin, last, total = parsed
    if begin != first or total is None:
        raise invalid_response(f"asked for {asked}, got {got}")
    wanted_last = total - 1 if length == BG_LENGTH_TO_EOF else start + length - 1
    if wanted_last >= total:
        raise RangeOutsideFile(f"the range ends past the end of the remote file ({total} bytes)")
    if last != wanted_last:
        raise invalid_response(f"asked for {asked}, got {got}")
    return last


def range_refused(head: Head, first: int) -> BitsError:
    """The error for an answer to a ranged request that is neither 200 nor 206."""
    if head.status == 416:
        return RangeOutsideFile(f"the range from byte {first} is not in the remote file")
    return status_error(head.status, head.reason, head.headers.get("Retry-After"))


def header_text(head: Head) -> str:
    """The response headers a file keeps; Set-Cookie may carry a session secret: never kept,
    never returned."""
    headers = head.headers
    if "Set-Cookie" in headers:  # (case-insensitive)
        text = "".join([f"{n}: {v}\r\n" for n, v in headers.items() if n.lower() != "set-cookie"])
    else:
        text = "".join([f"{n}: {v}\r\n" for n, v in headers.items()])
    return text[:RESPONSE_HEADERS_MAX]
