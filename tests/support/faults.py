"""An in-process HTTP/1.1 server on 127.0.0.1 that misbehaves on purpose.

The server runs its own asyncio loop on a background thread, so it keeps answering
while the test's main thread blocks on a subprocess (the daemon under test)::

    with FaultServer() as srv:
        srv.routes["/f"] = CloseMidBody(data, after=1000)
        run_daemon_job(srv.url + "/f")
        assert srv.requests[1]["headers"]["range"] == "bytes=1000-"

``routes`` maps a path (without query string) to a :class:`Behaviour`; unknown paths
get 404. Connections are kept alive unless the client asks to close or a behaviour
ends the connection. Write a custom behaviour by subclassing :class:`Behaviour`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import struct
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Literal, Self, TypedDict

HOST = "127.0.0.1"
AUTO = "<auto>"  # etag default: a strong ETag derived from the current data
DEFAULT_LAST_MODIFIED = "Wed, 01 Jan 2025 00:00:00 GMT"
CHUNK = 64 * 1024
MAX_HEADER_BYTES = 64 * 1024
THREAD_TIMEOUT = 5.0


class RecordedRequest(TypedDict):
    method: str
    path: str  # without the query string
    target: str  # request target as sent
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "


@dataclass
class Request:
    method: str
    target: str
    path: str
    version: str
    headers: dict[str, str]
    body: bytes

    @property
    def wants_close(self) -> bool:
        conn = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" not in conn
        return "close" in conn


class Connection:
    """What a behaviour writes to."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    async def send_head(
        self, status: int, headers: dict[str, str] | list[tuple[str, str]], close: bool = False
    ) -> None:
        items = list(headers.items()) if isinstance(headers, dict) else list(headers)
        if close:
            items.append(("Connection", "close"))
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in items]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await self.writer.drain()

    async def send_body(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        for start in range(0, len(view), CHUNK):
            self.writer.write(view[start : start + CHUNK])
            await self.writer.drain()

    def abort(self) -> None:
        """Reset the connection (RST): unsent buffered data is discarded."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


class Behaviour:
    """How a route answers. ``respond`` returns True to keep the connection open."""

    async def respond(self, req: Request, conn: Connection) -> bool:
        raise NotImplementedError


# -- helpers for range-aware behaviours -------------------------------------------


def parse_range(header: str | None, size: int) -> tuple[int, int] | Literal["unsatisfiable"] | None:
    """Parse a single ``bytes=`` range against ``size``.

    Returns (start, end_inclusive), None if there is no usable Range header (serve the
    whole entity), or "unsatisfiable".
    """
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None  # unknown unit or multi-range: answer 200 with everything
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":
            suffix = int(last)
            if suffix <= 0 or size == 0:
                return "unsatisfiable"
            return max(0, size - suffix), size - 1
        start = int(first)
        end = int(last) if last else None
    except ValueError:
        return None
    if end is not None and end < start:
        return None  # syntactically invalid: ignore the header
    if start >= size:
        return "unsatisfiable"
    return start, size - 1 if end is None else min(end, size - 1)


@dataclass
class Serve(Behaviour):
    """A correct server: Range (single range), If-Range, HEAD, keep-alive.

    ``etag``: AUTO derives a strong ETag from ``data`` at answer time (so replacing
    ``data`` changes it), None sends no ETag. ``last_modified``: None to omit.
    ``content_length=False`` sends no Content-Length and closes after the body.
    ``accept_ranges``: send ``Accept-Ranges: bytes``; None means "if honour_range".
    """

    data: bytes
    etag: str | None = AUTO
    last_modified: str | None = DEFAULT_LAST_MODIFIED
    honour_range: bool = True
    accept_ranges: bool | None = None
    content_length: bool = True
    headers: dict[str, str] = field(default_factory=dict)

    def current_etag(self) -> str | None:
        if self.etag == AUTO:
            return '"' + hashlib.sha256(self.data).hexdigest()[:32] + '"'
        return self.etag

    def entity_headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/octet-stream"}
        etag = self.current_etag()
        if etag is not None:
            headers["ETag"] = etag
        if self.last_modified is not None:
            headers["Last-Modified"] = self.last_modified
        advertise = self.honour_range if self.accept_ranges is None else self.accept_ranges
        if advertise:
            headers["Accept-Ranges"] = "bytes"
        headers.update(self.headers)
        return headers

    def if_range_ok(self, req: Request) -> bool:
        """True if there is no If-Range or it matches the current validator."""
        value = req.headers.get("if-range")
        if value is None:
            return True
        etag = self.current_etag()
        if value.startswith(('"', 'W/"')):
            # If-Range needs a strong match
            return etag is not None and not etag.startswith("W/") and value == etag
        return self.last_modified is not None and value == self.last_modified

    def plan(self, req: Request) -> tuple[int, int, int] | None:
        """(status, start, end_exclusive) of the answer, or None for 416."""
        size = len(self.data)
        if req.method not in ("GET", "HEAD") or not self.honour_range:
            return 200, 0, size
        wanted = parse_range(req.headers.get("range"), size)
        if wanted is None or not self.if_range_ok(req):
            return 200, 0, size
        if wanted == "unsatisfiable":
            return None
        return 206, wanted[0], wanted[1] + 1

    def head_for(self, status: int, start: int, end: int) -> dict[str, str]:
        headers = self.entity_headers()
        if self.content_length:
            headers["Content-Length"] = str(end - start)
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(self.data)}"
        return headers

    async def respond(self, req: Request, conn: Connection) -> bool:
        planned = self.plan(req)
        if planned is None:
            await conn.send_head(416, {"Content-Range": f"bytes */{len(self.data)}", "Content-Length": "0"})
            return True
        status, start, end = planned
        close = not self.content_length
        await conn.send_head(status, self.head_for(status, start, end), close=close)
        if req.method != "HEAD":
            await conn.send_body(memoryview(self.data)[start:end])
        return not close


@dataclass
class IgnoreRange(Serve):
    """Always 200 with the whole body, even to ranged requests, while still sending
    ``Accept-Ranges: bytes`` (a server that claims range support and ignores it)."""

    honour_range: bool = False
    accept_ranges: bool | None = True


@dataclass
class WrongContentRange(Serve):
    """Ranged requests get a 206 whose Content-Range starts ``shift`` bytes away from
    the start asked for (body and Content-Length consistent with the wrong range).
    Unranged requests are served correctly."""

    shift: int = 1

    async def respond(self, req: Request, conn: Connection) -> bool:
        planned = self.plan(req)
        if planned is None or planned[0] != 206:
            return await super().respond(req, conn)
        _, start, end = planned
        size = len(self.data)
        shift = self.shift if end + self.shift <= size else -self.shift
        if start + shift < 0 or shift == 0:
            raise ValueError(f"cannot shift range {start}-{end - 1} of {size} bytes")
        start, end = start + shift, end + shift
        await conn.send_head(206, self.head_for(206, start, end))
        if req.method != "HEAD":
            await conn.send_body(memoryview(self.data)[start:end])
        return True


@dataclass
class _Interrupted(Serve):
    """Base for behaviours that cut a GET short at absolute offset ``after``.

    Whole-entity (200) answers are always cut; ranged (206) answers are served
    normally when the range starts at or past ``after``. With ``only_first``, only
    the first cut happens; later requests are served normally. HEAD is served.
    """

    after: int = 0
    only_first: bool = False
    tripped: bool = field(default=False, init=False)

    async def respond(self, req: Request, conn: Connection) -> bool:
        planned = self.plan(req)
        if (
            req.method != "GET"
            or planned is None
            or (planned[0] == 206 and planned[1] >= self.after)
            or (self.only_first and self.tripped)
        ):
            return await super().respond(req, conn)
        self.tripped = True
        status, start, end = planned
        await conn.send_head(status, self.head_for(status, start, end))
        await conn.send_body(memoryview(self.data)[start : min(self.after, end)])
        await self.interrupt(conn)
        return False

    async def interrupt(self, conn: Connection) -> None:
        raise NotImplementedError


@dataclass
class CloseMidBody(_Interrupted):
    """Headers with the full Content-Length, body up to offset ``after``, then the
    connection is closed (FIN after the bytes are flushed; ``abortive=True`` sends RST
    instead, and the client may then receive fewer bytes)."""

    only_first: bool = True
    abortive: bool = False

    async def interrupt(self, conn: Connection) -> None:
        if self.abortive:
            conn.abort()
        else:
            conn.writer.close()
            with contextlib.suppress(OSError):
                await conn.writer.wait_closed()


@dataclass
class Stall(_Interrupted):
    """Headers with the full Content-Length, body up to offset ``after``, then nothing,
    forever (until the server stops). ``only_first=True`` lets retries succeed."""

    async def interrupt(self, conn: Connection) -> None:
        await asyncio.Event().wait()  # cancelled by FaultServer.stop()


@dataclass
class NoResponse(Behaviour):
    """Reads the request and never answers."""

    async def respond(self, req: Request, conn: Connection) -> bool:
        await asyncio.Event().wait()
        return False


@dataclass
class Status(Behaviour):
    """Answers ``code`` with ``body`` and extra ``headers``."""

    code: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    async def respond(self, req: Request, conn: Connection) -> bool:
        headers = {"Content-Length": str(len(self.body))}
        headers.update(self.headers)
        await conn.send_head(self.code, headers)
        if req.method != "HEAD":
            await conn.send_body(self.body)
        return True


class Sequence(Behaviour):
    """Answers the n-th request with the n-th behaviour; the last one repeats."""

    def __init__(self, *behaviours: Behaviour) -> None:
        if not behaviours:
            raise ValueError("Sequence needs at least one behaviour")
        self.behaviours = list(behaviours)
        self.count = 0

    async def respond(self, req: Request, conn: Connection) -> bool:
        behaviour = self.behaviours[min(self.count, len(self.behaviours) - 1)]
        self.count += 1
        return await behaviour.respond(req, conn)


_NOT_FOUND = Status(404, b"not found\n")


class FaultServer:
    """HTTP server on 127.0.0.1 running on its own thread and asyncio loop."""

    def __init__(self, routes: dict[str, Behaviour] | None = None) -> None:
        self.routes: dict[str, Behaviour] = dict(routes or {})
        self.port = 0
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[object]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._errors: list[BaseException] = []

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        return f"http://{HOST}:{self.port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the requests received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def errors(self) -> list[BaseException]:
        """Unexpected exceptions raised while answering (a broken behaviour)."""
        with self._lock:
            return list(self._errors)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("FaultServer already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="FaultServer", daemon=True)
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), loop)
        try:
            future.result(timeout=THREAD_TIMEOUT)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            try:
                future.result(timeout=THREAD_TIMEOUT)
            finally:
                loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=THREAD_TIMEOUT)
        if thread.is_alive():
            raise RuntimeError("FaultServer thread did not stop")
        loop.close()
        self._loop = None
        self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- on the server thread ------------------------------------------------

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._client, HOST, 0, limit=MAX_HEADER_BYTES, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=THREAD_TIMEOUT)
        if self._server is not None:
            await self._server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        conn = Connection(writer)
        try:
            while True:
                req = await self._read_request(reader)
                if req is None:
                    break
                with self._lock:
                    self._requests.append(
                        RecordedRequest(
                            method=req.method,
                            path=req.path,
                            target=req.target,
                            headers=dict(req.headers),
                        )
                    )
                behaviour = self.routes.get(req.path, _NOT_FOUND)
                keep = await behaviour.respond(req, conn)
                if not keep or req.wants_close or writer.is_closing():
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            pass  # server stopping
        except Exception as exc:
            with self._lock:
                self._errors.append(exc)
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            if not writer.is_closing():
                writer.close()

    @staticmethod
    async def _read_request(reader: asyncio.StreamReader) -> Request | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None  # client closed between requests
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, _, value = line.partition(":")
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        length = int(headers.get("content-length", "0") or 0)
        body = await reader.readexactly(length) if length else b""
        return Request(
            method=method,
            target=target,
            path=target.split("?", 1)[0],
            version=version,
            headers=headers,
            body=body,
        )


# -- multi-range answers (multipart/byteranges) ------------------------------------

CRLF = b"\r\n"


def parse_ranges(header: str | None, size: int) -> list[tuple[int, int]] | Literal["unsatisfiable"] | None:
    """Parse a ``bytes=`` range set (one or more ranges) against ``size``.

    Returns the satisfiable ranges as (start, end_inclusive) in the order asked, None if
    there is no usable Range header (serve the whole entity), or "unsatisfiable" when no
    range is satisfiable.
    """
    if not header:
        return None
    unit, _, specs = header.partition("=")
    if unit.strip().lower() != "bytes":
        return None
    wanted: list[tuple[int, int]] = []
    for spec in specs.split(","):
        one = parse_range(f"bytes={spec.strip()}", size)
        if one is None:
            return None  # a syntactically invalid range: ignore the whole header
        if one != "unsatisfiable":
            wanted.append(one)
    return wanted or "unsatisfiable"


@dataclass
class ServeMultipart(Serve):
    """A server that does multi-range requests: a ``206 multipart/byteranges`` answer with one
    part per range in the order asked (never coalesced), each with its own Content-Type and
    Content-Range, CRLF framing and the Content-Length of the whole body.  A single range,
    HEAD, a failed If-Range and everything else are answered as :class:`Serve` does.

    Ways to lie in the multipart answer (part indexes count from 0, in the order sent):

    ``short_part=i``: part i carries ``short_by`` fewer bytes than its Content-Range says
    (the rest of the framing is as usual); ``wrong_range=i``: part i's Content-Range and
    body are ``shift`` bytes away from the range asked (consistent with each other);
    ``no_closing``: the body ends after the last part's bytes, without the closing
    delimiter (Content-Length says so); ``reorder``: the parts in reverse order (each
    correct); ``close_after=n``: the head announces the whole body, only its first ``n``
    bytes are sent, then the connection is closed.  ``honour_if_range=False`` answers the
    parts even when If-Range does not match (a server that ignores If-Range).
    """

    boundary: str = "openbits-test-3f9a1c0e7d"
    short_part: int | None = None
    short_by: int = 1
    wrong_range: int | None = None
    shift: int = 1
    no_closing: bool = False
    reorder: bool = False
    close_after: int | None = None
    honour_if_range: bool = True

    def multipart_body(self, ranges: list[tuple[int, int]]) -> tuple[bytes, list[int]]:
        """The body answering ``ranges`` (start, end_inclusive), lies included, and where each
        part's bytes start in it (in the order the parts are sent)."""
        size = len(self.data)
        parts = list(enumerate(ranges))
        if self.reorder:
            parts.reverse()
        dash_boundary = b"--" + self.boundary.encode("ascii")
        body = bytearray()
        starts: list[int] = []
        for i, (start, end) in parts:
            if i == self.wrong_range:
                shift = self.shift if end + self.shift < size else -self.shift
                start, end = start + shift, end + shift
            payload = self.data[start : end + 1]
            if i == self.short_part:
                payload = payload[: -self.short_by]
            body += dash_boundary + CRLF
            body += b"Content-Type: application/octet-stream" + CRLF
            body += f"Content-Range: bytes {start}-{end}/{size}".encode("ascii") + CRLF + CRLF
            starts.append(len(body))
            body += payload + CRLF
        if self.no_closing:
            del body[-len(CRLF) :]  # the CRLF before a delimiter belongs to the delimiter
        else:
            body += dash_boundary + b"--" + CRLF
        return bytes(body), starts

    async def respond(self, req: Request, conn: Connection) -> bool:
        wanted = parse_ranges(req.headers.get("range"), len(self.data))
        if (
            req.method != "GET"
            or not isinstance(wanted, list)
            or len(wanted) < 2
            or (self.honour_if_range and not self.if_range_ok(req))
        ):
            return await super().respond(req, conn)
        body, _ = self.multipart_body(wanted)
        headers = self.entity_headers()
        headers["Content-Type"] = f"multipart/byteranges; boundary={self.boundary}"
        headers["Content-Length"] = str(len(body))
        await conn.send_head(206, headers)
        if self.close_after is None:
            await conn.send_body(body)
            return True
        await conn.send_body(body[: self.close_after])
        conn.writer.close()
        with contextlib.suppress(OSError):
            await conn.writer.wait_closed()
        return False
