"""scheduler/run.py's ``_run_job`` on a Service of its own (a real SQLite store, real syncs)
fetching from a raw asyncio server on 127.0.0.1: what happens at a job's very end."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import pwd
from collections.abc import Iterable
from pathlib import Path

from openbits.caller import Caller
from openbits.config import Config
from openbits.model import Job, JobFile, JobState
from openbits.scheduler.run import Scheduler
from openbits.service import Service
from openbits.store.sqlite import SqliteStore
from openbits.transfer.download import Downloader
from openbits.transfer.h1 import H1Client
from tests.support.rawserver import raw_server

ME = Caller(pwd.getpwuid(os.getuid()).pw_name, os.getuid(), os.getgid(), is_admin=os.getuid() == 0)
BODY = b"0123456789" * 100


async def respond(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(BODY) + BODY)


class Bench:
    """A Service of its own (a real SQLite store), a queued job of ``names`` from ``base``
    into ``tmp_path/dl``, and ``run()``: its ``_run_job`` as the scheduler runs it."""

    def __init__(self, tmp_path: Path) -> None:
        self.config = Config(state_dir=str(tmp_path / "state"), socket=str(tmp_path / "s"))
        self.service = Service(SqliteStore(self.config.db_path), self.config)
        self.service.recover()
        self.dl = tmp_path / "dl"
        self.dl.mkdir()

    async def queued_job(self, base: str, *names: str) -> Job:
        service = self.service
        job_id = (await service.create_job(ME, {"DisplayName": "end", "Priority": 0})).job_id
        files = [{"RemoteUrl": f"{base}/{n}", "LocalFile": str(self.dl / n)} for n in names]
        await service.add_file_set(ME, job_id, {"Files": files})
        await service.set_job_state(ME, job_id, {"JobState": 2})  # resume: QUEUED
        return service.find(ME, job_id)

    async def run(self, job: Job) -> None:
        h1 = H1Client(connect_timeout_s=5, read_timeout_s=5)
        try:
            with concurrent.futures.ThreadPoolExecutor(2) as threads:
                scheduler = Scheduler(self.service, self.config, Downloader(h1), sync_threads=threads)
                async with asyncio.timeout(10):
                    await scheduler._run_job(job)
        finally:
            await h1.close()


async def test_a_file_added_while_the_last_files_are_synced_is_fetched_before_transferred(
    tmp_path: Path,
) -> None:
    """AddFile lands while the job's last small files are being synced (their commit is the
    moment here): the job does not go TRANSFERRED without it (Complete would drop it)."""
    bench = Bench(tmp_path)
    service = bench.service
    async with raw_server(respond) as base:
        job = await bench.queued_job(base, "a", "b")
        job_id = job.job_id
        committed = service.files_done
        added: list[str] = []

        def files_done(_job: object, done: Iterable[tuple[JobFile, int]], what: str = "") -> None:
            committed(job, done, what or "files transferred")
            if not added and all(f.completed for f in job.files):
                # (AddFile, while the sync of the job's last files was in flight)
                service._add_files(ME, job_id, [(f"{base}/c", str(bench.dl / "c"))])
                added.append("c")

        service.files_done = files_done  # type: ignore[method-assign]
        await bench.run(job)
    assert added == ["c"], "the file was added during the final sync"
    assert [f.completed for f in job.files] == [True, True, True], "the added file was fetched too"
    assert job.state is JobState.TRANSFERRED
    assert service.find(ME, job_id).files_transferred == 3
    temp = job.files[2].temp_path
    assert temp is not None and Path(temp).read_bytes() == BODY


async def test_a_job_that_ends_while_its_last_files_are_synced_is_not_fetched_again(
    tmp_path: Path,
) -> None:
    """The job goes final while its last files are synced (their commit is then refused):
    its task ends, it does not take the job's files again (the look for files added at the
    end must not turn into a loop)."""
    bench = Bench(tmp_path)
    requests = 0

    async def counting(writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        requests += 1
        await respond(writer)

    async with raw_server(counting) as base:
        job = await bench.queued_job(base, "a", "b")

        def refused(_job: object, done: Iterable[tuple[JobFile, int]], what: str = "") -> None:
            job.state = JobState.CANCELLED  # (ended meanwhile: files_done takes nothing)

        bench.service.files_done = refused  # type: ignore[method-assign]
        await bench.run(job)
    assert requests == 2, "each file fetched once"
