"""Group commit: the store's fsyncs and checkpoints, off the event loop.

The daemon's connection commits in WAL mode with ``synchronous=NORMAL``: a commit writes its
frames to the WAL (page cache, tens of µs) and returns, so it survives SIGKILL at once.  What
makes it survive power loss too is the WAL's fsync, which :class:`GroupCommit` does on its own
thread: a verb awaits :meth:`GroupCommit.durable` before it answers, and one fsync covers every
commit made before it started (a group: ten callers committing at once share one fsync).  Reads
and the transfers never wait behind it; only the callers who asked for durability do.

The thread also fsyncs on its own within ``flush_s`` of any commit nobody awaited (the daemon's
progress checkpoints), and checkpoints the WAL into the database file (``PASSIVE``, on its own
connection) once the WAL has grown past ``checkpoint_bytes``: SQLite's automatic checkpoint,
which would run inside a commit on the loop, is turned off by the store.

An fsync that fails fails every caller waiting for it (StoreWriteFailed: 507), and the next
one is tried afresh; a commit is never reported durable that was not covered by a successful
fsync.  (Linux may drop the dirty pages of a failed fsync: such a commit is reported failed,
the state in memory stands, as with any of the daemon's own unsaved changes.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Callable

from openbits.errors import StoreWriteFailed

log = logging.getLogger(__name__)

#: how soon a commit nobody waits for is made durable anyway (seconds)
FLUSH_S = 1.0
#: the WAL size past which the thread checkpoints it into the database file
CHECKPOINT_BYTES = 4 * 1024 * 1024
#: what the store keeps of the WAL's file when it restarts it (``journal_size_limit``): under
#: CHECKPOINT_BYTES, so a checkpointed WAL is not checkpointed again until it has grown anew
WAL_KEEP_BYTES = 1024 * 1024


class GroupCommit:
    """The fsync of one SQLite database's WAL, done on a thread for whoever awaits it.

    ``committed()`` and ``durable()`` are called from the event loop's thread alone; the
    counters are plain ints (a reader on the other thread sees each write whole)."""

    def __init__(
        self,
        db_path: str,
        *,
        flush_s: float = FLUSH_S,
        checkpoint_bytes: int = CHECKPOINT_BYTES,
        fsync: Callable[[int], None] = os.fsync,
    ) -> None:
        self.db_path = db_path
        self.wal_path = db_path + "-wal"
        self.flush_s = flush_s
        self.checkpoint_bytes = checkpoint_bytes
        self._fsync = fsync
        self._cond = threading.Condition()
        self._written = 0  # commits made (the loop's thread)
        self._synced = 0  # commits covered by a successful fsync (the sync thread)
        self._wanted = 0  # the newest commit someone waits for
        self._closing = False
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []  # (the loop's thread)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.fsyncs = 0  # (for /metrics and the tests: fsyncs done)
        self.checkpoints = 0
        self._wal_inode: int | None = None  # the WAL whose directory entry is durable

    @property
    def pending(self) -> bool:
        """Some commit is not yet known durable."""
        return self._synced < self._written

    def committed(self) -> None:
        """A commit was made (its frames are in the WAL): to be fsync'd within ``flush_s``."""
        self._written += 1
        if self._thread is None:
            self._start()

    async def durable(self) -> None:
        """Return once every commit made before this call is durable (its WAL fsync'd);
        StoreWriteFailed when that fsync failed."""
        target = self._written
        if self._synced >= target:
            return
        loop = asyncio.get_running_loop()
        self._loop = loop
        future: asyncio.Future[None] = loop.create_future()
        self._waiters.append((target, future))
        with self._cond:
            self._wanted = max(self._wanted, target)
            self._cond.notify()
        await future

    def close(self) -> None:
        """Make every commit durable, checkpoint nothing more, stop the thread."""
        thread = self._thread
        if thread is None:
            return
        with self._cond:
            self._closing = True
            self._cond.notify()
        thread.join()
        self._thread = None

    # -- the sync thread ------------------------------------------------------------------------

    def _start(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="openbits-store-sync", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        checkpointer: sqlite3.Connection | None = None
        try:
            while True:
                with self._cond:
                    if not self._closing and self._wanted <= self._synced:
                        self._cond.wait(self.flush_s)
                    closing = self._closing
                target = self._written  # (every commit counted here has written its frames)
                if target > self._synced:
                    self._sync(target)
                if closing:
                    return
                checkpointer = self._maybe_checkpoint(checkpointer)
        finally:
            if checkpointer is not None:
                checkpointer.close()

    def _sync(self, target: int) -> None:
        error: StoreWriteFailed | None = None
        try:
            fd = os.open(self.wal_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # (no WAL: everything is checkpointed and synced)
            fd = -1
        except OSError as e:
            error = StoreWriteFailed(f"the job store {self.db_path} cannot make the change durable: {e}")
            fd = -1
        if fd >= 0:
            try:
                self._fsync(fd)
                self.fsyncs += 1
                self._sync_new_wal_name(fd)
            except OSError as e:
                error = StoreWriteFailed(f"the job store {self.db_path} cannot make the change durable: {e}")
                log.error("%s", error)
            finally:
                os.close(fd)
        with self._cond:
            if error is None:
                self._synced = max(self._synced, target)
            elif self._wanted <= target:  # (a caller who came meanwhile is served at once)
                self._wanted = self._synced  # (tried again for the next caller)
        self._tell_loop(target, error)

    def _sync_new_wal_name(self, fd: int) -> None:
        """A WAL file made since the last fsync (SQLite deletes it at every clean close) has a
        name only as durable as its directory: fsync that once per WAL (what SQLite's FULL
        does with its directory sync), or a power loss could take the whole WAL with it."""
        inode = os.fstat(fd).st_ino
        if inode == self._wal_inode:
            return
        directory = os.open(os.path.dirname(os.path.abspath(self.wal_path)), os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._fsync(directory)
        finally:
            os.close(directory)
        self._wal_inode = inode

    def _tell_loop(self, target: int, error: StoreWriteFailed | None) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # (the loop is closed: nobody waits)
            loop.call_soon_threadsafe(self._resolve, target, error)

    def _resolve(self, target: int, error: StoreWriteFailed | None) -> None:
        """(On the loop) Wake the waiters whose commits the fsync up to ``target`` covered."""
        keep: list[tuple[int, asyncio.Future[None]]] = []
        for wanted, future in self._waiters:
            if wanted > target:
                keep.append((wanted, future))
            elif not future.done():
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)
        self._waiters = keep

    def _maybe_checkpoint(self, connection: sqlite3.Connection | None) -> sqlite3.Connection | None:
        """Copy the WAL into the database file once it has grown (PASSIVE: never waits for, nor
        blocks, the loop's connection); the connection to use next time."""
        try:
            if os.stat(self.wal_path).st_size < self.checkpoint_bytes:
                return connection
            if connection is None:
                connection = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
                connection.execute("PRAGMA synchronous=NORMAL")  # (WAL synced before, the file after)
            connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self.checkpoints += 1  # (the loop's next commit restarts the WAL, cut to WAL_KEEP_BYTES)
        except (OSError, sqlite3.Error) as e:
            log.warning("cannot checkpoint the job store's WAL yet: %s", e)
        return connection
