"""How fast one body is read: the bandwidth limits (``throttle.Throttle``) and, for a priority
with ``BackgroundYield`` on, the delay controller's pace (``yieldctl``), the stricter winning.

A :class:`Pacer` lives for one body.  The read loop asks it how much to read (``slice_bytes``,
while ``limited``), tells it what arrived (``arrived``: the RTT is sampled there, at most every
10 ms) and waits in ``acquire`` before the next read.  While the controller is unpaced (always,
on a quiet path or loopback) it adds one clock read per chunk and a ``getsockopt`` per 10 ms.
A pace bounds the socket's receive window and buffer too (``_clamp``): on a short path the
paced reads alone would leave the sender tens of MB of auto-tuned buffer to fill.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

from openbits.transfer.rttsample import RttSampler, bound_receive_buffer, clamp_window
from openbits.transfer.throttle import Throttle, TokenBucket, throttled_slice
from openbits.transfer.yieldctl import Running

__all__ = ["RCVBUF_S", "Pacer", "pacer"]

RCVBUF_S = 0.1
"""A paced socket's receive buffer holds ~100 ms at the pace (two read slices): the paced reads
bind within that, not once an auto-tuned buffer of tens of MB filled up."""


class Pacer:
    """The pace of one body: ``throttle``'s limits for ``priority``, and ``running``'s
    controller when the priority yields (``sock``: the connection sampled for its RTT)."""

    __slots__ = ("_bucket", "_idle_s", "_running", "_sampler", "_throttle", "priority")

    def __init__(
        self,
        throttle: Throttle,
        priority: int,
        running: Running | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        self._throttle, self.priority = throttle, priority
        self._running = running
        self._sampler = None if running is None or sock is None else RttSampler(sock, running.controller)
        self._bucket = TokenBucket(None)
        self._idle_s = 0.0  # the longest wait for data since the last sample

    def _yield_bps(self) -> float | None:
        if self._running is None or not self._throttle.politeness.yields(self.priority):
            return None
        return self._running.controller.rate_bps

    def limited(self) -> bool:
        """Whether reads are paced now (read ``slice_bytes`` at a time, then ``acquire``)."""
        return self._bucket.rate is not None or self._throttle.is_limited(self.priority)

    def slice_bytes(self) -> int:
        """Bytes per read while ``limited``: ~50 ms at the strictest pace, 16 KiB to 1 MiB."""
        throttled = self._throttle.is_limited(self.priority)
        size = throttled_slice(self._throttle, self.priority) if throttled else 1 << 20
        rate = self._bucket.rate
        if rate is not None:
            size = min(size, int(max(16 * 1024, min(1024 * 1024, rate * 0.05))))
        return size

    def arrived(self, n: int, waited_s: float, longest_wait_s: float | None = None) -> None:
        """``n`` body bytes arrived after waiting ``waited_s`` for them in all (not counting
        waits in ``acquire``), the longest single wait ``longest_wait_s`` (None: one wait,
        ``waited_s``): feed the controller (RTT at most every 10 ms)."""
        if self._sampler is None:
            return
        now = time.monotonic()
        controller = self._sampler.controller
        controller.on_bytes(n, now, waited_s)
        if self._bucket.rate is None:
            # unpaced, a wait for data is the sender's own pause; paced, it is ours (the
            # clamped window), and the sender answers each window update at once
            longest_s = waited_s if longest_wait_s is None else longest_wait_s
            self._idle_s = max(self._idle_s, longest_s)
        if self._sampler.poll(now, self._idle_s):
            self._idle_s = 0.0
        rate = self._yield_bps()
        old = self._bucket.rate
        if rate != old:
            if old is not None and (rate is None or rate < old):
                # a backoff: the debt of reads taken at the old pace is forgiven, else a slice
                # read at 25 MB/s would be paid back at the floor's 32 KiB/s (seconds of stall)
                self._bucket.set_rate(None)
            self._bucket.set_rate(rate)
            self._clamp(rate)

    def _clamp(self, rate: float | None) -> None:
        """Bound the receive window to the pace times the delay allowed (base + target): the
        sender then cannot queue more than that at the bottleneck, however the reads go."""
        assert self._sampler is not None
        controller = self._sampler.controller
        sock = self._sampler.sock
        if rate is None:
            clamp_window(sock, None)
            bound_receive_buffer(sock, None)
            return
        delay_s = (controller.base_delay_s or 0.0) + controller.effective_target_s
        clamp_window(sock, int(rate * delay_s))
        bound_receive_buffer(sock, int(rate * RCVBUF_S))

    async def acquire(self, n: int) -> None:
        """Wait until ``n`` more bytes may be read: every limit that applies, the stricter
        winning (the buckets refill meanwhile, so the waits overlap rather than add)."""
        await self._throttle.acquire(self.priority, n)
        if self._bucket.rate is not None:
            started = time.monotonic()
            # a read larger than a slice at this pace was asked at a faster one, before a
            # backoff: charged as one slice, not paid back over seconds at the new pace
            await self._bucket.acquire(min(n, self.slice_bytes()))
            self._throttle.throttled_s += time.monotonic() - started


@contextlib.contextmanager
def pacer(
    throttle: Throttle, priority: int, job_id: str, owner_uid: int, sock: socket.socket | None
) -> Iterator[Pacer]:
    """A :class:`Pacer` for one body, its controller shown in ``/metrics`` while it runs."""
    politeness = throttle.politeness
    if sock is None or not politeness.yields(priority):
        yield Pacer(throttle, priority)
        return
    running = politeness.start(job_id, owner_uid, priority)
    try:
        yield Pacer(throttle, priority, running, sock)
    finally:
        politeness.stop(running)
