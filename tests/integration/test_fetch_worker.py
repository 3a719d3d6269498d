"""The fetch worker (``transfer/offload.py``): a job's many small files on a second core.

A FOREGROUND job of >= 128 small files is fetched by the daemon's loop and by a worker
process (``python -m openbits.transfer.fetchworker``, a child of the daemon) on a connection
of its own.  End to end against a real nginx (this module's own, with a paced location so
that a job lasts long enough to be interrupted): the worker is started only when it may be
(not when configured off, for NORMAL, for a limited priority), its files (HTTP and HTTPS)
are exact, a worker killed mid-job loses nothing, a cancelled job leaves no file behind, a
suspended one resumes whole, a 404 or a local error in its files is the job's error naming
the file, and the worker dies with the daemon."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from openbits.model import ErrorContext, JobPriority, JobState
from openbits.transfer.files import temp_name_for
from tests.support.daemon import Daemon, wait_until
from tests.support.fixtures import make_file, sha256_file
from tests.support.nginx import Nginx, find_nginx

KiB = 1024
WORKER_MODULE = b"openbits.transfer.fetchworker"
#: the files of a paced job (``paced_midway``)
PACE = 500
#: requests a second ``/paced/`` serves: a paced job lasts 2.5 s, so when a fifth of it is
#: written, "mid-job" still holds for seconds (a suspend, cancel or kill lands in it)
RATE = 200

pytestmark = pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="the daemon starts no fetch worker on one CPU"
)


class PacedNginx(Nginx):
    """nginx with ``/paced/``: the files served at most ``RATE`` requests a second over all
    connections (others wait their turn), so that a job of small files lasts long enough to
    be interrupted in its middle, and a worker still fetching after it was told to stop
    would be seen writing."""

    def _config(self) -> str:
        config = super()._config()
        zone = f"limit_req_zone $server_port zone=paced:1m rate={RATE}r/s;\n"
        location = f'location /paced/ {{ alias "{self.www}/"; limit_req zone=paced burst=100000; }}\n'
        config = config.replace("http {\n", "http {\n" + zone, 1)
        return config.replace("        location / {", f"        {location}        location / {{", 1)


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    """This module's own nginx (with ``/paced/``)."""
    binary = find_nginx()
    if binary is None:
        pytest.skip("nginx binary not found on PATH or in /usr/sbin")
    base = tmp_path_factory.mktemp("nginx-paced")
    with PacedNginx(base / "work", base / "www", binary=binary) as server:
        yield server


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A daemon that takes jobs of thousands of files (the default caps a job at 200)."""
    d = Daemon(tmp_path / "state", config={"max_files_per_job": 5000})
    d.start()
    try:
        yield d
    finally:
        d.stop()


def _stat(pid: int) -> tuple[str, int] | None:
    """A process's state letter and parent pid (None once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def workers(parent: int) -> list[int]:
    """The fetch worker processes whose parent is ``parent`` (the daemon's pid)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if WORKER_MODULE in cmdline and (stat := _stat(int(entry))) is not None and stat[1] == parent:
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] not in "ZX"


def daemon_pid(daemon: Daemon) -> int:
    assert daemon.proc is not None
    return daemon.proc.pid


def temp_files(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.startswith(".BIT") and p.name.endswith(".tmp")]


def open_under(pid: int, directory: Path) -> list[str]:
    """The files under ``directory`` that process ``pid`` has open."""
    found = []
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(f"{directory}/"):
            found.append(target)
    return found


def files_job(
    daemon: Daemon,
    nginx: Nginx,
    dest: Path,
    name: str,
    count: int,
    size: int,
    *,
    priority: JobPriority = JobPriority.FOREGROUND,
    missing: int | None = None,
    location: str = "",
) -> tuple[str, list[str]]:
    """A job of ``count`` files of ``size`` bytes (file ``missing`` not on the server), not
    resumed yet: its JobId and the files' digests."""
    digests = [
        make_file(nginx.www, f"{name}/{i}.bin", size, seed=i) if i != missing else "" for i in range(count)
    ]
    client = daemon.client
    job = client.create_job(name).job_id
    client.set_properties(job, Priority=int(priority))
    client.add_file_set(
        job, [(f"{nginx.url}{location}/{name}/{i}.bin", str(dest / f"{i}.bin")) for i in range(count)]
    )
    return job, digests


def assert_transferred(daemon: Daemon, job: str, dest: Path, digests: list[str], size: int) -> None:
    """The job ends TRANSFERRED with exact counts; after Complete every file is the server's
    and no temporary file is left."""
    final = daemon.wait_state(job, JobState.TRANSFERRED, timeout=60)
    assert final["FilesTransferred"] == final["FilesTotal"] == len(digests)
    assert final["BytesTransferred"] == final["BytesTotal"] == size * len(digests)
    assert daemon.client.complete(job) == 0
    assert [sha256_file(dest / f"{i}.bin") for i in range(len(digests))] == digests
    assert not temp_files(dest)


def connections(nginx: Nginx, name: str, count: int) -> set[int]:
    """The nginx connections of the ``count`` requests for ``name``'s files (once logged:
    nginx logs a request a moment after its response)."""
    requests = wait_until(
        lambda: len(found := [r for r in nginx.requests() if f"/{name}/" in r["uri"]]) >= count and found,
        10,
        f"{count} requests logged",
    )
    return {r["connection"] for r in requests}


def connections_of(nginx: Nginx, name: str) -> dict[str, int]:
    """Each of ``name``'s logged uris: the connection it was requested on (the last one)."""
    return {r["uri"]: r["connection"] for r in nginx.requests() if f"/{name}/" in r["uri"]}


def files_done(daemon: Daemon, job: str) -> int:
    return int(daemon.job(job)["FilesTransferred"])


def mid_job(daemon: Daemon, job: str, dest: Path, written: int) -> int:
    """Once the worker fetches and ``written`` files are written: the worker's pid.  The
    worker's first run is the files 64..127 (the daemon's loop takes 0..63 first, then the
    files after the worker's), so a temporary file of the first ten is the worker's work."""
    pid = wait_until(lambda: workers(daemon_pid(daemon)), 10, "a fetch worker")[0]
    theirs = [dest / temp_name_for(job, i) for i in range(64, 74)]
    wait_until(
        lambda: all(p.exists() for p in theirs) and len(temp_files(dest)) >= written,
        10,
        f"the worker's files and {written} in all",
    )
    return int(pid)


def paced_midway(daemon: Daemon, nginx: Nginx, dest: Path, name: str) -> tuple[str, list[str], int]:
    """A job of ``PACE`` files of 4 KiB from ``/paced/``, resumed, once the worker fetches and
    a fifth of them are written (``mid_job``): its JobId, the files' digests, the worker's pid."""
    job, digests = files_job(daemon, nginx, dest, name, PACE, 4 * KiB, location="/paced")
    daemon.client.resume(job)
    return job, digests, mid_job(daemon, job, dest, PACE // 5)


def test_many_small_files_go_to_a_worker_process_and_arrive_exact(
    daemon: Daemon, nginx: Nginx, dest: Path
) -> None:
    count, size = 300, 16 * KiB
    job, digests = files_job(daemon, nginx, dest, "fw-exact", count, size)
    assert not workers(daemon_pid(daemon)), "no worker before a job needs one"
    daemon.client.resume(job)
    assert_transferred(daemon, job, dest, digests, size)
    assert len(workers(daemon_pid(daemon))) == 1, "one worker, a child of the daemon (idle 60 s)"
    assert len(connections(nginx, "fw-exact", count)) == 2, "the daemon's connection and the worker's"


def test_a_worker_killed_mid_job_loses_no_file(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    size = 4 * KiB
    job, digests, pid = paced_midway(daemon, nginx, dest, "fw-kill")
    os.kill(pid, signal.SIGKILL)
    # the kill landed while the worker had files to fetch (it did not idle after the job)
    wait_until(lambda: "the fetch worker ended with 1 lane(s) open" in daemon.log(), 10, "the worker lost")
    assert_transferred(daemon, job, dest, digests, size)
    assert not workers(daemon_pid(daemon)), "not started again at once (a cool-down)"


def test_a_lost_worker_does_not_hold_the_job_up(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    job, _, pid = paced_midway(daemon, nginx, dest, "fw-lost")
    os.kill(pid, signal.SIGKILL)
    daemon.wait_state(job, JobState.TRANSFERRED, timeout=60)
    assert "did not stop a lane" not in daemon.log(), "waited for a dead worker"


def test_cancel_mid_job_leaves_no_file_behind(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    count = PACE
    job, _, pid = paced_midway(daemon, nginx, dest, "fw-cancel")
    assert daemon.client.cancel(job) == 0
    assert daemon.job(job)["State"] == JobState.CANCELLED
    # the worker stopped writing: nothing left, nothing of dest open in it, nothing created later
    wait_until(lambda: not os.listdir(dest) and not open_under(pid, dest), 10, "an empty destination")
    assert alive(pid), "the worker stopped the lane, not itself"
    assert files_done(daemon, job) < count


@pytest.mark.parametrize("missing", [100, 250])
def test_a_404_among_the_files_is_the_jobs_error_and_a_resume_finishes(
    daemon: Daemon, nginx: Nginx, dest: Path, missing: int
) -> None:
    count, size = 300, 16 * KiB
    name = f"fw-404-{missing}"
    job, digests = files_job(daemon, nginx, dest, name, count, size, missing=missing)
    daemon.client.resume(job)
    final = daemon.wait_state(job, JobState.ERROR, timeout=30)
    error = daemon.client.get_error(job)
    assert error.hresult == 0x80190194  # BG_E_HTTP_ERROR_404
    assert error.remote_url == f"{nginx.url}/{name}/{missing}.bin"
    assert error.local_file == str(dest / f"{missing}.bin")
    assert final["FilesTransferred"] < count
    assert not final["Files"][missing]["Completed"]
    if missing == 100:  # the worker's first run (64..127): the 404 came to it, not the daemon
        requests = connections_of(nginx, name)
        assert requests[f"/{name}/100.bin"] != requests[f"/{name}/0.bin"], "fetched by the worker"
    digests[missing] = make_file(nginx.www, f"{name}/{missing}.bin", size, seed=missing)
    daemon.client.resume(job)  # (the file is there now: the job picks up where it failed)
    assert_transferred(daemon, job, dest, digests, size)


@pytest.mark.parametrize(
    "bad",
    [
        10,  # the daemon's loop: the control
        100,  # a lane of the fetch worker
    ],
)
def test_a_missing_local_directory_is_the_jobs_error_naming_its_file(
    daemon: Daemon, nginx: Nginx, dest: Path, bad: int
) -> None:
    count, size = 300, 16 * KiB
    name = f"fw-nodir-{bad}"
    for i in range(count):
        make_file(nginx.www, f"{name}/{i}.bin", size, seed=i)
    gone = dest / "gone"
    gone.mkdir()
    local = [dest / f"{i}.bin" if i != bad else gone / f"{i}.bin" for i in range(count)]
    job = daemon.client.create_job(name).job_id
    daemon.client.set_properties(job, Priority=int(JobPriority.FOREGROUND))
    daemon.client.add_file_set(job, [(f"{nginx.url}/{name}/{i}.bin", str(local[i])) for i in range(count)])
    gone.rmdir()  # (after AddFileSet, which wants the directory)
    daemon.client.resume(job)
    daemon.wait_state(job, JobState.ERROR, timeout=30)
    error = daemon.client.get_error(job)
    assert (error.hresult, error.context) == (0x80070003, ErrorContext.LOCAL_FILE), error
    assert error.local_file == str(local[bad])


def test_the_worker_dies_with_the_daemon_and_a_new_daemon_finishes(
    daemon: Daemon, nginx: Nginx, dest: Path
) -> None:
    count, size = PACE, 4 * KiB
    job, digests, pid = paced_midway(daemon, nginx, dest, "fw-daemon-kill")
    daemon.kill()
    wait_until(lambda: not alive(pid), 5, "the worker gone with its daemon (PDEATHSIG)")
    daemon.start()
    assert files_done(daemon, job) < count, "the kill landed mid-job"
    assert_transferred(daemon, job, dest, digests, size)


def test_no_worker_when_the_config_turns_it_off(tmp_path: Path, nginx: Nginx, dest: Path) -> None:
    d = Daemon(tmp_path / "state-off", config={"fetch_worker": False, "max_files_per_job": 5000})
    d.start()
    try:
        count, size = 300, 16 * KiB
        job, digests = files_job(d, nginx, dest, "fw-off", count, size)
        d.client.resume(job)
        assert_transferred(d, job, dest, digests, size)
        assert not workers(daemon_pid(d))
        assert len(connections(nginx, "fw-off", count)) == 1, "the daemon's own connection only"
    finally:
        d.stop()


def test_no_worker_for_a_normal_priority_job(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    count, size = 300, 16 * KiB
    job, digests = files_job(daemon, nginx, dest, "fw-normal", count, size, priority=JobPriority.NORMAL)
    assert daemon.job(job)["MaxConnections"] == 1
    daemon.client.resume(job)
    assert_transferred(daemon, job, dest, digests, size)
    assert not workers(daemon_pid(daemon))
    assert len(connections(nginx, "fw-normal", count)) == 1, "one file at a time"


def test_suspended_mid_job_and_resumed_every_file_is_whole(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    """Files the worker wrote but the daemon had not committed when the job was suspended are
    fetched again whole on resume (not taken as done, not appended to)."""
    count, size = PACE, 4 * KiB
    job, digests, pid = paced_midway(daemon, nginx, dest, "fw-suspend")
    assert daemon.client.suspend(job) == 0
    assert daemon.job(job)["State"] == JobState.SUSPENDED
    assert files_done(daemon, job) < count, "suspended mid-job"
    assert alive(pid)
    daemon.client.resume(job)
    assert_transferred(daemon, job, dest, digests, size)


def test_a_job_lowered_to_a_polite_priority_mid_job_leaves_the_worker(
    daemon: Daemon, nginx: Nginx, dest: Path
) -> None:
    """The worker fetches unpaced: SetPriority to NORMAL (which yields) stops its lane at its
    next file, and the files it had been given go on in the daemon, paced (they were all
    fetched there before: ~64 more on the worker's connection)."""
    count, size = PACE, 4 * KiB
    job, digests, _ = paced_midway(daemon, nginx, dest, "fw-lowered")
    first = "/paced/fw-lowered/64.bin"  # (the worker's first run is the files 64..127)
    worker = wait_until(
        lambda: connections_of(nginx, "fw-lowered").get(first), 10, "the worker's first file logged"
    )
    daemon.client.set_properties(job, Priority=int(JobPriority.NORMAL))
    before = sum(1 for r in nginx.requests() if r["connection"] == worker)
    assert files_done(daemon, job) < count, "lowered mid-job"
    assert_transferred(daemon, job, dest, digests, size)
    after = sum(1 for r in nginx.requests() if r["connection"] == worker)
    assert after - before < 32, f"{after - before} files on the worker's connection after the change"
    assert "the fetch worker's lane stops" in daemon.log()


def test_no_worker_for_a_job_whose_priority_has_a_bandwidth_limit(
    daemon: Daemon, nginx: Nginx, dest: Path
) -> None:
    status, policy = daemon.api(
        "PATCH", "/root/microsoft/bits/BitsServicePolicy", {"MaxBandwidth": "1G", "ForegroundLimited": True}
    )
    assert status == 200, policy
    count, size = 300, 16 * KiB
    job, digests = files_job(daemon, nginx, dest, "fw-limited", count, size)
    daemon.client.resume(job)
    assert_transferred(daemon, job, dest, digests, size)
    assert not workers(daemon_pid(daemon)), "a limited priority's files stay in the daemon"


def test_https_files_go_to_the_worker_too(tmp_path: Path, nginx: Nginx, dest: Path) -> None:
    trust = {"SSL_CERT_FILE": str(nginx.ca_path)}  # (the daemon's, and so its worker's)
    d = Daemon(tmp_path / "state-tls", config={"max_files_per_job": 5000}, env=trust)
    d.start()
    try:
        count, size = 300, 16 * KiB
        digests = [make_file(nginx.www, f"fw-tls/{i}.bin", size, seed=i) for i in range(count)]
        job = d.client.create_job("fw-tls").job_id
        d.client.set_properties(job, Priority=int(JobPriority.FOREGROUND))
        d.client.add_file_set(
            job, [(f"{nginx.https_url}/fw-tls/{i}.bin", str(dest / f"{i}.bin")) for i in range(count)]
        )
        d.client.resume(job)
        assert_transferred(d, job, dest, digests, size)
        assert len(workers(daemon_pid(d))) == 1
        assert len(connections(nginx, "fw-tls", count)) == 2
    finally:
        d.stop()
