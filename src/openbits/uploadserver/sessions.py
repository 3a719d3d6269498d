"""The upload sessions: records in the state directory, written durably; they survive restarts.

``<state>/sessions/{ID}.json`` holds one session (its target, client, total, the offset
acknowledged, how far the partial file is known durable, the kernel's boot id of that save, its
state, the reply); it is replaced atomically (temporary file, fdatasync, rename, fsync of the
directory; in a worker thread, off the event loop).  It is not saved at every fragment: a
fragment's Ack waits for neither the disk nor the record (at most once a second a fragment makes
the partial file durable and saves the record: ``uploads``).  What a restart believes:

- the same boot (the server process was killed or restarted, the machine was not): every byte
  the partial file holds was written by an earlier process from a fragment's body, in order, and
  the page cache still has it: the session goes on from the file's length;
- another boot (a power cut, a crash of the machine): only ``durable_offset`` bytes are known to
  be on the disk; the partial file is cut back to it.

A client that resends from an older offset is answered 416 with the server's, which BITS
clients follow either way.  The partial file lives beside its target, as ``.bits-{ID}.part``
(so that Close-Session publishes it by a rename, never a copy).
Replies of the server application are kept in ``<state>/replies/{ID}.reply``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from openbits.uploadserver.paths import PARTIAL_PREFIX, PARTIAL_SUFFIX, Target

OPEN = "open"  # fragments may come
COMPLETE = "complete"  # every byte received (and the application notified, if any)
CLOSED = "closed"  # published or dropped; kept as a tombstone so a repeated Close is answered 200


@dataclass(slots=True)
class Session:
    """One upload session (what its record holds)."""

    session_id: str
    parts: list[str]
    name: str
    client: str
    created_s: float
    last_activity_s: float
    total: int | None = None
    offset: int = 0
    durable_offset: int = 0  # the partial file's bytes known to be on the disk (fdatasync'd)
    boot_id: str = ""  # the kernel boot this record was saved in (`kernel_boot_id`)
    state: str = OPEN
    notified: bool = False  # the server application answered 2xx
    reply_url: str | None = None  # a static URL the application gave, else None
    copy_to_destination: bool = True  # publish at Close (false: the application kept it)

    @property
    def target(self) -> Target:
        return Target(tuple(self.parts), self.name)

    @property
    def partial_name(self) -> str:
        return f"{PARTIAL_PREFIX}{self.session_id.strip('{}')}{PARTIAL_SUFFIX}"

    @property
    def live(self) -> bool:
        return self.state != CLOSED


class SessionStore:
    """The sessions, in memory and in ``<state>/sessions``; one lock a session."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.boot_id = kernel_boot_id()
        self.sessions_dir = os.path.join(state_dir, "sessions")
        self.replies_dir = os.path.join(state_dir, "replies")
        for directory in (state_dir, self.sessions_dir, self.replies_dir):
            os.makedirs(directory, mode=0o700, exist_ok=True)
        self._sessions: dict[str, Session] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        #: ids of records that could not be read: their partial files are looked for once
        self.damaged: set[str] = set()
        self._load_all()

    def _load_all(self) -> None:
        for entry in os.listdir(self.sessions_dir):
            path = os.path.join(self.sessions_dir, entry)
            if entry.endswith(".tmp"):
                os.unlink(path)
                continue
            if not entry.endswith(".json"):
                continue
            try:
                with open(path, encoding="utf-8") as f:
                    fields = json.load(f)
                # (a record of an older server was saved at every fragment, after its bytes)
                fields.setdefault("durable_offset", fields.get("offset", 0))
                session = Session(**fields)
            except (OSError, ValueError, TypeError, AttributeError):
                # a damaged record: its session is unknown (the client starts over)
                self.damaged.add(entry.removesuffix(".json"))
                continue
            self._sessions[session.session_id] = session

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._sessions.values()))

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def lock(self, session_id: str) -> asyncio.Lock:
        """The session's lock: one request of a session at a time (bits-spec §6.1)."""
        return self._locks.setdefault(session_id, asyncio.Lock())

    def live_count(self, client: str) -> int:
        """The client's sessions that hold a partial file: open, or complete but not closed."""
        return sum(1 for s in self._sessions.values() if s.client == client and s.live)

    def new(self, session_id: str, target: Target, client: str) -> Session:
        """A new session, recorded (call `save` to make the record durable)."""
        now = time.time()
        session = Session(session_id, list(target.parts), target.name, client, now, now)
        self._sessions[session_id] = session
        return session

    async def save(self, session: Session) -> None:
        """Replace the session's record durably, off the event loop (the caller holds the
        session's lock, or owns a session no request can reach yet)."""
        session.boot_id = self.boot_id
        record = json.dumps(asdict(session)).encode()  # a snapshot, taken on the loop
        await asyncio.to_thread(self._write_record, session.session_id, record)

    def _write_record(self, session_id: str, record: bytes) -> None:
        """Temporary file, fdatasync, rename, fsync of the directory: after a power cut the
        record is the old one or the new one, and a renamed one stays renamed."""
        path = self._record_path(session_id)
        temp = path + ".tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(record)
            while view:
                view = view[os.write(fd, view) :]
            os.fdatasync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
        _fsync_path(self.sessions_dir)

    def forget(self, session: Session) -> None:
        """Remove the record and the reply of a session (its partial file is the caller's)."""
        self._sessions.pop(session.session_id, None)
        self._locks.pop(session.session_id, None)
        self.forget_files(session.session_id)

    def forget_files(self, session_id: str) -> None:
        """Remove the record and the reply files of ``session_id``."""
        self.damaged.discard(session_id)
        for path in (self._record_path(session_id), self.reply_path(session_id)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def reply_path(self, session_id: str) -> str:
        return os.path.join(self.replies_dir, f"{session_id}.reply")

    def _record_path(self, session_id: str) -> str:
        return os.path.join(self.sessions_dir, f"{session_id}.json")


def kernel_boot_id() -> str:
    """The running kernel's boot id: a page cache that outlived a server process belongs to it
    ("" when unreadable, which no record matches: restarts then trust durable bytes only)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def _fsync_path(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
