"""The segments of one file's download, sans I/O: how a file is split, how a free connection
steals half of the largest segment left, what is durable and what the store keeps.

A segment is ``[start, end)`` of the file; ``done`` is how far its bytes are durable (covered
by an ``fdatasync``), ``written`` how far they are in the file, ``received`` how far they
arrived (written, or waiting in the segment's write buffer).  ``end`` only ever moves down:
when a connection is free and no segment is waiting for one, the segment with the most left
gives the upper half of what it has not received (``steal``); its reader stops at the new end.
At the very end (nothing left worth splitting) a free connection fetches the tail of a
segment whose connection has gone silent, alongside it (``tail``: as BitTorrent's end game);
whichever connection has the bytes first ends both.

The store keeps ``[[start, done, end], ...]`` (``encode``/``decode``): only durable offsets,
so a file resumed after SIGKILL fetches each segment from its ``done`` — no byte lost, none
fetched twice beyond what was not yet durable.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

#: the least bytes a segment starts with (a file is split into fewer segments than
#: connections when it is small), and half the least a segment must have left to be split
PIECE_BYTES = 1024 * 1024
#: a segment is split only when it has at least this much left
STEAL_MIN_BYTES = 2 * PIECE_BYTES
#: a segment's connection silent this long, with less than STEAL_MIN_BYTES left, lets a free
#: connection fetch its tail too: a server that paces in bursts (nginx's ``limit_rate``: 2 MiB,
#: then 100 ms of silence) would otherwise hold the whole file for its last few bytes
TAIL_IDLE_S = 0.015
#: how long the last of several connections waits before each new try (``last_retry_s``)
LAST_RETRIES_S = (0.25, 0.5, 1.0)


@dataclass(slots=True)
class Segment:
    start: int
    end: int
    done: int
    written: int
    received: int
    busy: bool = False  # a connection fetches it
    last_s: float = 0.0  # (monotonic) when its connection last brought bytes, or was asked
    twinned: bool = False  # a second connection fetches its tail too (``tail``)
    answered: bool = False  # its connection's answer began (its body is being read)

    @property
    def left(self) -> int:
        """Bytes not yet received."""
        return self.end - self.received

    @property
    def finished(self) -> bool:
        return self.written >= self.end


def fresh(start: int, end: int, done: int | None = None) -> Segment:
    done = start if done is None else done
    return Segment(start, end, done, done, done)


def split(total: int, connections: int) -> list[Segment]:
    """A file of ``total`` bytes in up to ``connections`` equal segments of at least
    ``PIECE_BYTES`` each."""
    count = max(1, min(connections, total // PIECE_BYTES))
    size = -(-total // count)
    return [fresh(i * size, min((i + 1) * size, total)) for i in range(count) if i * size < total]


def steal(segments: list[Segment]) -> tuple[Segment, bool] | None:
    """A segment for a free connection, and whether it was split off another: one waiting
    for a connection, else the upper half of what the busiest segment has not received (when
    it has ``STEAL_MIN_BYTES`` left); None: nothing worth a connection is left."""
    for s in segments:
        if not s.busy and not s.finished:
            s.busy = True
            return s, False
    victim = max((s for s in segments if s.busy), key=lambda s: s.left, default=None)
    if victim is None or victim.left < STEAL_MIN_BYTES:
        return None
    middle = victim.received + victim.left // 2
    taken = fresh(middle, victim.end)
    taken.busy = True
    victim.end = middle
    segments.insert(segments.index(victim) + 1, taken)
    return taken, True


def tail(segments: list[Segment], now_s: float, idle_s: float = TAIL_IDLE_S) -> tuple[Segment | None, float]:
    """For a free connection that ``steal`` found nothing for: the busy segment whose tail it
    should fetch alongside (its connection silent for ``idle_s``, the longest), and 0; or that
    segment and the seconds until it will have been silent that long (ask again then); or
    (None, 0): no segment is left to help (each is done, arriving in full, or helped)."""
    # (a segment whose answer has not begun is not silent: its request or its head is on its way)
    waiting = [s for s in segments if s.busy and s.answered and not s.twinned and s.left > 0]
    if not waiting:
        return None, 0.0
    silent = min(waiting, key=lambda s: s.last_s)
    return silent, max(0.0, silent.last_s + idle_s - now_s)


def twin(victim: Segment, now_s: float) -> Segment:
    """The tail of ``victim`` (what it has not received) as a segment of its own, for a second
    connection; not in the file's list until it wins (``settle``)."""
    taken = fresh(victim.received, victim.end)
    taken.busy, taken.last_s = True, now_s
    victim.twinned = True
    return taken


def settle(segments: list[Segment], victim: Segment, taken: Segment) -> Segment | None:
    """``taken`` (the twin of ``victim``) arrived whole first: ``victim`` ends where it had
    received, the rest is ``taken``'s (written, not yet durable), inserted after it; None when
    ``victim`` had received everything meanwhile."""
    victim.twinned = False
    cut = max(victim.received, taken.start)
    if cut >= victim.end:
        return None
    rest = Segment(cut, victim.end, cut, victim.end, victim.end)
    victim.end = cut
    segments.insert(segments.index(victim) + 1, rest)
    return rest


def durable_bytes(segments: list[Segment]) -> int:
    """BytesTransferred: the durable bytes of every segment."""
    return sum(s.done - s.start for s in segments)


def prefix(segments: list[Segment]) -> int:
    """How far the file is written without a gap from byte 0 (the digest follows it)."""
    at = 0
    for s in sorted(segments, key=lambda s: s.start):
        if s.start > at:
            break
        at = max(at, s.written)
        if s.written < s.end:
            break
    return at


def encode(segments: list[Segment]) -> str:
    """The store's form: ``[[start, done, end], ...]`` by start, finished neighbours merged."""
    rows: list[list[int]] = []
    for s in sorted(segments, key=lambda s: s.start):
        last = rows[-1] if rows else None
        if last is not None and last[1] == last[2] == s.start:
            last[1], last[2] = s.done, s.end
        else:
            rows.append([s.start, s.done, s.end])
    return json.dumps(rows, separators=(",", ":"))


def decode(text: str, total: int) -> list[Segment] | None:
    """The segments the store kept for a file of ``total`` bytes; None when they do not
    cover it exactly (the file starts again from byte 0)."""
    try:
        rows = json.loads(text)
        segments = [fresh(int(a), int(c), int(b)) for a, b, c in rows]
    except (ValueError, TypeError):
        return None
    at = 0
    for s in segments:
        if s.start != at or not s.start <= s.done <= s.end:
            return None
        at = s.end
    return segments if at == total and segments else None


def last_durable(segments: list[Segment]) -> int:
    """The end of the last durable byte: the temporary file is at least this long (a
    segment with nothing durable counts for nothing: the file is preallocated KEEP_SIZE)."""
    return max((s.done for s in segments if s.done > s.start), default=0)


def extent(text: str | None, bytes_transferred: int) -> int:
    """How many bytes from 0 a copy of the temporary file must keep (TakeOwnership): the
    durable prefix of a one-stream file, up to the last durable byte of a segmented one."""
    if text is None:
        return bytes_transferred
    try:
        return last_durable([fresh(int(a), int(c), int(b)) for a, b, c in json.loads(text)])
    except (ValueError, TypeError):
        return bytes_transferred


def strong_validator(headers: Mapping[str, str]) -> bool:
    """The response names its content strongly enough to join ranges of it: a strong ETag,
    or no ETag and a Last-Modified (as a resume's If-Range accepts them)."""
    etag = headers.get("ETag")
    if etag:
        return not etag.startswith("W/")
    return bool(headers.get("Last-Modified"))


def connections_for(
    status: int, headers: Mapping[str, str], length: int | None, connections: int, min_bytes: int
) -> int:
    """How many segments a first answer (to a plain GET from byte 0) allows: 1 unless it is a
    200 of known length of at least ``min_bytes``, that offers byte ranges
    (``Accept-Ranges: bytes``) with a strong validator, and the file may use several
    ``connections``."""
    if connections <= 1 or status != 200 or length is None or length < max(min_bytes, STEAL_MIN_BYTES):
        return 1
    if (headers.get("Accept-Ranges") or "").strip().lower() != "bytes":
        return 1
    if (headers.get("Content-Encoding") or "identity").strip().lower() != "identity":
        return 1
    return connections if strong_validator(headers) else 1


def asked_holds(left_s: float) -> bool:
    """Whether a server's Retry-After with ``left_s`` still to run (on any of a file's
    connections) holds them back longer than the last connection's tries would wait: the
    file then fails with that answer, and the job's retry waits it (``policy.retry_delay_s``)."""
    return left_s > LAST_RETRIES_S[-1]


def last_retry_s(tries: int, connections: int, asked_left_s: float, jitter: float) -> float | None:
    """How long the last of several connections waits before its ``tries``-th try again,
    None when it tries no more (one connection, its tries spent, or ``asked_holds``): a
    server counts a connection just closed a little while longer.  A shorter Retry-After
    stretches the wait; ``jitter`` (0..1) adds up to a quarter, so clients that failed
    together do not come back together."""
    if connections < 2 or tries >= len(LAST_RETRIES_S) or asked_holds(asked_left_s):
        return None
    return max(LAST_RETRIES_S[tries], asked_left_s) * (1.0 + 0.25 * jitter)
