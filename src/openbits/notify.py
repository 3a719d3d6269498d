"""Notifications as BITS gives them: the job's command line, and a webhook (extension).

When a job enters TRANSFERRED or ERROR and its NotifyFlags ask for that event
(``BG_NOTIFY_JOB_TRANSFERRED`` / ``BG_NOTIFY_JOB_ERROR``, not ``BG_NOTIFY_DISABLE``), the
service marks a notification due (``Job.notify_due_ns``, committed with the state change,
so a restart keeps it).  The :class:`Notifier` runs what is due:

- the command line (SetNotifyCmdLine): ``Program`` with the words of ``Parameters`` as its
  argv (program first, no shell, no variable expansion), as the job's owner (a root daemon
  switches to the owner's uid, gid and groups), with a small fixed environment
  (``PATH``, ``HOME``, ``USER``, ``LOGNAME``, ``OPENBITS_JOB_ID``, ``OPENBITS_JOB_STATE``),
  stdin/stdout/stderr on /dev/null, in a session of its own;
- the webhook (SetNotifyUrl): ``POST`` of ``{"Event", "JobId", "Job"}`` as JSON, tried
  three times a round (at once, after 5 s, after 30 s); any 2xx is success.

A round that fails (the program exits non-zero or cannot start, the webhook never answers
2xx) is due again after MinimumRetryDelay, for as long as the job stays in that state
(BITS reruns the program until the job is completed or cancelled).  Delivery is at least
once: a daemon stopped while a program runs starts it again after the restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pwd
import shlex
import signal
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

from openbits.model import Job, JobState
from openbits.service import Service

log = logging.getLogger("openbits.notify")

#: waits between the webhook's tries within one round
WEBHOOK_RETRY_DELAYS_S: Sequence[float] = (5.0, 30.0)
WEBHOOK_TIMEOUT_S = 30.0
#: a notification program still running at shutdown: SIGTERM, then SIGKILL this long after
PROGRAM_STOP_GRACE_S = 2.0
EVENT_NAMES = {JobState.TRANSFERRED: "JobTransferred", JobState.ERROR: "JobError"}


class Notifier:
    """Runs the notifications of ``service``'s jobs as they fall due; webhooks go through
    ``proxies`` (``http.env_proxies``; none if not given), as transfers do."""

    def __init__(self, service: Service, proxies: Mapping[str, str] | None = None) -> None:
        self.service = service
        self.proxies = proxies or {}
        self._due: dict[str, int] = {}  # job id -> due time (ns)
        self._running: set[str] = set()
        self._wake = asyncio.Event()
        service.listeners.append(self._on_change)

    def _on_change(self, job: Job, what: str) -> None:
        if job.notify_due_ns and job.job_id not in self._running:
            self._due[job.job_id] = job.notify_due_ns
            self._wake.set()

    async def run(self) -> None:
        """Run notifications as they fall due, until cancelled."""
        for job in self.service.jobs.values():
            if job.notify_due_ns:
                self._due[job.job_id] = job.notify_due_ns
        clock = self.service.clock
        async with asyncio.TaskGroup() as group:
            while True:
                self._wake.clear()
                now = clock.now_ns()
                for job_id, due in list(self._due.items()):
                    if due <= now:
                        del self._due[job_id]
                        found = self.service.jobs.get(job_id)
                        if found is not None and found.notify_due_ns == due:
                            self._running.add(job_id)
                            group.create_task(self._notify(found, due), name=f"notify {job_id}")
                wait_s = (min(self._due.values()) - now) / 1e9 if self._due else None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_s):
                        await self._wake.wait()

    async def _notify(self, job: Job, due_ns: int) -> None:
        state = job.state
        ok = True
        try:
            if job.notify_program is not None:
                ok = await self._run_program(job, state) and ok
            if job.notify_url is not None:
                ok = await self._call_webhook(job, state) and ok
        except Exception:  # a notification never takes the daemon down
            log.exception("notification of job %s failed", job.job_id)
            ok = False
        finally:
            self._running.discard(job.job_id)
        try:
            self.service.notification_done(job, due_ns, ok)
        except Exception:  # (the store failed: still due after a restart, at least once)
            log.exception("job %s: cannot record its notification", job.job_id)
            if job.notify_due_ns == due_ns:  # not again at once: after the retry delay
                job.notify_due_ns = self.service.clock.now_ns() + job.minimum_retry_delay_s * 10**9
        if job.notify_due_ns:
            self._due[job.job_id] = job.notify_due_ns
            self._wake.set()

    async def _run_program(self, job: Job, state: JobState) -> bool:
        program = job.notify_program
        assert program is not None
        argv = shlex.split(job.notify_parameters) if job.notify_parameters else [program]
        try:
            owner = pwd.getpwuid(job.owner_uid)
        except KeyError:
            log.warning("job %s: its owner uid %d has no account; not notified", job.job_id, job.owner_uid)
            return False
        identity: dict[str, Any] = {}
        if os.geteuid() != job.owner_uid:
            if os.geteuid() != 0:
                log.warning("job %s: cannot run its notification as uid %d", job.job_id, job.owner_uid)
                return False
            identity = {
                "user": owner.pw_uid,
                "group": owner.pw_gid,
                "extra_groups": os.getgrouplist(owner.pw_name, owner.pw_gid),
            }
        home = owner.pw_dir if os.path.isdir(owner.pw_dir) else "/"
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": home,
            "USER": owner.pw_name,
            "LOGNAME": owner.pw_name,
            "OPENBITS_JOB_ID": job.job_id,
            "OPENBITS_JOB_STATE": state.name,
        }
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                executable=program,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=home,
                env=env,
                start_new_session=True,
                **identity,
            )
        except OSError as e:
            log.warning("job %s: cannot run its notification program: %s", job.job_id, e.strerror or e)
            return False
        try:
            code = await proc.wait()
        except asyncio.CancelledError:  # (shutdown: due still, it runs again after the restart)
            await asyncio.shield(_stop_program(proc))
            raise
        if code:
            log.info(
                "job %s: the notification program exited with %d; again after %d s",
                job.job_id,
                code,
                job.minimum_retry_delay_s,
            )
        return code == 0

    async def _call_webhook(self, job: Job, state: JobState) -> bool:
        url = job.notify_url
        assert url is not None
        instance = job.to_cim()
        instance.pop("CustomHeaders", None)  # (they may carry credentials: as in events)
        body = {"Event": EVENT_NAMES.get(state, "JobModification"), "JobId": job.job_id, "Job": instance}
        for delay in (0.0, *WEBHOOK_RETRY_DELAYS_S):
            if delay:
                await asyncio.sleep(delay)
                if job.state is not state:
                    return True  # moved on: nothing left to say of that state
            try:
                status = await _post(url, body, WEBHOOK_TIMEOUT_S, self.proxies)
            except Exception as e:  # any failure to deliver is a failed try
                log.info("job %s: webhook failed: %s", job.job_id, type(e).__name__)
                continue
            if 200 <= status < 300:
                return True
            log.info("job %s: webhook answered %d", job.job_id, status)
        return False


async def _stop_program(proc: asyncio.subprocess.Process) -> None:
    """A notification program cut short by the daemon's shutdown, its whole session (it was
    started in one of its own): SIGTERM, SIGKILL after ``PROGRAM_STOP_GRACE_S``, reaped.
    It runs again after the restart (still due), never beside a run left over from before."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(PROGRAM_STOP_GRACE_S):
                await proc.wait()
                return
    log.warning("notification program %d could not be stopped", proc.pid)


async def _post(url: str, body: dict[str, Any], timeout_s: float, proxies: Mapping[str, str]) -> int:
    """POST ``body`` as JSON; the status.  Through the environment's proxy (as transfers),
    never with the daemon's ``~/.netrc``."""
    import aiohttp

    from openbits.transfer.http import env_proxy_for

    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with (
        aiohttp.ClientSession(timeout=timeout, trust_env=False) as session,
        session.post(
            url,
            data=json.dumps(body),
            proxy=env_proxy_for(url, proxies),
            headers={"Content-Type": "application/json", "User-Agent": "openbits-notify"},
            allow_redirects=False,
        ) as resp,
    ):
        return resp.status
