"""store.groupcommit: the store's fsyncs off the event loop (issue 15 item 6).

A commit is in the WAL at once (SIGKILL-safe); ``durable()`` awaits the fsync that one thread
does for every commit made before it; the API answers a change only after it; a read never
waits behind it; an fsync that fails fails its waiters and the next one is tried afresh; the
WAL is checkpointed by the thread, not inside a commit on the loop."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from openbits.api.app import CLASS, make_app
from openbits.config import Config
from openbits.errors import StoreWriteFailed
from openbits.service import Service
from openbits.store.groupcommit import GroupCommit
from openbits.store.sqlite import SqliteStore
from tests.support.polling import eventually


def _settings_write(store: SqliteStore, n: int) -> None:
    store.save_settings({"k": str(n)})


class Gate:
    """An fsync of the WAL that waits until the test opens the gate, counting the calls."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.calls = 0
        self.fail_next = False

    def __call__(self, fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):  # (a new WAL's directory: not what is counted)
            os.fsync(fd)
            return
        self.calls += 1
        assert self.opened.wait(10)
        if self.fail_next:
            self.fail_next = False
            raise OSError(5, "Input/output error")
        os.fsync(fd)


def test_the_daemon_store_commits_without_fsync_and_checkpoints_off_the_loop(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "jobs.sqlite"), group_commit=True)
    try:
        db = store._db
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL: no fsync in a commit
        assert db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0  # (the thread's job)
        assert store.group_commit is not None
    finally:
        store.close()
    plain = SqliteStore(str(tmp_path / "plain.sqlite"))  # (the offline tools: FULL, as before)
    try:
        assert plain._db.execute("PRAGMA synchronous").fetchone()[0] == 2
        assert plain.group_commit is None
    finally:
        plain.close()


async def test_durable_shares_one_fsync_among_the_commits_before_it(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "jobs.sqlite"), group_commit=True)
    group = store.group_commit
    assert group is not None
    gate = Gate()
    group._fsync = gate
    try:
        await store.durable()  # nothing committed: no fsync
        assert gate.calls == 0
        _settings_write(store, 0)
        first = asyncio.ensure_future(store.durable())
        await eventually(lambda: gate.calls == 1)  # that fsync is under way, held
        for n in range(1, 10):  # ten more commits meanwhile, each with its waiter
            _settings_write(store, n)
        waiters = [asyncio.ensure_future(store.durable()) for _ in range(10)]
        await asyncio.sleep(0)
        assert store.load_settings() == {"k": "9"}  # reads go on while the fsync is held
        assert not first.done() and not any(w.done() for w in waiters)
        gate.opened.set()
        await asyncio.wait_for(asyncio.gather(first, *waiters), 10)
        assert gate.calls == 2  # the first commit's fsync, then one for the other nine
        assert not group.pending
    finally:
        gate.opened.set()
        store.close()


async def test_a_failed_fsync_fails_its_waiters_and_the_next_is_tried_afresh(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "jobs.sqlite"), group_commit=True)
    group = store.group_commit
    assert group is not None
    gate = Gate()
    gate.fail_next = True
    gate.opened.set()
    group._fsync = gate
    try:
        _settings_write(store, 1)
        with pytest.raises(StoreWriteFailed, match="cannot make the change durable"):
            await asyncio.wait_for(store.durable(), 10)
        assert group.pending  # never reported durable
        await asyncio.wait_for(store.durable(), 10)  # the next fsync succeeds
        assert not group.pending and gate.calls == 2
    finally:
        store.close()


async def test_a_commit_nobody_awaits_is_made_durable_within_flush_s(tmp_path: Path) -> None:
    path = str(tmp_path / "jobs.sqlite")
    store = SqliteStore(path, group_commit=True)
    try:
        group = store.group_commit
        assert group is not None
        group.flush_s = 0.05
        _settings_write(store, 1)  # (as the scheduler's progress checkpoints are)
        await eventually(lambda: not group.pending)
        assert group.fsyncs >= 1
    finally:
        store.close()


async def test_the_thread_checkpoints_the_wal_and_it_stays_bounded(tmp_path: Path) -> None:
    path = str(tmp_path / "jobs.sqlite")
    store = SqliteStore(path, group_commit=True)
    try:
        group = store.group_commit
        assert group is not None
        group.checkpoint_bytes = 64 * 1024
        for n in range(400):  # well past 64 KiB of WAL frames (each commit: a page or more)
            store.save_settings({"k": str(n), "pad": "x" * 2000})
        await store.durable()
        await eventually(lambda: group.checkpoints >= 1)
        store.save_settings({"k": "after"})  # the next commit restarts the WAL, cut back
        await eventually(lambda: os.stat(path + "-wal").st_size <= 1024 * 1024)
        await store.durable()
    finally:
        store.close()
    reopened = SqliteStore(path)
    try:
        assert reopened.load_settings()["k"] == "after"
        assert reopened.integrity_check() == "ok"
    finally:
        reopened.close()


async def test_a_change_is_answered_only_once_durable_and_reads_never_wait(tmp_path: Path) -> None:
    config = Config(state_dir=str(tmp_path / "state"))
    os.makedirs(config.state_dir, mode=0o700)
    store = SqliteStore(config.db_path, group_commit=True)
    assert store.group_commit is not None
    gate = Gate()
    store.group_commit._fsync = gate
    runner = web.AppRunner(make_app(Service(store, config)), access_log=None, handle_signals=False)
    await runner.setup()
    sock = str(tmp_path / "api.sock")
    await web.UnixSite(runner, sock).start()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock)) as http:
            create = asyncio.ensure_future(
                http.post(f"http://openbits{CLASS}/CreateJob", json={"DisplayName": "durable"})
            )
            await eventually(lambda: gate.calls >= 1)  # committed; its fsync is held
            async with http.get(f"http://openbits{CLASS}") as listing:  # a read answers meanwhile
                assert listing.status == 200
                assert [j["DisplayName"] for j in await listing.json()] == ["durable"]
            assert not create.done()  # the change is not answered before it is durable
            gate.opened.set()
            async with await asyncio.wait_for(create, 10) as created:
                assert created.status == 200, await created.text()
    finally:
        gate.opened.set()
        await runner.cleanup()
        store.close()


def test_close_makes_every_commit_durable(tmp_path: Path) -> None:
    group = GroupCommit(str(tmp_path / "none.sqlite"))
    group.close()  # (never started: nothing to do)
    store = SqliteStore(str(tmp_path / "jobs.sqlite"), group_commit=True)
    _settings_write(store, 1)
    group2 = store.group_commit
    assert group2 is not None
    store.close()
    assert not group2.pending
