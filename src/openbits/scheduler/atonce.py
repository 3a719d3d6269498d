"""Several of a job's files at once: up to its effective MaxConnections (SPEC §9).

Each of ``connections`` tasks takes the next files not yet transferred (a run of up to
``RUN_MAX``, fewer near the end) and downloads them in turn on a connection of its own (the
h1 pool keeps several alive per host), the requests of the rest of its run sent ahead on it
(pipelining: only files of its own run, so no request of another task's file is sent).
Files finish in any order; each is committed complete only once durable, so
FilesTransferred, checkpoints and events stay exact, and a job resumed after a crash takes
up every file at its own checkpoint.

With a ``Remote`` (many small files: ``scheduler.run``), one of two tasks feeds the fetch
worker (``transfer/offload.py``, a process on another core) a *lane*: runs taken like any
task's, more sent while it has fewer than ``LANE_LOW_FILES`` to go; the worker's reports are
replayed on the files' progress and its files go into the same batch.  What a lane did not
fetch (a file handed back and those after it, a run it may not take, or all of it when the
worker is lost) is fetched by this loop.

The tasks share the job's ``SyncBatch`` through ``SharedBatch``: one flush at a time, one
sync handle per directory, and a directory still being written into gets the next batch's
handle before this batch's sync starts, so a write-back error of a file in flight is seen
by one batch or the other, never by neither.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from openbits.errors import BitsError
from openbits.model import Job, JobFile
from openbits.transfer import offload
from openbits.transfer.download import Fetched, Progress
from openbits.transfer.sink import SyncBatch, directories_of

log = logging.getLogger("openbits.scheduler")

#: downloads one file of the job (by index), the requests of ``upcoming`` (files of the same
#: task) sent ahead on its connection: what it fetched
FetchOne = Callable[[int, Sequence[JobFile]], Awaitable[Fetched]]
#: the most files a task takes at once, and how many of the rest of its run are sent ahead
#: on its connection while it fetches one (as the one-connection case: ``PIPELINE_LOOKAHEAD``)
RUN_MAX = 64
LOOKAHEAD = 16
#: commits a durable file complete (``JobQueue.file_done``)
FileDone = Callable[[Job, JobFile, int], None]
#: a fetch worker's lane is given more files while it has fewer than this many to fetch
LANE_LOW_FILES = 64
#: while a lane is open, the loop's own task lets the loop turn after this many files (and
#: at the end of each run, lane or not)
YIELD_FILES = 4


class Remote(Protocol):
    """The fetch worker as one job's files use it (``scheduler.run`` binds it to the job)."""

    def eligible(self, files: Sequence[JobFile], *, extending: bool) -> bool:
        """Whether the worker may fetch these files now (``offload.eligible`` with the job's
        options as they are now, and its pacing); ``extending`` a lane: only with the options
        it was opened with."""

    def unpaced(self) -> bool:
        """Whether the job's priority, as it is now, has neither a bandwidth limit nor
        politeness (a lane's files are fetched unpaced: SetPriority mid-lane stops it)."""

    async def open(self, files: Sequence[tuple[int, JobFile]]) -> offload.Lane:
        """A lane of the worker, fetching these files first (raises ``offload.WorkerLost``)."""

    def extend(self, lane: offload.Lane, files: Sequence[tuple[int, JobFile]]) -> None:
        """More files for the lane, after the ones it has."""

    def progress(self, file: JobFile) -> Progress:
        """Where a file's reported ``Progress`` calls are replayed."""


class SharedBatch:
    """A job's ``SyncBatch`` as its concurrent file tasks use it (see the module)."""

    def __init__(self, batch: SyncBatch) -> None:
        self.batch = batch
        self.lock = asyncio.Lock()
        #: directory -> files being written into it now
        self.writing: collections.Counter[str] = collections.Counter()
        #: when the last file finished, and the time between two (a moving average)
        self._last_done = 0.0
        self._interval_s: float | None = None

    async def begin(self, directory: str, files: int = 1) -> None:
        """``files`` files are about to be written into ``directory``."""
        async with self.lock:
            await self.batch.prepare(directory)
            self.writing[directory] += files

    def end(self, directory: str, files: int = 1) -> None:
        """That many files' writes are over (each is in the batch, or failed)."""
        self.writing[directory] -= files
        if self.writing[directory] <= 0:
            del self.writing[directory]

    async def flush(self, *, wait: bool = True) -> None:
        """Sync the files finished so far (``SyncBatch.flush``); unless ``wait``, return once
        the sync has started."""
        async with self.lock:
            batch = self.batch
            if batch.synced is not None:  # (the batch before: committed first)
                await asyncio.wait([batch.synced])
                batch.poll()
            if not batch.files:
                return
            # a directory being written that has no file in this batch keeps its handle for
            # the next one (opened before those files were: closed unsynced, a write-back error
            # it alone saw would be lost); one with files here gets a fresh handle first
            wanted = directories_of(batch.files)
            carried = {
                d: batch.handles.pop(d) for d in self.writing if d not in wanted and d in batch.handles
            }
            fresh: dict[str, int] = {}
            try:
                for directory in list(self.writing):  # (opened before this batch's sync)
                    if directory not in carried:
                        fresh[directory] = await batch.open_handle(directory)
                await batch.flush(wait=False)  # (none in flight: it does not wait)
            except BaseException:
                for fd in (*fresh.values(), *carried.values()):
                    with contextlib.suppress(OSError):
                        os.close(fd)
                raise
            batch.handles.update(fresh)  # (flush left it empty; the lock kept others out)
            batch.handles.update(carried)
            if wait and batch.synced is not None:
                await asyncio.wait([batch.synced])
                batch.poll()

    async def finished(
        self, job: Job, file: JobFile, fetched: Fetched, done: FileDone, *, tail: bool = False
    ) -> None:
        """``file`` is fetched: committed at once when durable, else into the batch.  In the
        ``tail`` (every file taken: the last ones are in flight), a batch starts its sync as
        soon as none is in flight and it would likely be over before the last file is
        (``_sync_fits``), so the job's last sync has only the last few files to write (a full
        batch left to the end: ~6 ms of 4 MiB written back after the last byte, here)."""
        now = time.monotonic()
        if self._last_done:
            gap = now - self._last_done
            self._interval_s = gap if self._interval_s is None else 0.8 * self._interval_s + 0.2 * gap
        self._last_done = now
        if fetched.durable:
            await self.flush()
            done(job, file, fetched.size)
            return
        batch = self.batch
        batch.add(file, fetched.size)
        batch.poll()
        if batch.full() or (tail and batch.sync is None and self._sync_fits()):
            await self.flush(wait=False)  # downloads go on while it syncs

    def _sync_fits(self) -> bool:
        """Whether a sync started now is likely over before the files still being written are
        (their count at the pace files finish, against the last sync's length): else the
        job's last sync would wait behind it, and pay a sync's fixed cost (a journal commit)
        twice."""
        in_flight = sum(self.writing.values())
        if not in_flight or self._interval_s is None:
            return False
        last = self.batch.sync_s
        return last is None or in_flight * self._interval_s >= last


class FilesAtOnce:
    """Runs a job's files ``connections`` at a time; ``failed`` is the error that stopped
    them and ``failed_index`` its file (the job's error names it)."""

    def __init__(self, job: Job, batch: SharedBatch, connections: int, first: int = 0) -> None:
        self.job, self.batch, self.connections = job, batch, connections
        self.failed: BitsError | None = None
        self.failed_index: int | None = None
        self.lanes = 0  # the fetch worker's lanes open
        # files before it are taken (files are only ever appended); the ones before ``first``
        # were fetched one at a time: committed, or in the batch waiting for its sync, which
        # is not ``completed`` yet (fetched again, their temporary files would be rewritten
        # under the batch's word that they are whole)
        self._cursor = first

    async def run(self, fetch: FetchOne, done: FileDone, remote: Remote | None = None) -> None:
        """Until every file is fetched and in the batch (or committed); the first file's
        BitsError stops the others (each keeps its checkpoint) and is raised.  With
        ``remote``, one of the ``connections`` is the fetch worker's (``offload.py``)."""
        files = self.job.files
        tasks = min(self.connections, sum(1 for f in files[self._cursor :] if not f.completed))
        try:
            async with asyncio.TaskGroup() as group:
                for n in range(tasks):
                    if remote is not None and n == tasks - 1 and tasks > 1:
                        group.create_task(self._remote(remote, fetch, done))
                    else:
                        group.create_task(self._worker(fetch, done))
        except BaseExceptionGroup as group_error:
            _, others = group_error.split(BitsError)
            if others is None and self.failed is not None:
                raise self.failed from None  # (several at once: the first one recorded)
            raise

    async def _worker(self, fetch: FetchOne, done: FileDone) -> None:
        while run := self._take():
            await self._here(run, fetch, done)

    async def _here(self, run: Sequence[int], fetch: FetchOne, done: FileDone) -> None:
        """A run's files on this loop, one after the other (the next requests sent ahead)."""
        job = self.job
        for n, index in enumerate(run):
            file = job.files[index]
            directory = file.directory
            try:
                await self.batch.begin(directory)
                try:
                    fetched = await fetch(index, [job.files[i] for i in run[n + 1 : n + 1 + LOOKAHEAD]])
                finally:
                    self.batch.end(directory)
                await self.batch.finished(job, file, fetched, done, tail=self._all_taken())
            except BitsError as e:
                self._failed(e, index)
                raise
            if n == len(run) - 1 or (self.lanes and n % YIELD_FILES == YIELD_FILES - 1):
                # a turn of the loop at each run's end, and every few files while a lane is
                # open (not after each: a turn costs a file's tenth): reads that find their
                # bytes waiting never yield, so the other tasks (the one that opens the fetch
                # worker's lane, its reports and next files, the API) would wait for the job
                await asyncio.sleep(0)

    def _failed(self, error: BitsError, index: int) -> None:
        if self.failed is None:
            self.failed, self.failed_index = error, index

    async def _remote(self, remote: Remote, fetch: FetchOne, done: FileDone) -> None:
        """Files in the fetch worker while it serves (those it may take), in one lane fed
        with runs as it goes; what a lane did not fetch (handed back, not given, or the
        worker lost: then every run after too) on this loop."""
        files = self.job.files
        while run := self._take():
            if not remote.eligible([files[i] for i in run], extending=False):
                await self._here(run, fetch, done)
                continue
            pending: dict[int, None] = {}  # given to the worker, not reported done
            later: list[int] = []  # taken, then not given (a file it may not take)
            try:
                await self._there(run, remote, done, pending, later)
            except offload.WorkerLost:  # (its files here, and every run after)
                await self._here([*pending, *later], fetch, done)
                await self._worker(fetch, done)
                return
            # what the lane did not fetch (not given; handed back, and the files after it)
            await self._here([*pending, *later], fetch, done)

    async def _there(
        self, run: Sequence[int], remote: Remote, done: FileDone, pending: dict[int, None], later: list[int]
    ) -> None:
        """A lane of the fetch worker: ``run`` first, then more runs while it has fewer than
        ``LANE_LOW_FILES`` to go (a run it may not take ends the lane: ``later``).  Its reports
        are replayed in order, each file into the batch as it is reported done; a file it
        hands back ends the lane (it stays in ``pending``); the first failure is the job's."""
        job = self.job
        writing: collections.Counter[str] = collections.Counter()  # begun, not reported
        progress: dict[int, Progress] = {}

        def replay(message: tuple[Any, ...]) -> None:
            index = message[1]
            if (p := progress.get(index)) is None:
                p = progress[index] = remote.progress(job.files[index])
            offload.replay(p, message[-1])

        index = run[0]
        try:
            await self._begin(run, writing, pending)
            lane = await remote.open([(i, job.files[i]) for i in run])
            self.lanes += 1
            try:
                while (message := await lane.next())[0] != "ended":
                    kind, index = message[0], message[1]
                    if kind == "calls":
                        replay(message)
                    elif kind == "failed":
                        replay(message)
                        raise offload.rebuilt(message[2])
                    elif kind == "done":
                        replay(message)
                        await self._reported(index, message, writing, pending, done)
                        progress.pop(index, None)
                        if not remote.unpaced():
                            log.info(
                                "job %s: its priority is paced now: the fetch worker's lane stops", job.job_id
                            )
                            await self._stop_lane(lane, replay, writing, pending, done)
                            break
                        if not lane.closing and len(pending) < LANE_LOW_FILES:
                            await self._feed(lane, remote, writing, pending, later)
            finally:
                self.lanes -= 1
                await lane.stop(replay)
        except BitsError as e:
            self._failed(e, index)
            raise
        finally:
            for directory, n in writing.items():
                if n > 0:
                    self.batch.end(directory, n)

    async def _stop_lane(
        self,
        lane: offload.Lane,
        replay: Callable[[tuple[Any, ...]], None],
        writing: collections.Counter[str],
        pending: dict[int, None],
        done: FileDone,
    ) -> None:
        """Stop a lane whose files may no longer go unpaced: those the worker finishes while
        it stops are taken as any it reports done; the rest stay ``pending`` (fetched here)."""
        finished: list[tuple[Any, ...]] = []

        def on_done(message: tuple[Any, ...]) -> None:
            replay(message)
            finished.append(message)

        await lane.stop(replay, on_done)
        for message in finished:
            try:
                await self._reported(message[1], message, writing, pending, done)
            except BitsError as e:
                self._failed(e, message[1])  # (this file's, not the one that stopped the lane)
                raise

    async def _reported(
        self,
        index: int,
        message: tuple[Any, ...],
        writing: collections.Counter[str],
        pending: dict[int, None],
        done: FileDone,
    ) -> None:
        """A file the worker reported done goes into the batch (or is committed)."""
        job = self.job
        file = job.files[index]
        del pending[index]
        directory = file.directory
        writing[directory] -= 1
        self.batch.end(directory)
        await self.batch.finished(job, file, offload.fetched_of(message), done, tail=self._all_taken())

    async def _feed(
        self,
        lane: offload.Lane,
        remote: Remote,
        writing: collections.Counter[str],
        pending: dict[int, None],
        later: list[int],
    ) -> None:
        """The next run into the lane, or the lane closed (none left, or one it may not
        take: ``later``)."""
        job = self.job
        more = self._take()
        if more and remote.eligible([job.files[i] for i in more], extending=True):
            await self._begin(more, writing, pending)
            remote.extend(lane, [(i, job.files[i]) for i in more])
        else:
            later.extend(more)
            lane.close()

    async def _begin(
        self, run: Sequence[int], writing: collections.Counter[str], pending: dict[int, None]
    ) -> None:
        """The run's files are about to be written (``SharedBatch.begin``, once a directory);
        a directory that fails is the error of its first file."""
        files = self.job.files
        first: dict[str, int] = {}
        for i in run:
            first.setdefault(files[i].directory, i)
        for directory, n in collections.Counter(files[i].directory for i in run).items():
            try:
                await self.batch.begin(directory, n)
            except BitsError as e:
                self._failed(e, first[directory])
                raise
            writing[directory] += n
        pending.update(dict.fromkeys(run))

    def _all_taken(self) -> bool:
        return self._cursor >= len(self.job.files)

    def _take(self) -> list[int]:
        """The next files not transferred that no task has taken (ones added while the job
        runs too), in order: a run of up to ``RUN_MAX``, shorter as the files left get fewer
        than two runs per task (so the tasks end together); empty when none is left."""
        files = self.job.files
        # (no more than a full run's worth of ones left is counted: each take is short)
        wanted = 2 * self.connections * RUN_MAX
        left = list(
            itertools.islice((i for i in range(self._cursor, len(files)) if not files[i].completed), wanted)
        )
        run = left[: max(1, min(RUN_MAX, len(left) // (2 * self.connections)))]
        if len(run) == len(left) < wanted:  # (the last ones: the files after them are done)
            self._cursor = len(files)
        elif run:
            self._cursor = run[-1] + 1
        return run
