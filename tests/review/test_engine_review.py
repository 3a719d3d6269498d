"""Review of issue 15's engine changes (helper "review"): each test shows one bug found in review.

Each failed before its fix (the comment above it says what was wrong); now a plain test.
Real parts only: the daemon process, a threaded HTTP server on 127.0.0.1 that records each
request as it arrives, real SQLite files.
"""

from __future__ import annotations

import asyncio
import http.server
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from openbits.errors import StoreWriteFailed
from openbits.model import JobState
from openbits.store.sqlite import SqliteStore
from tests.support.daemon import CLASS, Daemon

HOST = "127.0.0.1"
BG_S_PARTIAL_COMPLETE = 0x00200017
SLOW_BYTES = 64 * 1024 * 1024  # ~50 s at the server's pace: still running when Complete comes
CHUNK_BYTES = 64 * 1024


class Arrivals(http.server.ThreadingHTTPServer):
    """Serves ``/slow`` (no byte ranges, paced by the server) and records each GET as it
    arrives (nginx logs a request only when it ends)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__((HOST, 0), _Handler)
        self.gets: list[float] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}/slow"

    def count(self) -> int:
        with self.lock:
            return len(self.gets)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Arrivals

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.gets.append(time.monotonic())
        self.send_response(200)
        self.send_header("Content-Length", str(SLOW_BYTES))
        self.end_headers()
        chunk = b"x" * CHUNK_BYTES
        try:
            for _ in range(SLOW_BYTES // CHUNK_BYTES):
                self.wfile.write(chunk)
                self.wfile.flush()
                time.sleep(0.05)  # (the server's pace, not a synchronisation)
        except OSError:
            pass  # the client went away

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def arrivals() -> Iterator[Arrivals]:
    server = Arrivals()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _poll(condition: Any, timeout_s: float) -> bool:
    """Whether ``condition()`` became true within ``timeout_s`` (polled, a deadline)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())


# Fixed: verbs.complete: job_preempted() puts the running job back in the queue and wakes the
# scheduler, then awaits store.durable() and _fsync_dirs(): the scheduler restarts the job in that
# window, and its transfer keeps running after the job is ACKNOWLEDGED
def test_complete_of_a_running_job_does_not_restart_its_transfer(
    daemon: Daemon, arrivals: Arrivals, dest: Path
) -> None:
    status, body = daemon.api(
        "POST",
        f"{CLASS}/CreateJob",
        {"DisplayName": "complete-race", "RemoteUrl": arrivals.url, "LocalFile": str(dest / "slow.bin")},
    )
    assert status == 200 and body["ReturnValue"] == 0, body
    job = str(body["JobId"])
    daemon.wait_state(job, JobState.TRANSFERRING)
    assert _poll(lambda: arrivals.count() == 1, 10)

    status, body = daemon.api("POST", f"{CLASS}/{quote(job, safe='')}/SetJobState", {"JobState": 1})
    assert (status, body["ReturnValue"]) == (200, BG_S_PARTIAL_COMPLETE), body
    assert daemon.job(job)["State"] == JobState.ACKNOWLEDGED

    # An acknowledged job never asks the server again (absence: a bounded wait).
    assert not _poll(lambda: arrivals.count() > 1, 3.0), "the acknowledged job's transfer was restarted"
    assert not [p.name for p in dest.iterdir()], "a file is left behind in the destination"


# -- store/groupcommit.py ------------------------------------------------------------------------


class Fsyncs:
    """The group commit's fsync, real, with the path of each file it synced recorded; held at
    a gate when asked to (``hold``), the next one failed when asked to (``fail_next``)."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.opened = threading.Event()
        self.opened.set()
        self.entered = threading.Event()
        self.fail_next = False

    def hold(self) -> None:
        self.opened.clear()
        self.entered.clear()

    def __call__(self, fd: int) -> None:
        self.paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        self.entered.set()
        assert self.opened.wait(10)
        if self.fail_next:
            self.fail_next = False
            raise OSError(5, "Input/output error")
        os.fsync(fd)


# Fixed: groupcommit._sync fsyncs the WAL file alone: a WAL the daemon's store just created has
# its directory entry unsynced, so a commit reported durable can vanish with the whole WAL on
# power loss (SQLite's own WAL sync fsyncs the directory once, UNIXFILE_DIRSYNC)
async def test_a_new_wals_directory_entry_is_durable_before_a_commit_is_reported_durable(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state" / "jobs.sqlite"
    SqliteStore(str(path)).close()  # (made and migrated before: the daemon restarts)
    assert not os.path.exists(str(path) + "-wal")  # the last connection's close removed it
    store = SqliteStore(str(path), group_commit=True)  # no commit of its own: the WAL is new
    try:
        group = store.group_commit
        assert group is not None
        fsyncs = Fsyncs()
        group._fsync = fsyncs
        store.save_settings({"k": "1"})
        await asyncio.wait_for(store.durable(), 10)
        assert str(path) + "-wal" in fsyncs.paths
        assert str(path.parent) in fsyncs.paths, f"only {fsyncs.paths} were fsync'd"
    finally:
        store.close()


# Fixed: groupcommit._sync: a failed fsync sets _wanted back to _synced, forgetting a waiter that
# came while it ran: that waiter's retry waits for flush_s (a verb answers up to 1 s late,
# flush_s, though the retry could start at once)
async def test_a_waiter_that_came_during_a_failed_fsync_is_retried_at_once(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "jobs.sqlite"), group_commit=True)
    group = store.group_commit
    assert group is not None
    group.flush_s = 60.0  # (the thread's own flush: far past this test's deadlines)
    fsyncs = Fsyncs()
    fsyncs.hold()
    fsyncs.fail_next = True
    group._fsync = fsyncs
    try:
        store.save_settings({"k": "1"})
        first = asyncio.ensure_future(store.durable())
        await asyncio.to_thread(fsyncs.entered.wait, 10)  # the first fsync runs (and will fail)
        store.save_settings({"k": "2"})
        second = asyncio.ensure_future(store.durable())  # a caller while it runs
        await asyncio.sleep(0)  # (registered before the gate opens)
        fsyncs.opened.set()
        with pytest.raises(StoreWriteFailed):
            await asyncio.wait_for(first, 10)
        await asyncio.wait_for(second, 5)  # tried afresh for it, not after flush_s
        assert not group.pending
    finally:
        fsyncs.opened.set()
        group.flush_s = 0.01
        store.close()
