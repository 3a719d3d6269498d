"""``h1``'s request bodies: what a request with a body (an upload's ``BITS_POST`` fragment)
sends after its head.

A :class:`RequestBody` can be sent again: an authentication leg (``h1auth.exchange``) and a
kept-alive connection the server had closed both send the request once more.  Its bytes are
given (a small body), or are ``length`` bytes of an open file from ``offset``, read with
``os.pread`` slice by slice as they are sent (a fragment of up to 64 MiB is never held whole,
but for an authentication leg, which is rare and short-lived).  Sending is paced by the
bandwidth throttle of the job's priority, as downloads are (``throttle.throttled_slice``).
"""

from __future__ import annotations

import os

from openbits.transfer.h1conn import Conn, Wire
from openbits.transfer.h1head import BadRequest
from openbits.transfer.throttle import Throttle, throttled_slice

__all__ = ["SEND_SLICE_BYTES", "RequestBody"]

#: bytes read from the file and sent at once while no bandwidth limit applies
SEND_SLICE_BYTES = 1024 * 1024


class RequestBody:
    """A request's body: ``data``, or ``length`` bytes of ``fd`` from ``offset`` (the caller
    owns the fd); sent within the limits of ``throttle`` for ``priority`` when given."""

    __slots__ = ("data", "fd", "length", "offset", "priority", "sent", "throttle")

    def __init__(
        self,
        data: bytes = b"",
        *,
        fd: int = -1,
        offset: int = 0,
        length: int | None = None,
        throttle: Throttle | None = None,
        priority: int = 2,
    ) -> None:
        self.data, self.fd, self.offset = data, fd, offset
        self.length = len(data) if fd < 0 else (length or 0)
        self.throttle, self.priority = throttle, priority
        #: bytes written to the connection by the last ``send`` (not acknowledged: progress)
        self.sent = 0

    def whole(self) -> bytes:
        """The body's bytes at once (an authentication leg sends head and body together)."""
        if self.fd < 0:
            return self.data
        return self._read(self.offset, self.length)

    def _read(self, offset: int, n: int) -> bytes:
        data = os.pread(self.fd, n, offset)
        if len(data) != n:
            # (the file shrank under the request: the caller's check of the source says why)
            raise BadRequest(f"the request body's file ended {n - len(data)} bytes early")
        return data

    def _slice(self) -> int:
        throttle = self.throttle
        if throttle is not None and throttle.is_limited(self.priority):
            return throttled_slice(throttle, self.priority)
        return SEND_SLICE_BYTES

    async def send(self, wire: Wire, conn: Conn) -> None:
        """Write the body to ``conn`` (after its head), slice by slice, within the limits."""
        self.sent = 0
        throttle, priority = self.throttle, self.priority
        while self.sent < self.length:
            n = min(self._slice(), self.length - self.sent)
            if throttle is not None and throttle.is_limited(priority):
                await throttle.acquire(priority, n)
            if self.fd < 0:
                chunk = self.data[self.sent : self.sent + n]
            else:
                chunk = self._read(self.offset + self.sent, n)
            await wire.send(conn, chunk)
            self.sent += n
