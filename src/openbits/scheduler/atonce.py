"""Several of a job's files at once: up to its effective MaxConnections (SPEC §9).

Each of ``connections`` tasks takes the next files not yet transferred (a run of up to
``RUN_MAX``, fewer near the end) and downloads them in turn on a connection of its own (the
h1 pool keeps several alive per host), the requests of the rest of its run sent ahead on it
(pipelining: only files of its own run, so no request of another task's file is sent).
Files finish in any order; each is committed complete only once durable, so
FilesTransferred, checkpoints and events stay exact, and a job resumed after a crash takes
up every file at its own checkpoint.

The tasks share the job's ``SyncBatch`` through ``SharedBatch``: one flush at a time, one
sync handle per directory, and a directory still being written into gets the next batch's
handle before this batch's sync starts, so a write-back error of a file in flight is seen
by one batch or the other, never by neither.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
from collections.abc import Awaitable, Callable, Sequence

from openbits.errors import BitsError
from openbits.model import Job, JobFile
from openbits.transfer.download import Fetched
from openbits.transfer.sink import SyncBatch

#: downloads one file of the job (by index), the requests of ``upcoming`` (files of the same
#: task) sent ahead on its connection: what it fetched
FetchOne = Callable[[int, Sequence[JobFile]], Awaitable[Fetched]]
#: the most files a task takes at once, and how many of the rest of its run are sent ahead
#: on its connection while it fetches one (as the one-connection case: ``PIPELINE_LOOKAHEAD``)
RUN_MAX = 64
LOOKAHEAD = 16
#: commits a durable file complete (``JobQueue.file_done``)
FileDone = Callable[[Job, JobFile, int], None]


class SharedBatch:
    """A job's ``SyncBatch`` as its concurrent file tasks use it (see the module)."""

    def __init__(self, batch: SyncBatch) -> None:
        self.batch = batch
        self.lock = asyncio.Lock()
        #: directory -> files being written into it now
        self.writing: collections.Counter[str] = collections.Counter()

    async def begin(self, directory: str) -> None:
        """A file is about to be written into ``directory``."""
        async with self.lock:
            await self.batch.prepare(directory)
            self.writing[directory] += 1

    def end(self, directory: str) -> None:
        """That file's writes are over (it is in the batch, or it failed)."""
        self.writing[directory] -= 1
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
            fresh: dict[str, int] = {}
            try:
                for directory in list(self.writing):  # (opened before this batch's sync)
                    fresh[directory] = await batch.open_handle(directory)
                await batch.flush(wait=False)  # (none in flight: it does not wait)
            except BaseException:
                for fd in fresh.values():
                    with contextlib.suppress(OSError):
                        os.close(fd)
                raise
            batch.handles.update(fresh)  # (flush left it empty; the lock kept others out)
            if wait and batch.synced is not None:
                await asyncio.wait([batch.synced])
                batch.poll()

    async def finished(self, job: Job, file: JobFile, fetched: Fetched, done: FileDone) -> None:
        """``file`` is fetched: committed at once when durable, else into the batch."""
        if fetched.durable:
            await self.flush()
            done(job, file, fetched.size)
            return
        self.batch.add(file, fetched.size)
        if self.batch.full():
            await self.flush(wait=False)  # downloads go on while it syncs
        else:
            self.batch.poll()


class FilesAtOnce:
    """Runs a job's files ``connections`` at a time; ``failed`` is the error that stopped
    them and ``failed_index`` its file (the job's error names it)."""

    def __init__(self, job: Job, batch: SharedBatch, connections: int, first: int = 0) -> None:
        self.job, self.batch, self.connections = job, batch, connections
        self.failed: BitsError | None = None
        self.failed_index: int | None = None
        # files before it are taken (files are only ever appended); the ones before ``first``
        # were fetched one at a time: committed, or in the batch waiting for its sync, which
        # is not ``completed`` yet (fetched again, their temporary files would be rewritten
        # under the batch's word that they are whole)
        self._cursor = first

    async def run(self, fetch: FetchOne, done: FileDone) -> None:
        """Until every file is fetched and in the batch (or committed); the first file's
        BitsError stops the others (each keeps its checkpoint) and is raised."""
        files = self.job.files
        tasks = min(self.connections, sum(1 for f in files[self._cursor :] if not f.completed))
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(tasks):
                    group.create_task(self._worker(fetch, done))
        except BaseExceptionGroup as group_error:
            _, others = group_error.split(BitsError)
            if others is None and self.failed is not None:
                raise self.failed from None  # (several at once: the first one recorded)
            raise

    async def _worker(self, fetch: FetchOne, done: FileDone) -> None:
        job = self.job
        while run := self._take():
            for n, index in enumerate(run):
                file = job.files[index]
                directory = os.path.dirname(file.local_file)
                try:
                    await self.batch.begin(directory)
                    try:
                        fetched = await fetch(index, [job.files[i] for i in run[n + 1 : n + 1 + LOOKAHEAD]])
                    finally:
                        self.batch.end(directory)
                    await self.batch.finished(job, file, fetched, done)
                except BitsError as e:
                    if self.failed is None:
                        self.failed, self.failed_index = e, index
                    raise

    def _take(self) -> list[int]:
        """The next files not transferred that no task has taken (ones added while the job
        runs too), in order: a run of up to ``RUN_MAX``, shorter as the files left get fewer
        than two runs per task (so the tasks end together); empty when none is left."""
        files = self.job.files
        left = [i for i in range(self._cursor, len(files)) if not files[i].completed]
        run = left[: max(1, min(RUN_MAX, len(left) // (2 * self.connections)))]
        if run:
            self._cursor = run[-1] + 1
        return run
