"""notify.Notifier and the notification setters, on a Service without a daemon: who may
set a command line that runs as a job's owner, what the webhook is sent, and a failure
after a notification never ending the notifier (nor with it the daemon)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from openbits import notify
from openbits.caller import Caller
from openbits.config import Config
from openbits.errors import BitsError
from openbits.model import Job, JobState
from openbits.notify import Notifier
from openbits.service import Service
from openbits.store.sqlite import SqliteStore

ROOT = Caller("root", 0, 0, is_admin=True)
ALICE = Caller("alice", 4001, 4001)
#: a member of the admin group: sees and changes every job, but is not root
ADMIN = Caller("ops", 4002, 4002, is_admin=True)


def _service(tmp_path: Path) -> Service:
    config = Config(state_dir=str(tmp_path))
    return Service(SqliteStore(config.db_path), config)


def test_only_the_owner_sets_the_command_line_that_runs_as_the_owner(tmp_path: Path) -> None:
    service = _service(tmp_path)

    async def run() -> None:
        root_job = (await service.create_job(ROOT, {"DisplayName": "root's"})).job_id
        alice_job = (await service.create_job(ALICE, {"DisplayName": "alice's"})).job_id
        for job in (root_job, alice_job):
            # the program would run as the job's owner (root, alice): an administrator who
            # is not root must not choose it (it takes ownership first)
            with pytest.raises(BitsError) as e:
                await service.invoke(ADMIN, job, "SetNotifyCmdLine", {"Program": "/bin/true"})
            assert e.value.name == "E_ACCESSDENIED"
            assert service.jobs[job].notify_program is None
        # the owner may; an administrator may still remove it
        await service.invoke(ALICE, alice_job, "SetNotifyCmdLine", {"Program": "/bin/true"})
        assert service.jobs[alice_job].notify_program == "/bin/true"
        await service.invoke(ADMIN, alice_job, "SetNotifyCmdLine", {"Program": None, "Parameters": None})
        assert service.jobs[alice_job].notify_program is None

    asyncio.run(run())


def test_the_webhook_is_not_sent_the_jobs_custom_headers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = _service(tmp_path)
    posted: list[dict[str, Any]] = []

    async def post(url: str, body: dict[str, Any], timeout_s: float, proxies: Mapping[str, str]) -> int:
        posted.append(body)
        return 200

    monkeypatch.setattr(notify, "_post", post)

    async def run() -> None:
        job = await service.create_job(ALICE, {"DisplayName": "hook"})
        headers = "Authorization: Bearer s3cret\r\n"
        await service.invoke(ALICE, job.job_id, "SetCustomHeaders", {"CustomHeaders": headers})
        job.notify_url = "https://hooks.example/T0KEN"
        assert await Notifier(service)._call_webhook(job, JobState.TRANSFERRED)

    asyncio.run(run())
    (body,) = posted
    assert body["JobId"] and "CustomHeaders" not in body["Job"]
    assert "s3cret" not in repr(body)


def test_a_failure_after_a_notification_does_not_end_the_notifier(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = _service(tmp_path)
    calls: list[str] = []

    async def post(url: str, body: dict[str, Any], timeout_s: float, proxies: Mapping[str, str]) -> int:
        calls.append(url)
        return 200

    monkeypatch.setattr(notify, "_post", post)

    def save_job(job: Job, files: Any = ()) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    async def run() -> None:
        job = await service.create_job(ALICE, {"DisplayName": "hook"})
        job.notify_url = "https://hooks.example/x"
        job.notify_due_ns = service.clock.now_ns()
        monkeypatch.setattr(service.store, "save_job", save_job)  # (notification_done's)
        notifier = Notifier(service)
        task = asyncio.create_task(notifier.run())
        for _ in range(200):
            await asyncio.sleep(0)
        assert calls == ["https://hooks.example/x"]
        assert not task.done(), task.exception() if task.done() else None
        # never left due in the past (which would run it again at once, in a loop)
        assert job.notify_due_ns == 0 or job.notify_due_ns > service.clock.now_ns()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
