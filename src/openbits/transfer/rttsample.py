"""Round-trip-time samples of a TCP socket, from the kernel's ``TCP_INFO`` (Linux).

The receiver's own estimate, ``tcpi_rcv_rtt`` (from TCP timestamps, or once per window), is
what a receiving socket keeps fresh: ``tcpi_rtt`` (the sender's smoothed RTT) only moves when
data *we* send is acknowledged, which a download hardly does.  The first is used when the
kernel has one, else the second.  Offsets from ``struct tcp_info`` in ``linux/tcp.h`` (stable
ABI: fields are only ever appended).

:class:`RttSampler` reads at most once per ``interval_s`` (one ``getsockopt`` per ~10 ms of a
streaming body, not one per chunk) and feeds a ``yieldctl.DelayController``.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from typing import Final

from openbits.transfer.yieldctl import DelayController

__all__ = [
    "MIN_CLAMP_BYTES",
    "MIN_RCVBUF_BYTES",
    "SAMPLE_INTERVAL_S",
    "UNPACED_RCVBUF_BYTES",
    "RttSampler",
    "autotuned_rcvbuf_bytes",
    "bound_receive_buffer",
    "clamp_window",
    "tcp_rtt_s",
]

SAMPLE_INTERVAL_S: Final = 0.01
"""At most one ``TCP_INFO`` read per 10 ms: a competing flow's slow start is over in a few
hundred ms, and the controller filters over 3 samples."""

_TCP_INFO: Final = getattr(socket, "TCP_INFO", 11)
_RTT_OFFSET: Final = 68  # __u32 tcpi_rtt, microseconds
_RCV_RTT_OFFSET: Final = 92  # __u32 tcpi_rcv_rtt, microseconds
_INFO_BYTES: Final = 104  # up to tcpi_total_retrans: present since Linux 2.6


def tcp_rtt_s(sock: socket.socket) -> float | None:
    """The socket's RTT in seconds (receiver estimate first), or None when the kernel has none
    (no data yet, not TCP, closed)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _INFO_BYTES)
    except OSError:
        return None
    if len(info) < _RCV_RTT_OFFSET + 4:
        return None
    (rcv_rtt_us,) = struct.unpack_from("=I", info, _RCV_RTT_OFFSET)
    (rtt_us,) = struct.unpack_from("=I", info, _RTT_OFFSET)
    us = rcv_rtt_us or rtt_us
    return us / 1e6 if us else None


_INT_MAX: Final = 2**31 - 1
"""The largest value a socket option of C type ``int`` takes (a larger one is a TypeError
from ``setsockopt``, not an OSError)."""
_UNCLAMPED_BYTES: Final = 1 << 30
"""A window clamp this large clamps nothing (the receive buffer bounds the window first)."""
MIN_CLAMP_BYTES: Final = 8 * 1024
"""The smallest window a clamp leaves (~6 segments; at 4 KiB a Linux sender was seen to stall
for good): on a short path even 64 KiB in flight is tens of MB/s, so a yielding flow must be
able to go lower (the bounded buffer and paced reads bound its rate the rest of the way)."""


def clamp_window(sock: socket.socket, window_bytes: int | None) -> None:
    """Bound the receive window the socket advertises (``TCP_WINDOW_CLAMP``; None: lift the
    bound), so the sender keeps at most that much in flight: what a paced receiver's own queue
    at the bottleneck can grow to (rLEDBAT's window).  Best effort: errors are ignored (a
    window past ``INT_MAX`` is capped there, clamping nothing)."""
    value = _UNCLAMPED_BYTES if window_bytes is None else min(_INT_MAX, max(MIN_CLAMP_BYTES, window_bytes))
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_WINDOW_CLAMP, value)


MIN_RCVBUF_BYTES: Final = 64 * 1024
"""The receive buffer of a paced socket is never below this."""
UNPACED_RCVBUF_BYTES: Final = 6 * 1024 * 1024
"""A let-go buffer when ``tcp_rmem`` cannot be read (Linux's default maximum)."""
_TCP_RMEM: Final = "/proc/sys/net/ipv4/tcp_rmem"
_SO_RCVBUFFORCE: Final = getattr(socket, "SO_RCVBUFFORCE", 33)


def autotuned_rcvbuf_bytes() -> int:
    """What autotuning may grow a receive buffer to: ``net.ipv4.tcp_rmem``'s maximum (read each
    time: a let-go is rare, and the sysctl may change), else ``UNPACED_RCVBUF_BYTES``."""
    try:
        with open(_TCP_RMEM, encoding="ascii") as f:
            return int(f.read().split()[2])
    except (OSError, ValueError, IndexError):
        return UNPACED_RCVBUF_BYTES


def bound_receive_buffer(sock: socket.socket, buffer_bytes: int | None) -> None:
    """Bound the socket's receive buffer (``SO_RCVBUF``; None: let it go).  The window clamp
    alone cannot slow a sender on a short path (a few KiB per RTT of a millisecond is MB/s),
    and paced reads only bind once the buffer is full: an auto-tuned buffer holds tens of MB,
    seconds of a sender that should have yielded.

    A buffer once set stays locked (the kernel has no way back to autotuning), so letting go
    sets it to what autotuning could reach, ``tcp_rmem``'s maximum: ``SO_RCVBUFFORCE`` (we
    may be root), else ``SO_RCVBUF`` (the kernel caps it at ``net.core.rmem_max``).  Leaving
    the buffer unlocked until another flow is seen would not do: the first backoff's pace
    would not bind for seconds (a buffer auto-tuned to tens of MB drains first), nor could a
    slowdown drain its own queue to measure the base delay; a large locked buffer costs no
    memory until filled (the kernel charges what is queued, not the limit).
    Best effort: errors are ignored."""
    if buffer_bytes is None:
        # the kernel doubles what it is given (for its overhead) and autotuning bounds that
        # doubled figure by tcp_rmem's maximum: half of it is asked for
        value = max(MIN_RCVBUF_BYTES, autotuned_rcvbuf_bytes() // 2)
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, min(_INT_MAX, value))
            return
        except OSError:
            pass  # EPERM without CAP_NET_ADMIN: SO_RCVBUF, capped at rmem_max
    else:
        value = max(MIN_RCVBUF_BYTES, buffer_bytes)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, min(_INT_MAX, value))


class RttSampler:
    """Samples one socket's RTT into a controller, at most once per ``interval_s``."""

    __slots__ = ("controller", "interval_s", "next_s", "samples", "sock")

    def __init__(
        self, sock: socket.socket, controller: DelayController, interval_s: float = SAMPLE_INTERVAL_S
    ) -> None:
        self.sock, self.controller, self.interval_s = sock, controller, interval_s
        self.next_s = 0.0
        self.samples = 0

    def poll(self, now: float, idle_s: float = 0.0) -> bool:
        """Take a sample if ``interval_s`` has passed since the last (``now``: monotonic s;
        ``idle_s``: the longest wait for data since then); whether it was time to."""
        if now < self.next_s:
            return False
        self.next_s = now + self.interval_s
        rtt = tcp_rtt_s(self.sock)
        if rtt is not None:
            self.samples += 1
            self.controller.on_rtt(rtt, now, idle_s)
        return True
