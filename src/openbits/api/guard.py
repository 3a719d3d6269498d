"""Slowing down token guessing on the TCP listener: a failure count per client address.

An address (an IPv6 client: its /64, which one host usually holds whole) may present a few
wrong bearer tokens (``free_failures``); after that each further failure shuts it out for a
time that doubles, from ``base_delay_s`` up to ``max_delay_s``.  While shut out, its
requests are answered 429 with ``Retry-After`` at once, their tokens not even looked at (no
connection is held open: a delayed answer would let a guesser tie up the daemon instead).
A good token does not clear the count (a guesser could use his own token to do so); the
count is forgotten ``forget_s`` after the address's last failure.

Memory is bounded: at most ``max_addresses`` addresses are remembered, the one whose last
failure is oldest forgotten first.  Owned by the app (``GUARD_KEY``), never process-wide.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web


@dataclass(slots=True)
class _Record:
    failures: int
    last_s: float
    blocked_until_s: float


class FailureGuard:
    def __init__(
        self,
        *,
        free_failures: int = 5,
        base_delay_s: float = 0.5,
        max_delay_s: float = 5.0,
        forget_s: float = 600.0,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free_failures = free_failures
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.forget_s = forget_s
        self.max_addresses = max_addresses
        self._clock = clock
        self._seen: OrderedDict[str, _Record] = OrderedDict()
        #: wrong tokens presented, and requests refused with 429, since the daemon started
        self.failures_total = 0
        self.refused_total = 0

    @staticmethod
    def key(address: str | None) -> str:
        """Whom ``address`` counts for: itself, or an IPv6 address's /64."""
        if not address:
            return ""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return address
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.ipv4_mapped is not None:
                return str(ip.ipv4_mapped)
            return str(ipaddress.IPv6Network((ip, 64), strict=False))
        return str(ip)

    def wait_s(self, address: str | None) -> float:
        """How long ``address`` must still wait before a token of its is looked at (0: not)."""
        record = self._seen.get(self.key(address))
        if record is None:
            return 0.0
        wait = record.blocked_until_s - self._clock()
        if wait <= 0:
            return 0.0
        self.refused_total += 1
        return wait

    def failed(self, address: str | None) -> None:
        """``address`` presented a wrong (unknown, revoked or expired) token."""
        self.failures_total += 1
        key = self.key(address)
        now = self._clock()
        record = self._seen.pop(key, None)
        if record is None or now - record.last_s > self.forget_s:
            record = _Record(0, now, now)
        record.failures += 1
        record.last_s = now
        over = record.failures - self.free_failures
        if over > 0:
            delay = min(self.base_delay_s * 2 ** min(over - 1, 32), self.max_delay_s)
            record.blocked_until_s = now + delay
        self._seen[key] = record  # (the newest last: the oldest goes first)
        while len(self._seen) > self.max_addresses:
            self._seen.popitem(last=False)

    def metrics(self) -> str:
        """The counters in Prometheus text (they name no address)."""
        return (
            "# HELP openbits_auth_failures_total Invalid bearer tokens presented on the TCP listener.\n"
            "# TYPE openbits_auth_failures_total counter\n"
            f"openbits_auth_failures_total {self.failures_total}\n"
            "# HELP openbits_auth_refused_total TCP requests answered 429 after too many invalid tokens.\n"
            "# TYPE openbits_auth_refused_total counter\n"
            f"openbits_auth_refused_total {self.refused_total}\n"
        )

    def __len__(self) -> int:
        return len(self._seen)


GUARD_KEY = web.AppKey("guard", FailureGuard)
