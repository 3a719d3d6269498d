"""Live events (``GET /events``): a numbered, persisted, replayable log of job changes.

The daemon adds :meth:`EventLog.on_change` to ``Service.listeners``: every committed
change of a job becomes one event (SPEC §6): an integer id, strictly increasing and never
reused (also across restarts), a type after the BITS callbacks (JobModification,
JobTransferred, JobError, FileTransferred, JobCancelled, JobAcknowledged), and the
instance JSON after the change.

- Progress (a checkpoint) is coalesced per job: at most one JobModification per
  ``event_min_interval_s`` (BITS' minimum notification interval, 500 ms), carrying the
  newest progress. State changes are never delayed or dropped; a progress event still
  pending for the job is sent first, so the order of a job's events is the order of its
  changes.
- Every event is written to the store before anyone hears of it (one small transaction
  without an fsync of its own, right after the job commit it describes: see
  ``SqliteStore.append_events``), so a client that reconnects with ``Last-Event-ID`` gets
  every event it missed, across daemon restarts too. The newest ``event_log_size`` are
  kept, older ones trimmed in batches. A client whose id is older than that (or an id this
  log never issued) is sent a ``Reset`` event first: it missed events.
- Subscribers are bounded queues: a consumer that falls ``QUEUE_LIMIT`` events behind is
  closed (it reconnects with ``Last-Event-ID`` and replays from the store).

Event data is the instance without ``CustomHeaders`` (it may carry credentials), and
without its ``Files`` array when the job has more than ``EVENT_FILES_MAX`` files (as
``GET …?Files=false``; GET the job for them): events stay small and cheap however large
the job. This module imports no web framework; ``api/app.py`` serves the stream.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from openbits.model import Job, JobState
from openbits.store import StoreWriteFailed

log = logging.getLogger("openbits.events")

JOB_MODIFICATION = "JobModification"
JOB_TRANSFERRED = "JobTransferred"
JOB_ERROR = "JobError"
FILE_TRANSFERRED = "FileTransferred"
JOB_CANCELLED = "JobCancelled"
JOB_ACKNOWLEDGED = "JobAcknowledged"
#: every type of job event (SPEC §6)
EVENT_TYPES: tuple[str, ...] = (
    JOB_MODIFICATION,
    JOB_TRANSFERRED,
    JOB_ERROR,
    FILE_TRANSFERRED,
    JOB_CANCELLED,
    JOB_ACKNOWLEDGED,
)
#: sent first (without an id) when a client asks to replay from an id the log no longer
#: holds, or never issued: it missed events and should GET the jobs it cares about
RESET = "Reset"

#: the ``what`` of ``Service._notify`` for a checkpoint (coalesced)
PROGRESS = "progress"
_TYPE_OF_WHAT = {
    "transferred": JOB_TRANSFERRED,
    "error": JOB_ERROR,
    "no progress": JOB_ERROR,
    "maximum download time exceeded": JOB_ERROR,
    "file transferred": FILE_TRANSFERRED,
    "files transferred": FILE_TRANSFERRED,
    "cancelled": JOB_CANCELLED,
    "acknowledged": JOB_ACKNOWLEDGED,
}

#: a job with more files than this is sent without its Files array
EVENT_FILES_MAX = 16
#: how many events a subscriber may fall behind before its stream is closed
QUEUE_LIMIT = 1024
#: events read from the store per query while replaying
REPLAY_PAGE = 256


def event_type(what: str, state: JobState) -> str:
    """The event type of a change the service reported as ``what``; a transient error
    that ran out NoProgressTimeout at once (the job is in ERROR) is a JobError."""
    kind = _TYPE_OF_WHAT.get(what)
    if kind is not None:
        return kind
    if state is JobState.ERROR and what == "transient error":
        return JOB_ERROR
    return JOB_MODIFICATION


def event_data(job: Job) -> str:
    """The instance JSON of an event: no CustomHeaders, no Files for large jobs."""
    cim = job.to_cim(files=len(job.files) <= EVENT_FILES_MAX)
    cim.pop("CustomHeaders", None)
    return json.dumps(cim, separators=(",", ":"))


def sse_frame(event_id: int | None, event: str, data: str) -> bytes:
    """One Server-Sent Event: ``id:``, ``event:``, one ``data:`` line per line of data, a
    blank line."""
    head = "" if event_id is None else f"id: {event_id}\n"
    lines = "".join(f"data: {line}\n" for line in data.split("\n"))
    return f"{head}event: {event}\n{lines}\n".encode()


def sse_comment(text: str) -> bytes:
    """A comment line (keep-alives): ignored by SSE clients."""
    return f": {text}\n\n".encode()


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    id: int
    owner: str
    owner_uid: int
    job_id: str
    type: str
    data: str  # JSON
    created_ns: int

    @property
    def frame(self) -> bytes:
        return sse_frame(self.id, self.type, self.data)

    def row(self) -> tuple[int, str, int, str, str, str, int]:
        return (self.id, self.owner, self.owner_uid, self.job_id, self.type, self.data, self.created_ns)


@dataclass(frozen=True, slots=True)
class EventFilter:
    """What one stream shows: one owner's events (None: everyone's), one job's, some types."""

    owner_uid: int | None = None
    job_id: str | None = None
    types: frozenset[str] | None = None

    def matches(self, event: LoggedEvent) -> bool:
        return (
            (self.owner_uid is None or event.owner_uid == self.owner_uid)
            and (self.job_id is None or event.job_id == self.job_id)
            and (self.types is None or event.type in self.types)
        )


def parse_types(text: str) -> frozenset[str]:
    """``JobTransferred,JobError`` (case-insensitive) -> the set; ValueError if unknown."""
    by_lower = {t.lower(): t for t in EVENT_TYPES}
    types: set[str] = set()
    for item in text.split(","):
        name = by_lower.get(item.strip().lower())
        if name is None:
            raise ValueError(f"{item.strip()!r} is not an event type; use {', '.join(EVENT_TYPES)}")
        types.add(name)
    return frozenset(types)


K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class Coalescer(Generic[K, T]):
    """At most one item per key every ``interval_s``: an item offered sooner is held (the
    newer replacing the older) until its time comes (``take_due``) or it is taken out
    ahead of something that must not wait (``take``). Pure: time is passed in."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last: dict[K, float] = {}  # when the key last let an item through
        self._pending: dict[K, T] = {}

    def offer(self, key: K, item: T, now: float) -> T | None:
        """``item`` if it may go now (the caller sends it), else None (it is held)."""
        last = self._last.get(key)
        if key not in self._pending and (last is None or now - last >= self.interval_s):
            self._last[key] = now
            return item
        self._pending[key] = item
        return None

    def take(self, key: K, now: float) -> T | None:
        """The item held for ``key`` (sent now, ahead of its time), or None."""
        item = self._pending.pop(key, None)
        if item is not None:
            self._last[key] = now
        return item

    def take_due(self, now: float) -> list[T]:
        """The held items whose time has come, in the order they were first held."""
        due = [k for k in self._pending if self._last.get(k, now) + self.interval_s <= now]
        for key in due:
            self._last[key] = now
        return [self._pending.pop(k) for k in due]

    def next_due(self) -> float | None:
        """When the earliest held item may go (None: nothing is held)."""
        times = [self._last.get(k, 0.0) + self.interval_s for k in self._pending]
        return min(times) if times else None

    def forget(self, key: K, now: float) -> None:
        """Drop the key's clock once it no longer matters (nothing held, interval over)."""
        if key not in self._pending and now - self._last.get(key, now - self.interval_s) >= self.interval_s:
            self._last.pop(key, None)

    def __len__(self) -> int:
        return len(self._last)


class Subscription:
    """One stream's bounded queue of live events."""

    def __init__(self, event_filter: EventFilter, horizon: int, limit: int = QUEUE_LIMIT) -> None:
        self.filter = event_filter
        #: the newest id when it subscribed: older events come from the store (replay)
        self.horizon = horizon
        self.limit = limit
        #: why the stream must end ("overflow", "shutdown"), None while it is open
        self.closed: str | None = None
        #: set while the stream is blocked writing to its client
        self.writing = False
        #: breaks the stream's connection (a close while it is blocked writing)
        self.abort: Callable[[], None] | None = None
        self._items: collections.deque[LoggedEvent] = collections.deque()
        self._wake = asyncio.Event()

    def push(self, event: LoggedEvent) -> bool:
        """Queue a live event; False (and the subscription closed) when it is full."""
        if self.closed is not None:
            return False
        if len(self._items) >= self.limit:
            self.close("overflow")
            return False
        self._items.append(event)
        self._wake.set()
        return True

    def close(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason
        self._wake.set()
        if self.writing and self.abort is not None:
            self.abort()

    async def get(self, timeout_s: float) -> LoggedEvent | None:
        """The next live event; None after ``timeout_s`` without one, or when closed and
        drained (then ``closed`` says why)."""
        if not self._items and self.closed is None:
            self._wake.clear()
            try:
                async with asyncio.timeout(timeout_s):
                    await self._wake.wait()
            except TimeoutError:
                return None
        if self._items:
            return self._items.popleft()
        return None


class EventStore(Protocol):
    """What the log needs of the store (``SqliteStore``)."""

    def append_events(
        self, rows: Iterable[tuple[int, str, int, str, str, str, int]], delete_through: int = 0
    ) -> None: ...

    def event_bounds(self) -> tuple[int, int]: ...

    def load_events(
        self,
        after: int,
        until: int,
        *,
        owner_uid: int | None = None,
        job_id: str | None = None,
        limit: int = 256,
    ) -> list[tuple[int, str, int, str, str, str, int]]: ...


class EventLog:
    """The numbered log of job changes, its persistence, and the live subscribers."""

    def __init__(
        self,
        store: EventStore,
        *,
        size: int = 10_000,
        min_interval_s: float = 0.5,
        keepalive_s: float = 15.0,
        now_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.store = store
        self.size = max(1, size)
        self.keepalive_s = keepalive_s
        self._now_ns = now_ns
        oldest, newest = store.event_bounds()
        #: the id of the newest event (0: none yet)
        self.last_id = newest
        #: the oldest id still kept (last_id + 1 when the log is empty)
        self.oldest_id = oldest if newest else newest + 1
        self._trim_every = max(64, self.size // 10)
        self._progress: Coalescer[str, LoggedEvent] = Coalescer(min_interval_s)
        self._timer: asyncio.TimerHandle | None = None
        self._subscribers: set[Subscription] = set()
        self._closed = False
        self._streams_closed = False  # (shutdown: no stream opens any more, events still logged)
        self._unlogged = 0  # events not kept since the store last failed to take one

    # -- the service's listener ------------------------------------------------------------

    def on_change(self, job: Job, what: str) -> None:
        """``Service.listeners``: called after every commit (and checkpoint) of a job."""
        if self._closed:
            return
        now = self._loop_time()
        if what == PROGRESS:
            draft = self._draft(job, JOB_MODIFICATION)
            if self._progress.offer(job.job_id, draft, now) is not None:
                self._emit(draft)
            else:
                self._schedule()
            return
        held = self._progress.take(job.job_id, now)
        if held is not None:
            self._emit(held)
        self._emit(self._draft(job, event_type(what, job.state)))
        if job.state.is_final:
            self._progress.forget(job.job_id, now + self._progress.interval_s)
        else:
            self._progress.forget(job.job_id, now)

    def _draft(self, job: Job, kind: str) -> LoggedEvent:
        """An event without its id yet (0): ids are given in the order events are sent."""
        return LoggedEvent(0, job.owner, job.owner_uid, job.job_id, kind, event_data(job), self._now_ns())

    def _emit(self, draft: LoggedEvent) -> None:
        self.last_id += 1
        event = LoggedEvent(
            self.last_id, draft.owner, draft.owner_uid, draft.job_id, draft.type, draft.data, draft.created_ns
        )
        cut = 0
        if event.id - self.oldest_id >= self.size + self._trim_every:
            cut = event.id - self.size
        try:
            self.store.append_events((event.row(),), cut)
        except StoreWriteFailed as e:  # a full disk must not stop live events or the verb
            if not self._unlogged:
                log.error("events are sent but not kept for replay (from %d): %s", event.id, e)
            self._unlogged += 1
        except Exception:
            log.exception("cannot persist event %d", event.id)
        else:
            if self._unlogged:
                log.warning("events are kept again; %d were not", self._unlogged)
                self._unlogged = 0
            if cut:
                self.oldest_id = cut + 1
        for sub in list(self._subscribers):
            if sub.filter.matches(event) and not sub.push(event):
                self._subscribers.discard(sub)

    def _loop_time(self) -> float:
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:
            return time.monotonic()

    def _schedule(self) -> None:
        due = self._progress.next_due()
        if due is None:
            return
        if self._timer is not None:
            if self._timer.when() <= due:
                return
            self._timer.cancel()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (tests calling on_change directly): flushed by close()
        self._timer = loop.call_at(due, self._flush_due)

    def _flush_due(self) -> None:
        self._timer = None
        if self._closed:
            return
        for draft in self._progress.take_due(self._loop_time()):
            self._emit(draft)
        self._schedule()

    # -- subscribers -------------------------------------------------------------------------

    def subscribe(self, event_filter: EventFilter, limit: int = QUEUE_LIMIT) -> Subscription:
        """Live events from now on (ids above ``horizon``); earlier ones via ``replay``."""
        sub = Subscription(event_filter, self.last_id, limit)
        if self._closed or self._streams_closed:
            sub.close("shutdown")
        else:
            self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def missed(self, last_event_id: int) -> bool:
        """True if events after ``last_event_id`` were trimmed, or this log never issued it
        (a client of another state directory, or of a log that was reset)."""
        return last_event_id < self.oldest_id - 1 or last_event_id > self.last_id

    def replay(self, after: int, until: int, event_filter: EventFilter) -> list[LoggedEvent]:
        """Up to ``REPLAY_PAGE`` stored events with after < id <= until that the filter
        shows, oldest first (call again after the last one's id until it answers [])."""
        while True:
            rows = self.store.load_events(
                after, until, owner_uid=event_filter.owner_uid, job_id=event_filter.job_id, limit=REPLAY_PAGE
            )
            if not rows:
                return []
            events = [LoggedEvent(*row) for row in rows]
            shown = [e for e in events if event_filter.matches(e)]
            if shown:
                return shown
            after = events[-1].id

    def close(self) -> None:
        """Daemon shutdown: send the progress still held, end every stream."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for draft in self._progress.take_due(float("inf")):
            self._emit(draft)
        self.close_streams()
        self._closed = True

    def close_streams(self) -> None:
        """End every stream, and any opened from now on (shutdown's first phase)."""
        self._streams_closed = True
        for sub in list(self._subscribers):
            sub.close("shutdown")
        self._subscribers.clear()
