"""``h1``'s request bodies: what a request with a body (an upload's ``BITS_POST`` fragment)
sends after its head.

A :class:`RequestBody` can be sent again: an authentication leg (``h1auth.exchange``) and a
kept-alive connection the server had closed both send the request once more.  Its bytes are
given (a small body), or are ``length`` bytes of an open file from ``offset``, read slice by
slice as they are sent (a fragment of up to 64 MiB is never held whole, but for an
authentication leg, which is rare and short-lived): on the loop when the page cache holds the
slice, else in a thread (``_file_slice``).  On a plain connection a slice the page cache holds
(cachestat(2)) goes by ``sendfile`` instead: from the page cache to the socket without a copy
through Python (the daemon's CPU per uploaded GiB: ~0.25 s less; an upload server on the same
machine then copies bytes no CPU cache holds: ~0.1 s more of its own).  A file that cannot be read
to the end fails the request (BadRequest) and says why in ``read_failure``: the caller's fault
to report.  Sending is paced by the bandwidth throttle of the job's priority, as downloads
are (``throttle.throttled_slice``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Coroutine
from typing import Any

from openbits.transfer import diskio
from openbits.transfer.h1conn import Conn, SendfileUnsupported, Wire
from openbits.transfer.h1head import BadRequest
from openbits.transfer.pace import Priority, priority_of
from openbits.transfer.throttle import Throttle, throttled_slice

__all__ = ["SEND_SLICE_BYTES", "FileShrank", "RequestBody"]

#: bytes read from the file and sent at once while no bandwidth limit applies
SEND_SLICE_BYTES = 1024 * 1024


class FileShrank(OSError):
    """The body's file ended before the body did (it was truncated while being sent)."""


class RequestBody:
    """A request's body: ``data``, or ``length`` bytes of ``fd`` from ``offset`` (the caller
    owns the fd); sent within the limits of ``throttle`` for ``priority`` when given (fixed, or
    the job's as it is at each slice: SetPriority may change it mid-file)."""

    __slots__ = (
        "data",
        "fd",
        "length",
        "no_sendfile",
        "offset",
        "priority_of",
        "read_failure",
        "sent",
        "throttle",
    )

    def __init__(
        self,
        data: bytes = b"",
        *,
        fd: int = -1,
        offset: int = 0,
        length: int | None = None,
        throttle: Throttle | None = None,
        priority: Priority = 2,
    ) -> None:
        self.data, self.fd, self.offset = data, fd, offset
        self.length = len(data) if fd < 0 else (length or 0)
        self.throttle, self.priority_of = throttle, priority_of(priority)
        #: bytes written to the connection by the last ``send`` (not acknowledged: progress)
        self.sent = 0
        #: the file's system refused sendfile once: its slices are read and sent from then on
        self.no_sendfile = False
        #: why the file could not be read to the end (it shrank: None inside an OSError of
        #: errno 0; or the OSError): the request failed with BadRequest, but the fault is the
        #: local file's, which the caller says (an upload: BG_E_LOCAL_FILE_CHANGED)
        self.read_failure: OSError | None = None

    def whole(self) -> bytes:
        """The body's bytes at once (an authentication leg sends head and body together)."""
        if self.fd < 0:
            return self.data
        return self._read(self.offset, self.length)

    def _read(self, offset: int, n: int) -> bytes:
        try:
            data = os.pread(self.fd, n, offset)
        except OSError as e:
            self.read_failure = e
            raise BadRequest(f"cannot read the request body's file: {e.strerror}") from e
        if len(data) != n:
            # (the file shrank under the request)
            self.read_failure = FileShrank(f"the request body's file ended {n - len(data)} bytes early")
            raise BadRequest(str(self.read_failure))
        return data

    async def _file_slice(self, offset: int, n: int) -> bytes | bytearray:
        """``n`` bytes of the file from ``offset``: read on the loop when the page cache
        holds them all (``preadv`` with RWF_NOWAIT never waits for the disk; into a buffer of
        its own, sent as it is), else in a thread: a slow disk never stalls the loop.  (Every
        slice in a thread costs about 0.1 ms more each: +0.05 s CPU per 512 MiB.)"""
        buffer = bytearray(n)
        try:
            got = os.preadv(self.fd, [buffer], offset, os.RWF_NOWAIT)
        except OSError:  # (EAGAIN: not all cached; EOPNOTSUPP: a file system that cannot say)
            got = -1
        if got == n:
            return buffer
        return await asyncio.to_thread(self._read, offset, n)

    async def _sendfile(self, wire: Wire, conn: Conn, offset: int, n: int) -> None:
        """``n`` bytes of the file from ``offset`` by sendfile; a file that ended first fails
        as ``_read`` fails (some of the slice may be on its way: the request is lost anyway)."""
        try:
            sent = await wire.sendfile(conn, self.fd, offset, n)
        except SendfileUnsupported:
            self.no_sendfile = True
            await wire.send(conn, await self._file_slice(offset, n))
            return
        if sent != n:
            self.read_failure = FileShrank(f"the request body's file ended {n - sent} bytes early")
            raise BadRequest(str(self.read_failure))

    def _slice(self, priority: int) -> int:
        throttle = self.throttle
        if throttle is not None and throttle.is_limited(priority):
            return throttled_slice(throttle, priority)
        return SEND_SLICE_BYTES

    async def send(self, wire: Wire, conn: Conn) -> bool:
        """Write the body to ``conn`` (after its head), slice by slice, within the limits.

        True when the other side answered before the whole body was sent (a proxy's 407 or
        a server's 401 or 413 that did not wait for it; watched on plain connections): the
        rest is not sent, and the caller must not reuse the connection."""
        self.sent = 0
        plain = conn.tls is None and conn.outer is None
        answered = _Answered(conn) if plain else None
        try:
            while self.sent < self.length:
                n = await self._paced()
                offset = self.offset + self.sent
                sending: Coroutine[Any, Any, None]
                if self.fd >= 0 and plain and not self.no_sendfile and diskio.page_cached(self.fd, offset, n):
                    sending = self._sendfile(wire, conn, offset, n)
                elif self.fd < 0:
                    sending = wire.send(conn, self.data[self.sent : self.sent + n])
                else:
                    sending = wire.send(conn, await self._file_slice(offset, n))
                if answered is None:
                    await sending
                elif not await answered.unless(sending):
                    return True
                self.sent += n
        finally:
            if answered is not None:
                answered.stop()
        return False

    async def _paced(self) -> int:
        """The size of the next slice, once the throttle lets it go."""
        throttle, priority = self.throttle, self.priority_of()
        n = min(self._slice(priority), self.length - self.sent)
        if throttle is not None and throttle.is_limited(priority):
            await throttle.acquire(priority, n)
        return n


class _Answered:
    """Whether the other side of a plain connection has sent anything (an early answer)
    while the body goes out: a readiness watch on its socket, nothing read."""

    __slots__ = ("_fd", "_loop", "ready")

    def __init__(self, conn: Conn) -> None:
        self._loop = asyncio.get_running_loop()
        self._fd = conn.sock.fileno()
        self.ready: asyncio.Future[None] = self._loop.create_future()
        self._loop.add_reader(self._fd, self._set)

    def _set(self) -> None:
        if not self.ready.done():
            self.ready.set_result(None)
        self._loop.remove_reader(self._fd)

    async def unless(self, sending: Coroutine[Any, Any, None]) -> bool:
        """Run ``sending`` unless an answer comes first: True when it was all sent; False
        when the answer came (or the other side closed) before (the send is abandoned)."""
        if self.ready.done():
            sending.close()
            return False
        task = asyncio.ensure_future(sending)
        try:
            await asyncio.wait((task, self.ready), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            raise
        if task.done():
            if task.exception() is not None and self.ready.done():
                return False  # (it closed its side after answering: read the answer)
            task.result()
            return True
        task.cancel()
        await asyncio.wait([task])  # (a cancellation of ours meanwhile is not swallowed)
        with contextlib.suppress(asyncio.CancelledError, OSError):
            task.result()
        return False

    def stop(self) -> None:
        if not self.ready.done():
            self._loop.remove_reader(self._fd)
            self.ready.cancel()
