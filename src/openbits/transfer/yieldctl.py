"""Polite background: a receiver-side delay-based rate controller (SPEC §9 ``BackgroundYield``).

In the spirit of LEDBAT (RFC 6817), LEDBAT++ and the IRTF's receiver-driven rLEDBAT draft: the
receiver sees the path's round-trip time grow when a queue builds at the bottleneck, and the
part of it above the path's own minimum (the *base delay*) is the queueing delay the transfer
adds for everyone sharing the link.  :class:`DelayController` keeps that estimate under a target
by pacing the reads and bounding the receive window (``pace.Pacer``): multiplicative backoff
while the delay is over the target, growth while under it.

The target is the smaller of ``yield_target_delay_ms`` and what the path lets one observe: a
fraction of the base delay, never less than a small floor (``TARGET_FLOOR_MS``).  A fixed 75 ms
never triggers on a shallow bottleneck (a short path whose queue holds ~10 ms, as a veth with a
``tbf`` does), where any standing queue above the base *is* the competing traffic.

Two more signals catch what the delay alone misses.  The transfer's own arrival rate falling
well below what it was a moment ago while its pace did not bind and the reader kept waiting for
data (someone else takes the link) backs off, whatever the RTT says (a reader that is itself
the bottleneck, its reads never waiting, is no competition).  And a queue of half the target or
more while the transfer moves well under the fastest it moved on this path is someone else's
queue (a flow at half the link's rate builds none): a competitor limited by its own receive
window may never push the delay over the target, yet it takes half the link.

Over the target, the rate is halved when there is competition (or the delay is twice the
target) and only trimmed otherwise (alone, a flow that overshot by a little sees its own
queue).  Under the target it grows (additively, plus a multiplicative part so a fast path is
regained in seconds), never far above what arrives.  Its floor is 1 % of the fastest arrival
seen (32 KiB/s at least): at a lower pace the kernel's RTT samples come too seldom to see the
competitor leave.  And it slows down now and then for a few round trips (LEDBAT++): 2 s after
the start, as a transfer that starts at full speed builds its own queue before it ever sees
the path empty, and then whenever it has not seen its base delay for 30 s; its own standing
queue must not become the base.

Sans-I/O: it is fed RTT samples (``on_rtt``) and arrival byte counts (``on_bytes``) with
timestamps in seconds from any monotonic clock, and answers with a rate in bytes per second,
``None`` meaning "unpaced" (it starts unpaced, like a slow start, and goes back to unpaced after
``UNPACE_AFTER_S`` without a backoff; on an idle or loopback path the delay never rises, so it
costs the samples and the initial slowdown, ~60 ms at an eighth of the speed).  The samples
come from ``rttsample.RttSampler`` (``TCP_INFO``).
"""

from __future__ import annotations

import collections
import math
from typing import Final

__all__ = [
    "AHEAD_BPS",
    "AHEAD_RATIO",
    "BACKOFF_FACTOR",
    "BASE_BUCKET_S",
    "BASE_HISTORY",
    "CURRENT_FILTER",
    "DEFAULT_TARGET_DELAY_MS",
    "DEFAULT_YIELDING",
    "DROP_RATIO",
    "FLOOR_FRACTION",
    "GAIN_BPS_PER_S",
    "GENTLE_BACKOFF_FACTOR",
    "IDLE_FACTOR",
    "INITIAL_SLOWDOWN_S",
    "MAX_GAIN_BPS_PER_S",
    "MAX_IDLE_PATHS",
    "MIN_BACKOFF_INTERVAL_S",
    "MIN_RATE_BPS",
    "RTT_RESOLUTION_S",
    "SETTLE_S",
    "SHARE_RATIO",
    "SLOWDOWN_AFTER_S",
    "TARGET_BASE_FRACTION",
    "TARGET_FLOOR_MS",
    "TOP_DECAY_S",
    "UNPACE_AFTER_S",
    "DelayController",
    "Politeness",
    "Running",
]

DEFAULT_TARGET_DELAY_MS: Final = 75
"""Default ``yield_target_delay_ms``: the most queueing delay a background job may add (RFC 6817
caps its TARGET at 100 ms; 75 leaves room for the kernel's smoothing)."""
TARGET_FLOOR_MS: Final = 2.0
"""The effective target is never below this: the kernel's receiver RTT comes from TCP
timestamps in whole milliseconds, so a queue of a millisecond cannot be told from noise."""
TARGET_BASE_FRACTION: Final = 0.5
"""...and otherwise this fraction of the base delay (a 40 ms path: 20 ms), when that is below
``yield_target_delay_ms``: a path's own delay says how much queue is worth noticing."""
RTT_RESOLUTION_S: Final = 0.001
"""Samples below this count as this: the kernel's receiver RTT comes from TCP timestamps in
whole milliseconds (a delta of 0 reads as 1 ms), while a sample from before timestamps (per
window) can be microseconds; a base taken from the second would read the first's rounding as
queue (on loopback: 1-2 ms of "queue" that is none)."""
BASE_BUCKET_S: Final = 60.0
"""The base delay is kept as one minimum per minute..."""
BASE_HISTORY: Final = 10
"""...over the last 10 minutes (RFC 6817's BASE_HISTORY): an old minimum ages out, so the base
follows a path change within 10 minutes, and a path whose RTT falls is followed at once."""
CURRENT_FILTER: Final = 3
"""The current delay is the minimum of the last 3 samples (RFC 6817's CURRENT_FILTER; ~30 ms at
the sampler's pace, each sample already the kernel's average of ~8): a single late sample (a
spike) does not trigger a backoff; a standing queue does."""
BACKOFF_FACTOR: Final = 0.5
"""Over the target, the rate becomes this fraction of what was arriving (multiplicative) when
the arrival rate fell too (another flow takes a share) or the delay is twice the target..."""
GENTLE_BACKOFF_FACTOR: Final = 0.9
"""...and otherwise between that and this, in proportion to how far over the target the delay
is (RFC 6817's off_target): alone on the path, a flow that overshot by a little (its own queue)
trims its rate rather than halving it."""
MIN_BACKOFF_INTERVAL_S: Final = 0.03
"""At most one backoff per round trip and never more often than this: the kernel smooths its
receiver RTT over ~8 samples (~8 ms on a short path), so a backoff shows after a while; yet a
competing flow's slow start must see us gone within a few hundred ms."""
GAIN_BPS_PER_S: Final = 2.0 * 1024 * 1024
"""Under the target, the rate grows by at least this many bytes/s each second (additive),
scaled by how far under the target the delay is (RFC 6817's off_target)..."""
MAX_GAIN_BPS_PER_S: Final = 32.0 * 1024 * 1024
"""...and by at most this many: in between, LEDBAT's one MSS per RTT per RTT (MSS / RTT²), so
a short path regains its rate sooner than a long one, as a window-based LEDBAT would..."""
GROWTH_PER_S: Final = 1.0
"""...plus this fraction of the rate itself per second (also scaled by off_target): a fast path
is regained in seconds once the competing traffic left, not in tens of seconds."""
MSS_BYTES: Final = 1448
MIN_RATE_BPS: Final = 32.0 * 1024
"""Floor of the paced rate (bytes/s): a background job yields but never stalls..."""
FLOOR_FRACTION: Final = 0.01
"""...nor goes below this fraction of the fastest arrival rate it saw: the kernel's receiver RTT
takes one sample per window update, so a flow paced at 32 KiB/s on a 200 Mbit/s path sees
the competing traffic leave seconds late (1 % of the path is ~8 samples a second)."""
AHEAD_RATIO: Final = 2.0
AHEAD_BPS: Final = 8.0 * 1024 * 1024
"""The pace grows to at most this multiple of the arrival rate plus this many bytes/s: a pace
(and so a receive window) far above what arrives would let the sender build any queue at once
(RFC 6817: the window grows only while it limits the flow)."""
UNPACE_AFTER_S: Final = 10.0
"""After this long without a backoff, the delay under the target, pacing ends: the path is
quiet again, and an unpaced reader costs nothing but the samples."""
IDLE_FACTOR: Final = 2.0
"""A sample no larger than this many times the receiver's longest wait for data since the
previous one is dropped: a sender that pauses (application-limited, or a server's own rate
limit) makes the kernel's receiver RTT estimate grow toward its pauses (it times an ACK to the
first data echoing it), which says nothing about queues."""
ARRIVAL_WINDOW_S: Final = 0.1
"""Arrivals are counted over windows at least this long for the arrival-rate estimate."""
PEAK_WINDOWS: Final = 15
"""The arrival rate is compared with its peak over the last 15 windows (~1.5 s)..."""
DROP_RATIO: Final = 0.6
"""...and falling under this fraction of it, while the pace did not bind (arrivals under
``BINDING_RATIO`` of the pace, or unpaced) and the reader waited for data at least
``WAITING_SHARE`` of the time, is competition: a backoff."""
BINDING_RATIO: Final = 0.8
WAITING_SHARE: Final = 0.2
SHARE_RATIO: Final = 0.75
"""A queue of half the target or more while the transfer moves less than this fraction of the
fastest it moved on the path (``TOP_DECAY_S``) is someone else's queue: a flow at half the
link's rate builds none of its own.  That is a backoff too (a window-limited competitor, such as
a download with a small receive buffer, builds only a few ms of queue: never over the target,
yet it takes half the link)."""
TOP_DECAY_S: Final = 60.0
"""The fastest arrival rate seen decays with this time constant (a path may slow for good)."""
SETTLE_S: Final = 0.3
"""After a slowdown, the arrival rate is not compared with its peaks for this long."""
INITIAL_SLOWDOWN_S: Final = 2.0
"""The first slowdown comes this long after the first sample, whatever the samples said: a
transfer that starts at full speed builds its own queue before it ever sees the path empty, and
would take that for the base (LEDBAT++'s initial slowdown, after slow start)..."""
SLOWDOWN_AFTER_S: Final = 30.0
"""...and then again when the base delay (within a quarter of the target) was not seen for this
long.  A slowdown drops the pace..."""
SLOWDOWN_FRACTION: Final = 0.125
SLOWDOWN_RTTS: Final = 3
SLOWDOWN_MIN_S: Final = 0.06
"""...to this fraction of what it was (or of what arrived), for this many round trips (as they
were) and at least this long, so the queue drains and the kernel's smoothed RTT shows it; then
the rate is what it was.  Not to the floor: reads at the floor come seconds apart, and the
slowdown could only end with the next one."""


class DelayController:
    """Estimates the queueing delay a transfer adds and the rate (bytes/s) that keeps it under
    the target (``effective_target_s``: ``target_s`` at most).  ``rate_bps`` is None while
    unpaced; between ``floor_now_bps`` (``floor_bps`` at least) and ``ceiling_bps`` (None: no
    ceiling) otherwise.  Not thread-safe (one event loop)."""

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
        self._next_slowdown: float | None = None
        self._slow_until: float | None = None
        self._slow_bps = self.floor_bps
        self._settled_at = 0.0
        self._window_start: float | None = None
        self._window_bytes = 0
        self._window_wait_s = 0.0
        self._peaks: collections.deque[float] = collections.deque(maxlen=PEAK_WINDOWS)
        self.arrival_bps: float | None = None
        self._top_bps = 0.0
        #: diagnostics: backoffs (all; those for a drop of the arrival rate; those for a queue
        #: while outshared), samples dropped as taken while the sender paused, slowdowns
        self.backoffs = 0
        self.drop_backoffs = 0
        self.share_backoffs = 0
        self.ignored = 0
        self.slowdowns = 0

    # ---------------------------------------------------------------------------- inspection

    @property
    def rate_bps(self) -> float | None:
        """The pace in bytes/s; None: unpaced.  Lower during a slowdown."""
        return self._slow_bps if self._slow_until is not None else self._rate

    @property
    def floor_now_bps(self) -> float:
        """The lowest pace now: ``floor_bps``, or ``FLOOR_FRACTION`` of the fastest arrival
        rate seen (within the ceiling)."""
        floor = max(self.floor_bps, FLOOR_FRACTION * self._top_bps)
        return floor if self.ceiling_bps is None else min(floor, self.ceiling_bps)

    @property
    def base_delay_s(self) -> float | None:
        """The path's minimum RTT over the history (None before the first sample)."""
        return min(m for _, m in self._base) if self._base else None

    @property
    def effective_target_s(self) -> float:
        """The queueing delay allowed now: ``target_s``, or less on a path whose base delay
        is short (a fraction of it, never under the floor)."""
        base = self.base_delay_s or 0.0
        return min(self.target_s, max(TARGET_FLOOR_MS / 1000.0, TARGET_BASE_FRACTION * base))

    @property
    def queue_delay_s(self) -> float:
        """The estimated queueing delay this path has now (seconds above the base delay)."""
        base = self.base_delay_s
        if base is None or not self._current:
            return 0.0
        return max(0.0, min(self._current) - base)

    # --------------------------------------------------------------------------------- input

    def on_bytes(self, n: int, now: float, waited_s: float = 0.0) -> None:
        """``n`` body bytes arrived at ``now`` (seconds) after the reader waited ``waited_s``
        for them: the arrival-rate estimate, and the second signal (a drop of it)."""
        if self._window_start is None:
            self._window_start, self._window_bytes, self._window_wait_s = now, 0, 0.0
            return
        self._window_bytes += n
        self._window_wait_s += waited_s
        elapsed = now - self._window_start
        if elapsed < ARRIVAL_WINDOW_S:
            return
        sample = self._window_bytes / elapsed
        waiting = self._window_wait_s / elapsed
        self._window_start, self._window_bytes, self._window_wait_s = now, 0, 0.0
        self.arrival_bps = sample if self.arrival_bps is None else 0.5 * (self.arrival_bps + sample)
        self._top_bps = max(self.arrival_bps, self._top_bps * math.exp(-elapsed / TOP_DECAY_S))
        self._check_drop(now, self.arrival_bps, waiting)
        self._peaks.append(self.arrival_bps)

    def on_rtt(self, rtt_s: float, now: float, idle_s: float = 0.0) -> float | None:
        """A round-trip-time sample (seconds) taken at ``now``; ``idle_s``: the longest the
        receiver waited for data since the previous sample (see ``IDLE_FACTOR``).  Returns the
        new ``rate_bps``."""
        if not (math.isfinite(rtt_s) and rtt_s > 0):
            return self.rate_bps
        if rtt_s <= IDLE_FACTOR * idle_s:
            self.ignored += 1
            return self.rate_bps
        rtt_s = max(rtt_s, RTT_RESOLUTION_S)
        bucket = int(now // BASE_BUCKET_S)
        if self._base and self._base[-1][0] == bucket:
            self._base[-1] = (bucket, min(self._base[-1][1], rtt_s))
        else:
            self._base.append((bucket, rtt_s))
        self._expire_base(bucket)
        self._current.append(rtt_s)
        self._update(now, min(self._current))
        return self.rate_bps

    def resume(self) -> None:
        """The next body after a pause (the job's next file): what it learnt of the path (the
        base delay, the fastest rate, the pace) stays; the arrival rate starts again, as the
        pause between two files is no drop of it."""
        self._window_start = None
        self._peaks.clear()

    # ------------------------------------------------------------------------------ internals

    def _expire_base(self, bucket: int) -> None:
        while self._base and self._base[0][0] <= bucket - BASE_HISTORY:
            self._base.popleft()

    def _check_drop(self, now: float, arrival: float, waiting: float) -> None:
        """The arrival rate fell under ``DROP_RATIO`` of its recent peak while nothing of ours
        held it back: someone else takes the link.  Back off (then the pace binds, so the
        next drop must come from the new pace being undercut in turn)."""
        if len(self._peaks) < PEAK_WINDOWS // 3 or self._slow_until is not None:
            return
        if self._rate is not None and arrival >= BINDING_RATIO * self._rate:
            return
        if waiting < WAITING_SHARE or arrival >= DROP_RATIO * max(self._peaks):
            return
        if now - self._last_backoff < max(ARRIVAL_WINDOW_S, MIN_BACKOFF_INTERVAL_S):
            return
        self._back_off(now, BACKOFF_FACTOR)
        self.drop_backoffs += 1
        self._peaks.clear()

    def _update(self, now: float, current_rtt_s: float) -> None:
        dt = 0.0 if self._last_update is None else max(0.0, min(now - self._last_update, 1.0))
        self._last_update = now
        queue, target = self.queue_delay_s, self.effective_target_s
        if self._next_slowdown is None:
            self._next_slowdown = now + INITIAL_SLOWDOWN_S
        elif queue <= target / 4 and self.slowdowns:
            self._next_slowdown = max(self._next_slowdown, now + SLOWDOWN_AFTER_S)
        if self._slowing(now, current_rtt_s):
            return
        may_back_off = now - self._last_backoff >= max(current_rtt_s, MIN_BACKOFF_INTERVAL_S)
        if queue > target:
            if may_back_off:
                self._back_off(now, self._backoff_factor(queue, target))
            return
        if queue >= target / 2 and self._outshared(now):
            if may_back_off:
                self._back_off(now, BACKOFF_FACTOR)
                self.share_backoffs += 1
            return
        if self._rate is None:
            return
        off_target = (target - queue) / target
        gain = min(MAX_GAIN_BPS_PER_S, max(GAIN_BPS_PER_S, MSS_BYTES / current_rtt_s**2))
        rate = self._rate + (gain + GROWTH_PER_S * self._rate) * off_target * dt
        floor = self.floor_now_bps
        arrival = floor if self.arrival_bps is None else max(self.arrival_bps, floor)
        rate = max(self._rate, min(rate, AHEAD_RATIO * arrival + AHEAD_BPS))
        if self.ceiling_bps is not None and rate >= self.ceiling_bps:
            rate = self.ceiling_bps
        if now - self._last_backoff >= UNPACE_AFTER_S and queue <= target / 2:
            self._rate = None if self.ceiling_bps is None else self.ceiling_bps
            return
        self._rate = rate

    def _slowing(self, now: float, current_rtt_s: float) -> bool:
        """LEDBAT++'s slowdown: ``INITIAL_SLOWDOWN_S`` after the start, and whenever the base
        delay was not seen for ``SLOWDOWN_AFTER_S``, the pace drops to an eighth for a few
        round trips, so the transfer's own standing queue drains and the base is measured
        again.  Whether one is under way."""
        if self._slow_until is not None:
            if now < self._slow_until:
                return True
            self._slow_until = None
            self._next_slowdown = now + SLOWDOWN_AFTER_S  # measured or not: a full period
            self._peaks.clear()  # the slowdown's own low arrivals are no drop
            self._settled_at = now + SETTLE_S
            return False
        if self._next_slowdown is None or now < self._next_slowdown:
            return False
        self._slow_until = now + max(SLOWDOWN_MIN_S, SLOWDOWN_RTTS * current_rtt_s)
        basis = [r for r in (self._rate, self.arrival_bps) if r is not None]
        self._slow_bps = max(self.floor_now_bps, SLOWDOWN_FRACTION * min(basis, default=self.floor_bps))
        self.slowdowns += 1
        return True

    def _outshared(self, now: float) -> bool:
        """Whether the transfer moves under ``SHARE_RATIO`` of the fastest it moved here."""
        if now < self._settled_at or self.arrival_bps is None:
            return False
        return self.arrival_bps < SHARE_RATIO * self._top_bps

    def _backoff_factor(self, queue_s: float, target_s: float) -> float:
        """``BACKOFF_FACTOR`` when the arrival rate fell under its recent peak (competition) or
        the delay is twice the target; else in proportion to the excess, gentler."""
        competing = bool(self._peaks) and (self.arrival_bps or 0.0) < BINDING_RATIO * max(self._peaks)
        if competing:
            return BACKOFF_FACTOR
        proportional = 1.0 - (1.0 - BACKOFF_FACTOR) * (queue_s - target_s) / target_s
        return min(GENTLE_BACKOFF_FACTOR, max(BACKOFF_FACTOR, proportional))

    def _back_off(self, now: float, factor: float) -> None:
        basis = [r for r in (self._rate, self.arrival_bps, self.ceiling_bps) if r is not None]
        if not basis:
            return  # nothing has arrived yet: no rate to start from
        self._rate = max(self.floor_now_bps, min(basis) * factor)
        self._last_backoff = now
        self.backoffs += 1


DEFAULT_YIELDING: Final = {0: False, 1: True, 2: True, 3: True}
"""``BackgroundYield`` by priority (BG_JOB_PRIORITY): on for HIGH, NORMAL and LOW."""


class Running:
    """One job's controller on one remote host, as ``/metrics`` shows it: shared by the job's
    bodies (files, segments) on that host, ``bodies`` of them reading now."""

    __slots__ = ("bodies", "controller", "host", "job_id", "owner_uid", "priority")

    def __init__(
        self, job_id: str, owner_uid: int, priority: int, controller: DelayController, host: str = ""
    ) -> None:
        self.job_id, self.owner_uid, self.priority = job_id, owner_uid, priority
        self.controller, self.host = controller, host
        self.bodies = 0


MAX_IDLE_PATHS: Final = 256
"""At most this many controllers are kept with no body reading (a job between two files);
the oldest go first.  A job's are dropped when its transfer ends (``Politeness.forget``)."""


class Politeness:
    """The service's ``BackgroundYield`` settings (per priority) and ``yield_target_delay_ms``,
    and one controller per job and remote host (``start``/``stop`` by ``pace.Pacer`` around
    each body).  A job's controller outlives its files: the next file (or segment) goes on
    from the base delay and fastest rate the job learnt on that path, so one started beside
    a competitor's standing queue does not take that queue for its base, and a job of short
    files yields as a long one does.  Changes apply at once to running transfers: a target
    moves the controllers' target, a priority turned off stops pacing at its next read."""

    def __init__(self) -> None:
        self.enabled: dict[int, bool] = dict(DEFAULT_YIELDING)
        self.target_delay_ms: float = DEFAULT_TARGET_DELAY_MS
        #: (job id, host) -> its controller, least recently used first
        self._paths: dict[tuple[str, str], Running] = {}

    @property
    def running(self) -> dict[tuple[str, str], Running]:
        """The controllers a body reads with now (one per job and host: ``/metrics``)."""
        return {key: one for key, one in self._paths.items() if one.bodies}

    def configure(self, enabled: dict[int, bool] | None = None, target_delay_ms: float | None = None) -> None:
        if enabled is not None:
            self.enabled.update(enabled)
        if target_delay_ms is not None:
            if not (math.isfinite(target_delay_ms) and target_delay_ms > 0):
                raise ValueError(f"target delay must be > 0 ms, got {target_delay_ms!r}")
            self.target_delay_ms = float(target_delay_ms)
            for one in self._paths.values():
                one.controller.target_s = self.target_delay_ms / 1000.0

    def yields(self, priority: int) -> bool:
        return self.enabled.get(priority, False)

    def start(self, job_id: str, owner_uid: int, priority: int, host: str = "") -> Running:
        """The controller of ``job_id`` on ``host`` for a body starting now (the job's own
        if it has one there); ``stop`` it when the body ends."""
        key = (job_id, host)
        one = self._paths.pop(key, None)
        if one is None:
            one = Running(job_id, owner_uid, priority, DelayController(self.target_delay_ms), host)
        elif not one.bodies:
            one.controller.resume()
        self._paths[key] = one  # (the most recently used: last)
        one.priority = priority
        one.bodies += 1
        self._trim()
        return one

    def stop(self, one: Running) -> None:
        """A body of ``one`` ended; its controller stays for the job's next body."""
        one.bodies = max(0, one.bodies - 1)
        self._trim()

    def forget(self, job_id: str) -> None:
        """The job's transfer ended: its controllers go."""
        for key in [key for key in self._paths if key[0] == job_id]:
            del self._paths[key]

    def _trim(self) -> None:
        idle = [key for key, one in self._paths.items() if not one.bodies]
        for key in idle[: max(0, len(idle) - MAX_IDLE_PATHS)]:
            del self._paths[key]
