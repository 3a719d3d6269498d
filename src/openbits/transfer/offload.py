"""Runs of a job's small files fetched on another core: :class:`FetchWorker` keeps one worker
process (``fetchworker.py``) and hands it runs of files; the scheduler commits what it
reports (``scheduler/atonce.py``).

Why a process: a job of thousands of small files is bound by the event loop's CPU (~0.14 ms
a file: request, response head, create, write, close), and threads cannot share that work
(the GIL: measured twice as slow).  The worker runs the same ``Downloader`` code on its own
loop and its own connection; only plain cases go to it (``eligible``): HTTP(S) straight to the
server, no credentials and no client certificate, files not begun, the job's owner the
daemon's own user, and no bandwidth limit or politeness on the job's priority.

What the worker does to a file is what the daemon would have done: it reports each
``Progress`` call (connected, begin, checkpoint, redirected, responded) as it happens, and the
daemon replays them in order on the file's own progress (so checkpoints are committed after
the worker's fdatasync, as ever), then the file's end (its size, whether it is durable) or
its error.  Nothing it writes counts before the daemon committed it: a worker that dies or is
killed loses only files not yet committed, which are fetched again (by the daemon itself).
The worker dies with the daemon (PR_SET_PDEATHSIG, and the end of its socket), and exits after
``idle_s`` without work (``IDLE_S``; the daemon's ``fetch_worker_idle_s``).  ``FetchWorker.stats``
is what ``/metrics`` shows of it (counted here: files done and handed back, workers started
and lost).

The frames on the socket pair are a 4-byte length and a pickle of a list of messages (the
two ends are the same program, and the socket is nobody else's).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pickle
import socket
import struct
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from openbits.errors import BitsError
from openbits.model import ErrorContext, JobFile
from openbits.transfer.fetch import Fetched, Progress, direct_and_plain
from openbits.transfer.options import RequestOptions
from openbits.transfer.proxy import EnvProxies, Proxies
from openbits.transfer.routing import Owner

log = logging.getLogger("openbits.offload")

#: a worker with no run for this long exits (started again by the next run)
IDLE_S = 60.0
#: a file announced at least this long is handed back to the daemon (``fetchworker``)
SMALL_MAX_BYTES = 1024 * 1024
#: how long a worker may take to start (import, TLS) and to stop a run it was told to stop
READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
#: after a worker was lost, none is started again for this long (a crash is not retried hot)
COOL_DOWN_S = 60.0
_HEADER = struct.Struct(">I")
#: where the daemon's ``openbits`` package is imported from (the worker's PYTHONPATH)
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: the most a frame may hold (a run's files, or a flush of reports)
FRAME_MAX_BYTES = 64 * 1024 * 1024


class WorkerLost(Exception):
    """The worker process died or stopped answering: the run's files not reported done are
    fetched again by the daemon."""


@dataclass(frozen=True, slots=True)
class Settings:
    """What a worker builds its ``Downloader`` from (the daemon's own settings)."""

    connect_timeout_s: float
    read_timeout_s: float
    read_buffer_bytes: int
    pipeline_depth: int
    splice: bool
    default_headers: Mapping[str, str]
    tuning: Any  # routing.Tuning
    #: the daemon's own proxy settings (a redirect to another host is routed as here)
    proxies: EnvProxies


@dataclass(frozen=True, slots=True)
class Stats:
    """The fetch worker as the daemon's metrics show it (``FetchWorker.stats``): whether a
    worker process is up (started, not idled out nor lost), its lanes open, and since the
    daemon started: the files workers reported done, the ones they handed back (announced
    too big), the workers started and the ones lost (died or killed while in use)."""

    running: bool = False
    lanes: int = 0
    files_done: int = 0
    handed_back: int = 0
    started: int = 0
    lost: int = 0


class _Counts:
    """The counters behind ``Stats`` (one per ``FetchWorker``, shared with its processes)."""

    __slots__ = ("files_done", "handed_back", "lost", "started")

    def __init__(self) -> None:
        self.files_done = self.handed_back = self.started = self.lost = 0


def eligible(file: JobFile, options: RequestOptions, proxies: Proxies) -> bool:
    """Whether the worker may fetch ``file`` as the daemon would (see the module)."""
    scheme = file.remote_url[:8].lower()
    return (scheme.startswith("http://") or scheme == "https://") and direct_and_plain(file, options, proxies)


def encode(messages: Sequence[object]) -> bytes:
    data = pickle.dumps(list(messages), protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


async def read_frame(reader: asyncio.StreamReader) -> list[Any] | None:
    """The next frame's messages; None at the end of the stream."""
    try:
        head = await reader.readexactly(_HEADER.size)
        (length,) = _HEADER.unpack(head)
        if length > FRAME_MAX_BYTES:
            raise ValueError(f"a frame of {length} bytes")
        messages = pickle.loads(await reader.readexactly(length))
    except asyncio.IncompleteReadError:
        return None
    if not isinstance(messages, list):
        raise ValueError("a frame that is not a list")
    return messages


def portable(error: BitsError) -> object:
    """``error`` as the other end can load it: the exception itself, or its fields when it
    does not pickle (rebuilt as a plain BitsError by ``rebuilt``)."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return (error.hresult, int(error.context), error.message, error.retry_after_s, error.transient)
    return error


class _Rebuilt(BitsError):
    """An error of the worker whose own class did not travel: its code, context and word on
    being retried."""

    def __init__(self, fields: tuple[int, int, str, float | None, bool]) -> None:
        hresult, context, message, retry_after_s, transient = fields
        self._transient = transient
        super().__init__(message, hresult=hresult, context=ErrorContext(context), retry_after_s=retry_after_s)

    def retried(self) -> bool:
        return self._transient


def rebuilt(payload: object) -> BitsError:
    if isinstance(payload, BitsError):
        return payload
    assert isinstance(payload, tuple)
    return _Rebuilt(payload)


class Lane:
    """Files fetched in the worker, in order on one connection: the first run and every one
    ``extend`` adds until ``close``.  ``next`` gives each report in order; ``stop`` makes sure
    nothing of the lane is still being written (it ended, or the worker is gone)."""

    def __init__(self, worker: _Process, lane_id: int) -> None:
        self.worker, self.lane_id = worker, lane_id
        self.queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self.closing = False
        self.ended = False
        self.lost = False
        self.stopped = False

    def extend(self, files: Sequence[tuple[int, JobFile]]) -> None:
        self.worker.send(("extend", self.lane_id, list(files)))

    def close(self) -> None:
        """No more files: the lane ends once the ones given are fetched."""
        self.closing = True
        self.worker.send(("close", self.lane_id))

    async def next(self) -> tuple[Any, ...]:
        """("calls", index, calls) | ("done", index, size, durable, calls) |
        ("failed", index, error, calls) | ("handback", index) | ("ended",), where ``calls``
        are the file's ``Progress`` calls not reported yet (``replay``); raises WorkerLost
        (the lane is over then too)."""
        message = await self.queue.get()
        if message[0] == "lost":
            self.ended = self.lost = True
            raise WorkerLost("the fetch worker stopped")
        if message[0] == "ended":
            self.ended = True
        return message

    async def stop(
        self,
        on_call: Callable[[tuple[Any, ...]], None] | None = None,
        on_done: Callable[[tuple[Any, ...]], None] | None = None,
    ) -> None:
        """Make sure nothing of the lane is still being written: tell the worker to stop it
        and wait until it says it ended, passing the reports on the way to ``on_call``
        (a checkpoint is a durable fact: kept) and, with ``on_done``, the files it finished
        meanwhile (else they are fetched again); a worker that does not within
        ``STOP_TIMEOUT_S``, or was lost, is killed and waited for.  Once only: a second
        call returns at once."""
        if self.stopped:
            return
        self.stopped = True
        try:
            if not self.ended:
                self.worker.send(("stop", self.lane_id))
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    while not self.ended:
                        message = await self.next()
                        if message[0] == "calls" and on_call is not None:
                            on_call(message)
                        elif message[0] == "done" and on_done is not None:
                            on_done(message)
        except WorkerLost:
            pass
        except TimeoutError:
            log.warning("the fetch worker did not stop a lane in %.0f s: killed", STOP_TIMEOUT_S)
            self.lost = True
        except asyncio.CancelledError:  # (cancelled again while waiting: no waiting now)
            self.lost = True
            self.worker.count_lost()
            await asyncio.shield(self.worker.kill())
            raise
        finally:
            self.worker.forget(self.lane_id)
        if self.lost:  # (its end seen on the socket: the process may still be writing)
            self.worker.count_lost()
            await self.worker.kill()


def replay(progress: Progress, calls: Sequence[tuple[str, tuple[Any, ...]]]) -> None:
    """``Progress`` calls the worker reported, made on the daemon's side, in order."""
    for name, args in calls:
        if name == "connected":
            progress.connected()
        elif name == "begin":
            progress.begin(*args)
        elif name == "checkpoint":
            progress.checkpoint(*args)
        elif name == "redirected":
            progress.redirected(*args)
        elif name == "responded":
            progress.responded(*args)
        else:
            raise ValueError(f"an unknown report {name!r}")


def fetched_of(message: tuple[Any, ...]) -> Fetched:
    """What a "done" report says of its file."""
    return Fetched(int(message[2]), bool(message[3]))


class _Process:
    """One worker process: its socket, the task reading its reports, and its open lanes."""

    def __init__(
        self, proc: asyncio.subprocess.Process, writer: asyncio.StreamWriter, on_idle: Any, counts: _Counts
    ) -> None:
        self.proc, self.writer, self.on_idle, self.counts = proc, writer, on_idle, counts
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lanes: dict[int, Lane] = {}
        self.reader: asyncio.Task[None] | None = None
        self.gone = False
        self.lost_lanes = False
        self.counted_lost = False

    def send(self, message: tuple[Any, ...]) -> None:
        if not self.gone and not self.writer.is_closing():
            self.writer.write(encode([message]))

    def forget(self, lane_id: int) -> None:
        self.lanes.pop(lane_id, None)
        if not self.lanes:
            self.on_idle(self)

    async def read(self, reader: asyncio.StreamReader) -> None:
        """Reports to their lanes, until the worker's end (then every lane is told it is lost)."""
        try:
            while (messages := await read_frame(reader)) is not None:
                for message in messages:
                    if message[0] == "ready":
                        if not self.ready.done():
                            self.ready.set_result(None)
                        continue
                    lane = self.lanes.get(message[1])
                    if lane is not None:
                        lane.queue.put_nowait((message[0], *message[2:]))
                        if message[0] == "done":
                            self.counts.files_done += 1
                        elif message[0] == "handback":
                            self.counts.handed_back += 1
        except Exception as e:  # (a report that does not load: another version on disk?)
            log.warning("the fetch worker's reports broke off: %r", e)
        finally:
            self._gone()

    def _gone(self) -> None:
        self.gone = True
        if not self.ready.done():
            self.ready.set_exception(WorkerLost("the fetch worker did not start"))
            self.ready.exception()  # (retrieved: its waiter may have gone)
            self.lost_lanes = True
        if self.lanes:
            self.lost_lanes = True
            log.warning(
                "the fetch worker ended with %d lane(s) open: their files are fetched here", len(self.lanes)
            )
        if self.lost_lanes:
            self.count_lost()
        for lane in self.lanes.values():
            lane.queue.put_nowait(("lost",))
        self.writer.close()
        if self.proc.returncode is None:  # (its lanes' files are fetched again: it must stop)
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    def count_lost(self) -> None:
        """Counted once among the workers lost: it died, or is killed, while in use."""
        if not self.counted_lost:
            self.counted_lost = True
            self.counts.lost += 1

    async def kill(self) -> None:
        """Stop the process now (its lanes are lost) and reap it."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        self.writer.close()
        if self.reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader
        await self.proc.wait()


class FetchWorker:
    """The worker process, started on first use and stopped after ``IDLE_S`` without lanes
    (owned by the composition root, which ``close``-s it)."""

    def __init__(self, settings: Settings, idle_s: float = IDLE_S) -> None:
        self.settings, self.idle_s = settings, idle_s
        self._current: _Process | None = None
        self._old: list[_Process] = []  # idled out or lost: reaped at the next start or close
        self._ids = itertools.count(1)
        self._idle: asyncio.TimerHandle | None = None
        self._lost_at = -COOL_DOWN_S
        self._starting = asyncio.Lock()
        self._closed = False
        self._counts = _Counts()

    def stats(self) -> Stats:
        """What the daemon's metrics show of the worker (read only)."""
        current, counts = self._current, self._counts
        up = current is not None and not current.gone
        return Stats(
            running=up,
            lanes=len(current.lanes) if current is not None and up else 0,
            files_done=counts.files_done,
            handed_back=counts.handed_back,
            started=counts.started,
            lost=counts.lost,
        )

    def usable(self) -> bool:
        """False for a while after a worker was lost (one that crashes is not restarted hot)."""
        current = self._current
        if current is not None and current.gone and current.lost_lanes:
            self._lost_at = time.monotonic()
            self._current = None
            self._old.append(current)
        return time.monotonic() - self._lost_at >= COOL_DOWN_S

    async def open(
        self,
        job_id: str,
        options: RequestOptions,
        priority: int,
        owner: Owner,
        files: Sequence[tuple[int, JobFile]],
    ) -> Lane:
        """A lane of a job's files in the worker, these first (fetched in order, the next
        requests sent ahead as the daemon's own loop does); raises WorkerLost when there is
        no worker."""
        current = await self._warm()
        if current is None or current.gone:  # (from here on, its end reaches the lane)
            raise WorkerLost("no fetch worker")
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        lane = Lane(current, next(self._ids))
        current.lanes[lane.lane_id] = lane
        current.send(("lane", lane.lane_id, job_id, options, priority, owner, list(files)))
        return lane

    async def _warm(self) -> _Process | None:
        """A worker that said it is ready (started if need be); None if none can be."""
        async with self._starting:
            if self._closed or not self.usable():
                return None
            current = self._current
            if current is None or current.gone:
                if current is not None:
                    self._old.append(current)
                self._current = None
                await self._reap()
                try:
                    current = self._current = await self._spawn()
                except OSError as e:
                    log.warning("cannot start a fetch worker: %s", e)
                    self._lost_at = time.monotonic()
                    return None
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                await asyncio.shield(current.ready)
        except (TimeoutError, WorkerLost):
            self._lost_at = time.monotonic()
            await current.kill()
            return None
        return current

    def _on_idle(self, process: _Process) -> None:
        if process is self._current and self._idle is None:
            self._idle = asyncio.get_running_loop().call_later(self.idle_s, self._idle_out)

    def _idle_out(self) -> None:
        self._idle = None
        current = self._current
        if current is not None and not current.lanes:
            self._current = None
            self._old.append(current)
            current.writer.close()  # (the worker exits at the end of its socket)

    async def _spawn(self) -> _Process:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        # (the daemon's own package first: the worker runs the same code wherever it is)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (_PACKAGE_ROOT, env.get("PYTHONPATH"))))
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "openbits.transfer.fetchworker",
                str(os.getpid()),
                str(child.fileno()),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                pass_fds=(child.fileno(),),
                start_new_session=True,
                env=env,
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        try:
            reader, writer = await asyncio.open_unix_connection(sock=parent, limit=FRAME_MAX_BYTES)
        except BaseException:
            parent.close()
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.shield(proc.wait())
            raise
        process = _Process(proc, writer, self._on_idle, self._counts)
        self._counts.started += 1
        log.info("fetch worker started (pid %d)", proc.pid)
        process.send(("settings", self.settings))
        process.reader = asyncio.create_task(process.read(reader), name="fetch-worker-reports")
        return process

    async def _reap(self) -> None:
        old, self._old = self._old, []
        for process in old:
            await process.kill()

    async def close(self) -> None:
        self._closed = True
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._current is not None:
            self._old.append(self._current)
            self._current = None
        await self._reap()
