"""A sans-IO, incremental parser for ``multipart/byteranges`` response bodies.

A server that honours a multi-range request (``Range: bytes=0-99,200-299``) answers
``206 Partial Content`` with ``Content-Type: multipart/byteranges; boundary=...`` and a body framed
as in RFC 2046 §5.1, each part carrying its own ``Content-Range`` (RFC 9110 §14.6)::

    [preamble CRLF]
    --boundary CRLF
    Content-Type: application/octet-stream CRLF
    Content-Range: bytes 0-99/1000 CRLF
    CRLF
    <exactly 100 bytes>
    CRLF --boundary CRLF
    Content-Range: bytes 200-299/1000 CRLF
    CRLF
    <exactly 100 bytes>
    CRLF --boundary-- [epilogue]

Use :func:`boundary_from_content_type` on the response's Content-Type, then feed the body to a
:class:`ByteRangesParser` in chunks of any size; each :meth:`ByteRangesParser.feed` returns the
events it completed: a :class:`Part` when a part's headers have been read (it says where the
part's bytes belong) and then :class:`Data` events carrying that part's bytes in order. Call
:meth:`ByteRangesParser.finish` when the body ends; it raises unless the closing delimiter was
seen.

Design notes:

* Nothing is trusted. A part's length comes from its ``Content-Range`` and exactly that many
  bytes are taken as its body; the delimiter must follow immediately, otherwise the body is
  rejected. The boundary is never searched for inside a part body, so bodies may contain it, and
  body bytes are passed through as slices of the chunk that was fed (the chunk object itself when
  a whole chunk is body), without being scanned or buffered.
* Only header, preamble and delimiter bytes are ever buffered, and at most ``max_header_bytes``
  of them per header block (the same limit bounds the preamble), so memory stays bounded and
  feeding one byte at a time stays linear.
* Header lines may end in CRLF or a bare LF, but the delimiter after a part's body must be
  CRLF ``--boundary``: with a bare LF allowed there, a part one byte short would pass (the CR
  taken as its last byte).
  Part headers other than ``Content-Range`` are ignored. Everything after the closing delimiter
  is epilogue and is ignored.
* Malformed input raises :class:`ByteRangesError` (a ``ValueError``) whose message says what went
  wrong and at which byte offset of the body. After an error the parser is spent: further
  ``feed`` / ``finish`` calls raise the same error. Events completed earlier in the failing
  ``feed`` call are lost with it, and bytes already delivered for a part are only known good once
  the next :class:`Part` arrives or :attr:`ByteRangesParser.done` becomes true.
* The parser checks each part on its own (``start <= end``, ``end < total``, and that every known
  total agrees). Whether the parts match the ranges that were requested is the caller's business.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final

__all__ = [
    "ByteRangesError",
    "ByteRangesParser",
    "Data",
    "Part",
    "boundary_from_content_type",
]

# RFC 2046 §5.1.1: boundary := 0*69<bchars> bcharsnospace
_BOUNDARY_RE: Final = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")

# RFC 9110 §5.6.2 token, §5.6.4 quoted-string, §5.6.6 parameters (empty parameters allowed).
_TOKEN: Final = r"[!#$%&'*+.^_`|~0-9A-Za-z\-]+"
_MEDIA_TYPE_RE: Final = re.compile(rf"[ \t]*({_TOKEN})/({_TOKEN})[ \t]*")
_QUOTED_STRING: Final = r'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_PARAMETER_RE: Final = re.compile(rf";[ \t]*(?:({_TOKEN})[ \t]*=[ \t]*({_TOKEN}|{_QUOTED_STRING}))?[ \t]*")
_QUOTED_PAIR_RE: Final = re.compile(r"\\(.)", re.DOTALL)

# RFC 9110 §14.4 Content-Range for a satisfied range; "bytes" is case-insensitive (§14.1).
_CONTENT_RANGE_RE: Final = re.compile(rb"bytes[ \t]+([0-9]+)-([0-9]+)/([0-9]+|\*)", re.IGNORECASE)
_HEADER_NAME_RE: Final = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z\-]+")
_MAX_DIGITS: Final = 19  # 10**19 - 1 bytes is far beyond any real resource; keeps int() cheap and safe

_CR: Final = 0x0D
_LF: Final = 0x0A
_DASH: Final = 0x2D
_PADDING: Final = frozenset(b" \t")


def _is_valid_boundary(boundary: str) -> bool:
    return _BOUNDARY_RE.fullmatch(boundary) is not None


def boundary_from_content_type(value: str | None) -> bytes | None:
    """The boundary of a ``multipart/byteranges; boundary=...`` Content-Type, as bytes.

    The type, subtype and parameter names match case-insensitively; the boundary may be a token
    or a quoted-string. Returns None if ``value`` is None, is not ``multipart/byteranges``, does
    not parse as a media type with parameters, has no boundary or more than one, or its boundary
    is not valid per RFC 2046 (1-70 characters from the ``bchars`` set, not ending in a space).
    """
    if value is None:
        return None
    match = _MEDIA_TYPE_RE.match(value)
    if match is None or (match[1].lower(), match[2].lower()) != ("multipart", "byteranges"):
        return None
    boundaries: list[str] = []
    pos = match.end()
    while pos < len(value):
        param = _PARAMETER_RE.match(value, pos)
        if param is None:
            return None
        pos = param.end()
        name, raw = param[1], param[2]
        if name is None or name.lower() != "boundary":
            continue
        if raw.startswith('"'):
            raw = _QUOTED_PAIR_RE.sub(r"\1", raw[1:-1])
        boundaries.append(raw)
    if len(boundaries) != 1 or not _is_valid_boundary(boundaries[0]):
        return None
    return boundaries[0].encode("ascii")


@dataclass(frozen=True, slots=True)
class Part:
    """A part's headers were read: the part's bytes are ``start``..``end`` (inclusive) of the resource.

    ``total`` is the complete length of the resource, or None when the server sent ``*``. The
    part's body, exactly ``end - start + 1`` bytes, follows as :class:`Data` events.
    """

    start: int
    end: int
    total: int | None

    @property
    def length(self) -> int:
        """The number of bytes in this part: ``end - start + 1``."""
        return self.end - self.start + 1


@dataclass(frozen=True, slots=True)
class Data:
    """The next bytes of the current part's body (never empty); ``data`` is always ``bytes``."""

    data: bytes


class ByteRangesError(ValueError):
    """A malformed ``multipart/byteranges`` body; the message says what and at which byte offset."""


class _State(enum.Enum):
    PREAMBLE = enum.auto()  # before the first delimiter line
    HEADERS = enum.auto()  # reading a part's header lines
    BODY = enum.auto()  # passing a part's body through
    DELIMITER = enum.auto()  # expecting CRLF--boundary right after a body
    DELIMITER_END = enum.auto()  # after --boundary: "--", or transport padding then CRLF / LF
    EPILOGUE = enum.auto()  # closing delimiter seen; everything else is ignored


class ByteRangesParser:
    """Incrementally parse a ``multipart/byteranges`` body framed by ``boundary``.

    ``boundary`` is the bare boundary (without the leading ``--``), e.g. as returned by
    :func:`boundary_from_content_type`. ``max_header_bytes`` bounds each part's header block
    (counting line ends and the blank line) and also the preamble.
    """

    __slots__ = (
        "_base",
        "_buf",
        "_crlf_delimiter",
        "_dash_boundary",
        "_error",
        "_header_start",
        "_headers",
        "_line_bytes",
        "_max_header_bytes",
        "_padded",
        "_part",
        "_parts",
        "_remaining",
        "_scan",
        "_state",
        "_total",
    )

    def __init__(self, boundary: bytes, max_header_bytes: int = 16384) -> None:
        if not isinstance(boundary, bytes | bytearray) or not _is_valid_boundary(
            bytes(boundary).decode("latin-1")
        ):
            raise ValueError(f"invalid multipart boundary {boundary!r} (RFC 2046: 1-70 bchars)")
        if max_header_bytes < 1:
            raise ValueError(f"max_header_bytes must be positive, not {max_header_bytes}")
        self._dash_boundary: bytes = b"--" + bytes(boundary)
        self._crlf_delimiter: bytes = b"\r\n" + self._dash_boundary
        self._max_header_bytes = max_header_bytes
        self._state = _State.PREAMBLE
        self._buf = bytearray()  # unconsumed bytes; only ever non-empty outside the BODY state
        self._base = 0  # body offset of the first unconsumed byte
        self._scan = 0  # bytes after the first unconsumed byte already searched for LF
        self._line_bytes = 0  # bytes of the current preamble / header block consumed so far
        self._header_start = 0  # body offset where the current header block (or padding) starts
        self._headers: list[tuple[bytes, bytearray, int]] = []  # (lower-case name, value, offset)
        self._part: Part | None = None  # the part whose body is being read, or was last read
        self._parts = 0  # parts whose headers were read
        self._remaining = 0  # bytes of the current part's body still to come
        self._padded = False  # transport padding seen after the current --boundary
        self._total: int | None = None  # the first complete length a part announced
        self._error: ByteRangesError | None = None

    @property
    def done(self) -> bool:
        """True once the closing delimiter ``--boundary--`` has been seen."""
        return self._state is _State.EPILOGUE

    def feed(self, chunk: bytes) -> list[Part | Data]:
        """Consume the next ``chunk`` of the body; return the events it completed, in order.

        Raises :class:`ByteRangesError` as soon as the body is known to be malformed.
        """
        if self._error is not None:
            raise self._error
        if type(chunk) is not bytes:
            chunk = bytes(chunk)
        if not chunk:
            return []
        if self._state is _State.EPILOGUE:
            self._base += len(chunk)
            return []
        events: list[Part | Data] = []
        try:
            if self._buf:
                self._buf += chunk
                consumed = self._process(self._buf, events)
                del self._buf[:consumed]
            else:
                consumed = self._process(chunk, events)
                if consumed < len(chunk):
                    self._buf += memoryview(chunk)[consumed:]
            self._base += consumed
        except ByteRangesError as exc:
            self._error = exc
            raise
        return events

    def finish(self) -> None:
        """Declare the end of the body.

        Raises :class:`ByteRangesError` unless the closing delimiter has been seen (which implies
        that every part had exactly ``end - start + 1`` bytes). Calling it again is harmless.
        """
        if self._error is not None:
            raise self._error
        if self._state is _State.EPILOGUE:
            return
        end = self._base + len(self._buf)
        state = self._state
        if state is _State.PREAMBLE:
            what = f"before the first delimiter {self._dash_boundary!r}"
        elif state is _State.HEADERS:
            what = f"inside the headers of part {self._parts + 1} (started at byte {self._header_start})"
        elif state is _State.BODY:
            part = self._part
            assert part is not None
            what = (
                f"inside the body of part {self._parts} ({_describe(part)}): "
                f"{self._remaining} of its {part.length} bytes are missing"
            )
        else:
            what = f"without the closing delimiter {self._dash_boundary + b'--'!r}"
        self._error = ByteRangesError(f"body ended at byte {end} {what}")
        raise self._error

    # -- internals -----------------------------------------------------------------------------

    def _fail(self, message: str, pos: int) -> ByteRangesError:
        return ByteRangesError(f"{message} at byte {self._base + pos}")

    def _process(self, data: bytes | bytearray, events: list[Part | Data]) -> int:
        """Consume as much of ``data`` as possible; return how many bytes were consumed.

        Whatever is not consumed is an incomplete line or delimiter, bounded in size.
        """
        pos = 0
        size = len(data)
        while pos < size:
            state = self._state
            if state is _State.BODY:
                take = min(self._remaining, size - pos)
                if pos == 0 and take == size and type(data) is bytes:
                    events.append(Data(data))  # the whole chunk is body: pass it on uncopied
                elif type(data) is bytes:
                    events.append(Data(data[pos : pos + take]))
                else:
                    events.append(Data(bytes(memoryview(data)[pos : pos + take])))
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._state = _State.DELIMITER
            elif state is _State.HEADERS or state is _State.PREAMBLE:
                lf = data.find(b"\n", pos + self._scan)
                if lf < 0:
                    self._check_block_size(size - pos, pos)
                    self._scan = size - pos
                    return pos
                self._scan = 0
                self._check_block_size(lf + 1 - pos, pos)
                self._line_bytes += lf + 1 - pos
                line_end = lf - 1 if lf > pos and data[lf - 1] == _CR else lf
                line = bytes(data[pos:line_end])
                if state is _State.PREAMBLE:
                    self._preamble_line(line, pos, lf + 1)
                else:
                    self._header_line(line, pos, events)
                pos = lf + 1
            elif state is _State.DELIMITER:
                # Only CRLF (RFC 2046): were a bare LF accepted, a part one byte short
                # would pass, the delimiter's CR taken as its last byte.
                if data[pos] != _CR:
                    raise self._delimiter_error(pos)
                expected = self._crlf_delimiter
                have = min(len(expected), size - pos)
                if data[pos : pos + have] != expected[:have]:
                    raise self._delimiter_error(pos)
                if have < len(expected):
                    return pos
                pos += have
                self._state = _State.DELIMITER_END
                self._padded = False
                self._line_bytes = 0
                self._header_start = self._base + pos
            elif state is _State.DELIMITER_END:
                first = data[pos]
                if first == _DASH and not self._padded:
                    if pos + 1 == size:
                        return pos
                    if data[pos + 1] != _DASH:
                        raise self._bad_delimiter_line(pos)
                    self._state = _State.EPILOGUE
                    return size
                if first in _PADDING:
                    self._padded = True
                    self._check_block_size(1, pos)
                    self._line_bytes += 1
                    pos += 1
                elif first == _LF:
                    self._start_headers(pos + 1)
                    pos += 1
                elif first == _CR:
                    if pos + 1 == size:
                        return pos
                    if data[pos + 1] != _LF:
                        raise self._fail(f"bare CR after {self._dash_boundary!r}", pos)
                    self._start_headers(pos + 2)
                    pos += 2
                else:
                    raise self._bad_delimiter_line(pos)
            else:  # EPILOGUE
                return size
        return pos

    def _check_block_size(self, more: int, pos: int) -> None:
        if self._line_bytes + more <= self._max_header_bytes:
            return
        if self._state is _State.PREAMBLE:
            what = f"preamble (no delimiter line {self._dash_boundary!r} found)"
            start = 0
        elif self._state is _State.HEADERS:
            what = f"headers of part {self._parts + 1}"
            start = self._header_start
        else:  # DELIMITER_END
            what = f"transport padding after {self._dash_boundary!r}"
            start = self._header_start
        raise ByteRangesError(
            f"{what} starting at byte {start} exceed max_header_bytes={self._max_header_bytes}"
            f" (at byte {self._base + pos})"
        )

    def _bad_delimiter_line(self, pos: int) -> ByteRangesError:
        return self._fail(f"{self._dash_boundary!r} followed by neither '--' nor a line end", pos)

    def _delimiter_error(self, pos: int) -> ByteRangesError:
        part = self._part
        assert part is not None
        return self._fail(
            f"part {self._parts} ({_describe(part)}) is not followed by a delimiter "
            f"{self._crlf_delimiter!r} after its {part.length} bytes",
            pos,
        )

    def _start_headers(self, pos: int) -> None:
        """Enter the HEADERS state; ``pos`` (relative to the data being processed) is where they start."""
        self._state = _State.HEADERS
        self._header_start = self._base + pos
        self._line_bytes = 0
        self._headers = []

    def _preamble_line(self, line: bytes, pos: int, next_pos: int) -> None:
        dash_boundary = self._dash_boundary
        if not line.startswith(dash_boundary):
            return
        rest = line[len(dash_boundary) :]
        if rest.startswith(b"--"):
            raise self._fail(f"closing delimiter {dash_boundary + b'--'!r} before any part", pos)
        if not rest.strip(b" \t"):
            self._start_headers(next_pos)
        # A line that merely starts with the dash-boundary (e.g. "--boundaryX") is preamble.

    def _header_line(self, line: bytes, pos: int, events: list[Part | Data]) -> None:
        if not line:
            self._end_headers(pos, events)
            return
        if line[0] in _PADDING:  # obs-fold: a continuation of the previous header line
            if not self._headers:
                raise self._fail(f"part {self._parts + 1} headers start with a continuation line", pos)
            self._headers[-1][1].extend(b" " + line.strip(b" \t"))
            return
        name, colon, value = line.partition(b":")
        if not colon or _HEADER_NAME_RE.fullmatch(name) is None:
            raise self._fail(f"malformed header line {_shorten(line)!r} in part {self._parts + 1}", pos)
        self._headers.append((name.lower(), bytearray(value.strip(b" \t")), self._base + pos))

    def _end_headers(self, pos: int, events: list[Part | Data]) -> None:
        number = self._parts + 1
        ranges = [(value, offset) for name, value, offset in self._headers if name == b"content-range"]
        if not ranges:
            raise self._fail(
                f"part {number} (headers from byte {self._header_start}) has no Content-Range header", pos
            )
        if len(ranges) > 1:
            raise ByteRangesError(f"part {number} has several Content-Range headers, at byte {ranges[1][1]}")
        value, offset = ranges[0]
        part = _parse_content_range(bytes(value).strip(b" \t"), number, offset)
        if part.total is not None:
            if self._total is None:
                self._total = part.total
            elif part.total != self._total:
                raise ByteRangesError(
                    f"part {number} says the complete length is {part.total} but an earlier part said"
                    f" {self._total}, at byte {offset}"
                )
        self._parts = number
        self._part = part
        self._remaining = part.length
        self._headers = []
        self._state = _State.BODY
        events.append(part)


def _parse_content_range(value: bytes, number: int, offset: int) -> Part:
    match = _CONTENT_RANGE_RE.fullmatch(value)
    if match is None:
        raise ByteRangesError(
            f"part {number} has a malformed Content-Range {_shorten(value)!r}"
            f" (expected 'bytes START-END/TOTAL'), at byte {offset}"
        )
    if any(len(digits) > _MAX_DIGITS for digits in match.groups()):
        raise ByteRangesError(f"part {number} has an absurdly large Content-Range number, at byte {offset}")
    start, end = int(match[1]), int(match[2])
    total = None if match[3] == b"*" else int(match[3])
    if start > end:
        raise ByteRangesError(
            f"part {number} has Content-Range {value.decode('ascii')!r} with start > end, at byte {offset}"
        )
    if total is not None and end >= total:
        raise ByteRangesError(
            f"part {number} has Content-Range {value.decode('ascii')!r} ending beyond the complete length,"
            f" at byte {offset}"
        )
    return Part(start, end, total)


def _describe(part: Part) -> str:
    return f"bytes {part.start}-{part.end}"


def _shorten(value: bytes, limit: int = 60) -> bytes:
    return value if len(value) <= limit else value[:limit] + b"..."
