"""Several users on one root daemon: ownership, visibility, and the owner's rights on disk.

The daemon runs as root with a world-connectable socket (a system daemon); a forked
child of the test drops to ``nobody`` and talks to it, so SO_PEERCRED reports nobody.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from openbits.model import JobState
from tests.support.daemon import CLASS, Daemon, UnixHTTP
from tests.support.fixtures import make_file, sha256_file
from tests.support.nginx import Nginx
from tests.support.users import as_nobody

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")

NOBODY = pwd.getpwnam("nobody") if os.geteuid() == 0 else None


def api(sock: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    conn = UnixHTTP(sock)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body).encode())
        resp = conn.getresponse()
        payload = resp.read()
    finally:
        conn.close()
    return resp.status, json.loads(payload) if payload else None


@pytest.fixture
def shared() -> Iterator[Path]:
    """A world-reachable scratch directory (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="openbits-users-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        import shutil

        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def system_daemon(tmp_path: Path, shared: Path) -> Iterator[Daemon]:
    run = shared / "run"
    run.mkdir(mode=0o755)
    d = Daemon(tmp_path / "state", config={"socket_mode": 0o666}, socket=str(run / "openbits.sock"))
    d.start()
    try:
        yield d
    finally:
        d.stop()


def test_jobs_are_owned_by_the_socket_peer_and_isolated(system_daemon: Daemon, shared: Path) -> None:
    sock = system_daemon.socket
    status, created = as_nobody(lambda: api(sock, "POST", f"{CLASS}/CreateJob", {"DisplayName": "nb"}))
    assert status == 200
    nobody_job = created["JobId"]
    root_job = system_daemon.client.create_job("rt").job_id

    assert system_daemon.job(nobody_job)["Owner"] == "nobody"
    assert system_daemon.job(root_job)["Owner"] == "root"
    mine = [j.job_id for j in system_daemon.client.list_jobs()]
    assert mine == [root_job], "without AllUsers an admin lists only its own jobs"
    everyone = {j.job_id for j in system_daemon.client.list_jobs(all_users=True)}
    assert everyone == {root_job, nobody_job}

    def nobody_view() -> dict[str, Any]:
        return {
            "list": api(sock, "GET", CLASS),
            "own": api(sock, "GET", f"{CLASS}/{nobody_job}")[0],
            "other": api(sock, "GET", f"{CLASS}/{root_job}"),
            "cancel_other": api(sock, "POST", f"{CLASS}/{root_job}/SetJobState", {"JobState": 0}),
            "all": api(sock, "GET", f"{CLASS}?AllUsers=true"),
        }

    view = as_nobody(nobody_view)
    assert [j["JobId"] for j in view["list"][1]] == [nobody_job]
    assert view["own"] == 200
    assert view["other"][0] == 404 and view["other"][1]["Name"] == "BG_E_NOT_FOUND"
    assert view["cancel_other"][0] == 404
    assert view["all"][0] == 403 and view["all"][1]["ErrorCode"] == "0x80070005"
    assert system_daemon.job(root_job)["State"] == JobState.SUSPENDED, "another user cannot cancel it"


def test_destination_checked_with_the_owners_rights(system_daemon: Daemon, shared: Path) -> None:
    sock = system_daemon.socket
    root_only = shared / "root-only"
    root_only.mkdir(mode=0o755)  # nobody may not write here
    hidden = shared / "hidden"
    hidden.mkdir(mode=0o700)
    open_inside = hidden / "open"
    open_inside.mkdir()
    open_inside.chmod(0o777)  # writable, but nobody cannot reach it
    mine = shared / "mine"
    mine.mkdir()
    assert NOBODY is not None
    os.chown(mine, NOBODY.pw_uid, NOBODY.pw_gid)

    def add(local: Path) -> tuple[int, Any]:
        status, created = api(sock, "POST", f"{CLASS}/CreateJob", {"DisplayName": "d"})
        assert status == 200
        return api(
            sock,
            "POST",
            f"{CLASS}/{created['JobId']}/AddFile",
            {"RemoteUrl": "http://127.0.0.1:9/x", "LocalFile": str(local)},
        )

    results = as_nobody(lambda: [add(root_only / "f"), add(open_inside / "f"), add(mine / "f")])
    assert results[0][0] == 403 and results[0][1]["ErrorCode"] == "0x80070005"
    assert results[1][0] == 403 and results[1][1]["ErrorCode"] == "0x80070005"
    assert results[2][0] == 200


def test_sources_are_read_with_the_owners_rights_and_files_belong_to_the_owner(
    system_daemon: Daemon, shared: Path, nginx: Nginx
) -> None:
    assert NOBODY is not None
    sock = system_daemon.socket
    mine = shared / "mine"
    mine.mkdir()
    os.chown(mine, NOBODY.pw_uid, NOBODY.pw_gid)
    secret = shared / "secret.bin"
    secret.write_bytes(b"root only")
    secret.chmod(0o600)
    readable = shared / "readable.bin"
    readable.write_bytes(os.urandom(100_000))
    readable.chmod(0o644)
    digest = make_file(nginx.www, "users/web.bin", 200_000, seed=31)

    def create(remote: str, local: Path) -> str:
        status, created = api(
            sock,
            "POST",
            f"{CLASS}/CreateJob",
            {"DisplayName": local.name, "RemoteUrl": remote, "LocalFile": str(local)},
        )
        assert status == 200, created
        return str(created["JobId"])

    secret_job, readable_job, web_job = as_nobody(
        lambda: [
            create(str(secret), mine / "secret.bin"),
            create("file://" + str(readable), mine / "readable.bin"),
            create(f"{nginx.url}/users/web.bin", mine / "web.bin"),
        ]
    )
    system_daemon.wait_state(secret_job, JobState.ERROR)
    err = system_daemon.client.get_error(secret_job)
    assert (err.hresult, err.context) == (0x80070005, 5)

    for job in (readable_job, web_job):
        system_daemon.wait_state(job, JobState.TRANSFERRED)
    assert system_daemon.proc is not None
    fd_dir = Path(f"/proc/{system_daemon.proc.pid}/fd")
    targets = {os.readlink(fd_dir / fd) for fd in os.listdir(fd_dir) if (fd_dir / fd).exists()}
    assert str(readable) not in targets, "a source is never held open after its file completes"

    codes = as_nobody(
        lambda: [
            api(sock, "POST", f"{CLASS}/{j}/SetJobState", {"JobState": 1})[1]["ReturnValue"]
            for j in (readable_job, web_job)
        ]
    )
    assert codes == [0, 0]
    assert (mine / "readable.bin").read_bytes() == readable.read_bytes()
    assert sha256_file(mine / "web.bin") == digest
    for name in ("readable.bin", "web.bin"):
        assert (mine / name).stat().st_uid == NOBODY.pw_uid, "published files belong to the job owner"


def test_only_administrators_change_the_service_policy(system_daemon: Daemon) -> None:
    sock = system_daemon.socket
    path = "/root/microsoft/bits/BitsServicePolicy"
    read, change = as_nobody(
        lambda: [api(sock, "GET", path)[0], api(sock, "PATCH", path, {"MaxBandwidth": 1})]
    )
    assert read == 200
    assert change[0] == 403 and change[1]["ErrorCode"] == "0x80070005"
    assert system_daemon.api("GET", path)[1]["MaxBandwidth"] is None


def test_an_administrator_takes_ownership_and_the_old_owners_settings_go(
    system_daemon: Daemon, shared: Path
) -> None:
    sock = system_daemon.socket

    def create() -> str:
        status, body = api(sock, "POST", f"{CLASS}/CreateJob", {"DisplayName": "theirs"})
        assert status == 200, body
        job_id = str(body["JobId"])
        path = f"{CLASS}/{job_id}"
        assert (
            api(sock, "POST", f"{path}/SetCustomHeaders", {"CustomHeaders": "X-Key: nobody's\r\n"})[0] == 200
        )
        assert (
            api(sock, "POST", f"{path}/SetNotifyCmdLine", {"Program": "/bin/true", "Parameters": "true"})[0]
            == 200
        )
        assert api(sock, "POST", f"{path}/SetNotifyUrl", {"NotifyUrl": "http://127.0.0.1:9/hook"})[0] == 200
        # a user who is no administrator may not take ownership, even of their own job
        status, body = api(sock, "POST", f"{path}/TakeOwnership", {})
        assert status == 403 and body["Name"] == "E_ACCESSDENIED", body
        return job_id

    job = as_nobody(create)
    assert system_daemon.job(job)["Owner"] == "nobody"
    system_daemon.client.invoke(job, "TakeOwnership")
    taken = system_daemon.job(job)
    assert taken["Owner"] == "root"
    assert taken["CustomHeaders"] is None and taken["NotifyCmdLine"] is None and taken["NotifyUrl"] is None
    assert [j.job_id for j in system_daemon.client.list_jobs()] == [job], "root's own job now"
    status, _ = as_nobody(lambda: api(sock, "GET", f"{CLASS}/{job}"))
    assert status == 404, "no longer nobody's"
    assert "took ownership from nobody" in system_daemon.log()


def test_complete_after_take_ownership_publishes_the_files(
    system_daemon: Daemon, shared: Path, nginx: Nginx
) -> None:
    assert NOBODY is not None
    sock = system_daemon.socket
    mine = shared / "mine"
    mine.mkdir()
    os.chown(mine, NOBODY.pw_uid, NOBODY.pw_gid)
    digest = make_file(nginx.www, "users/taken.bin", 100_000, seed=37)

    def create() -> str:
        body = {
            "DisplayName": "t",
            "RemoteUrl": f"{nginx.url}/users/taken.bin",
            "LocalFile": str(mine / "t.bin"),
        }
        status, created = api(sock, "POST", f"{CLASS}/CreateJob", body)
        assert status == 200, created
        return str(created["JobId"])

    job = as_nobody(create)
    system_daemon.wait_state(job, JobState.TRANSFERRED)
    system_daemon.client.invoke(job, "TakeOwnership")
    assert system_daemon.client.complete(job) == 0
    assert sha256_file(mine / "t.bin") == digest


def _stop_my_children_of(parent: int, stopped: set[int]) -> None:
    """SIGSTOP every process of this uid whose parent is ``parent`` (as its owner may)."""
    import signal

    me = str(os.getuid())
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in stopped:
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("PPid", "").strip() == str(parent) and fields.get("Uid", "").split()[0:1] == [me]:
            try:
                os.kill(int(entry), signal.SIGSTOP)
                stopped.add(int(entry))
            except OSError:
                pass


def test_a_certificate_store_reader_stopped_by_its_owner_does_not_hang_the_call(
    tmp_path: Path, shared: Path
) -> None:
    import signal
    import threading

    store = shared / "machine" / "big"
    store.mkdir(parents=True)
    for i in range(64):  # a store slow enough to read for its reader to be caught
        (store / f"f{i:03}.pem").write_bytes(os.urandom(1024 * 1024))
    for path in (shared / "machine", store, *store.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    run = shared / "run"
    run.mkdir(mode=0o755)
    d = Daemon(
        tmp_path / "state",
        config={"socket_mode": 0o666, "machine_cert_dir": str(shared / "machine")},
        socket=str(run / "openbits.sock"),
    )
    d.start()
    try:
        assert d.proc is not None
        daemon_pid, sock = d.proc.pid, d.socket

        def attack() -> str:
            _, created = api(sock, "POST", f"{CLASS}/CreateJob", {"DisplayName": "stopper"})
            path = f"{CLASS}/{created['JobId']}/SetClientCertificateById"
            body = {"CertStoreLocation": 1, "StoreName": "big", "CertHash": "00" * 20}
            stopped: set[int] = set()
            done = threading.Event()

            def stopper() -> None:
                while not done.is_set():
                    _stop_my_children_of(daemon_pid, stopped)

            thread = threading.Thread(target=stopper)
            thread.start()
            try:
                conn = UnixHTTP(sock)
                conn.connect()
                assert conn.sock is not None
                conn.sock.settimeout(15)
                conn.request("POST", path, body=json.dumps(body).encode())
                try:
                    return f"answered {conn.getresponse().status}"
                except TimeoutError:
                    return f"no answer in 15 s ({len(stopped)} stopped)"
                finally:
                    conn.close()
            finally:
                done.set()
                thread.join()
                for pid in stopped:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGCONT)

        result = as_nobody(attack)
        assert result.startswith("answered"), result
    finally:
        d.stop()
