"""Bandwidth limiting: token buckets and a per-priority throttle.

Units, everywhere in this module:

* A **rate** or **limit** is in bytes per second (B/s), never bits. ``None`` means unlimited and
  ``0`` means paused (nothing moves until the rate is raised); this mirrors BITS, where a
  MaxInternetBandwidth of 0 blocks background transfers (BG_E_BLOCKED_BY_POLICY) rather than
  lifting the limit.
* A **burst** is in bytes: how much unused allowance a bucket saves up while idle.
* Buckets read an injected monotonic clock in seconds (``time.monotonic`` by default) and wait
  with an injected ``sleep`` (``asyncio.sleep`` by default), so tests run on simulated time.

Nothing here does I/O: a transfer loop calls ``await throttle.acquire(priority, len(chunk))``
before (or after) moving each chunk, and a scheduler calls ``Throttle.set_limits`` at the instants
``schedule.Schedule.next_change_after`` names (weekly timetables and the rate syntax live in
``openbits.transfer.schedule``).
"""

from __future__ import annotations

import asyncio
import enum
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Final, Literal

from openbits.transfer.yieldctl import Politeness

__all__ = [
    "BURST_SECONDS",
    "FOREGROUND",
    "HIGH",
    "KEEP",
    "LOW",
    "MIN_BURST_BYTES",
    "NORMAL",
    "PRIORITIES",
    "Keep",
    "Throttle",
    "TokenBucket",
]

Sleep = Callable[[float], Awaitable[None]]
"""An awaitable sleep taking seconds, like ``asyncio.sleep``."""

BURST_SECONDS: Final = 0.25
"""Default burst, in seconds at the current rate: the most idle allowance a bucket saves up."""
MIN_BURST_BYTES: Final = 64 * 1024
"""Floor of the default burst in bytes (64 KiB), so that slow limits still pass whole chunks."""

_MIN_WAIT_S: Final = 1e-6
"""Waits shorter than this (or for less than one byte) are rounded to zero."""

FOREGROUND: Final = 0
HIGH: Final = 1
NORMAL: Final = 2
LOW: Final = 3
PRIORITIES: Final = (FOREGROUND, HIGH, NORMAL, LOW)
"""BG_JOB_PRIORITY values (the same numbers as ``openbits.model.JobPriority``)."""


class Keep(enum.Enum):
    """Type of the ``KEEP`` sentinel: "argument not given, leave the setting as it is"."""

    KEEP = "KEEP"


KEEP: Final = Keep.KEEP


def _check_rate(rate: float | None) -> float | None:
    if rate is None:
        return None
    if isinstance(rate, bool) or not isinstance(rate, int | float):
        raise TypeError(f"rate must be a number of bytes per second or None, not {type(rate).__name__}")
    if math.isnan(rate) or rate < 0:
        raise ValueError(f"rate must be >= 0 bytes per second or None (unlimited), got {rate!r}")
    try:
        value = float(rate)
    except OverflowError:
        return None  # an int too large for a float: as good as unlimited
    return None if math.isinf(value) else value


def _check_count(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"byte count must be an int, not {type(n).__name__}")
    if n < 0:
        raise ValueError(f"byte count must be >= 0, got {n}")
    return n


class TokenBucket:
    """A token bucket limiting a byte stream to ``rate`` bytes per second.

    One token is one byte. Tokens accrue at ``rate`` per second up to ``burst`` bytes of saved
    allowance. A reservation takes its tokens at once and may drive the balance negative (a
    debt); the caller then waits until the debt it is part of has been paid back, so
    reservations are served in order (FIFO) and the long-run average never exceeds ``rate``,
    whatever the chunk size.

    * ``rate=None``: unlimited, nothing is accounted and nobody waits.
    * ``rate=0``: paused; ``acquire`` does not return until the rate is raised (or lifted).
    * ``burst``: bytes; default ``max(rate * 0.25 s, 64 KiB)``, recomputed when the rate changes.

    The bucket starts empty, so a consumer that starts at once moves ``rate * t`` bytes in the
    first ``t`` seconds rather than ``rate * t + burst``.

    Changing the rate (``set_rate``) takes effect immediately: allowance already earned is kept,
    debts carry over, waiting callers re-plan their wait at the new rate without losing their
    place, and no transfer has to restart.

    Not thread-safe: use it from one event loop.
    """

    def __init__(
        self,
        rate: float | None = None,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create a bucket limiting to ``rate`` bytes/s (None unlimited, 0 paused).

        ``burst`` is in bytes (None: the default above); ``clock`` returns monotonic seconds.
        """
        if burst is not None and not (math.isfinite(burst) and burst > 0):
            raise ValueError(f"burst must be a finite number of bytes > 0, got {burst!r}")
        self._clock = clock
        self._rate = _check_rate(rate)
        self._burst_setting = None if burst is None else float(burst)
        self._burst = self._compute_burst()
        # Cumulative counters in bytes: tokens that have accrued and tokens that were taken.
        # balance = filled - taken; a ticket (absolute value of ``taken`` after the reservation)
        # is paid once ``filled`` reaches it.
        self._filled = 0.0
        self._taken = 0.0
        self._last = clock()
        self._pending = 0
        self._changed: asyncio.Event | None = None

    # ----------------------------------------------------------------------------- inspection

    @property
    def rate(self) -> float | None:
        """Current limit in bytes per second; None = unlimited, 0 = paused."""
        return self._rate

    @property
    def burst(self) -> float:
        """Largest allowance, in bytes, the bucket saves up while idle."""
        return self._burst

    @property
    def balance(self) -> float:
        """Tokens (bytes) available now; negative while reservations wait to be paid."""
        self._refill()
        return self._filled - self._taken

    # -------------------------------------------------------------------------------- control

    def set_rate(self, rate: float | None) -> None:
        """Change the limit (bytes/s; None unlimited, 0 paused), effective immediately.

        Time until now is accounted at the old rate. Waiting callers wake and re-plan at the
        new rate, keeping their order. Lifting the limit (None) forgives all debts; applying a
        limit to an unlimited bucket starts it empty.
        """
        new = _check_rate(rate)
        self._refill()
        self._rate = new
        if new is None:
            self._filled = self._taken
        self._burst = self._compute_burst()
        self._filled = min(self._filled, self._taken + self._burst)
        self._notify()

    def reserve(self, n: int) -> float:
        """Take ``n`` bytes' worth of tokens now and return the seconds to wait before using them.

        Returns 0.0 when the tokens are available (or the bucket is unlimited) and ``math.inf``
        while paused. The tokens are taken even when a wait is returned (the balance may go
        negative), so later reservations queue behind this one. A caller that uses ``reserve``
        directly must itself sleep; the returned wait does not follow later rate changes (use
        ``acquire`` for that).
        """
        _check_count(n)
        if n == 0 or self._rate is None:
            return 0.0
        self._refill()
        self._taken += n
        return self._wait_time(self._taken)

    async def acquire(self, n: int, sleep: Sleep = asyncio.sleep) -> None:
        """Wait until ``n`` bytes may be moved, then return.

        ``sleep`` is awaited with seconds to wait. Each wait is raced against rate changes, so a
        raised limit (or a lifted pause) is seen at once. If the call is cancelled while waiting,
        the part of the reservation not yet paid for is given back to the bucket.
        """
        _check_count(n)
        if n == 0 or self._rate is None:
            return
        ticket = self._ticket(n)
        paid = False
        try:
            await self._wait(ticket, sleep)
            paid = True
        finally:
            self._settle(ticket, n, refund=not paid)

    # ------------------------------------------------------------------------------ internals

    def _compute_burst(self) -> float:
        if self._burst_setting is not None:
            return self._burst_setting
        rate = self._rate or 0.0
        return max(rate * BURST_SECONDS, float(MIN_BURST_BYTES))

    def _refill(self) -> None:
        now = self._clock()
        elapsed = now - self._last
        self._last = now
        if self._rate is None:
            self._filled = self._taken
        elif elapsed > 0 and self._rate > 0:
            self._filled = min(self._filled + elapsed * self._rate, self._taken + self._burst)
        if self._pending == 0:
            # Nobody holds an absolute ticket: rebase the counters to keep float precision.
            self._filled -= self._taken
            self._taken = 0.0

    def _wait_time(self, ticket: float) -> float:
        """Seconds until ``filled`` reaches ``ticket`` at the current rate (counters refilled)."""
        rate = self._rate
        if rate is None:
            return 0.0
        remaining = ticket - self._filled
        if remaining < 1.0 or (rate > 0 and remaining < rate * _MIN_WAIT_S):
            return 0.0
        if rate == 0:
            return math.inf
        return remaining / rate

    def _ticket(self, n: int) -> float:
        """Reserve ``n`` tokens for a waiter; the counters are not rebased until it settles."""
        self._refill()
        self._taken += n
        self._pending += 1
        return self._taken

    def _settle(self, ticket: float, n: int, *, refund: bool) -> None:
        """Release a ticket; with ``refund``, give back the part of it not yet paid."""
        if refund and self._rate is not None:
            self._refill()  # the ticket is still pending here, so the counters are not rebased
            unpaid = min(float(n), max(0.0, ticket - self._filled))
            self._filled += unpaid
            self._notify()
        self._pending -= 1

    async def _wait(self, ticket: float, sleep: Sleep) -> None:
        while True:
            self._refill()
            delay = self._wait_time(ticket)
            if delay == 0.0:
                return
            changed = self._change_event()
            if math.isinf(delay):
                await changed.wait()
            else:
                await _sleep_or_wake(delay, sleep, changed)

    def _change_event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None


async def _sleep_or_wake(delay: float, sleep: Sleep, changed: asyncio.Event) -> None:
    """Sleep ``delay`` seconds with ``sleep``, or less if ``changed`` is set first."""
    sleeper: asyncio.Future[None] = asyncio.ensure_future(sleep(delay))
    waker = asyncio.ensure_future(changed.wait())
    try:
        await asyncio.wait((sleeper, waker), return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
        waker.cancel()
    if sleeper.done() and not sleeper.cancelled():
        error = sleeper.exception()
        if error is not None:
            raise error


def _check_priority(priority: int) -> int:
    if isinstance(priority, bool) or not isinstance(priority, int) or priority not in PRIORITIES:
        raise ValueError(
            f"priority must be 0 (FOREGROUND), 1 (HIGH), 2 (NORMAL) or 3 (LOW), got {priority!r}"
        )
    return int(priority)


class Throttle:
    """A global limit plus one limit per priority class, all in bytes per second.

    Every background byte (HIGH, NORMAL, LOW) counts against the global bucket and against its
    priority's bucket; ``acquire`` returns once the slowest of them allows it. FOREGROUND is
    exempt from every limit, as in BITS, unless ``foreground_limited`` is set, in which case it
    is treated like the other classes. Limits are ``None`` (unlimited, the default) or a rate
    (``0`` pauses).
    """

    def __init__(
        self,
        global_bps: float | None = None,
        per_priority: Mapping[int, float | None] | None = None,
        *,
        foreground_limited: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create a throttle; ``per_priority`` maps priority (0-3) to bytes/s (None unlimited)."""
        self._global = TokenBucket(global_bps, clock=clock)
        self._buckets = {priority: TokenBucket(None, clock=clock) for priority in PRIORITIES}
        self._foreground_limited = bool(foreground_limited)
        #: seconds transfers spent waiting in ``acquire`` (``GET /metrics``)
        self.throttled_s = 0.0
        #: BackgroundYield: which priorities yield to other traffic, and their running controllers
        self.politeness = Politeness()
        if per_priority:
            self.set_limits(per_priority=per_priority)

    @property
    def global_bps(self) -> float | None:
        """The global limit in bytes per second (None = unlimited)."""
        return self._global.rate

    @property
    def per_priority(self) -> dict[int, float | None]:
        """A copy of the per-priority limits in bytes per second (None = unlimited)."""
        return {priority: bucket.rate for priority, bucket in self._buckets.items()}

    @property
    def foreground_limited(self) -> bool:
        """Whether FOREGROUND transfers are subject to the limits."""
        return self._foreground_limited

    @property
    def global_bucket(self) -> TokenBucket:
        """The bucket shared by every limited priority."""
        return self._global

    def bucket(self, priority: int) -> TokenBucket:
        """The bucket of one priority class (0-3)."""
        return self._buckets[_check_priority(priority)]

    def set_limits(
        self,
        *,
        global_bps: float | Literal[Keep.KEEP] | None = KEEP,
        per_priority: Mapping[int, float | None] | None = None,
        foreground_limited: bool | None = None,
    ) -> None:
        """Change limits at run time (bytes/s; None unlimited, 0 paused), effective at once.

        Arguments left out keep their setting; ``per_priority`` changes only the priorities it
        names. Everything is validated before anything changes. Waiting callers re-plan
        without losing their place (see ``TokenBucket.set_rate``).
        """
        if global_bps is not KEEP:
            _check_rate(global_bps)
        changes = {_check_priority(p): rate for p, rate in (per_priority or {}).items()}
        for rate in changes.values():
            _check_rate(rate)
        if global_bps is not KEEP:
            self._global.set_rate(global_bps)
        for priority, rate in changes.items():
            self._buckets[priority].set_rate(rate)
        if foreground_limited is not None:
            self._foreground_limited = bool(foreground_limited)

    def is_limited(self, priority: int) -> bool:
        """Whether ``acquire(priority, n)`` can wait at all with the current limits."""
        return bool(self._limited_buckets(_check_priority(priority)))

    def reserve(self, priority: int, n: int) -> float:
        """Take ``n`` bytes from every applicable bucket; return the longest wait in seconds.

        See ``TokenBucket.reserve``: ``math.inf`` while paused, 0.0 when nothing needs waiting.
        """
        _check_count(n)
        waits = [bucket.reserve(n) for bucket in self._limited_buckets(_check_priority(priority))]
        return max(waits, default=0.0)

    async def acquire(self, priority: int, n: int, sleep: Sleep = asyncio.sleep) -> None:
        """Wait until ``n`` bytes of a ``priority`` (0-3) transfer may be moved.

        Tokens are taken from every applicable bucket at once and the buckets are then awaited
        in turn; as they refill concurrently, the wait is that of the slowest bucket, not the
        sum. Cancellation gives back what was not yet paid for.
        """
        _check_count(n)
        buckets = self._limited_buckets(_check_priority(priority))
        if n == 0 or not buckets:
            return
        tickets = [(bucket, bucket._ticket(n)) for bucket in buckets]
        paid = False
        started = time.monotonic()
        try:
            for bucket, ticket in tickets:
                await bucket._wait(ticket, sleep)
            paid = True
        finally:
            for bucket, ticket in tickets:
                bucket._settle(ticket, n, refund=not paid)
            self.throttled_s += time.monotonic() - started

    def _limited_buckets(self, priority: int) -> list[TokenBucket]:
        if priority == FOREGROUND and not self._foreground_limited:
            return []
        return [bucket for bucket in (self._global, self._buckets[priority]) if bucket.rate is not None]


def throttled_slice(throttle: Throttle, priority: int) -> int:
    """Bytes taken per read (or send) while ``priority`` is limited: ~50 ms at the slowest
    limit that applies, between 16 KiB and 1 MiB."""
    rates = [throttle.bucket(priority).rate, throttle.global_bps]
    rate = min((r for r in rates if r), default=1024 * 1024)
    return int(max(16 * 1024, min(1024 * 1024, rate * 0.05)))
