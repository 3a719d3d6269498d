"""One file over several connections at once, in byte-range segments (SPEC §9, as aria2 does).

``fetch.FileDownload.whole`` hands a file here when its first answer allows it
(``segplan.connections_for``: a 200 of at least ``segment_min_bytes`` offering byte ranges with
a strong validator, and the file may use more than one connection); that answer's body is
segment 0's stream, not thrown away.  Each other segment is a ``Range: bytes=a-b`` request
with ``If-Range``, on a connection of its own; each writes at its own offsets of the
preallocated temporary file.  A connection whose segment is done takes one waiting, else
the upper half of the largest one left (``segplan.steal``); that segment's reader stops at
its new end, and its connection is closed.  At the very end (nothing left worth splitting),
a free connection also asks for the tail of a segment whose connection has gone silent
(``segplan.tail``: a server that paces in bursts would otherwise hold the whole file for a
burst's worth of time over its last bytes); the first of the two to have it whole ends the
other (its task cancelled, its connection closed).  Both write the same bytes at the same
offsets (the same validators), and the connections never outnumber ``connections``.

Durability: one ``fdatasync`` (in a worker thread, on a dup of the fd) covers every
segment; once it returned, each segment's ``done`` moves to what it had written when the
sync began, the layout goes into ``JobFile.segments`` and ``checkpoint`` commits it with
BytesTransferred (the sum of the durable bytes), in one store write.  A restart (SIGKILL)
resumes every segment from its ``done`` (``resume``).

A segment's answer that is not exactly the range asked of the same content (a 200, a 206 of
another range, size, ETag or Last-Modified, a 416) means the server does not (or no longer)
serve ranges of this content: the file starts again from byte 0 as one stream (the restart
committed first), never with bytes of two versions.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import time
from collections.abc import Coroutine
from typing import Any

from openbits.digest import parse_repr_digest
from openbits.errors import BitsError, LocalFileError
from openbits.transfer import checks, diskio, segplan
from openbits.transfer import files as fs
from openbits.transfer.checks import RESTART, Restart
from openbits.transfer.fetch import Body, Fetched, FileDownload, HTTPResponse
from openbits.transfer.h1 import Body as H1Body
from openbits.transfer.http import NETWORK_EXCEPTIONS, invalid_response, network_error, parse_content_range
from openbits.transfer.owner import Owners, opened_off_loop
from openbits.transfer.pace import Pacer, pacer
from openbits.transfer.segplan import Segment
from openbits.transfer.sink import (
    BATCH_BYTES,
    Sink,
    check_still_linked,
    pipe,
    splice_some,
    sync_dup,
    sync_off_loop,
)

log = logging.getLogger("openbits.transfer")


class Fallback(Exception):
    """A segment's answer shows the server does not serve ranges of this content (internal:
    caught by :meth:`Segmented.run`)."""


class Segmented:
    """The segments of one file of ``total`` bytes in flight on up to ``connections``
    connections (see the module)."""

    def __init__(self, one: FileDownload, total: int, segments: list[Segment], connections: int) -> None:
        self.one, self.total, self.segments = one, total, segments
        self.connections = max(1, connections)
        tuning = one.transport.tuning
        self.interval_s, self.every_bytes = tuning.checkpoint_interval_s, tuning.checkpoint_bytes
        self.sync: asyncio.Future[None] | None = None
        self.marks: list[tuple[Segment, int]] = []  # what the sync in flight covers
        self.last_time = time.monotonic()
        self.unsynced = 0  # bytes written since the last sync began
        self.closed = False
        self.failed: BaseException | None = None  # a checkpoint that could not be recorded
        #: a checkpoint's fdatasync failed: the kernel may have dropped those pages and will not
        #: say so again on this file, so nothing more is counted durable in this run
        self.sync_failed = False
        self.answered = False
        #: a connection found nothing left to take: the bytes written so far are synced at once
        #: (a checkpoint), so that the final fdatasync is left with the last segments' tails
        self.end_game = False
        #: set (and replaced) whenever a fetch ends (``_ended``)
        self.ended = asyncio.Event()
        #: the task fetching each segment (by ``id``), and each twin's (by ``-id`` of its victim)
        self.fetching: dict[int, asyncio.Task[None]] = {}
        #: connections still at work; the error of the last one that gave up (``_worker``)
        self.workers = 0
        self.lost: BitsError | None = None
        #: the request error of this file's connections whose Retry-After ends last, and when
        #: (monotonic seconds): ``segplan.last_retry_s``, ``_still_asked``
        self.asked: BitsError | None = None
        self.asked_until = 0.0

    async def run(self, first: HTTPResponse | None = None) -> Fetched | Restart:
        """Every segment fetched and durable (``first``: the answer whose body is segment 0);
        RESTART when the server does not serve ranges of this content."""
        one = self.one
        try:
            async with asyncio.TaskGroup() as group:
                self.workers = self.connections  # (counted before any runs: see _worker)
                if first is not None:
                    self.segments[0].busy = True
                    self.answered = True
                    group.create_task(self._worker(self.segments[0], first))
                for _ in range(self.connections - (first is not None)):
                    group.create_task(self._worker(None, None))
        except BaseExceptionGroup as group_error:
            await self._salvage()
            fallback, rest = group_error.split(Fallback)
            errors, others = rest.split(BitsError) if rest is not None else (None, None)
            local = errors.subgroup(LocalFileError) if errors is not None else None
            if fallback is not None and others is None and local is None:
                # (the content is not served in ranges, whatever else failed at the same time)
                log.info("file %s: %s; one stream from byte 0", one.file.local_file, fallback.exceptions[0])
                one.segmented = False
                one.progress.begin(None, None, None)  # (committed before a byte is written again)
                with fs.translating("cannot truncate the temporary file"):
                    os.ftruncate(one.fd, 0)
                return RESTART
            if others is None and errors is not None:
                raise _first(local or errors) from None
            raise
        except BaseException:
            await self._salvage()
            raise
        return await self._durable()

    async def _worker(self, segment: Segment | None, first: HTTPResponse | None) -> None:
        """One connection (``_work``).  A request of it that fails (refused, reset, a 503 or
        429: many servers cap the connections of one client) ends this connection alone while
        others are still at work: its segment, cut back to what was written, waits for one of
        them, as aria2 does.  The last connection's failure is the file's; so is any failure
        of the file itself (its disk, its checkpoints).  The last connection of several tries
        again a few times, a moment apart, before it fails the file: a server counts a
        connection just closed (the first answer's, read in part) a little while longer."""
        name = self.one.file.local_file
        tries = 0
        try:
            while True:
                before = self._written()
                try:
                    await self._work(segment, first)
                    return
                except BitsError as e:
                    if not self._forgivable(e):
                        raise
                    if self._written() > before:
                        tries = 0  # (a connection that moved bytes since its last failure starts afresh)
                    if (
                        e.retry_after_s is not None
                        and (until := time.monotonic() + e.retry_after_s) > self.asked_until
                    ):
                        self.asked, self.asked_until = e, until
                    if self.workers > 1:
                        self.lost = e
                        left = self.workers - 1
                        log.info("file %s: a connection gave up (%s); %d go on", name, e.message, left)
                        return
                    asked_left = self.asked_until - time.monotonic()
                    delay = segplan.last_retry_s(tries, self.connections, asked_left, random.random())
                    if delay is None:
                        if (asked := self._still_asked()) is not None and asked is not e:
                            raise asked from e  # (what the server asked: the job's retry waits it)
                        raise
                    log.info("file %s: the last connection failed (%s); again in a moment", name, e.message)
                    await asyncio.sleep(delay)  # (the server's pace, not a synchronisation)
                    tries += 1
                    segment, first = None, None
        finally:
            self.workers -= 1
            self._ended()  # (those waiting for a segment to go silent look again)

    def _still_asked(self) -> BitsError | None:
        """The answer whose Retry-After still holds the file's connections back, if any."""
        if self.asked is not None and segplan.asked_holds(self.asked_until - time.monotonic()):
            return self.asked
        return None

    def _written(self) -> int:
        """The bytes of the file written so far (the segments partition it)."""
        return sum(s.written - s.start for s in self.segments)

    def _forgivable(self, error: BitsError) -> bool:
        """Whether ``error`` is one request's (the server's, the network's), not the file's."""
        return not isinstance(error, LocalFileError) and self.failed is None and not self.sync_failed

    async def _work(self, segment: Segment | None, first: HTTPResponse | None) -> None:
        """The first answer's segment, then the segments it takes in turn, then (end game)
        the tails of silent segments alongside their own connections.  A connection that lost
        a race for a tail was closed: it ends rather than open another (the end game is almost
        over)."""
        if (
            segment is not None
            and first is not None
            and not await self._own(segment, self._first(segment, first))
        ):
            return
        while True:
            taken = segplan.steal(self.segments)
            if taken is not None:
                segment, split = taken
                if split:
                    name = self.one.file.local_file
                    log.debug(
                        "file %s: split, a free connection takes %d-%d", name, segment.start, segment.end
                    )
                if not await self._own(segment, self._fetch(segment)):
                    return
                continue
            if not self.end_game:  # (the first connection with nothing left to take)
                self.end_game = True
                with fs.translating("cannot write the temporary file"):
                    self._step(time.monotonic(), early=True)
            if self._paced():
                return  # (a paced segment is silent by our own doing: no second request for it)
            victim, wait_s = segplan.tail(self.segments, time.monotonic())
            if victim is None:
                return
            if wait_s > 0:  # (its bytes may still be coming: look again once it was silent long enough)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_s):
                        await self.ended.wait()  # (or when a segment ends: maybe nothing is left)
            elif not await self._help(victim):
                return

    def _paced(self) -> bool:
        """The job's reads are paced (a bandwidth limit, or its priority yields to other
        traffic): silences are ours, and a second request would only spend the same budget."""
        throttle, priority = self.one.transport.throttle, self.one.priority
        return throttle.is_limited(priority) or throttle.politeness.yields(priority)

    async def _first(self, segment: Segment, first: HTTPResponse) -> None:
        """Segment 0 from the first answer's body; the rest of it is other segments': never read."""
        try:
            await self._copy(segment, first)
        except NETWORK_EXCEPTIONS as e:  # (``get`` translates them in its own task only)
            raise network_error(e, self.one.file.remote_url) from e
        finally:
            first.close()

    async def _own(self, segment: Segment, fetching: Coroutine[Any, Any, None]) -> bool:
        """Fetch ``segment`` (``fetching``, in a task of its own that a twin which has the tail
        first cancels); a twin still fetching its tail is cancelled once it is whole.  False:
        the twin won (this connection was closed)."""
        task = asyncio.create_task(fetching)
        self.fetching[id(segment)] = task
        try:
            won = await _cut_short(task)
        finally:
            del self.fetching[id(segment)]
            segment.busy = False
            self._ended()
        twin = self.fetching.get(-id(segment))
        if twin is not None and segment.finished:
            twin.cancel()
        return won

    def _ended(self) -> None:
        """A fetch ended: the connections waiting for a segment to go silent look again."""
        self.ended.set()
        self.ended = asyncio.Event()

    async def _help(self, victim: Segment) -> bool:
        """End game: fetch ``victim``'s tail alongside its connection; the first to have it
        ends the other (``segplan.settle``: the bytes are the same, by the validators).
        False: ``victim``'s connection won (this one was closed)."""
        taken = segplan.twin(victim, time.monotonic())
        name = self.one.file.local_file
        log.debug("file %s: a free connection also fetches the tail %d-%d", name, taken.start, taken.end)
        task = asyncio.create_task(self._fetch(taken))
        self.fetching[-id(victim)] = task
        try:
            won = await _cut_short(task)
        except BitsError as e:  # (optional: the segment's own connection still brings it)
            if isinstance(e, LocalFileError) or (not victim.busy and not victim.finished):
                # (the file's own trouble; or the segment's connection gave up meanwhile,
                # counting on this one: the failure is this connection's, as any request's)
                raise
            log.debug("file %s: the tail's second request failed: %s", name, e.message)
            won = False
        finally:
            del self.fetching[-id(victim)]
            victim.twinned = False
            self._ended()
        if not won or not taken.finished or victim.finished:
            return won
        rest = segplan.settle(self.segments, victim, taken)
        own = self.fetching.get(id(victim))
        if rest is not None and own is not None:
            own.cancel()  # (its reader stops; what it received is written, the rest is ours)
        return True

    async def _fetch(self, segment: Segment) -> None:
        """The rest of ``segment`` by a Range request, checked to be exactly of it."""
        one = self.one
        first, last = segment.received, segment.end - 1
        headers = dict(one.options.headers)
        headers["Range"] = f"bytes={first}-{last}"
        validator = checks.if_range(one.file)
        if validator:
            headers["If-Range"] = validator
        segment.last_s = time.monotonic()
        async with one.get(headers) as resp:
            self._check(resp, first, last)
            if not self.answered:
                self.answered = True
                one.progress.connected()
            await self._copy(segment, resp)

    def _check(self, resp: HTTPResponse, first: int, last: int) -> None:
        """A 206 of exactly bytes ``first``-``last`` of the same content, else Fallback."""
        status = resp.status
        if status == 200:
            raise Fallback(f"the server sent the whole file to a request for bytes {first}-{last}")
        if status == 416:
            raise Fallback(f"the server refused bytes {first}-{last}")
        if status != 206:
            raise checks.range_refused(resp, first)
        got = resp.headers.get("Content-Range")
        if parse_content_range(got) != (first, last, self.total):
            raise Fallback(f"asked for bytes {first}-{last}/{self.total}, the server sent {got}")
        try:
            checks.check_same_content(resp, self.one.file)
        except BitsError as e:
            raise Fallback(str(e)) from None
        length = resp.content_length
        if length is not None and length != last - first + 1:
            raise invalid_response("Content-Length does not match Content-Range")

    async def _copy(self, segment: Segment, resp: HTTPResponse) -> None:
        """The body into ``segment`` until its end (which a free connection may move down
        meanwhile), paced as one stream is."""
        one = self.one
        content = resp.content
        sock = content.socket() if isinstance(content, H1Body) else None
        options = one.options
        with pacer(one.transport.throttle, one.priority_of, options.job_id, options.owner_uid, sock) as pace:
            await self._read(segment, content, pace)

    async def _read(self, segment: Segment, content: Body, pace: Pacer) -> None:
        """A plain-HTTP body of known length moves socket → pipe → file inside the kernel
        (as one stream's does: ``sink.splice``), what came with the head first; other bodies
        are read and written in blocks."""
        sink = Sink(self.one.fd, segment.written)
        segment.last_s, segment.answered = time.monotonic(), True
        try:
            if (
                isinstance(content, H1Body)
                and content.buffered() < self.one.transport.tuning.write_block_bytes
            ):
                if content.buffered():
                    await self._read_some(segment, content, pace, sink, content.buffered())
                if content.spliceable():
                    await self._splice(segment, content, pace, sink)
            await self._read_some(segment, content, pace, sink)
        finally:
            with contextlib.suppress(OSError):
                sink.flush()
            segment.written = sink.offset
            segment.received = segment.written  # (what was not written is fetched again)

    async def _read_some(
        self, segment: Segment, content: Body, pace: Pacer, sink: Sink, limit: int | None = None
    ) -> None:
        """Read the body into ``segment`` up to its end (at most ``limit`` bytes), written in
        blocks of ``write_block_bytes``."""
        tuning = self.one.transport.tuning
        block, read_bytes = tuning.write_block_bytes, tuning.read_buffer_bytes
        until = segment.end if limit is None else segment.received + limit
        while segment.received < min(segment.end, until):
            want = min(min(segment.end, until) - segment.received, read_bytes)
            asked = time.monotonic()
            limited = pace.limited()
            chunk = await content.read(min(want, pace.slice_bytes()) if limited else want)
            if not chunk:
                raise invalid_response(f"the server closed the body of bytes from {segment.received}")
            pace.arrived(len(chunk), time.monotonic() - asked)
            if limited:
                await pace.acquire(len(chunk))
            room = segment.end - segment.received  # (another connection may have taken the rest)
            if room <= 0:
                break
            if len(chunk) > room:
                chunk = chunk[:room]
            sink.add(chunk)
            segment.received += len(chunk)
            now = segment.last_s = time.monotonic()
            if sink.pending_len >= block or segment.received >= segment.end or self._due(now):
                self._flush(segment, sink, now)
        self._flush(segment, sink, time.monotonic())

    async def _splice(self, segment: Segment, content: H1Body, pace: Pacer, sink: Sink) -> None:
        """``segment``'s body socket → pipe → file inside the kernel, in a worker thread a
        batch at a time (``sink.splice_some``).  Bytes that land past the segment's end (a
        free connection took the rest meanwhile) are the same bytes the other connection
        writes there, counted by it alone.  Returns at the end, or at once when the kernel
        refuses to splice."""
        pipe_fds = pipe(self.one.transport.tuning.read_buffer_bytes)
        try:
            while segment.received < segment.end and not content.done:
                limited = pace.limited()
                want = min(pace.slice_bytes() if limited else BATCH_BYTES, BATCH_BYTES)
                try:
                    moved = await splice_some(
                        content, pipe_fds, sink, min(want, segment.end - segment.received)
                    )
                finally:
                    sink.offset = min(sink.offset, segment.end)  # (past it: not this segment's)
                if not moved:
                    return
                pace.arrived(moved, content.waited_s, content.longest_wait_s)
                with fs.translating("cannot write the temporary file"):
                    sink.written()
                segment.received = sink.offset
                segment.last_s = time.monotonic()
                if limited:
                    await pace.acquire(moved)
                self._flush(segment, sink, time.monotonic())
        finally:
            os.close(pipe_fds[0])
            os.close(pipe_fds[1])

    def _flush(self, segment: Segment, sink: Sink, now: float) -> None:
        """Write what ``segment`` received, let the digest follow the gapless prefix, and
        start or report a checkpoint."""
        with fs.translating("cannot write the temporary file"):
            sink.flush()
            self.unsynced += sink.offset - segment.written  # (spliced bytes too)
            segment.written = sink.offset
            check = self.one.check
            if check is not None:
                check.catch_up(self.one.fd, segplan.prefix(self.segments))
            self._step(now)

    # -- checkpoints ------------------------------------------------------------------------

    def _due(self, now: float) -> bool:
        return now - self.last_time >= self.interval_s

    def _step(self, now: float, early: bool = False) -> None:
        """Report a finished sync; start the next one when it is due (``early``: now, if
        anything was written since the last one began)."""
        if self.failed is not None:
            raise self.failed
        sync = self.sync
        if sync is not None and sync.done():
            sync.result()  # (a failed fdatasync fails the transfer here)
            self._report(sync)
        due = self._due(now) or self.unsynced >= self.every_bytes or (early and self.unsynced > 0)
        if self.sync is None and due:
            fd = self.one.fd
            check_still_linked(fd)
            self.marks = [(s, s.written) for s in self.segments if s.written > s.done]
            self.last_time, self.unsynced = now, 0
            self.sync = asyncio.get_running_loop().run_in_executor(None, sync_dup, os.dup(fd))
            self.sync.add_done_callback(self._report)

    def _report(self, sync: asyncio.Future[None]) -> None:
        """The sync returned: each segment is durable up to what it had written when it began."""
        if not sync.cancelled() and sync.exception() is not None:
            self.sync_failed = True  # (raised by the next ``_step``, or by ``_durable``)
            return
        if self.closed or sync is not self.sync or sync.cancelled():
            return
        self.sync = None
        for segment, written in self.marks:
            segment.done = max(segment.done, written)
        self.marks = []
        try:
            self._record()
        except Exception as e:  # (from a loop callback: the transfer raises it)
            self.failed = e

    def _record(self) -> None:
        """The durable layout and BytesTransferred, in one store write (the layout rides on
        the file the checkpoint saves)."""
        self.one.file.segments = segplan.encode(self.segments)
        self.one.progress.checkpoint(segplan.durable_bytes(self.segments))

    async def _salvage(self) -> None:
        """On an error or cancellation: what was written is synced and recorded (bytes that
        could not be written are fetched again).  The sync runs in a worker thread (up to
        ``checkpoint_bytes`` of several segments: on the loop it would hold up every caller
        for as long as the disk takes), waited for to its end even when this task is cancelled
        again meanwhile (that CancelledError is raised after it)."""
        self.closed = True
        if self.sync_failed:  # (what the failed sync covered may be lost: the last record stands)
            return
        synced, cancelled = await sync_off_loop(self.one.fd)
        if synced:
            for s in self.segments:
                s.done = max(s.done, s.written)
            with contextlib.suppress(OSError, BitsError):
                self._record()
        if cancelled is not None:
            raise cancelled

    async def _durable(self) -> Fetched:
        """Every segment is written: make them durable; the caller commits the file complete."""
        if not all(s.finished for s in self.segments):
            await self._salvage()
            if (lost := self._still_asked() or self.lost) is not None:
                raise lost
            raise invalid_response("the segments of the file did not all arrive")
        self.closed = True
        fd = self.one.fd
        with fs.translating("cannot write the temporary file"):
            if self.sync is not None:
                await self.sync  # (a checkpoint's failed fdatasync fails the file: its pages may be lost)
            await asyncio.get_running_loop().run_in_executor(None, os.fdatasync, fd)
            check_still_linked(fd)
        for s in self.segments:
            s.done = s.end
        return Fetched(self.total)


async def _cut_short(task: asyncio.Task[None]) -> bool:
    """Wait for ``task``: True when it ended, False when another connection (which had its
    bytes first) cancelled it; a cancellation of this one is raised."""
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if not task.cancelled() or (current is not None and current.cancelling()):
            raise
        return False
    return True


def _first(errors: BaseExceptionGroup[BitsError]) -> BitsError:
    """The first BitsError of a group (nested groups flattened)."""
    error: BaseException = errors
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    assert isinstance(error, BitsError)
    return error


async def start(one: FileDownload, resp: HTTPResponse, total: int, connections: int) -> Fetched | Restart:
    """A fresh file whose first answer ``resp`` (a 200 from byte 0) allows ``connections``
    segments: its body is segment 0's."""
    segments = segplan.split(total, connections)
    diskio.preallocate(one.fd, 0, total)
    log.debug("file %s: %d bytes in %d segments", one.file.local_file, total, len(segments))
    return await Segmented(one, total, segments, connections).run(resp)


async def resume(one: FileDownload) -> Fetched | Restart:
    """A file the store holds in segments: each from its durable offset; RESTART (from byte
    0, committed) when the layout or the temporary file does not hold what it says."""
    file = one.file
    total = file.bytes_total
    segments = segplan.decode(file.segments or "", total) if total is not None else None
    fd, size = await _open(one)
    try:
        if segments is None or total is None or size < segplan.last_durable(segments):
            one.segmented = False
            one.progress.begin(None, None, None)
            with fs.translating("cannot truncate the temporary file"):
                os.ftruncate(fd, 0)
            return RESTART
        one.fd = fd
        fd = -1
        one.begin_check(segplan.prefix(segments), parse_repr_digest(file.repr_digest))
        needed = total - segplan.durable_bytes(segments)
        one.transport.free_space.check(file.directory, needed)
        left = sum(not s.finished for s in segments)
        log.debug("file %s: resumed in %d segments", file.local_file, left)
        if not left:
            one.progress.connected()  # (every byte was here: nothing to ask)
        fetched = await Segmented(one, total, segments, one.connections).run()
        if not isinstance(fetched, Restart):
            await one.verify(fetched.size)
        return fetched
    finally:
        if fd >= 0:
            os.close(fd)
        one.close()


async def _open(one: FileDownload) -> tuple[int, int]:
    """The temporary file as its owner, not cut back (its segments' bytes lie anywhere in
    it); its size."""
    file, owner, owners = one.file, one.owner, one.transport.owners
    if file.temp_path is None:
        raise LocalFileError("the file has no temporary name")
    opener = functools.partial(_open_sized, owners, file.temp_path, owner.uid, owner.gid)
    if owners.acts_in_process(owner.uid):
        return opener()
    return await opened_off_loop(opener)


def _open_sized(owners: Owners, path: str, uid: int, gid: int | None) -> tuple[int, int]:
    fd = fs.open_temp(owners, path, uid, gid)
    try:
        with fs.translating(f"cannot use the temporary file {path}"):
            return fd, os.fstat(fd).st_size
    except BaseException:
        os.close(fd)
        raise
