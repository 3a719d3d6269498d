"""The fetch worker process (``offload.FetchWorker`` starts it): fetches the runs of small
files it is handed with the daemon's own ``Downloader`` code, and reports every ``Progress``
call and each file's end as they happen.

``python -m openbits.transfer.fetchworker PARENT_PID FD``: FD is its end of the socket pair.
It dies with the daemon (PR_SET_PDEATHSIG; and it exits at the end of its socket), so no file
of a run is written after the daemon that handed it out is gone.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import itertools
import logging
import os
import signal
import socket
import sys
from typing import Any

from openbits.errors import BitsError, InternalError
from openbits.model import JobFile, JobPriority
from openbits.redaction import redact_url
from openbits.transfer import offload
from openbits.transfer.download import Downloader
from openbits.transfer.h1 import H1Client
from openbits.transfer.options import RequestOptions
from openbits.transfer.proxy import Proxies
from openbits.transfer.routing import Owner
from openbits.transfer.throttle import Throttle
from openbits.tuning import tune_gc, tune_malloc

log = logging.getLogger("openbits.fetchworker")

#: requests of a run's next files sent ahead on the connection (as the daemon's loop)
LOOKAHEAD = 16
#: reports are sent at least every this many (one frame for several files)
FLUSH_FILES = 8


class _HandBack(Exception):
    """The file is not one for the worker after all: the daemon fetches it (one announced
    as ``offload.SMALL_MAX_BYTES`` or more, which may want segments; one that starts again
    after a checkpoint, whose restart the daemon must commit before any new byte)."""


class _Recorder:
    """A file's ``Progress`` here: its copy of the file updated as the daemon's would be
    (``scheduler.run._FileProgress``), and each call reported, in order.  Calls that only set
    fields in memory there (connected, begin of a file not begun, responded) go with the
    file's next report; a checkpoint or a redirect, which the daemon commits, at once."""

    __slots__ = ("calls", "file", "index", "lane_id", "worker")

    def __init__(self, worker: Worker, lane_id: int, index: int, file: JobFile) -> None:
        self.worker, self.lane_id, self.index, self.file = worker, lane_id, index, file
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def taken(self) -> list[tuple[str, tuple[Any, ...]]]:
        calls, self.calls = self.calls, []
        return calls

    def _now(self) -> None:
        self.worker.report(("calls", self.lane_id, self.index, self.taken()))

    def connected(self) -> None:
        self.calls.append(("connected", ()))

    def begin(self, total: int | None, etag: str | None, last_modified: str | None) -> None:
        f = self.file
        if f.bytes_transferred or f.completed:  # (a restart after a checkpoint: committed first)
            self.calls.append(("begin", (total, etag, last_modified)))
            self._now()
            raise _HandBack
        if total is not None and total >= offload.SMALL_MAX_BYTES:
            raise _HandBack
        f.bytes_total, f.etag, f.last_modified, f.segments = total, etag, last_modified, None
        self.calls.append(("begin", (total, etag, last_modified)))

    def checkpoint(self, offset: int) -> None:
        self.file.bytes_transferred = offset
        self.calls.append(("checkpoint", (offset,)))
        self._now()

    def redirected(self, url: str) -> None:
        self.file.remote_url = url
        self.calls.append(("redirected", (url,)))
        self._now()

    def responded(self, range_support: bool | None, headers: str) -> None:
        self.file.range_support, self.file.response_headers = range_support, headers
        self.calls.append(("responded", (range_support, headers)))


def unpaced_throttle() -> Throttle:
    """The worker's throttle: no limit and no BackgroundYield on any priority.  The daemon
    hands it only jobs whose priority is neither limited nor yielding (``scheduler.run``),
    whatever its own policy says; a default throttle would pace some of them (NORMAL yields
    by default) with controllers the daemon never sees or drops."""
    throttle = Throttle()
    throttle.politeness.configure({int(p): False for p in JobPriority})
    return throttle


class Worker:
    def __init__(self, settings: offload.Settings, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.h1 = H1Client(
            connect_timeout_s=settings.connect_timeout_s,
            read_timeout_s=settings.read_timeout_s,
            read_bytes=settings.read_buffer_bytes,
            default_headers=dict(settings.default_headers),
            pipeline_depth=settings.pipeline_depth,
            splice=settings.splice,
        )
        self.downloader = Downloader(
            self.h1, settings.tuning, throttle=unpaced_throttle(), proxies=Proxies(settings.proxies)
        )
        self.lanes: dict[int, asyncio.Task[None]] = {}
        self.queues: dict[int, _Queue] = {}
        self._outbox: list[tuple[Any, ...]] = []

    def report(self, message: tuple[Any, ...]) -> None:
        """Sent with the others of this turn of the loop (one frame)."""
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.append(message)

    def _flush(self) -> None:
        messages, self._outbox = self._outbox, []
        if messages and not self.writer.is_closing():
            self.writer.write(offload.encode(messages))

    async def lane(
        self,
        lane_id: int,
        queue: _Queue,
        job_id: str,
        options: RequestOptions,
        priority: int,
        owner: Owner,
    ) -> None:
        """The lane's files in order, more as they are added, until it is closed and empty,
        a file fails (reported with its file) or is handed back (``_HandBack``)."""
        while (item := await queue.next()) is not None:
            index, file = item
            upcoming = [f for _, f in itertools.islice(queue.files, LOOKAHEAD)]
            progress = _Recorder(self, lane_id, index, file)
            try:
                fetched = await self.downloader.download(
                    file, owner, progress, priority, options, defer_sync=True, upcoming=upcoming
                )
            except _HandBack:
                self.report(("handback", lane_id, index))
                return
            except BitsError as e:
                self.report(("failed", lane_id, index, offload.portable(e), progress.taken()))
                return
            except Exception as e:  # a bug fails the file, as in the daemon's loop
                log.exception("fetch worker: %s failed unexpectedly", redact_url(file.remote_url))
                error = InternalError(f"internal error: {e!r}")
                self.report(("failed", lane_id, index, offload.portable(error), progress.taken()))
                return
            self.report(("done", lane_id, index, fetched.size, fetched.durable, progress.taken()))
            if len(self._outbox) >= FLUSH_FILES:
                # now: reads that find their bytes waiting never yield to the loop, so the
                # flush of this turn could wait for dozens of files (measured: 35 ms)
                self._flush()

    def _start(self, group: asyncio.TaskGroup, message: tuple[Any, ...]) -> None:
        """A new lane: its queue at once (an "extend", "close" or "stop" may follow in the
        same frame, before its task first runs), and "ended" said when its task is over,
        however it ends (cancelled before it started too)."""
        lane_id, job_id, options, priority, owner, files = message[1:]
        queue = self.queues[lane_id] = _Queue(files)
        task = group.create_task(self.lane(lane_id, queue, job_id, options, priority, owner))
        self.lanes[lane_id] = task

        def ended(_: asyncio.Task[None]) -> None:
            self.queues.pop(lane_id, None)
            self.lanes.pop(lane_id, None)
            self.report(("ended", lane_id))

        task.add_done_callback(ended)

    def _control(self, message: tuple[Any, ...]) -> None:
        queue = self.queues.get(message[1])
        if message[0] == "extend" and queue is not None:
            queue.extend(message[2])
        elif message[0] == "close" and queue is not None:
            queue.close()
        elif message[0] == "stop":
            task = self.lanes.get(message[1])
            if task is not None:
                task.cancel()
            else:  # (it ended already: said again, harmless)
                self.report(("ended", message[1]))

    async def serve(self, reader: asyncio.StreamReader) -> None:
        self.report(("ready",))
        async with asyncio.TaskGroup() as group:
            while (messages := await offload.read_frame(reader)) is not None:
                for message in messages:
                    if message[0] == "lane":
                        self._start(group, message)
                    else:
                        self._control(message)
            os._exit(0)  # the daemon is gone: nothing more is written


class _Queue:
    """A lane's files to go, and whether more may come."""

    def __init__(self, files: list[tuple[int, JobFile]]) -> None:
        self.files = collections.deque(files)
        self.closed = False
        self._more = asyncio.Event()

    def extend(self, files: list[tuple[int, JobFile]]) -> None:
        self.files.extend(files)
        self._more.set()

    def close(self) -> None:
        self.closed = True
        self._more.set()

    async def next(self) -> tuple[int, JobFile] | None:
        while not self.files:
            if self.closed:
                return None
            self._more.clear()
            await self._more.wait()
        return self.files.popleft()


def _die_with(parent: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(0)


async def _main(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock, limit=offload.FRAME_MAX_BYTES)
    first = await offload.read_frame(reader)
    if not first or first[0][0] != "settings":
        return
    worker = Worker(first[0][1], writer)
    tune_gc()
    await worker.serve(reader)


def main() -> None:
    parent, fd = int(sys.argv[1]), int(sys.argv[2])
    _die_with(parent)
    tune_malloc()  # (as the daemon: socket reads' buffers reused, not trimmed and regrown)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # (a ^C of the daemon's terminal is the daemon's)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_main(fd))


if __name__ == "__main__":
    main()
