"""How fast one body is read: the bandwidth limits (``throttle.Throttle``) and, for a priority
with ``BackgroundYield`` on, the delay controller's pace (``yieldctl``), the stricter winning.

A :class:`Pacer` lives for one body (the job's controller on the host outlives it: the job's
files and segments there share it, ``yieldctl.Politeness``).  The read loop asks it how much
to read (``slice_bytes``, while ``limited``), tells it what arrived (``arrived``: the RTT is
sampled there, at most every 10 ms) and waits in ``acquire`` before the next read.  While the
controller is unpaced (always, on a quiet path or loopback) it adds one clock read per chunk
and a ``getsockopt`` per 10 ms.
A pace bounds the socket's receive window and buffer too (``_clamp``): on a short path the
paced reads alone would leave the sender tens of MB of auto-tuned buffer to fill.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator

from openbits.transfer.rttsample import RttSampler, bound_receive_buffer, clamp_window
from openbits.transfer.throttle import Throttle, TokenBucket, throttled_slice
from openbits.transfer.yieldctl import Running

__all__ = ["RCVBUF_S", "Pacer", "Priority", "host_of", "pacer", "priority_of"]

RCVBUF_S = 0.1
"""A paced socket's receive buffer holds ~100 ms at the pace (two read slices): the paced reads
bind within that, not once an auto-tuned buffer of tens of MB filled up."""

Priority = int | Callable[[], int]
"""A transfer's priority (BG_JOB_PRIORITY): fixed, or the job's as it is now (SetPriority may
change it mid-file)."""


def priority_of(priority: Priority) -> Callable[[], int]:
    """``priority`` as a function returning it now."""
    if callable(priority):
        return priority
    fixed = int(priority)
    return lambda: fixed


def host_of(sock: socket.socket | None) -> str:
    """The remote host ``sock`` is connected to (its address: the path's delay is the
    address's, whatever the name; behind a proxy, the proxy's); "" if none."""
    with contextlib.suppress(OSError):
        peer = None if sock is None else sock.getpeername()
        if isinstance(peer, tuple) and peer:
            return str(peer[0])
    return ""


class Pacer:
    """The pace of one body: ``throttle``'s limits for the job's ``priority`` as it is at each
    read, and the job's controller on the host (``Politeness.start``: shared by its files and
    segments there) while that priority yields (``sock``: the connection sampled for its RTT).
    The controller is taken or let go before the first read (``limited``) after the priority
    (or ``BackgroundYield``) changed; ``close`` lets it go at the body's end.  ``running``: a
    controller of the caller's own instead of the job's (a test's), used while it yields."""

    __slots__ = (
        "_bucket",
        "_given",
        "_idle_s",
        "_job",
        "_priority",
        "_running",
        "_sampler",
        "_sock",
        "_throttle",
    )

    def __init__(
        self,
        throttle: Throttle,
        priority: Priority,
        running: Running | None = None,
        sock: socket.socket | None = None,
        job_id: str = "",
        owner_uid: int = 0,
    ) -> None:
        self._throttle, self._priority = throttle, priority_of(priority)
        self._given, self._sock = running, sock
        self._job = (job_id, owner_uid)
        self._running: Running | None = None
        self._sampler: RttSampler | None = None
        self._bucket = TokenBucket(None)
        self._idle_s = 0.0  # the longest wait for data since the last sample
        self._follow()

    @property
    def priority(self) -> int:
        """The job's priority now."""
        return self._priority()

    def _follow(self) -> int:
        """Take the job's controller when its priority yields now and none is held; let it
        go (and the pace with it) when it no longer does.  The priority now."""
        priority = self._priority()
        sock = self._sock
        if sock is None:
            return priority
        running = self._running
        if self._throttle.politeness.yields(priority):
            if running is None:
                job_id, owner_uid = self._job  # (the host looked up only now: most bodies never yield)
                politeness = self._throttle.politeness
                running = self._given or politeness.start(job_id, owner_uid, priority, host_of(sock))
                self._running, self._sampler = running, RttSampler(sock, running.controller)
            running.priority = priority
        elif running is not None:
            paced = self._bucket.rate is not None
            self.close()
            if paced:
                self._clamp(None)
        return priority

    def close(self) -> None:
        """The body ended (or its priority no longer yields): the controller is let go."""
        running = self._running
        if running is not None:
            if running is not self._given:
                self._throttle.politeness.stop(running)
            self._running = self._sampler = None
        if self._bucket.rate is not None:
            self._bucket.set_rate(None)
        self._idle_s = 0.0

    def _yield_bps(self) -> float | None:
        """This body's share of the job's pace on the host (its bodies there share it)."""
        if self._running is None:
            return None
        rate = self._running.controller.rate_bps
        return None if rate is None else rate / max(1, self._running.bodies)

    def limited(self) -> bool:
        """Whether reads are paced now (read ``slice_bytes`` at a time, then ``acquire``).
        Asked before each read: the job's priority is followed here."""
        priority = self._follow()
        return self._bucket.rate is not None or self._throttle.is_limited(priority)

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
        # (the job's bodies on the host share the controller: their waits count as one
        # reader's share of the time, not as their sum, which could pass 1)
        bodies = 1 if self._running is None else max(1, self._running.bodies)
        controller.on_bytes(n, now, waited_s / bodies)
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
        sock = self._sock
        if sock is None:
            return
        if rate is None or self._running is None:
            clamp_window(sock, None)
            bound_receive_buffer(sock, None)
            return
        controller = self._running.controller
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
    throttle: Throttle, priority: Priority, job_id: str, owner_uid: int, sock: socket.socket | None
) -> Iterator[Pacer]:
    """A :class:`Pacer` for one body, its job's controller shown in ``/metrics`` while it runs."""
    pace = Pacer(throttle, priority, None, sock, job_id, owner_uid)
    try:
        yield pace
    finally:
        pace.close()
