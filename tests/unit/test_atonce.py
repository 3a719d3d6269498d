"""scheduler/atonce.py: a job's files at once sharing one SyncBatch (real files, real syncs).

The rule under test: a file still being written when a batch syncs gets the next batch's
sync handle, opened before that sync starts, so a write-back error of its pages reaches one
batch or the other; and every fd is let go of.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from openbits.errors import BitsError, HResult
from openbits.model import Job, JobFile
from openbits.scheduler.atonce import FilesAtOnce, SharedBatch
from openbits.transfer.download import Fetched
from openbits.transfer.sink import SyncBatch


def open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


@pytest.fixture
def threads() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        yield pool


class Recorder:
    """The batch's commits, and every sync handle it was given (opened in order)."""

    def __init__(self) -> None:
        self.commits: list[list[str]] = []
        self.opened: list[tuple[str, int]] = []

    def commit(self, files: Iterable[tuple[JobFile, int]]) -> None:
        self.commits.append([f.local_file for f, _ in files])

    async def open_handle(self, directory: str) -> int:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        self.opened.append((directory, fd))
        return fd


async def test_a_file_in_flight_gets_the_next_batchs_handle_before_the_sync(
    tmp_path: Path, threads: concurrent.futures.Executor
) -> None:
    before = open_fds()
    rec = Recorder()
    batch = SyncBatch(threads, rec.commit, rec.open_handle)
    shared = SharedBatch(batch)
    d = str(tmp_path)
    x, y = JobFile("http://h/x", f"{d}/x"), JobFile("http://h/y", f"{d}/y")
    await shared.begin(d)  # x: in flight
    await shared.begin(d)  # y
    shared.end(d)
    batch.add(y, 1)
    await shared.flush()
    assert rec.commits == [[f"{d}/y"]]
    [(_, _first), (_, second)] = rec.opened
    assert batch.handles == {d: second}, "x's directory has the next batch's handle already"
    shared.end(d)
    batch.add(x, 1)
    await shared.flush()
    assert rec.commits == [[f"{d}/y"], [f"{d}/x"]]
    assert len(rec.opened) == 2, "nothing in flight: no handle opened for the batch after"
    await shared.flush()  # nothing to sync
    assert len(rec.commits) == 2
    batch.close()
    assert open_fds() == before, "every handle let go of"


async def test_files_at_once_takes_each_file_once_in_runs_and_reports_the_failing_one(
    tmp_path: Path, threads: concurrent.futures.Executor
) -> None:
    files = [JobFile(f"http://h/{i}", f"{tmp_path}/{i}") for i in range(40)]
    files[3].completed = True
    job = Job("{00000000-0000-0000-0000-000000000001}", "alice", 1000, files=files)
    rec = Recorder()
    batch = SyncBatch(threads, rec.commit, rec.open_handle)
    fetched: list[tuple[int, list[str]]] = []
    running = 0
    most = 0

    async def fetch(index: int, upcoming: Iterable[JobFile]) -> Fetched:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0)
        fetched.append((index, [f.remote_url for f in upcoming]))
        running -= 1
        return Fetched(1, durable=index % 7 == 0)

    done: list[int] = []
    at_once = FilesAtOnce(job, SharedBatch(batch), 4)
    await at_once.run(fetch, lambda j, f, size: done.append(files.index(f)))
    await batch.flush()
    batch.close()
    assert sorted(i for i, _ in fetched) == [i for i in range(40) if i != 3], "each file once"
    assert most == 4, "four at once"
    for index, upcoming in fetched:  # only the task's own run is sent ahead
        assert all(int(u.rsplit("/", 1)[1]) > index for u in upcoming)
    assert sorted(done) == [0, 7, 14, 21, 28, 35], "durable files committed one by one"
    committed = sorted(int(p.rsplit("/", 1)[1]) for c in rec.commits for p in c)
    assert committed == [i for i in range(40) if i != 3 and i % 7 != 0]

    async def failing(index: int, upcoming: Iterable[JobFile]) -> Fetched:
        await asyncio.sleep(0)
        if index == 5:
            raise BitsError("gone", hresult=HResult.BG_E_HTTP_ERROR_404)
        await asyncio.sleep(10)  # (cancelled when file 5 fails)
        return Fetched(1)

    for f in files:
        f.completed = False
    again = FilesAtOnce(job, SharedBatch(SyncBatch(threads, rec.commit, rec.open_handle)), 4)
    with pytest.raises(BitsError) as info:
        await again.run(failing, lambda j, f, size: None)
    assert info.value.hresult == HResult.BG_E_HTTP_ERROR_404 and again.failed_index == 5


async def test_once_every_file_is_taken_the_batch_syncs_without_waiting_to_be_full(
    tmp_path: Path, threads: concurrent.futures.Executor
) -> None:
    """The job's last files: a batch starts its sync as soon as none is in flight (the last
    sync then has little left to write), never two at once, every file committed once."""
    files = [JobFile(f"http://h/{i}", f"{tmp_path}/{i}") for i in range(40)]
    job = Job("{00000000-0000-0000-0000-000000000002}", "alice", 1000, files=files)
    rec = Recorder()
    batch = SyncBatch(threads, rec.commit, rec.open_handle)
    starts: list[int] = []  # files taken when each sync started
    taken = 0
    submit = threads.submit

    def counting_submit(fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        assert batch.sync is None or batch.sync.done(), "one sync at a time"
        starts.append(taken)
        return submit(fn, *args, **kwargs)

    threads.submit = counting_submit  # type: ignore[method-assign]

    async def fetch(index: int, upcoming: Iterable[JobFile]) -> Fetched:
        nonlocal taken
        taken += 1
        await asyncio.sleep(0)
        return Fetched(1, durable=False)

    at_once = FilesAtOnce(job, SharedBatch(batch), 2)
    await at_once.run(fetch, lambda j, f, size: None)
    assert starts and all(n == 40 for n in starts), "no sync before the tail (the batch is not full)"
    await batch.flush()
    batch.close()
    committed = sorted(int(p.rsplit("/", 1)[1]) for c in rec.commits for p in c)
    assert committed == list(range(40)), "each file committed once"
