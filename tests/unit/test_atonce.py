"""scheduler/atonce.py: a job's files at once sharing one SyncBatch (real files, real syncs).

The rule under test: a file still being written when a batch syncs gets the next batch's
sync handle, opened before that sync starts, so a write-back error of its pages reaches one
batch or the other; and every fd is let go of.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from openbits.errors import BitsError, HResult
from openbits.model import Job, JobFile
from openbits.scheduler.atonce import FilesAtOnce, SharedBatch
from openbits.scheduler.run import Transfers, _settled
from openbits.transfer import sink
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


class SyncCounter:
    """Wraps the batch's sync (run in its thread): how many ran at once at most, and for each
    one whether every file had been taken (``FilesAtOnce``, once ``at_once`` is set) when it
    started."""

    def __init__(self, batch: SyncBatch) -> None:
        self.lock = threading.Lock()
        self.running = self.most = 0
        self.starts: list[bool] = []
        self.at_once: FilesAtOnce | None = None
        sync = batch._timed_sync

        def counted(handles: dict[str, int]) -> None:
            with self.lock:
                self.running += 1
                self.most = max(self.most, self.running)
            try:
                time.sleep(0.002)  # (a sync takes a while: another could overlap it)
                sync(handles)
            finally:
                with self.lock:
                    self.running -= 1

        def starting(handles: dict[str, int]) -> None:
            self.starts.append(self.at_once is not None and self.at_once._all_taken())
            counted(handles)

        batch._timed_sync = starting  # type: ignore[method-assign]


async def _tail_run(
    tmp_path: Path, threads: concurrent.futures.Executor, completed_from: int | None = None
) -> tuple[SyncCounter, Recorder, SyncBatch]:
    files = [JobFile(f"http://h/{i}", f"{tmp_path}/{i}") for i in range(40)]
    if completed_from is not None:
        for f in files[completed_from:]:  # (committed by an earlier run: files end in any order)
            f.completed = True
    job = Job("{00000000-0000-0000-0000-000000000002}", "alice", 1000, files=files)
    rec = Recorder()
    batch = SyncBatch(threads, rec.commit, rec.open_handle)
    batch.MAX_AGE_S = 3600.0  # (only the tail starts a sync before the batch is full)
    counter = SyncCounter(batch)

    async def fetch(index: int, upcoming: Iterable[JobFile]) -> Fetched:
        await asyncio.sleep(0.001)
        return Fetched(1, durable=False)

    counter.at_once = FilesAtOnce(job, SharedBatch(batch), 2)
    await counter.at_once.run(fetch, lambda j, f, size: None)
    return counter, rec, batch


async def test_once_every_file_is_taken_the_batch_syncs_without_waiting_to_be_full(
    tmp_path: Path, threads: concurrent.futures.Executor
) -> None:
    """The job's last files: a batch starts its sync as soon as none is in flight (the last
    sync then has little left to write), never two at once, every file committed once."""
    counter, rec, batch = await _tail_run(tmp_path, threads)
    assert counter.starts, "a sync started before the run ended (the batch is not full)"
    assert all(counter.starts), "none before every file was taken"
    await batch.flush()
    batch.close()
    assert counter.most == 1, "one sync at a time"
    committed = sorted(int(p.rsplit("/", 1)[1]) for c in rec.commits for p in c)
    assert committed == list(range(40)), "each file committed once"


async def test_the_tail_begins_when_the_files_after_the_last_taken_are_completed_already(
    tmp_path: Path, threads: concurrent.futures.Executor
) -> None:
    """A job resumed with its last files committed by an earlier run: the tail is when every
    file left is taken, not when the cursor reaches the end of the list."""
    counter, rec, batch = await _tail_run(tmp_path, threads, completed_from=30)
    assert counter.starts and all(counter.starts)
    await batch.flush()
    batch.close()
    committed = sorted(int(p.rsplit("/", 1)[1]) for c in rec.commits for p in c)
    assert committed == list(range(30))


async def test_no_tail_sync_when_the_last_sync_was_longer_than_the_files_left(
    tmp_path: Path, threads: concurrent.futures.Executor
) -> None:
    """A sync that took longer than the files in flight will (a fixed journal commit): the
    last files are left to the last sync rather than make it wait behind another."""
    files = [JobFile(f"http://h/{i}", f"{tmp_path}/{i}") for i in range(8)]
    job = Job("{00000000-0000-0000-0000-000000000003}", "alice", 1000, files=files)
    rec = Recorder()
    batch = SyncBatch(threads, rec.commit, rec.open_handle)
    batch.MAX_AGE_S = 3600.0
    batch.sync_s = 10.0  # (the last sync took 10 s)
    counter = SyncCounter(batch)

    async def fetch(index: int, upcoming: Iterable[JobFile]) -> Fetched:
        await asyncio.sleep(0.001)
        return Fetched(1, durable=False)

    await FilesAtOnce(job, SharedBatch(batch), 2).run(fetch, lambda j, f, size: None)
    assert counter.starts == [], "no sync before the end"
    await batch.flush()
    batch.close()
    assert sorted(int(p.rsplit("/", 1)[1]) for c in rec.commits for p in c) == list(range(8))


async def test_a_directory_written_with_no_file_in_the_batch_keeps_its_handle(
    tmp_path: Path, threads: concurrent.futures.Executor
) -> None:
    """A file of directory B is in flight when a batch of A's files syncs: B's handle, opened
    before that file's writes, goes on to the next batch (closed unsynced, a write-back error
    only it saw would be lost), and no other handle of B is opened."""
    before = open_fds()
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    rec = Recorder()
    batch = SyncBatch(threads, rec.commit, rec.open_handle)
    shared = SharedBatch(batch)
    await shared.begin(str(b))  # in flight
    await shared.begin(str(a))
    shared.end(str(a))
    batch.add(JobFile("http://h/x", f"{a}/x"), 1)
    b_handle = batch.handles[str(b)]
    await shared.flush()
    assert batch.handles.get(str(b)) == b_handle, "B keeps the handle it had"
    assert [d for d, _ in rec.opened].count(str(b)) == 1
    shared.end(str(b))
    batch.add(JobFile("http://h/y", f"{b}/y"), 1)
    await shared.flush()
    assert rec.commits == [[f"{a}/x"], [f"{b}/y"]]
    batch.close()
    assert open_fds() == before, "every handle let go of"


class SyncGate:
    """The batch syncs (``sink._sync_handles``, in their threads) as a slow or busy disk has
    them: each takes ``delay_s``; the ``hold``-th one (1-based) sets ``entered`` and waits for
    ``release`` before it runs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, delay_s: float = 0.0, hold: int = 0) -> None:
        self.delay_s, self.hold, self.calls = delay_s, hold, 0
        self.entered, self.release = threading.Event(), threading.Event()
        self._real = sink._sync_handles
        monkeypatch.setattr(sink, "_sync_handles", self._sync)

    def _sync(self, handles: dict[str, int]) -> None:
        self.calls += 1
        if self.calls == self.hold:
            self.entered.set()
            self.release.wait(5)
        time.sleep(self.delay_s)
        self._real(handles)

    async def began(self) -> bool:
        """Whether the held sync began (within 5 s)."""
        return await asyncio.to_thread(self.entered.wait, 5)


async def settle_batch(
    tmp_path: Path, threads: concurrent.futures.Executor, *names: str
) -> tuple[Recorder, SyncBatch]:
    """A batch of ``names`` finished in ``tmp_path`` (its handle opened), and its commits."""
    rec = Recorder()
    batch = SyncBatch(threads, rec.commit, rec.open_handle)
    await batch.prepare(str(tmp_path))
    for name in names:
        batch.add(JobFile(f"http://h/{name}", f"{tmp_path}/{name}"), 1)
    return rec, batch


async def fds_back(before: set[int]) -> bool:
    """Whether the process's fds are ``before`` again, within 5 s (a thread lets go late)."""
    for _ in range(500):
        if open_fds() == before:
            return True
        await asyncio.sleep(0.01)
    return open_fds() == before


async def test_settling_a_batch_syncs_off_the_loop_and_keeps_the_synced_files(
    tmp_path: Path, threads: concurrent.futures.Executor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job that fails or is stopped with files in its batch: they are synced (in a thread,
    while the loop serves everyone else: a slow disk's sync is simulated) and committed; every
    handle is let go of."""
    before = open_fds()
    SyncGate(monkeypatch, delay_s=1.0)  # (a busy disk: 10 ticks fit in it on a loaded machine too)
    rec, batch = await settle_batch(tmp_path, threads, "x", "y")
    ticks = 0
    settling = asyncio.create_task(batch.settle())
    while not settling.done():
        await asyncio.sleep(0.01)
        ticks += 1
    await settling
    assert ticks >= 10, f"the loop went on while the batch synced ({ticks} ticks of 10 ms)"
    assert rec.commits == [[f"{tmp_path}/x", f"{tmp_path}/y"]]
    batch.close()
    assert open_fds() == before, "every handle let go of"


async def test_settling_cancelled_again_commits_nothing_and_lets_go_of_the_handles_later(
    tmp_path: Path, threads: concurrent.futures.Executor, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = open_fds()
    gate = SyncGate(monkeypatch, hold=1)
    rec, batch = await settle_batch(tmp_path, threads, "x")
    settling = asyncio.create_task(batch.settle())
    assert await gate.began(), "the sync began in its thread"
    settling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await settling
    assert open_fds() != before, "the thread still syncs through the handle"
    gate.release.set()
    assert await fds_back(before), "let go of once the thread was done"
    assert rec.commits == [], "nothing committed: those files are fetched again"


async def test_a_stop_while_a_stopped_job_settles_waits_for_its_files(
    tmp_path: Path, threads: concurrent.futures.Executor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scheduler pre-empts a job (cancel, no wait), then Complete or Suspend stops it
    while its finished files are being synced: the stop waits, and they are committed (a
    second cancel would cut the sync short, and Complete would drop those files)."""
    gate = SyncGate(monkeypatch, delay_s=0.2, hold=1)
    gate.release.set()  # (noted when it begins, not held)
    rec, batch = await settle_batch(tmp_path, threads, "x")
    transfers = Transfers()

    running = asyncio.Event()

    async def run_job() -> None:
        try:
            running.set()
            await asyncio.Event().wait()  # (transferring)
        except asyncio.CancelledError:
            await _settled(batch)  # (as the scheduler's job task)
            raise

    async with asyncio.TaskGroup() as group:
        transfers.start(group, "job", run_job())
        await running.wait()
        transfers.cancel("job")  # pre-empted
        assert await gate.began(), "its files are being synced"
        await transfers.stop("job")  # Complete, say
        assert rec.commits == [[f"{tmp_path}/x"]], "committed before the stop returned"
    batch.close()


async def test_a_settle_that_fails_is_logged_not_raised_into_the_job_task(
    tmp_path: Path, threads: concurrent.futures.Executor, caplog: pytest.LogCaptureFixture
) -> None:
    """``_settled`` runs in the job task's error and cancel paths: an exception there (a bug
    in a commit, say) would skip the job's own failure and end the scheduler's TaskGroup.
    It is logged instead, and every handle is let go of."""
    before = open_fds()
    _, batch = await settle_batch(tmp_path, threads, "x")

    def broken_commit(files: Iterable[tuple[JobFile, int]]) -> None:
        raise RuntimeError("a bug in the commit")

    batch.commit = broken_commit
    with caplog.at_level("ERROR", logger="openbits.scheduler"):
        assert await _settled(batch) is False, "not cancelled, and nothing raised"
    assert "not settled" in caplog.text and "a bug in the commit" in caplog.text
    batch.close()
    assert await fds_back(before), "every handle let go of"


async def test_settling_an_empty_batch_waits_for_no_other_sync(
    tmp_path: Path, threads: concurrent.futures.Executor
) -> None:
    """Suspend or Cancel of a job with nothing to sync does not queue behind other jobs'
    syncs in the shared threads."""
    release = threading.Event()
    busy = [threads.submit(release.wait, 5) for _ in range(4)]  # (every thread taken)
    rec, batch = await settle_batch(tmp_path, threads)
    try:
        async with asyncio.timeout(1):
            await batch.settle()
    finally:
        release.set()
        concurrent.futures.wait(busy)
    assert rec.commits == []


async def test_the_files_of_the_sync_in_flight_are_committed_before_the_batch_s_own_sync(
    tmp_path: Path, threads: concurrent.futures.Executor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Settling with a sync in flight: its files are committed as soon as it is over, so a
    cancellation during the batch's own sync loses only the files that sync was for."""
    before = open_fds()
    gate = SyncGate(monkeypatch, hold=2)
    rec, batch = await settle_batch(tmp_path, threads)
    shared = SharedBatch(batch)
    await shared.begin(str(tmp_path))  # y: in flight while x's batch syncs
    await shared.begin(str(tmp_path))  # x
    shared.end(str(tmp_path))
    batch.add(JobFile("http://h/x", f"{tmp_path}/x"), 1)
    await shared.flush(wait=False)  # x's sync in flight
    shared.end(str(tmp_path))
    batch.add(JobFile("http://h/y", f"{tmp_path}/y"), 1)
    settling = asyncio.create_task(batch.settle())
    assert await gate.began(), "the batch's own sync began"
    assert rec.commits == [[f"{tmp_path}/x"]], "x committed once its sync was over"
    settling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await settling
    gate.release.set()
    assert await fds_back(before), "every handle let go of"
    assert rec.commits == [[f"{tmp_path}/x"]], "y, cut short, is not"
