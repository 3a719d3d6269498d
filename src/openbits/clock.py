"""Injected time: the service and the scheduler never call time.* directly."""

from __future__ import annotations

import time


class Clock:
    """Wall-clock nanoseconds (stored deadlines) and a monotonic clock (intervals)."""

    def now_ns(self) -> int:
        return time.time_ns()

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock(Clock):
    """A clock tests move by hand."""

    def __init__(self, now_ns: int = 1_700_000_000 * 10**9) -> None:
        self._now_ns = now_ns

    def now_ns(self) -> int:
        return self._now_ns

    def monotonic(self) -> float:
        return self._now_ns / 1e9

    def advance(self, seconds: float) -> None:
        self._now_ns += int(seconds * 1e9)
