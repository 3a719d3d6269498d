"""Notifications through the real daemon: SetNotifyFlags, SetNotifyCmdLine (a program run
as the job's owner on TRANSFERRED and ERROR, rerun after MinimumRetryDelay while it fails,
across a restart) and SetNotifyUrl (a webhook, extension) against an in-process server."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from openbits.errors import BitsError
from openbits.model import JobState
from tests.support.daemon import CLASS, Daemon, wait_until
from tests.support.fixtures import make_file
from tests.support.nginx import Nginx

# A notification program: appends one JSON line (argv, a few variables, its uid) to the
# file named by its first argument; exits with the code in the file named by its second
# argument (0 when there is none), so a test can make it fail.  (It reads the code before
# it writes its line: a test that changes the code once it sees a line changes the next run.)
PROGRAM = """#!/usr/bin/env python3
import json, os, sys
out, code_file = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else ""
env = {k: os.environ.get(k) for k in ("OPENBITS_JOB_ID", "OPENBITS_JOB_STATE", "HOME", "USER")}
code = 0
if code_file and os.path.exists(code_file):
    code = int(open(code_file).read().strip() or 0)
with open(out, "a") as f:
    run = {"argv": sys.argv, "env": env, "uid": os.getuid(), "keys": sorted(os.environ)}
    f.write(json.dumps(run) + "\\n")
sys.exit(code)
"""


@pytest.fixture
def program(tmp_path: Path) -> str:
    path = tmp_path / "notify.py"
    path.write_text(PROGRAM)
    path.chmod(0o755)
    return str(path)


def runs(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def transfer(daemon: Daemon, nginx: Nginx, dest: Path, name: str) -> str:
    make_file(nginx.www, f"notify-{name}.bin", 4096)
    url = f"{nginx.url}/notify-{name}.bin"
    return daemon.client.create_job(name, url, str(dest / f"{name}.bin")).job_id


def test_the_command_line_runs_as_set_on_transferred(
    daemon: Daemon, nginx: Nginx, dest: Path, tmp_path: Path, program: str
) -> None:
    out = tmp_path / "runs.jsonl"
    job = transfer(daemon, nginx, dest, "ok")
    params = f'notify.py {out} "" "a b" $HOME *'
    daemon.client.invoke(job, "SetNotifyCmdLine", Program=program, Parameters=params)
    instance = daemon.job(job)
    assert instance["NotifyCmdLine"] == {"Program": program, "Parameters": params}
    assert instance["NotifyFlags"] == 3
    daemon.client.resume(job)
    daemon.wait_state(job, JobState.TRANSFERRED)
    (run,) = wait_until(lambda: runs(out), 15, "the notification program")
    # argv from the parameters, program first: no shell, no expansion, quoting as a shell's words
    assert run["argv"][1:] == [str(out), "", "a b", "$HOME", "*"]
    assert run["env"]["OPENBITS_JOB_ID"] == job
    assert run["env"]["OPENBITS_JOB_STATE"] == "TRANSFERRED"
    assert run["uid"] == os.getuid()
    assert set(run["keys"]) <= {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "OPENBITS_JOB_ID",
        "OPENBITS_JOB_STATE",
    } | {
        "PWD",
        "SHLVL",
        "_",
        "LC_CTYPE",
    }, "the daemon's own environment is not passed on"
    daemon.client.complete(job)


def test_flags_choose_the_events_and_a_late_command_line_runs_at_once(
    daemon: Daemon, nginx: Nginx, dest: Path, tmp_path: Path, program: str
) -> None:
    out = tmp_path / "runs.jsonl"
    # DISABLE wins over JOB_TRANSFERRED: nothing runs
    off = transfer(daemon, nginx, dest, "off")
    daemon.client.invoke(off, "SetNotifyFlags", NotifyFlags=0x4 | 0x1)
    daemon.client.invoke(off, "SetNotifyCmdLine", Program=program, Parameters=f"p {out}")
    daemon.client.resume(off)
    daemon.wait_state(off, JobState.TRANSFERRED)
    # ERROR only: a 404 notifies
    missing = daemon.client.create_job("missing", f"{nginx.url}/no-such-file", str(dest / "m.bin")).job_id
    daemon.client.invoke(missing, "SetNotifyFlags", NotifyFlags=0x2)
    daemon.client.resume(missing)
    daemon.wait_state(missing, JobState.ERROR)
    # set after the event: runs at once (bits-spec §5.8)
    daemon.client.invoke(missing, "SetNotifyCmdLine", Program=program, Parameters=f"p {out}")
    (run,) = wait_until(lambda: runs(out), 15, "the notification of the ERROR")
    assert run["env"] == {**run["env"], "OPENBITS_JOB_ID": missing, "OPENBITS_JOB_STATE": "ERROR"}
    assert [r["env"]["OPENBITS_JOB_ID"] for r in runs(out)] == [missing], "the disabled job ran"
    # the flags can turn it back on for a job already TRANSFERRED
    daemon.client.invoke(off, "SetNotifyFlags", NotifyFlags=0x1)
    wait_until(lambda: len(runs(out)) == 2, 15, "the re-enabled notification")
    assert runs(out)[1]["env"]["OPENBITS_JOB_ID"] == off


def test_a_failing_program_is_rerun_after_the_retry_delay_even_across_a_restart(
    daemon: Daemon, nginx: Nginx, dest: Path, tmp_path: Path, program: str
) -> None:
    out = tmp_path / "runs.jsonl"
    code = tmp_path / "code"
    code.write_text("3")
    job = transfer(daemon, nginx, dest, "retry")
    daemon.client.set_properties(job, MinimumRetryDelay=5)
    daemon.client.invoke(job, "SetNotifyCmdLine", Program=program, Parameters=f"p {out} {code}")
    daemon.client.resume(job)
    daemon.wait_state(job, JobState.TRANSFERRED)
    wait_until(lambda: runs(out), 15, "the first run")
    # the daemon dies; the rerun that was due is still due after the restart
    daemon.kill()
    daemon.start()
    wait_until(lambda: len(runs(out)) >= 2, 20, "the rerun after MinimumRetryDelay")
    code.write_text("0")
    wait_until(lambda: len(runs(out)) >= 3, 20, "the rerun that succeeds")
    count = len(runs(out))
    # it succeeded: a Complete ends it, and nothing runs any more
    daemon.client.complete(job)
    assert len(runs(out)) == count
    assert "exited with 3" in daemon.log()


def test_bad_notification_settings_are_refused(daemon: Daemon, tmp_path: Path, program: str) -> None:
    job = daemon.client.create_job("bad").job_id

    def refused(method: str, **params: Any) -> BitsError:
        with pytest.raises(BitsError) as e:
            daemon.client.invoke(job, method, **params)
        return e.value

    assert refused("SetNotifyFlags", NotifyFlags=0x40).name == "E_NOTIMPL"
    assert refused("SetNotifyCmdLine", Program="notify.py").name == "E_INVALIDARG"
    assert refused("SetNotifyCmdLine", Parameters="x y").name == "E_INVALIDARG"
    assert refused("SetNotifyCmdLine", Program=program, Parameters='x "unclosed').name == "E_INVALIDARG"
    assert refused("SetNotifyCmdLine", Program="/" + "p" * 300).name == "BG_E_STRING_TOO_LONG"
    assert refused("SetNotifyUrl", NotifyUrl="ftp://127.0.0.1/x").name == "E_INVALIDARG"
    assert daemon.job(job)["NotifyCmdLine"] is None
    # both null removes it
    daemon.client.invoke(job, "SetNotifyCmdLine", Program=program, Parameters="p")
    daemon.client.invoke(job, "SetNotifyCmdLine", Program=None, Parameters=None)
    assert daemon.job(job)["NotifyCmdLine"] is None


class Webhook:
    """An in-process HTTP server on 127.0.0.1 recording POSTs; answers the queued statuses
    (then 200)."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.posts.append({"path": request.path_qs, "body": await request.json()})
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    def __enter__(self) -> Webhook:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    with Webhook() as hook:
        yield hook


def test_the_webhook_gets_the_job_and_is_retried(
    daemon: Daemon, nginx: Nginx, dest: Path, webhook: Webhook
) -> None:
    job = transfer(daemon, nginx, dest, "hook")
    secret_url = f"{webhook.url}/hooks/T0KEN-secret?sig=abc"
    daemon.client.invoke(job, "SetNotifyUrl", NotifyUrl=secret_url)
    shown = daemon.job(job)["NotifyUrl"]
    assert shown == f"{webhook.url}/***", "a webhook's path is its secret: never shown"
    webhook.statuses = [503]  # the first try fails; the next, 5 s later, succeeds
    daemon.client.resume(job)
    daemon.wait_state(job, JobState.TRANSFERRED)
    wait_until(lambda: len(webhook.posts) >= 2, 20, "the webhook's second try")
    first, second = webhook.posts[:2]
    assert first == second
    assert second["path"] == "/hooks/T0KEN-secret?sig=abc"
    assert second["body"]["Event"] == "JobTransferred"
    assert second["body"]["JobId"] == job
    assert second["body"]["Job"]["State"] == JobState.TRANSFERRED
    assert "T0KEN" not in daemon.log()
    daemon.client.complete(job)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own jobs as another user")
def test_a_root_daemon_runs_the_program_as_the_jobs_owner(nginx: Nginx, tmp_path: Path) -> None:
    from tests.integration.test_users import NOBODY, api, as_nobody

    assert NOBODY is not None
    shared = Path(tempfile.mkdtemp(prefix="openbits-notify-"))  # (tmp_path is root-only)
    try:
        shared.chmod(0o777)
        program = shared / "notify.py"
        program.write_text(PROGRAM)
        program.chmod(0o755)
        out = shared / "runs.jsonl"
        daemon = Daemon(tmp_path / "state", config={"socket_mode": 0o666}, socket=str(shared / "ob.sock"))
        daemon.start()
        try:
            make_file(nginx.www, "notify-owner.bin", 1000)
            url = f"{nginx.url}/notify-owner.bin"
            sock = daemon.socket

            def create() -> str:
                status, body = api(
                    sock,
                    "POST",
                    f"{CLASS}/CreateJob",
                    {
                        "DisplayName": "nb",
                        "RemoteUrl": url,
                        "LocalFile": str(shared / "nb.bin"),
                        "Suspend": True,
                    },
                )
                assert status == 200, body
                job_id = str(body["JobId"])
                params = {"Program": str(program), "Parameters": f"p {out}"}
                assert api(sock, "POST", f"{CLASS}/{job_id}/SetNotifyCmdLine", params)[0] == 200
                assert api(sock, "POST", f"{CLASS}/{job_id}/SetJobState", {"JobState": 2})[0] == 200
                return job_id

            job = as_nobody(create)
            daemon.wait_state(job, JobState.TRANSFERRED)
            (run,) = wait_until(lambda: runs(out), 15, "the owner's notification")
            assert run["uid"] == NOBODY.pw_uid
            assert run["env"]["USER"] == "nobody"
        finally:
            daemon.stop()
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_openbits_set_changes_notifications_and_the_other_method_properties(
    daemon: Daemon, tmp_path: Path, program: str
) -> None:
    job = daemon.client.create_job("cli").job_id
    out = daemon.cli(
        "set",
        job,
        "--notify-cmd",
        f"{program} --flag 'two words'",
        "--notify-flags",
        "2",
        "--notify-url",
        "http://127.0.0.1:9/hook/secret",
        "--max-download-time",
        "600",
        "--custom-header",
        "X-A: 1",
        "--custom-header",
        "X-B: 2",
        "--json",
        check=True,
    )
    instance = json.loads(out.stdout)
    assert instance["NotifyCmdLine"] == {"Program": program, "Parameters": f"{program} --flag 'two words'"}
    assert instance["NotifyFlags"] == 2
    assert instance["NotifyUrl"] == "http://127.0.0.1:9/***"
    assert instance["MaximumDownloadTime"] == 600
    assert instance["CustomHeaders"] == "X-A: 1\r\nX-B: 2\r\n"
    daemon.cli("set", job, "--notify-cmd", "", "--notify-url", "", check=True)
    instance = daemon.job(job)
    assert instance["NotifyCmdLine"] is None and instance["NotifyUrl"] is None
    bad = daemon.cli("set", job, "--notify-cmd", "relative/prog x")
    assert bad.returncode == 1 and "E_INVALIDARG" in bad.stderr


# a notification program that says it started (its pid) and then hangs
HANGING = """#!/bin/sh
echo $$ > "$1"
exec sleep 600
"""


def test_a_program_still_running_at_shutdown_is_stopped_and_runs_again_after_the_restart(
    nginx: Nginx, dest: Path, tmp_path: Path
) -> None:
    program = tmp_path / "hang.sh"
    program.write_text(HANGING)
    program.chmod(0o755)
    pid_file = tmp_path / "pid"
    daemon = Daemon(tmp_path / "state")
    daemon.start()
    try:
        job = transfer(daemon, nginx, dest, "hang")
        daemon.client.invoke(job, "SetNotifyCmdLine", Program=str(program), Parameters=f"hang.sh {pid_file}")
        daemon.client.resume(job)
        pid = int(wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 15, "the program"))
        assert daemon.stop() == 0
        # stopped with the daemon (else the rerun after a restart would run beside it)
        assert not Path(f"/proc/{pid}").exists()
        pid_file.unlink()
        daemon.start()
        rerun = int(wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 15, "the rerun"))
        assert rerun != pid, "still due: it runs again"
    finally:
        daemon.stop()
