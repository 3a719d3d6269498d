"""The state directory on a small tmpfs mounted by the test, filled up: the daemon refuses new
work with a clear error (0x80070070, HTTP 507), a change it cannot store is answered with that
error and not made, a transfer that cannot record its end waits as a transient error, and
nothing it acknowledged before is lost, across a SIGKILL too. Needs root."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from openbits.caller import Caller
from openbits.clock import ManualClock
from openbits.config import Config
from openbits.errors import BitsError, ConnectError
from openbits.model import Job, JobState
from openbits.service import Service
from openbits.store.sqlite import SqliteStore
from tests.support.daemon import Daemon, wait_until
from tests.support.fixtures import make_file, sha256_file, tmpfs
from tests.support.nginx import Nginx

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
MiB = 1024 * 1024
DISK_FULL = 0x80070070
CLASS = "/root/microsoft/bits/BitsClientJob"


@pytest.fixture
def state_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "statefs", "size=24m,mode=0700") as mount:
        yield mount


def fill(disk: Path) -> Path:
    """Fill ``disk`` to its last byte; the filler file is returned (unlink it to free)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for chunk in (MiB, 4096, 512, 1):
            block = b"\0" * chunk
            while True:
                try:
                    os.write(fd, block)
                except OSError as e:
                    assert e.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    assert os.statvfs(disk).f_bavail == 0
    return filler


def truncate_wal(db: Path) -> None:
    """Checkpoint the WAL into the database and truncate it, so the daemon's next write needs
    new room (a WAL keeps its size, and a full disk would otherwise go unnoticed for a while)."""
    con = sqlite3.connect(db)
    try:
        busy, _, _ = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        assert busy == 0
    finally:
        con.close()


def stored(db: Path) -> dict[str, tuple[int, str]]:
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return {j: (s, n) for j, s, n in con.execute("SELECT job_id, state, display_name FROM jobs")}
    finally:
        con.close()


def test_a_full_state_dir_refuses_new_work_and_loses_nothing(
    tmp_path: Path, state_disk: Path, nginx: Nginx
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    digest = make_file(nginx.www, "statefull/a.bin", 300 * 1024, seed=5)
    url = f"{nginx.url}/statefull/a.bin"
    daemon = Daemon(state_disk / "state", config={"state_reserve_mb": 4})
    daemon.start()
    db = daemon.state_dir / "jobs.sqlite"
    try:
        c = daemon.client
        suspended = c.create_job("suspended").job_id
        c.add_file(suspended, url, str(dest / "s.bin"))
        done = c.create_job("done").job_id
        c.add_file(done, url, str(dest / "d.bin"))
        c.resume(done)
        daemon.wait_state(done, JobState.TRANSFERRED)
        before = {j: daemon.job(j)["State"] for j in (suspended, done)}

        truncate_wal(db)
        filler = fill(state_disk)

        # new work: refused before anything is written, with the reason and the way out
        status, body = daemon.api("POST", f"{CLASS}/CreateJob", {"DisplayName": "new"})
        assert status == 507, body
        assert body["ErrorCode"] == "0x80070070"
        assert "free space" in body["Message"] and str(state_disk) in body["Message"]
        cli = daemon.cli("create", "new")
        assert cli.returncode != 0, cli.stdout
        assert "0x80070070" in cli.stderr and "free space" in cli.stderr, cli.stderr
        with pytest.raises(BitsError) as refused:
            c.add_file(suspended, url, str(dest / "x.bin"))
        assert refused.value.hresult == DISK_FULL
        status, body = daemon.api("POST", "/tokens", {"Description": "t"})
        assert (status, body["ErrorCode"]) == (507, "0x80070070"), body

        # a change that cannot be stored is answered with the error, and not made
        for change in (
            lambda: c.set_properties(suspended, DisplayName="renamed"),
            lambda: c.resume(suspended),
            lambda: c.complete(done),
            lambda: c.cancel(suspended),
        ):
            with pytest.raises(BitsError) as failed:
                change()
            assert failed.value.hresult == DISK_FULL, failed.value
        assert daemon.job(suspended)["DisplayName"] == "suspended"
        assert {j: daemon.job(j)["State"] for j in (suspended, done)} == before
        assert len(c.list_jobs()) == 2

        daemon.kill()  # what was acknowledged is what is stored
        filler.unlink()
        assert stored(db) == {
            suspended: (JobState.SUSPENDED, "suspended"),
            done: (JobState.TRANSFERRED, "done"),
        }

        daemon.start()
        assert {j: daemon.job(j)["State"] for j in (suspended, done)} == before
        assert c.complete(done) == 0  # the refused Complete had published its file: kept
        assert sha256_file(dest / "d.bin") == digest
        c.set_properties(suspended, DisplayName="renamed")
        c.resume(suspended)
        daemon.wait_state(suspended, JobState.TRANSFERRED)
        assert c.complete(suspended) == 0
        assert sha256_file(dest / "s.bin") == digest
        c.create_job("after")
        assert stored(db)[suspended] == (JobState.ACKNOWLEDGED, "renamed")
    finally:
        with contextlib.suppress(Exception):
            daemon.stop()
    assert not [p.name for p in dest.iterdir() if p.name.startswith(".BIT")]


def test_a_transfer_that_cannot_record_its_end_waits_and_then_finishes(
    tmp_path: Path, state_disk: Path, nginx: Nginx
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    digest = make_file(nginx.www, "statefull/slow.bin", 16 * MiB, seed=6)
    daemon = Daemon(state_disk / "state", config={"state_reserve_mb": 4})
    daemon.start()
    db = daemon.state_dir / "jobs.sqlite"
    try:
        c = daemon.client
        job = c.create_job("slow").job_id
        c.add_file(job, f"{nginx.url}/slow/statefull/slow.bin", str(dest / "slow.bin"))
        c.set_properties(job, MinimumRetryDelay=5)
        c.resume(job)
        daemon.wait_state(job, JobState.TRANSFERRING)
        truncate_wal(db)
        filler = fill(state_disk)
        daemon.wait_state(job, JobState.TRANSIENT_ERROR, timeout=60)
        err = c.get_error(job)
        assert (err.hresult, err.context) == (DISK_FULL, 2)  # GENERAL_QUEUE_MANAGER
        assert "free space" in err.error_description
        assert daemon.job(job)["TransientErrorCount"] >= 1
        assert not (dest / "slow.bin").exists()
        filler.unlink()
        daemon.wait_state(job, JobState.TRANSFERRED, timeout=60)  # its retry, after 5 s
        wait_until(lambda: stored(db)[job][0] == JobState.TRANSFERRED, what="TRANSFERRED stored")
        assert c.complete(job) == 0
        assert sha256_file(dest / "slow.bin") == digest
    finally:
        with contextlib.suppress(Exception):
            daemon.stop()


# -- the same on a Service in this process, for the paths a daemon reaches only by chance ------

ME = Caller("me", os.geteuid(), os.getegid(), is_admin=True)


class Tasks:
    """Stands in for the scheduler: which jobs have a transfer task."""

    def __init__(self) -> None:
        self.running: set[str] = set()

    def wake(self) -> None:
        pass

    async def stop(self, job_id: str) -> None:
        self.running.discard(job_id)


@dataclass
class Full:
    service: Service
    tasks: Tasks
    disk: Path
    dest: Path
    filler: Path | None = None

    def fill(self) -> None:
        truncate_wal(Path(self.service.config.db_path))
        self.filler = fill(self.disk)

    def free(self) -> None:
        assert self.filler is not None
        self.filler.unlink()

    async def running_job(self, files: int = 1) -> Job:
        s = self.service
        job = await s.create_job(ME, {"DisplayName": "j"})
        for i in range(files):
            await s.add_file(
                ME,
                job.job_id,
                {"RemoteUrl": f"http://127.0.0.1:9/{i}", "LocalFile": str(self.dest / f"f{i}")},
            )
        s.resume(job)
        s.job_started(job)  # what the scheduler does when it starts the task
        self.tasks.running.add(job.job_id)
        s.job_connected(job)
        assert job.state is JobState.TRANSFERRING
        return job


@pytest.fixture
def full(tmp_path: Path, state_disk: Path) -> Iterator[Full]:
    config = Config(state_dir=str(state_disk / "state"), state_reserve_mb=0)
    store = SqliteStore(config.db_path)
    tasks = Tasks()  # (the scheduler's part, without transfers)
    service = Service(store, config, clock=ManualClock(), runner=tasks)
    service.recover()
    dest = tmp_path / "dest"
    dest.mkdir()
    try:
        yield Full(service, tasks, state_disk, dest)
    finally:
        store.close()


def test_a_refused_verb_on_a_running_job_leaves_it_queued_not_running_without_a_task(full: Full) -> None:
    async def run() -> None:
        s = full.service
        one, two = await full.running_job(), await full.running_job()
        full.fill()
        for call in (
            s.set_job_state(ME, one.job_id, {"JobState": 1}),  # Complete
            s.invoke(
                ME,
                two.job_id,
                "SetRemoteName",
                {"LocalFile": str(full.dest / "f0"), "RemoteUrl": "http://127.0.0.1:9/x"},
            ),
        ):
            with pytest.raises(BitsError) as e:
                await call
            assert e.value.hresult == DISK_FULL
        for job in (one, two):
            assert job.job_id not in full.tasks.running
            assert job.state is JobState.QUEUED, "stopped: back in the queue, so it runs again"
        assert two.files[0].remote_url == "http://127.0.0.1:9/0"

    asyncio.run(run())


def test_a_refused_change_of_minimum_retry_delay_leaves_the_retry_where_it_was(full: Full) -> None:
    async def run() -> None:
        s = full.service
        job = await full.running_job()
        s.job_failed(job, ConnectError("x"), 0)
        retry_at = job.retry_at_ns
        full.fill()
        with pytest.raises(BitsError) as e:
            s.patch(ME, job.job_id, {"MinimumRetryDelay": 3600})
        assert e.value.hresult == DISK_FULL
        assert (job.minimum_retry_delay_s, job.retry_at_ns) == (600, retry_at)

    asyncio.run(run())


def test_a_refused_add_file_keeps_the_pending_notification(full: Full) -> None:
    async def run() -> None:
        s = full.service
        job = await full.running_job()
        await s.invoke(ME, job.job_id, "SetNotifyCmdLine", {"Program": "/bin/true"})
        s.file_done(job, job.files[0], 0)
        s.job_transferred(job)
        due, queued = job.notify_due_ns, job.queued_ns
        assert job.state is JobState.TRANSFERRED and due
        full.fill()
        with pytest.raises(BitsError) as e:
            await s.add_file(
                ME, job.job_id, {"RemoteUrl": "http://127.0.0.1:9/9", "LocalFile": str(full.dest / "f9")}
            )
        assert e.value.hresult == DISK_FULL
        assert (job.state, job.notify_due_ns, job.queued_ns, len(job.files)) == (
            JobState.TRANSFERRED,
            due,
            queued,
            1,
        )

    asyncio.run(run())


def test_an_inactive_job_the_full_store_cannot_cancel_is_tried_again_later(full: Full) -> None:
    async def run() -> None:
        job = await full.service.create_job(ME, {"DisplayName": "idle"})
        full.fill()
        await full.service.inactive(job)  # (in the scheduler's TaskGroup: it must not raise)
        assert job.state is JobState.SUSPENDED
        full.free()
        await full.service.inactive(job)
        assert job.state is JobState.CANCELLED

    asyncio.run(run())


def test_a_failed_complete_keeps_the_rename_it_made_and_reports_the_real_error(full: Full) -> None:
    async def run() -> None:
        s = full.service
        job = await s.create_job(ME, {"DisplayName": "c"})
        (full.dest / "sub").mkdir()
        await s.add_file(
            ME, job.job_id, {"RemoteUrl": "http://127.0.0.1:9/0", "LocalFile": str(full.dest / "f0")}
        )
        await s.add_file(
            ME, job.job_id, {"RemoteUrl": "http://127.0.0.1:9/1", "LocalFile": str(full.dest / "sub" / "f1")}
        )
        s.resume(job)
        s.job_started(job)
        for f in job.files:
            assert f.temp_path is not None
            Path(f.temp_path).write_bytes(b"x")
            s.file_done(job, f, 1)
        s.job_transferred(job)
        assert job.files[1].temp_path is not None
        os.unlink(job.files[1].temp_path)
        os.rmdir(full.dest / "sub")  # the second file cannot be published
        full.fill()
        with pytest.raises(BitsError) as e:
            await s.set_job_state(ME, job.job_id, {"JobState": 1})
        assert e.value.hresult != DISK_FULL, "the caller hears why Complete failed"
        assert job.files[0].published and (full.dest / "f0").read_bytes() == b"x"
        assert job.state is JobState.TRANSFERRED and job.unsaved
        full.free()
        s.patch(ME, job.job_id, {"DisplayName": "saved"})  # the next write saves every file row
        assert s.store.load_job(job.job_id).files[0].published  # type: ignore[union-attr]

    asyncio.run(run())
