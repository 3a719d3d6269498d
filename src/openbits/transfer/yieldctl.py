"""Polite background: a receiver-side delay-based rate controller (SPEC §9 ``BackgroundYield``).

In the spirit of LEDBAT (RFC 6817) and the IRTF's receiver-driven rLEDBAT draft: the receiver
sees the path's round-trip time grow when a queue builds at the bottleneck, and the part of it
above the path's own minimum (the *base delay*) is the queueing delay the transfer adds for
everyone sharing the link.  :class:`DelayController` keeps that estimate under a target by
pacing the reads: multiplicative backoff while the delay is over the target, additive growth
while under it; a reader that paces its reads lets its receive buffer fill, which closes the
TCP window and slows the sender.

Sans-I/O: it is fed RTT samples (``on_rtt``) and arrival byte counts (``on_bytes``) with
timestamps in seconds from any monotonic clock, and answers with a rate in bytes per second,
``None`` meaning "unpaced" (it starts unpaced, like a slow start, and goes back to unpaced when
its rate is far above what arrives while the delay stays low; on an idle or loopback path the
delay never rises, so it costs nothing but the samples).  The samples come from
``rttsample.RttSampler`` (``TCP_INFO``); pacing is done by ``pace.Pacer``.
"""

from __future__ import annotations

import collections
import math
from typing import Final

__all__ = [
    "BACKOFF_FACTOR",
    "BASE_BUCKET_S",
    "BASE_HISTORY",
    "CURRENT_FILTER",
    "DEFAULT_TARGET_DELAY_MS",
    "DEFAULT_YIELDING",
    "GAIN_BPS_PER_S",
    "IDLE_FACTOR",
    "MAX_GAIN_BPS_PER_S",
    "MIN_BACKOFF_INTERVAL_S",
    "MIN_RATE_BPS",
    "DelayController",
    "Politeness",
    "Running",
]

DEFAULT_TARGET_DELAY_MS: Final = 75
"""Default ``yield_target_delay_ms``: the queueing delay a background job may add (RFC 6817
caps its TARGET at 100 ms; 75 leaves room for the kernel's smoothing)."""
BASE_BUCKET_S: Final = 60.0
"""The base delay is kept as one minimum per minute..."""
BASE_HISTORY: Final = 10
"""...over the last 10 minutes (RFC 6817's BASE_HISTORY): an old minimum ages out, so the base
follows a path change within 10 minutes, and a path whose RTT falls is followed at once."""
CURRENT_FILTER: Final = 4
"""The current delay is the minimum of the last 4 samples (RFC 6817's CURRENT_FILTER): a single
late sample (a spike) does not trigger a backoff; a standing queue does."""
BACKOFF_FACTOR: Final = 0.5
"""Over the target, the rate becomes this fraction of what was arriving (multiplicative)."""
MIN_BACKOFF_INTERVAL_S: Final = 0.25
"""At most one backoff per round trip and never more often than this: the kernel smooths its
RTT estimate over ~8 samples, so a backoff shows in the samples only after a while."""
GAIN_BPS_PER_S: Final = 2.0 * 1024 * 1024
"""Under the target, the rate grows by at least this many bytes/s each second (additive),
scaled by how far under the target the delay is (RFC 6817's off_target)..."""
MAX_GAIN_BPS_PER_S: Final = 16.0 * 1024 * 1024
"""...and by at most this many: in between, LEDBAT's one MSS per RTT per RTT (MSS / RTT²), so
a short path regains its rate sooner than a long one, as a window-based LEDBAT would."""
MSS_BYTES: Final = 1448
MIN_RATE_BPS: Final = 32.0 * 1024
"""Floor of the paced rate (bytes/s): a background job yields but never stalls."""
UNPACE_RATIO: Final = 4.0
"""Growing past this multiple of the arrival rate (delay under target) ends pacing: the pace no
longer binds, the sender or the path sets the speed."""
IDLE_FACTOR: Final = 2.0
"""A sample no larger than this many times the receiver's longest wait for data since the
previous one is dropped: a sender that pauses (application-limited, or a server's own rate
limit) makes the kernel's receiver RTT estimate grow toward its pauses (it times an ACK to the
first data echoing it), which says nothing about queues."""
ARRIVAL_WINDOW_S: Final = 0.1
"""Arrivals are counted over windows at least this long for the arrival-rate estimate."""


class DelayController:
    """Estimates the queueing delay a transfer adds and the rate (bytes/s) that keeps it under
    ``target_delay_ms``.  ``rate_bps`` is None while unpaced; between ``floor_bps`` and
    ``ceiling_bps`` (None: no ceiling) otherwise.  Not thread-safe (one event loop)."""

    def __init__(
        self,
        target_delay_ms: float = DEFAULT_TARGET_DELAY_MS,
        *,
        floor_bps: float = MIN_RATE_BPS,
        ceiling_bps: float | None = None,
    ) -> None:
        if not (math.isfinite(target_delay_ms) and target_delay_ms > 0):
            raise ValueError(f"target delay must be > 0 ms, got {target_delay_ms!r}")
        if ceiling_bps is not None and ceiling_bps < floor_bps:
            raise ValueError("the ceiling must not be below the floor")
        self.target_s = target_delay_ms / 1000.0
        self.floor_bps = float(floor_bps)
        self.ceiling_bps = ceiling_bps
        self._base: collections.deque[tuple[int, float]] = collections.deque(maxlen=BASE_HISTORY)
        self._current: collections.deque[float] = collections.deque(maxlen=CURRENT_FILTER)
        self._rate: float | None = ceiling_bps
        self._last_update: float | None = None
        self._last_backoff = -math.inf
        self._window_start: float | None = None
        self._window_bytes = 0
        self.arrival_bps: float | None = None
        #: backoffs so far, and samples dropped as taken while the sender paused (diagnostics)
        self.backoffs = 0
        self.ignored = 0

    # ---------------------------------------------------------------------------- inspection

    @property
    def rate_bps(self) -> float | None:
        """The pace in bytes/s; None: unpaced."""
        return self._rate

    @property
    def base_delay_s(self) -> float | None:
        """The path's minimum RTT over the history (None before the first sample)."""
        return min(m for _, m in self._base) if self._base else None

    @property
    def queue_delay_s(self) -> float:
        """The estimated queueing delay this path has now (seconds above the base delay)."""
        base = self.base_delay_s
        if base is None or not self._current:
            return 0.0
        return max(0.0, min(self._current) - base)

    # --------------------------------------------------------------------------------- input

    def on_bytes(self, n: int, now: float) -> None:
        """``n`` body bytes arrived at ``now`` (seconds): the arrival-rate estimate."""
        if self._window_start is None:
            self._window_start, self._window_bytes = now, 0
            return
        self._window_bytes += n
        elapsed = now - self._window_start
        if elapsed >= ARRIVAL_WINDOW_S:
            sample = self._window_bytes / elapsed
            self.arrival_bps = sample if self.arrival_bps is None else 0.5 * (self.arrival_bps + sample)
            self._window_start, self._window_bytes = now, 0

    def on_rtt(self, rtt_s: float, now: float, idle_s: float = 0.0) -> float | None:
        """A round-trip-time sample (seconds) taken at ``now``; ``idle_s``: the longest the
        receiver waited for data since the previous sample (see ``IDLE_FACTOR``).  Returns the
        new ``rate_bps``."""
        if not (math.isfinite(rtt_s) and rtt_s > 0):
            return self._rate
        if rtt_s <= IDLE_FACTOR * idle_s:
            self.ignored += 1
            return self._rate
        bucket = int(now // BASE_BUCKET_S)
        if self._base and self._base[-1][0] == bucket:
            self._base[-1] = (bucket, min(self._base[-1][1], rtt_s))
        else:
            self._base.append((bucket, rtt_s))
        self._expire_base(bucket)
        self._current.append(rtt_s)
        self._update(now, min(self._current))
        return self._rate

    # ------------------------------------------------------------------------------ internals

    def _expire_base(self, bucket: int) -> None:
        while self._base and self._base[0][0] <= bucket - BASE_HISTORY:
            self._base.popleft()

    def _update(self, now: float, current_rtt_s: float) -> None:
        dt = 0.0 if self._last_update is None else max(0.0, min(now - self._last_update, 1.0))
        self._last_update = now
        queue = self.queue_delay_s
        if queue > self.target_s:
            if now - self._last_backoff >= max(current_rtt_s, MIN_BACKOFF_INTERVAL_S):
                self._back_off()
                self._last_backoff = now
            return
        if self._rate is None:
            return
        off_target = (self.target_s - queue) / self.target_s
        gain = min(MAX_GAIN_BPS_PER_S, max(GAIN_BPS_PER_S, MSS_BYTES / current_rtt_s**2))
        rate = self._rate + gain * off_target * dt
        if self.ceiling_bps is not None and rate >= self.ceiling_bps:
            rate = self.ceiling_bps
        if self.arrival_bps is not None and rate > UNPACE_RATIO * max(self.arrival_bps, self.floor_bps):
            self._rate = None if self.ceiling_bps is None else self.ceiling_bps
            return
        self._rate = rate

    def _back_off(self) -> None:
        basis = [r for r in (self._rate, self.arrival_bps, self.ceiling_bps) if r is not None]
        if not basis:
            return  # nothing has arrived yet: no rate to start from
        self._rate = max(self.floor_bps, min(basis) * BACKOFF_FACTOR)
        self.backoffs += 1


DEFAULT_YIELDING: Final = {0: False, 1: True, 2: True, 3: True}
"""``BackgroundYield`` by priority (BG_JOB_PRIORITY): on for HIGH, NORMAL and LOW."""


class Running:
    """One running transfer's controller, as ``/metrics`` shows it."""

    __slots__ = ("controller", "job_id", "owner_uid", "priority")

    def __init__(self, job_id: str, owner_uid: int, priority: int, controller: DelayController) -> None:
        self.job_id, self.owner_uid, self.priority = job_id, owner_uid, priority
        self.controller = controller


class Politeness:
    """The service's ``BackgroundYield`` settings (per priority) and ``yield_target_delay_ms``,
    and the controllers of the transfers running now (registered by ``pace.Pacer``).  Changes
    apply at once to running transfers: a target moves their controllers' target, a priority
    turned off stops pacing at its next read."""

    def __init__(self) -> None:
        self.enabled: dict[int, bool] = dict(DEFAULT_YIELDING)
        self.target_delay_ms: float = DEFAULT_TARGET_DELAY_MS
        self.running: dict[int, Running] = {}

    def configure(self, enabled: dict[int, bool] | None = None, target_delay_ms: float | None = None) -> None:
        if enabled is not None:
            self.enabled.update(enabled)
        if target_delay_ms is not None:
            if not (math.isfinite(target_delay_ms) and target_delay_ms > 0):
                raise ValueError(f"target delay must be > 0 ms, got {target_delay_ms!r}")
            self.target_delay_ms = float(target_delay_ms)
            for one in self.running.values():
                one.controller.target_s = self.target_delay_ms / 1000.0

    def yields(self, priority: int) -> bool:
        return self.enabled.get(priority, False)

    def start(self, job_id: str, owner_uid: int, priority: int) -> Running:
        """A controller for a transfer starting now; ``stop`` it when the transfer ends."""
        one = Running(job_id, owner_uid, priority, DelayController(self.target_delay_ms))
        self.running[id(one)] = one
        return one

    def stop(self, one: Running) -> None:
        self.running.pop(id(one), None)
