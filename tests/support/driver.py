"""Service and scheduler in this process, without the API or a daemon: a real SQLite store
in a temporary directory, the real downloader, and a ``ManualClock`` the test moves.

``tick()`` runs one scheduler tick and lets no task run (what the rules decide at this
instant); ``settle()`` ticks and lets the transfer tasks run until nothing is left to do
and no change asked for another tick (no sleeps: it waits on the tasks themselves).
Either returns when the scheduler would wake next (ns), so a test can move the clock
there::

    async with Driver(tmp_path) as d:
        job = await d.job(source)
        await d.settle()
        assert job.state is JobState.TRANSFERRED
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
from pathlib import Path
from types import TracebackType
from typing import Any

from openbits.caller import Caller
from openbits.clock import ManualClock
from openbits.config import Config
from openbits.model import Job, JobPriority
from openbits.scheduler.run import Scheduler, Transfers
from openbits.service import Service
from openbits.store.sqlite import SqliteStore
from openbits.transfer.download import Downloader
from openbits.transfer.h1 import H1Client
from openbits.transfer.http import TLSContexts
from openbits.transfer.proxy import Proxies

ME = Caller("me", os.geteuid(), os.getegid(), is_admin=os.geteuid() == 0)
#: an address where nothing listens: a transfer from it fails at once, transiently
REFUSED_URL = "http://127.0.0.1:9/nothing"


class Driver:
    def __init__(self, tmp_path: Path, *, proxies: Proxies | None = None, **config: Any) -> None:
        """``proxies``: the routes of the transfers (default: direct)."""
        self.proxies = proxies
        self.dest = tmp_path / "dest"
        self.dest.mkdir(exist_ok=True)
        self.config = Config(state_dir=str(tmp_path / "state"), socket=str(tmp_path / "s"), **config)
        os.makedirs(self.config.state_dir, exist_ok=True)
        self.clock = ManualClock()
        self.store = SqliteStore(self.config.db_path)
        self.transfers = Transfers()
        self.service = Service(self.store, self.config, self.clock, runner=self.transfers)
        self.service.recover()
        self._stack = contextlib.AsyncExitStack()
        self._files = 0

    async def __aenter__(self) -> Driver:
        c = self.config
        h1 = H1Client(connect_timeout_s=c.connect_timeout_s, read_timeout_s=c.read_timeout_s)
        self._stack.push_async_callback(h1.close)
        tls = TLSContexts()
        self._stack.callback(tls.close)
        sync_threads = concurrent.futures.ThreadPoolExecutor(1)
        self._stack.callback(sync_threads.shutdown, wait=True)
        downloader = Downloader(h1, tls=tls, proxies=self.proxies)
        self.scheduler = Scheduler(
            self.service, c, downloader, transfers=self.transfers, sync_threads=sync_threads
        )
        self.scheduler._group = await self._stack.enter_async_context(asyncio.TaskGroup())
        self._stack.callback(self._cancel_all)  # (runs first: the TaskGroup then ends at once)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self._stack.aclose()
        finally:
            self.store.close()

    def _cancel_all(self) -> None:
        for job_id in list(self.transfers.running):
            self.transfers.cancel(job_id)

    async def job(
        self, *sources: str, priority: JobPriority = JobPriority.NORMAL, resume: bool = True, **props: Any
    ) -> Job:
        """A new job downloading ``sources`` into the destination directory, resumed."""
        job = await self.service.create_job(ME, {"Priority": int(priority), **props})
        for source in sources:
            self._files += 1
            local = str(self.dest / f"f{self._files}")
            await self.service.add_file(ME, job.job_id, {"RemoteUrl": source, "LocalFile": local})
        if resume:
            self.service.resume(job)
        return job

    def tick(self) -> int | None:
        """One scheduler tick at the clock's time; no task runs."""
        self.transfers.clear_wake()
        return self.scheduler._tick()

    async def settle(self, rounds: int = 50) -> int | None:
        """Tick and let every task started run to its end, until a tick changes nothing."""
        for _ in range(rounds):
            wake_at = self.tick()
            running = list(self.transfers.running.values())
            if running:
                await asyncio.wait(running)
            await asyncio.sleep(0)  # (the tasks' done callbacks)
            if not self.transfers.woken:
                return wake_at
        raise AssertionError(f"still busy after {rounds} rounds")

    def advance_to(self, when_ns: int | None) -> None:
        """Move the clock to ``when_ns`` (a deadline ``tick`` or ``settle`` returned)."""
        assert when_ns is not None, "the scheduler has no deadline"
        self.clock.advance(max(0, when_ns - self.clock.now_ns()) / 1e9)
