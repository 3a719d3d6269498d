"""The fetch worker (``transfer/offload.py``), more cases end to end against a real nginx
(the paced one of ``test_fetch_worker.py``): a big file among the small ones is handed back
to the daemon, a redirect reported (ALLOW_REPORT) in a lane is committed, a wrong expected
digest in a lane is the job's error with no file left, a SIGTERM of the daemon mid-job stops
the worker too and a new daemon finishes, quick Suspends and Resumes then a Cancel leave
nothing behind, SetCredentials mid-job closes the lane while the job goes on, and a chunked
body (no Content-Length: not handed back) long enough to checkpoint inside a lane has its
checkpoint committed mid-body (the in-process fault server, which serves it slowly)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import threading
from pathlib import Path

import pytest

from openbits.model import AuthScheme, AuthTarget, ErrorContext, JobPriority, JobState, SecurityFlags
from openbits.scheduler.atonce import LANE_LOW_FILES, RUN_MAX
from openbits.transfer.files import temp_name_for
from tests.integration import test_fetch_worker as base
from tests.integration.test_fetch_worker import (
    PACE,
    alive,
    assert_transferred,
    connections_of,
    daemon_pid,
    files_job,
    mid_job,
    open_under,
    paced_midway,
    temp_files,
    workers,
)
from tests.integration.test_fetch_worker_metrics import worker_metrics
from tests.support.daemon import Daemon, wait_until
from tests.support.faults import Behaviour, Connection, FaultServer, Request, Serve
from tests.support.fixtures import make_file, sha256_file
from tests.support.nginx import Nginx

KiB = 1024
MiB = 1024 * KiB
WRONG = "sha256:" + "00" * 32
#: a file of the worker's first run (the daemon's loop takes 0..63, the worker 64..127)
THEIRS = 100

pytestmark = pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="the daemon starts no fetch worker on one CPU"
)


#: the fixtures of test_fetch_worker.py: its paced nginx (one for this module) and a daemon
#: that takes jobs of thousands of files
nginx = base.nginx
daemon = base.daemon


def log_errors(daemon: Daemon) -> list[str]:
    """The daemon's (and its worker's: same stderr) log lines of an error or a traceback."""
    return [line for line in daemon.log().splitlines() if " ERROR " in line or "Traceback" in line]


def worker_connection(nginx: Nginx, name: str) -> int:
    """The connection of the worker's first file (its first run is 64..127)."""
    return int(wait_until(lambda: connections_of(nginx, name).get(f"/{name}/64.bin"), 10, "64.bin logged"))


def test_a_big_file_in_a_lane_is_handed_back_and_fetched_by_the_daemon(
    daemon: Daemon, nginx: Nginx, dest: Path
) -> None:
    count, size, big, big_size = 300, 16 * KiB, THEIRS, MiB + 5  # (offload.SMALL_MAX_BYTES: 1 MiB)
    name = "fwm-big"
    digests = [
        make_file(nginx.www, f"{name}/{i}.bin", big_size if i == big else size, seed=i) for i in range(count)
    ]
    job = daemon.client.create_job(name).job_id
    daemon.client.set_properties(job, Priority=int(JobPriority.FOREGROUND))
    daemon.client.add_file_set(
        job, [(f"{nginx.url}/{name}/{i}.bin", str(dest / f"{i}.bin")) for i in range(count)]
    )
    daemon.client.resume(job)
    final = daemon.wait_state(job, JobState.TRANSFERRED, timeout=60)
    assert final["FilesTransferred"] == count
    assert final["BytesTransferred"] == final["BytesTotal"] == size * (count - 1) + big_size
    assert daemon.client.complete(job) == 0
    assert [sha256_file(dest / f"{i}.bin") for i in range(count)] == digests
    assert not temp_files(dest)
    # asked for on the worker's connection (nginx may have sent all of it into the socket,
    # but the worker stopped at its head: it is no file of the worker's), then fetched by the
    # daemon's loop on a connection of its own
    theirs = worker_connection(nginx, name)
    asked = wait_until(
        lambda: len(r := [e for e in nginx.requests() if e["uri"] == f"/{name}/{big}.bin"]) >= 2 and r,
        10,
        "the big file asked for twice",
    )
    mine = [e for e in asked if e["connection"] != theirs]
    assert len(asked) == 2 and len(mine) == 1 and mine[0]["bytes_sent"] == big_size, asked
    assert not log_errors(daemon)
    assert len(workers(daemon_pid(daemon))) == 1, "a hand-back is no loss of the worker"


def test_a_reported_redirect_in_a_lane_is_committed(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    count, size, name = 300, 16 * KiB, "fwm-redirect"
    digests = [make_file(nginx.www, f"{name}/{i}.bin", size, seed=i) for i in range(count)]
    urls = [f"{nginx.url}/{name}/{i}.bin" for i in range(count)]
    urls[THEIRS] = f"{nginx.url}/redirect/{name}/{THEIRS}.bin"  # (a 302 to the plain one)
    client = daemon.client
    job = client.create_job(name).job_id
    client.set_properties(job, Priority=int(JobPriority.FOREGROUND))
    client.set_security_flags(job, SecurityFlags.REDIRECT_POLICY_ALLOW_REPORT)
    client.add_file_set(job, [(urls[i], str(dest / f"{i}.bin")) for i in range(count)])
    client.resume(job)
    daemon.wait_state(job, JobState.TRANSFERRED, timeout=60)
    final = f"{nginx.url}/{name}/{THEIRS}.bin"
    assert daemon.job(job)["Files"][THEIRS]["RemoteUrl"] == final
    # followed by the worker: on its connection
    theirs = worker_connection(nginx, name)
    redirected = [e for e in nginx.requests() if e["request_uri"] == f"/redirect/{name}/{THEIRS}.bin"]
    assert [(e["status"], e["connection"]) for e in redirected] == [(302, theirs)]
    # committed: the same after a restart
    assert daemon.stop() == 0
    daemon.start()
    assert daemon.job(job)["Files"][THEIRS]["RemoteUrl"] == final
    assert daemon.client.complete(job) == 0
    assert [sha256_file(dest / f"{i}.bin") for i in range(count)] == digests


def test_a_wrong_digest_in_a_lane_is_the_jobs_error_and_no_file_is_left(
    daemon: Daemon, nginx: Nginx, dest: Path
) -> None:
    count, size, name = 300, 16 * KiB, "fwm-digest"
    for i in range(count):
        make_file(nginx.www, f"{name}/{i}.bin", size, seed=i)
    client = daemon.client
    job = client.create_job(name).job_id
    client.set_properties(job, Priority=int(JobPriority.FOREGROUND))
    client.add_file_set(
        job,
        [
            (f"{nginx.url}/{name}/{i}.bin", str(dest / f"{i}.bin"), WRONG if i == THEIRS else None)
            for i in range(count)
        ],
    )
    client.resume(job)
    daemon.wait_state(job, JobState.ERROR, timeout=30)
    error = client.get_error(job)
    assert (error.hresult, error.name) == (0x80200053, "BG_E_VALIDATION_FAILED"), error
    assert error.context is ErrorContext.REMOTE_FILE
    assert error.local_file == str(dest / f"{THEIRS}.bin")
    assert not daemon.job(job)["Files"][THEIRS]["Completed"]
    requests = connections_of(nginx, name)
    assert requests[f"/{name}/{THEIRS}.bin"] == worker_connection(nginx, name), "fetched by the worker"
    assert not (dest / f"{THEIRS}.bin").exists()
    assert not (dest / temp_name_for(job, THEIRS)).exists(), "the mismatched bytes are not kept"
    assert client.cancel(job) == 0
    wait_until(lambda: not os.listdir(dest), 10, "an empty destination")


def test_sigterm_of_the_daemon_mid_job_stops_the_worker_and_a_new_daemon_finishes(
    daemon: Daemon, nginx: Nginx, dest: Path
) -> None:
    count, size = PACE, 4 * KiB
    job, digests, pid = paced_midway(daemon, nginx, dest, "fwm-term")
    parent = daemon_pid(daemon)
    assert daemon.stop() == 0, daemon.log()
    wait_until(lambda: not alive(pid) and not workers(parent), 10, "no worker left")
    daemon.start()
    assert int(daemon.job(job)["FilesTransferred"]) < count, "the SIGTERM landed mid-job"
    assert_transferred(daemon, job, dest, digests, size)


def test_quick_suspends_and_resumes_then_cancel_leave_nothing_behind(
    daemon: Daemon, nginx: Nginx, dest: Path
) -> None:
    count, size = PACE, 4 * KiB
    job, _ = files_job(daemon, nginx, dest, "fwm-flap", count, size, location="/paced")
    client = daemon.client
    client.resume(job)
    pid = mid_job(daemon, job, dest, count // 5)
    for _ in range(2):
        assert client.suspend(job) == 0
        client.resume(job)
    assert client.suspend(job) == 0
    client.resume(job)
    assert client.cancel(job) == 0
    assert daemon.job(job)["State"] == JobState.CANCELLED
    wait_until(
        lambda: (
            not os.listdir(dest) and not any(open_under(p, dest) for p in [pid, *workers(daemon_pid(daemon))])
        ),
        10,
        "an empty destination, nothing of it open in a worker",
    )
    assert not os.listdir(dest), "nothing created after"
    assert not log_errors(daemon)


def test_set_credentials_mid_job_closes_the_lane_and_the_job_finishes(
    daemon: Daemon, nginx: Nginx, dest: Path
) -> None:
    count, size, name = PACE, 4 * KiB, "fwm-creds"
    job, digests, _ = paced_midway(daemon, nginx, dest, name)
    daemon.client.set_credentials(job, AuthTarget.SERVER, AuthScheme.BASIC, "someone", "not-asked-for")
    changed_at = int(daemon.job(job)["FilesTransferred"])
    # (files are committed in batches of up to 0.25 s, ~50 files here, so this moves in such
    # steps; what matters is that the lane, which still fetches what it was given, at most
    # LANE_LOW_FILES + RUN_MAX files, was over before the last 50)
    assert changed_at < count - 50 - (LANE_LOW_FILES + RUN_MAX), "changed mid-job"
    assert_transferred(daemon, job, dest, digests, size)
    assert not log_errors(daemon)
    # the worker's connections: the ones of its first files; the last files (well after the
    # change, past any run the lane had been given) came on the daemon's own
    requests = connections_of(nginx, name)
    theirs = {requests[f"/paced/{name}/{i}.bin"] for i in range(64, 74)}
    late = {requests[f"/paced/{name}/{i}.bin"] for i in range(count - 50, count)}
    assert not late & theirs, (late, theirs)


class Peer(Behaviour):
    """``inner``'s answer, noting the client's port of each request (its connection)."""

    def __init__(self, inner: Behaviour) -> None:
        self.inner = inner
        self.ports: list[int] = []

    async def respond(self, req: Request, conn: Connection) -> bool:
        self.ports.append(conn.writer.get_extra_info("peername")[1])
        return await self.inner.respond(req, conn)


class GatedChunks(Behaviour):
    """``data`` as a chunked body (no Content-Length, no validators): ``before`` bytes in
    chunks of ``CHUNK`` every ``PAUSE_S`` (a slow server: longer than the checkpoint
    interval), then nothing until ``gate`` is set, then the rest."""

    CHUNK = 32 * KiB
    PAUSE_S = 0.05

    def __init__(self, data: bytes, before: int) -> None:
        self.data, self.before = data, before
        self.gate = threading.Event()

    async def respond(self, req: Request, conn: Connection) -> bool:
        head = {"Content-Type": "application/octet-stream", "Transfer-Encoding": "chunked"}
        await conn.send_head(200, head)
        for start in range(0, len(self.data), self.CHUNK):
            if start == self.before and not await asyncio.to_thread(self.gate.wait, 30):
                conn.abort()
                return False
            if start < self.before:
                await asyncio.sleep(self.PAUSE_S)
            chunk = self.data[start : start + self.CHUNK]
            conn.writer.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            await conn.writer.drain()
        conn.writer.write(b"0\r\n\r\n")
        await conn.writer.drain()
        return True


def test_a_chunked_body_in_a_lane_checkpoints_mid_body_and_arrives_exact(
    tmp_path: Path, fault_server: FaultServer, dest: Path
) -> None:
    count, size, slow_size, before = 300, 4 * KiB, 2 * MiB, 512 * KiB
    bodies = [random.Random(i).randbytes(slow_size if i == THEIRS else size) for i in range(count)]
    gated = GatedChunks(bodies[THEIRS], before)
    gate, slow, first = gated.gate, Peer(gated), Peer(Serve(bodies[0]))
    for i, body in enumerate(bodies):
        fault_server.routes[f"/fwm-chunked/{i}.bin"] = Serve(body)
    fault_server.routes["/fwm-chunked/0.bin"] = first
    fault_server.routes[f"/fwm-chunked/{THEIRS}.bin"] = slow
    # checkpoints every 0.1 s (the default 1 s would only make the body longer)
    d = Daemon(tmp_path / "state-chunked", config={"max_files_per_job": 5000, "checkpoint_interval_s": 0.1})
    d.start()
    try:
        client = d.client
        job = client.create_job("fwm-chunked").job_id
        client.set_properties(job, Priority=int(JobPriority.FOREGROUND))
        client.add_file_set(
            job, [(f"{fault_server.url}/fwm-chunked/{i}.bin", str(dest / f"{i}.bin")) for i in range(count)]
        )
        client.resume(job)
        # the worker checkpointed it mid-body and the daemon committed that (the body waits)
        wait_until(
            lambda: 0 < int(d.job(job)["Files"][THEIRS]["BytesTransferred"]) <= before,
            15,
            "a checkpoint of the chunked file committed",
        )
        assert not d.job(job)["Files"][THEIRS]["Completed"]
        during = worker_metrics(d)
        assert (during["lanes"], during["handed_back_total"]) == (1, 0), "in its lane, not handed back"
        gate.set()
        final = d.wait_state(job, JobState.TRANSFERRED, timeout=60)
        assert final["FilesTransferred"] == final["FilesTotal"] == count
        assert final["BytesTransferred"] == final["BytesTotal"] == sum(map(len, bodies))
        assert slow.ports != first.ports and len(slow.ports) == 1, "fetched once, by the worker"
        assert client.complete(job) == 0
        digests = [hashlib.sha256(body).hexdigest() for body in bodies]
        assert [sha256_file(dest / f"{i}.bin") for i in range(count)] == digests
        assert not temp_files(dest)
        assert not log_errors(d)
    finally:
        gate.set()
        d.stop()
