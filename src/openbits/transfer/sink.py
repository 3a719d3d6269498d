"""The durable sink: bytes into a temporary file, and the syncs that make them durable.

- :class:`Sink` holds the chunks not yet written and the exact offset the file holds up to;
  it writes them with one ``pwritev`` per block (never per chunk), and starts the write-back
  of every ``WRITEBACK_BYTES`` behind it (``diskio.start_writeback``) so the final
  ``fdatasync`` finds little left to write.
- :class:`Syncs` runs the checkpoints of one body: an ``fdatasync`` in a worker thread on a
  dup of the fd while writing goes on, reported as soon as it returned.
- :func:`splice` moves a body from the socket to the file inside the kernel.
- :func:`salvage` keeps what arrived, durably, when a body fails or is cancelled.
- :class:`SyncBatch` makes a batch of small files durable at once (one ``syncfs``).

OSError is translated by the caller through ``files.translating`` (files.py is where
OSError becomes a BitsError).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import os
import time
from collections.abc import Awaitable, Callable, Iterable

from openbits.errors import BitsError, HResult, LocalFileError
from openbits.model import JobFile
from openbits.outlast import waited_through
from openbits.transfer import diskio
from openbits.transfer import files as fs
from openbits.transfer.h1 import Body as H1Body
from openbits.transfer.h1body import FileWriteFailed
from openbits.transfer.http import invalid_response
from openbits.transfer.pace import Pacer

#: buffers per pwritev (Linux's IOV_MAX)
IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024
#: the write-back of the bytes written is started every this many bytes
WRITEBACK_BYTES = 8 * 1024 * 1024
#: the most a splicing thread moves before it hands back to the loop (progress, syncs)
BATCH_BYTES = 4 * 1024 * 1024


class Sink:
    """Chunks waiting to be written, and the exact offset the file holds up to.

    ``offset`` moves only by what ``pwritev`` reported written, and ``pending`` always
    holds exactly the bytes not yet written, even after a write fails half way (a full
    disk): nothing is counted twice or written at the wrong place.

    ``written`` starts the write-back of what was written since ``writeback_offset`` once
    that is ``WRITEBACK_BYTES``: in a worker thread on a dup of the fd (the call can wait
    for the disk's queue, tens of ms under load), one at a time (a range not started while
    one is in flight joins the next).  A hint: durability is still only ``fdatasync``'s.
    """

    __slots__ = ("fd", "offset", "pending", "pending_len", "writeback", "writeback_offset")

    def __init__(self, fd: int, offset: int) -> None:
        self.fd = fd
        self.offset = offset
        self.pending: list[bytes] = []
        self.pending_len = 0
        self.writeback: asyncio.Future[None] | None = None
        self.writeback_offset = offset

    def add(self, chunk: bytes) -> None:
        self.pending.append(chunk)
        self.pending_len += len(chunk)

    def written(self) -> None:
        """``offset`` moved: start the write-back behind it every ``WRITEBACK_BYTES``."""
        start = self.writeback_offset
        if self.offset - start < WRITEBACK_BYTES:
            return
        if self.writeback is not None and not self.writeback.done():
            return  # (one at a time: this range joins the next)
        try:
            fd = os.dup(self.fd)
        except OSError:
            return  # (out of fds: the hint is skipped, the writes go on)
        self.writeback_offset = self.offset
        self.writeback = asyncio.get_running_loop().run_in_executor(
            None, _writeback_dup, fd, start, self.offset - start
        )

    def flush(self) -> None:
        pending = self.pending
        while pending:
            # at most IOV_MAX buffers a call (Linux refuses more: a chunked body in tiny chunks)
            n = os.pwritev(self.fd, pending[:IOV_MAX], self.offset)
            self.offset += n
            self.pending_len -= n
            while pending and n >= len(pending[0]):
                n -= len(pending[0])
                pending.pop(0)
            if n:
                pending[0] = pending[0][n:]
        self.written()


def _writeback_dup(fd: int, offset: int, length: int) -> None:
    try:
        diskio.start_writeback(fd, offset, length)
    finally:
        os.close(fd)


def sync_dup(fd: int) -> None:
    """``fdatasync`` of ``fd``, a dup made for a worker thread, then its close."""
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


class Syncs:
    """The checkpoints of one body: every ``interval_s`` or ``every_bytes`` an ``fdatasync``
    runs in a worker thread on a dup of the fd while writing goes on; as soon as it returned,
    ``checkpoint`` reports what it covered (``durable``), not at the next chunk (a slow
    server may send one only a second later).  Once ``closed`` (the body is done or failed)
    a late sync reports nothing."""

    __slots__ = (
        "checkpoint",
        "closed",
        "durable",
        "enabled",
        "every_bytes",
        "failed",
        "fd",
        "hashing",
        "interval_s",
        "last_time",
        "sync",
        "sync_offset",
    )

    def __init__(
        self,
        fd: int,
        offset: int,
        interval_s: float,
        every_bytes: int,
        checkpoint: Callable[[int], None],
        enabled: bool,
    ) -> None:
        self.fd = fd
        self.interval_s = interval_s
        self.every_bytes = every_bytes
        self.checkpoint = checkpoint
        self.enabled = enabled
        self.durable = offset  # bytes covered by a finished fdatasync and reported
        self.sync: asyncio.Future[None] | None = None
        self.sync_offset = offset
        self.last_time = time.monotonic()
        self.closed = False
        self.failed: BaseException | None = None  # a checkpoint that could not be recorded
        #: called with (fd, written) at each step: an expected digest's hasher catches up
        #: on the bytes just written (``verify.DigestCheck.catch_up``)
        self.hashing: Callable[[int, int], None] | None = None

    def due(self, now: float) -> bool:
        return now - self.last_time >= self.interval_s

    def step(self, written: int, now: float) -> None:
        """``written`` bytes are in the file: report a finished sync, start the next one."""
        if self.failed is not None:
            raise self.failed
        if self.hashing is not None:
            self.hashing(self.fd, written)
        sync = self.sync
        if sync is not None and sync.done():
            sync.result()  # (a failed fdatasync fails the transfer here)
            self._report(sync)
        if (
            self.sync is None
            and self.enabled
            and (self.due(now) or written - self.sync_offset >= self.every_bytes)
        ):
            check_still_linked(self.fd)
            self.sync_offset = written
            self.last_time = now
            self.sync = asyncio.get_running_loop().run_in_executor(None, sync_dup, os.dup(self.fd))
            self.sync.add_done_callback(self._report)

    def _report(self, sync: asyncio.Future[None]) -> None:
        """The sync ``sync`` returned: report its checkpoint (once, if it is still the
        current one and it succeeded; a failure is raised by the next ``step``)."""
        if self.closed or sync is not self.sync or sync.cancelled() or sync.exception() is not None:
            return
        self.sync = None
        try:
            self.checkpoint(self.sync_offset)
        except Exception as e:  # (from a loop callback: the transfer raises it)
            self.failed = e
            return
        self.durable = self.sync_offset

    async def finish(self) -> None:
        if self.sync is not None:
            sync, self.sync = self.sync, None
            await sync
        if self.failed is not None:
            raise self.failed


def check_still_linked(fd: int) -> None:
    """The temporary file (or its directory) was deleted under us: writing on into an
    unlinked inode would only lose the bytes at Complete, so say so now."""
    if os.fstat(fd).st_nlink == 0:
        raise LocalFileError(
            "the temporary file or its directory was removed during the transfer",
            hresult=HResult.HRESULT_PATH_NOT_FOUND,
        )


def pipe(size: int) -> tuple[int, int]:
    """A non-blocking pipe of up to ``size`` bytes (as the system allows) for ``splice``."""
    pipe_r, pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    for want in (size, 1024 * 1024):
        try:
            fcntl.fcntl(pipe_w, fcntl.F_SETPIPE_SZ, want)
            break
        except OSError:
            continue
    return pipe_r, pipe_w


async def splice(
    content: H1Body,
    sink: Sink,
    total: int | None,
    syncs: Syncs,
    pacer: Pacer,
    pipe_bytes: int,
) -> None:
    """The body from the socket to the file through a pipe, inside the kernel
    (``splice(2)``): no copy through Python, one copy (into the page cache) in all.

    The socket → pipe → file moves run in a worker thread (``H1Body.splice_into``: a write
    can wait long on the kernel's dirty-page throttling, the loop must not), a batch at a
    time: ``sink.offset`` moves only by what reached the file, also on an error or a
    cancellation.  Returns when the body is done, or at once when the kernel refuses to
    splice (the caller reads the rest)."""
    pipe_fds = pipe(pipe_bytes)
    try:
        while not content.done:
            limited = pacer.limited()
            want = min(pacer.slice_bytes() if limited else BATCH_BYTES, BATCH_BYTES)
            room = BATCH_BYTES if total is None else total - sink.offset
            if room <= 0:
                raise invalid_response("the server sent more bytes than it announced")
            moved = await splice_some(content, pipe_fds, sink, max(1, min(want, room)))
            if not moved:
                return
            pacer.arrived(moved, content.waited_s, content.longest_wait_s)
            with fs.translating("cannot write the temporary file"):
                sink.written()
            if limited:
                await pacer.acquire(moved)
            with fs.translating("cannot write the temporary file"):
                syncs.step(sink.offset, time.monotonic())
    finally:
        os.close(pipe_fds[0])
        os.close(pipe_fds[1])


async def splice_some(content: H1Body, pipe_fds: tuple[int, int], sink: Sink, n: int) -> int:
    """``content.splice_into``, a failed write of the file translated (a LOCAL_FILE error)."""
    try:
        return await content.splice_into(pipe_fds, sink, n)
    except FileWriteFailed as e:
        with fs.translating("cannot write the temporary file"):
            raise e.error from None


async def salvage(sink: Sink, checkpoint: Callable[[int], None]) -> None:
    """On an error or cancellation: keep what arrived, durably, for the next attempt.

    Whatever could be written (the disk may be full) is synced and checkpointed;
    bytes that could not be written are simply fetched again.  The ``fdatasync`` (up to a
    checkpoint's worth of bytes: it can take as long as the disk does) runs in a worker
    thread on a dup of the fd, never on the loop; it is waited for even when the caller is
    cancelled again meanwhile (its CancelledError is raised after the checkpoint), so what
    it made durable is recorded.
    """
    with contextlib.suppress(OSError):
        sink.flush()
    offset = sink.offset
    synced, cancelled = await sync_off_loop(sink.fd)
    if synced:
        with contextlib.suppress(OSError, BitsError):
            checkpoint(offset)
    if cancelled is not None:
        raise cancelled


async def sync_off_loop(fd: int) -> tuple[bool, asyncio.CancelledError | None]:
    """``fdatasync`` of ``fd`` in a worker thread (on a dup), waited for to its end even when
    the caller is cancelled meanwhile: (whether it succeeded, the cancellation that came, for
    the caller to raise once it recorded what the sync made durable)."""
    try:
        dup = os.dup(fd)
    except OSError:
        return False, None
    sync = asyncio.get_running_loop().run_in_executor(None, sync_dup, dup)
    cancelled = await waited_through(sync)
    return not sync.cancelled() and sync.exception() is None, cancelled


#: what a batch reports once its files are durable: (file, size) of each
Commit = Callable[[list[tuple[JobFile, int]]], None]


class SyncBatch:
    """Small files finished without their own fdatasync, made durable and committed together:
    one ``syncfs`` and one transaction for up to ``MAX_FILES`` files or ``MAX_AGE_S`` seconds.
    Until then they count as not transferred (progress never runs ahead of the disk).

    A batch syncs in a worker thread (of ``threads``) while the next files download; one
    batch at a time is in flight, and its files are committed (``commit``) once its sync
    returned.  Each batch syncs through fds of its own, opened before its first file was
    written (``prepare``): syncfs reports a write-back error once per open file, so no other
    sync (of the batch before, of another job) can take the error that concerns this
    batch's files."""

    MAX_FILES = 256
    MAX_AGE_S = 0.25

    def __init__(
        self,
        threads: concurrent.futures.Executor,
        commit: Commit,
        open_handle: Callable[[str], Awaitable[int]],
    ) -> None:
        self.threads, self.commit = threads, commit
        self.open_handle = open_handle  # a directory's handle, as the job's owner reaches it
        self.files: list[tuple[JobFile, int]] = []
        self.handles: dict[str, int] = {}  # directory -> fd opened before the files were written
        self.since = 0.0
        self.syncing: list[tuple[JobFile, int]] = []
        self.syncing_handles: dict[str, int] = {}
        self.sync: concurrent.futures.Future[None] | None = None
        self.synced: asyncio.Future[None] | None = None
        #: how long the last sync took (seconds, in its thread), once one ran
        self.sync_s: float | None = None

    async def prepare(self, directory: str) -> None:
        """A file of this batch is about to be written into ``directory``
        (``files.open_sync_handle``: the owner reaches it)."""
        if directory not in self.handles:
            self.handles[directory] = await self.open_handle(directory)

    def add(self, file: JobFile, size: int) -> None:
        if not self.files:
            self.since = time.monotonic()
        self.files.append((file, size))

    def full(self) -> bool:
        return len(self.files) >= self.MAX_FILES or time.monotonic() - self.since >= self.MAX_AGE_S

    async def flush(self, *, wait: bool = True) -> None:
        """Sync the batch (after the one in flight, if any); unless ``wait``, return as soon
        as its sync has started."""
        if self.synced is not None:
            await asyncio.wait([self.synced])
            self._committed()
        if not self.files:
            return
        self.syncing, self.files = self.files, []
        wanted = directories_of(self.syncing)
        self.syncing_handles = {d: fd for d, fd in self.handles.items() if d in wanted}
        for d, fd in self.handles.items():
            if d not in wanted:
                os.close(fd)
        self.handles = {}
        self.sync = self.threads.submit(self._timed_sync, dict(self.syncing_handles))
        self.synced = asyncio.wrap_future(self.sync)
        if wait:
            await asyncio.wait([self.synced])
            self._committed()

    def _timed_sync(self, handles: dict[str, int]) -> None:
        started = time.monotonic()
        _sync_handles(handles)
        self.sync_s = time.monotonic() - started

    def poll(self) -> None:
        """Commit the batch in flight if its sync is done."""
        if self.sync is not None and self.sync.done():
            self._committed()

    def _committed(self) -> None:
        assert self.sync is not None
        sync, self.sync, self.synced = self.sync, None, None
        files, self.syncing = self.syncing, []
        _close(self.syncing_handles)
        sync.result()  # a failed sync fails the job; the files will be fetched again
        self.commit(files)

    async def settle(self) -> None:
        """On an error or a cancellation: the finished files are kept (committed) if their
        syncs succeed, and every handle is let go of.  The sync in flight is waited for (its
        files committed as soon as it is over) and the batch's own sync runs in a worker
        thread: a sync on the loop would hold up every other caller for as long as the disk
        takes (seconds on a busy one).  Cancelled while it waits (``scheduler.run._settled``
        does not let that happen), what is not committed yet is fetched again, and the handles
        are let go of once the thread is done with them."""
        synced, syncing, syncing_handles = self.synced, self.syncing, self.syncing_handles
        files, handles = self.files, self.handles
        self.sync = self.synced = None
        self.syncing, self.syncing_handles, self.files, self.handles = [], {}, [], {}
        kept: list[tuple[JobFile, int]] = []
        busy: asyncio.Future[None] | None = None  # what may still sync through the handles

        def let_go(_: object = None) -> None:
            _close(syncing_handles)
            _close(handles)

        try:
            if synced is not None:
                busy = synced
                try:
                    await asyncio.shield(synced)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    pass  # (the sync in flight: its error is its alone)
                else:
                    self.commit(syncing)  # (at once: whatever comes next)
            if files:
                wanted = directories_of(files)
                mine = {d: fd for d, fd in handles.items() if d in wanted}
                busy = asyncio.get_running_loop().run_in_executor(self.threads, _sync_handles, mine)
                with contextlib.suppress(BitsError):  # not durable: they will be fetched again
                    await asyncio.shield(busy)
                    kept.extend(files)
        finally:
            if busy is None or busy.done():
                let_go()
            else:
                busy.add_done_callback(let_go)
        if kept:
            self.commit(kept)

    def close(self) -> None:
        """Let go of the fds (the job's task ends; a sync still in flight is waited for)."""
        _close(self.handles)
        if self.sync is not None:
            with contextlib.suppress(Exception):
                self.sync.result()
            self.sync = self.synced = None
        _close(self.syncing_handles)


def directories_of(files: Iterable[tuple[JobFile, int]]) -> set[str]:
    """The directories a batch's files are written in (their sync handles')."""
    return {f.directory for f, _ in files}


def _close(handles: dict[str, int]) -> None:
    for fd in handles.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    handles.clear()


def _sync_handles(handles: dict[str, int]) -> None:
    for directory, fd in handles.items():
        with fs.translating(f"cannot sync {directory}"):
            fs.sync_handle(fd, directory)
