"""A small, strict, in-process BITS upload server (aiohttp) that can inject faults: for the
tests of the upload client (``transfer/upload.py``) and of the daemon's upload jobs.

Strict as IIS's extension and [MC-BUP] are: BITS_POST only, a packet type it knows, the
protocol GUID at Create-Session, a known session on every later packet (else 500
BG_E_SESSION_NOT_FOUND), a Fragment with Content-Name, a valid Content-Range whose length
is the body's, starting exactly at the offset the server stands at (else 416 with
BITS-Received-Content-Range; nothing written).  It counts every fragment byte it receives
(``bytes_received``) and every byte it received again that it had already acknowledged to
a client still connected to hear it (``bytes_resent``): a client that resumes right sends
none twice.  ``threaded_bits_server`` runs one in a thread of its own (for tests of the
daemon, which are not coroutines).  ``UploadRecorder`` and ``uploader_client`` are the client
side of the tests that drive ``upload.Uploader`` directly.

Faults are queued per packet type (``inject``) and used by the next such packet, in order:
``reset`` (the connection closes without an answer, the body read and dropped), ``stall``
(no answer for ``stall_s``), ``forget`` (the session is forgotten: 500 0x8020001F),
``416`` (the fragment refused, the real offset told), ``rewind`` (the server lost what it
had after ``rewind_to`` bytes and says so), ``500`` (500 with BITS-Error-Code 0x80004005).
``max_fragment_bytes`` answers 413 (no BITS code: IIS's own request limit) to longer
fragments.  Once a session has every byte, a Fragment sent again that ends at the last byte
(any start up to it) is answered 200 with the same BITS-Reply-URL, as the real server does
(a client that lost the last Ack, as after a crash, asks for the reply so); ``name_reply``
False: an upload-reply server that never names one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import ssl
import threading
import uuid
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.http_parser import HttpRequestParserPy
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from openbits.model import JobFile
from openbits.transfer.download import Downloader
from openbits.transfer.h1 import H1Client
from openbits.transfer.upload import Uploader

PROTOCOL = "{7df0354d-249b-430f-820d-3d2a9bef4931}"
HOST = "127.0.0.1"
_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


@dataclass
class Session:
    path: str
    name: str | None = None
    total: int | None = None
    data: bytearray = field(default_factory=bytearray)
    closed: bool = False
    cancelled: bool = False
    #: bytes the server acknowledged to a client still there to hear it
    acked: int = 0


@dataclass
class Fault:
    what: str
    rewind_to: int = 0


class BitsServer:
    def __init__(
        self, *, reply: bool = False, max_fragment_bytes: int | None = None, basic: str | None = None
    ) -> None:
        """``basic``: the Authorization value every request must carry (else 401 Basic)."""
        self.basic = basic
        self.unauthorized = 0  # 401s answered
        self.reply = reply
        self.name_reply = True
        #: the scheme://host:port of the BITS-Reply-URLs it names ("": its own ``url``)
        self.reply_base = ""
        self.gets: list[dict[str, str]] = []  # the headers of the GETs of replies, in order
        self.max_fragment_bytes = max_fragment_bytes
        self.sessions: dict[str, Session] = {}
        self.uploads: dict[str, bytes] = {}  # path → the closed session's bytes
        self.bytes_received = 0
        self.bytes_resent = 0
        self.packets: list[tuple[str, dict[str, str]]] = []  # (type, headers) in order
        self.faults: defaultdict[str, deque[Fault]] = defaultdict(deque)
        self.stall_s = 30.0
        #: every Fragment is answered this long after its body came (a slow server)
        self.fragment_delay_s = 0.0
        #: the offset of the Fragment being held by ``fragment_delay_s``, None when none is
        self.holding: int | None = None
        self.session_ids: deque[str] = deque()  # ids to hand out first (opaque ones)
        self.host_id: str | None = None
        #: BITS-Host-Id-Fallback-Timeout sent with host_id (seconds, as text)
        self.host_fallback: str | None = None
        self.url = ""

    def inject(self, packet_type: str, what: str, *, rewind_to: int = 0) -> None:
        self.faults[packet_type.lower()].append(Fault(what, rewind_to))

    def count(self, packet_type: str) -> int:
        return sum(1 for t, _ in self.packets if t == packet_type.lower())

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if self.basic is not None and request.headers.get("Authorization") != self.basic:
            await request.read()
            self.unauthorized += 1
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="bits"'})
        if request.method == "GET" and request.path.startswith("/reply/"):
            self.gets.append(dict(request.headers))
            return await self._reply(request.path.removeprefix("/reply/"))
        if request.method != "BITS_POST":
            return web.Response(status=405)
        return await self._packet(request)

    @staticmethod
    def reply_of(data: bytes) -> bytes:
        return b"reply to " + hashlib.sha256(data).hexdigest().encode()

    async def _reply(self, sid: str) -> web.Response:
        session = self.sessions.get(sid)
        if session is None:
            return web.Response(status=404)
        return web.Response(body=self.reply_of(bytes(session.data)))

    async def _packet(self, request: web.BaseRequest) -> web.StreamResponse:
        kind = request.headers.get("BITS-Packet-Type", "").lower()
        self.packets.append((kind, dict(request.headers)))
        body = await request.read()
        fault = self.faults[kind].popleft() if self.faults[kind] else None
        if fault is not None and fault.what == "stall":
            await self._hold(request, self.stall_s)
            if request.transport is None or request.transport.is_closing():
                return web.Response(status=499)  # (the client is gone: nothing done)
        if fault is not None and fault.what == "reset":
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        if kind == "ping":
            return ack(200)
        if kind == "create-session":
            if PROTOCOL not in request.headers.get("BITS-Supported-Protocols", "").lower():
                return ack(400, error=0x80070057)
            sid = self.session_ids.popleft() if self.session_ids else "{" + str(uuid.uuid4()) + "}"
            self.sessions[sid] = Session(request.path)
            headers = {"BITS-Protocol": PROTOCOL, "BITS-Session-Id": sid, "Accept-Encoding": "identity"}
            if self.host_id is not None:
                headers["BITS-Host-Id"] = self.host_id
                if self.host_fallback is not None:
                    headers["BITS-Host-Id-Fallback-Timeout"] = self.host_fallback
            return ack(200, **headers)
        sid = request.headers.get("BITS-Session-Id", "")
        session = self.sessions.get(sid)
        if fault is not None and fault.what == "forget" and session is not None:
            del self.sessions[sid]
            session = None
        if session is None:
            return ack(500, error=0x8020001F)
        if fault is not None and fault.what == "500":
            return ack(500, error=0x80004005)
        if kind == "fragment":
            return await self._slow_fragment(request, session, sid, body, fault)
        if kind == "close-session":
            session.closed = True
            self.uploads[session.path] = bytes(session.data)
            return ack(200, **{"BITS-Session-Id": sid})
        if kind == "cancel-session":
            session.cancelled = True
            del self.sessions[sid]
            return ack(200, **{"BITS-Session-Id": sid})
        return ack(400, error=0x80070057)

    async def _slow_fragment(
        self, request: web.BaseRequest, session: Session, sid: str, body: bytes, fault: Fault | None
    ) -> web.StreamResponse:
        if self.fragment_delay_s:
            await self._hold(request, self.fragment_delay_s)
            if request.transport is None or request.transport.is_closing():
                return web.Response(status=499)  # (the client is gone: nothing done)
        response = self._fragment(request, session, sid, body, fault)
        if request.transport is not None and not request.transport.is_closing():
            session.acked = len(session.data)
        return response

    async def _hold(self, request: web.BaseRequest, delay_s: float) -> None:
        """No answer for ``delay_s``; ``holding`` says where the held Fragment starts."""
        m = _RANGE.fullmatch(request.headers.get("Content-Range", ""))
        self.holding = int(m.group(1)) if m else 0
        try:
            await asyncio.sleep(delay_s)
        finally:
            self.holding = None

    def _fragment(
        self, request: web.BaseRequest, session: Session, sid: str, body: bytes, fault: Fault | None
    ) -> web.StreamResponse:
        name = request.headers.get("Content-Name")
        content_range = request.headers.get("Content-Range", "")
        m = _RANGE.fullmatch(content_range)
        if content_range == "bytes */0" and not body:  # (an empty file)
            first, last, total = 0, -1, 0
        elif not name or m is None:
            return ack(400, error=0x80070057)
        else:
            first, last, total = int(m.group(1)), int(m.group(2)), int(m.group(3))
        if (
            not name
            or last - first + 1 != len(body)
            or last >= max(total, 1)
            or (session.total not in (None, total))
        ):
            return ack(400, error=0x80070057)
        session.name, session.total = name, total
        self.bytes_received += len(body)
        held = len(session.data)
        self.bytes_resent += max(0, min(session.acked, last + 1) - first)
        if fault is not None and fault.what == "rewind":
            del session.data[fault.rewind_to :]
            return ack(416, **{"BITS-Received-Content-Range": str(len(session.data))})
        if self.max_fragment_bytes is not None and len(body) > self.max_fragment_bytes:
            return ack(413)
        if held == total > 0 and first <= last == total - 1 and fault is None:
            return self._fragment_ack(session, sid)  # (the last Ack asked for again)
        if first != held or (fault is not None and fault.what == "416"):
            return ack(416, **{"BITS-Received-Content-Range": str(held)})
        session.data += body
        return self._fragment_ack(session, sid)

    def _fragment_ack(self, session: Session, sid: str) -> web.Response:
        headers = {"BITS-Session-Id": sid, "BITS-Received-Content-Range": str(len(session.data))}
        if self.reply and self.name_reply and len(session.data) == session.total:
            headers["BITS-Reply-URL"] = f"{self.reply_base or self.url}/reply/{sid}"
        return ack(200, **headers)


def ack(status: int, *, error: int | None = None, **headers: str) -> web.Response:
    headers = {k.replace("_", "-"): v for k, v in headers.items()}
    headers["BITS-Packet-Type"] = "Ack"
    if error is not None:
        headers["BITS-Error-Code"] = f"0x{error:08X}"
        headers["BITS-Error-Context"] = "0x5"
    return web.Response(status=status, headers=headers)


class AnyMethodServer(web.Server):
    """aiohttp's C parser (llhttp) refuses a method it does not know (400 "Invalid method
    encountered" to BITS_POST): this server's connections parse with aiohttp's pure-Python
    parser, which takes any token (RFC 9110 §9.1)."""

    def __call__(self) -> RequestHandler:
        handler = super().__call__()
        handler._parser = HttpRequestParserPy(
            handler,
            self._loop,
            2**16,
            max_line_size=handler.max_line_size,
            max_field_size=handler.max_field_size,
            max_headers=handler.max_headers,
            payload_exception=RequestPayloadError,
        )
        return handler


@contextlib.asynccontextmanager
async def bits_server(
    server: BitsServer | None = None, tls: ssl.SSLContext | None = None
) -> AsyncIterator[BitsServer]:
    """Serve a ``BitsServer`` on a free port of 127.0.0.1 (its ``url``) in this loop, over
    ``tls`` when given (https://)."""
    server = server or BitsServer()
    runner = web.ServerRunner(AnyMethodServer(server.handle), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0, ssl_context=tls)
    await site.start()
    assert site._server is not None
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    server.url = f"{'https' if tls else 'http'}://{HOST}:{port}"
    try:
        yield server
    finally:
        await runner.cleanup()


@contextlib.contextmanager
def threaded_bits_server(server: BitsServer | None = None) -> Iterator[BitsServer]:
    """A ``BitsServer`` served by an event loop in a thread of its own."""
    server = server or BitsServer()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop = asyncio.Event()

    async def serve() -> None:
        async with bits_server(server):
            started.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    try:
        assert started.wait(10), "the BITS server did not start"
        yield server
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


class UploadRecorder:
    """An ``upload.UploadProgress`` that keeps what it is told (and moves the file's offset,
    as the scheduler's does)."""

    def __init__(self, file: JobFile) -> None:
        self.file = file
        self.offsets: list[tuple[int, bool]] = []
        self.connected_count = 0
        self.reply_size: int | None = None

    def connected(self) -> None:
        self.connected_count += 1

    def saved(self, offset: int, *, urgent: bool) -> None:
        self.offsets.append((offset, urgent))
        self.file.bytes_transferred = offset

    def reply_done(self, size: int) -> None:
        self.reply_size = size


@contextlib.asynccontextmanager
async def uploader_client(read_timeout_s: float = 10) -> AsyncIterator[Uploader]:
    """An ``Uploader`` over a client of its own (closed at the end)."""
    h1 = H1Client(connect_timeout_s=5, read_timeout_s=read_timeout_s)
    try:
        yield Uploader(Downloader(h1))
    finally:
        await h1.close()
