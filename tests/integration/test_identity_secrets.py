"""Secrets never leak (SPEC §7, issue 13 item 2): passwords set through `openbits credentials`
(stdin), `bitsadmin /setcredentials … *` and the API are nowhere but sealed: not in the store
file, its WAL, the daemon's log, events, instances, `--json`, error texts or the command
lines of the processes involved; custom headers are shown to their owner alone; `openbits
store backup|restore` carries the key that opens them.  A real daemon, nginx and SQLite."""

from __future__ import annotations

import json
import os
import pwd
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from openbits.client import Client
from openbits.model import AuthScheme, AuthTarget, JobState, Secret
from openbits.store.sqlite import SqliteStore
from tests.support.daemon import CLASS, Daemon, UnixHTTP, reap, wait_until
from tests.support.fixtures import make_file
from tests.support.nginx import Nginx
from tests.support.users import as_nobody

#: unique strings: any of them found where it should not be is a leak
CLI_PASSWORD = "cli-Pa55-7d1f0c2e9b"
BITSADMIN_PASSWORD = "bitsadmin-Pa55-4e8a61"
API_PASSWORD = "api-Pa55-93b2d7c0"
HEADER_SECRET = "hdr-Secret-5a0e77f1"
SECRETS = (CLI_PASSWORD, BITSADMIN_PASSWORD, API_PASSWORD)


def _openbits(daemon: Daemon, *args: str, prog: str = "openbits") -> subprocess.Popen[str]:
    module = "openbits" if prog == "openbits" else "openbits.cli.bitsadmin"
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, OPENBITS_SOCKET=daemon.socket),
    )


def _with_password_on_stdin(proc: subprocess.Popen[str], password: str) -> str:
    """The command's argv as the system shows it (read before it is given the password on
    stdin), then its output once it has run: both must be free of the password."""
    try:
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(errors="replace")
        out, err = proc.communicate(password + "\n", timeout=60)
    finally:
        reap(proc)
    assert proc.returncode == 0, (proc.args, out, err)
    assert password not in cmdline
    return out + err


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _leaks(text: str | bytes, where: str) -> None:
    data = text.encode() if isinstance(text, str) else text
    for secret in SECRETS:
        assert secret.encode() not in data, f"a password is in {where}"


def test_a_password_is_nowhere_but_sealed(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    make_file(nginx.www, "identity/secret.bin", 1000, seed=1301)
    job = daemon.cli("create", "secrets", "--json", check=True)
    job_id = json.loads(job.stdout)["JobId"]
    outputs = [
        _with_password_on_stdin(
            _openbits(daemon, "credentials", "set", job_id, "--user", "alice", "--password-stdin"),
            CLI_PASSWORD,
        ),
        _with_password_on_stdin(
            _openbits(daemon, "/setcredentials", job_id, "PROXY", "BASIC", "bob", "*", prog="bitsadmin"),
            BITSADMIN_PASSWORD,
        ),
    ]
    daemon.client.set_credentials(job_id, AuthTarget.SERVER, AuthScheme.DIGEST, "carol", API_PASSWORD)
    daemon.client.set_custom_headers(job_id, {"X-Secret": HEADER_SECRET})
    # refused calls: the error bodies do not echo the password
    for body in (
        {"Target": 0, "Scheme": 0, "UserName": None, "Password": API_PASSWORD},
        {"Target": 0, "Scheme": 4, "UserName": "x", "Password": API_PASSWORD},
        {"Target": 0, "Scheme": 0, "UserName": "x", "Password": API_PASSWORD, "Bogus": API_PASSWORD},
        {"Target": 9, "Scheme": 0, "UserName": "x", "Password": API_PASSWORD},
    ):
        status, answer = daemon.api("POST", f"{CLASS}/{job_id}/SetCredentials", body)
        assert status == 400
        outputs.append(json.dumps(answer))
    raw = b'{"Target": 0, "Scheme": 0, "UserName": "x", "Password": "' + API_PASSWORD.encode() + b'"'
    outputs.append(json.dumps(daemon.api("POST", f"{CLASS}/{job_id}/SetCredentials", raw=raw)[1]))

    # the job fails on a 401 (a wrong password; and a notification program runs as a child)
    daemon.client.set_notify_cmd_line(job_id, "/bin/sleep", "sleep 5")
    daemon.client.add_file(job_id, f"{nginx.url}/basic/identity/secret.bin", str(dest / "secret.bin"))
    stream = Client(daemon.socket).events(last_event_id=0, timeout=30, job=job_id)
    try:
        daemon.client.resume(job_id)
        events = []
        for event in stream:
            events.append(json.dumps(event.data))
            if isinstance(event.data, dict) and event.data.get("State") == JobState.ERROR:
                break
    finally:
        stream.close()
    outputs += events
    assert daemon.job(job_id)["State"] == JobState.ERROR

    assert daemon.proc is not None
    sleeper = wait_until(lambda: _children(daemon.proc.pid), 20, "the notification program")  # type: ignore[union-attr]
    for pid in [daemon.proc.pid, *sleeper]:
        _leaks(Path(f"/proc/{pid}/cmdline").read_bytes(), f"the command line of {pid}")
        _leaks(Path(f"/proc/{pid}/environ").read_bytes(), f"the environment of {pid}")

    for args, prog in (
        (("get", job_id, "--json"), "openbits"),
        (("get", job_id), "openbits"),
        (("get", "--json"), "openbits"),
        (("error", job_id), "openbits"),
        (("error", job_id, "--json"), "openbits"),
        (("query", "SELECT * FROM BitsClientJob", "--json"), "openbits"),
        (("/info", job_id, "/verbose"), "bitsadmin"),
        (("/geterror", job_id), "bitsadmin"),
        (("/list", "/verbose"), "bitsadmin"),
    ):
        result = daemon.cli(*args, prog=prog, check=True)
        outputs.append(result.stdout + result.stderr)
    instance = daemon.job(job_id)
    assert instance["Credentials"] == [
        {"Target": 0, "Scheme": 0, "UserName": "alice"},
        {"Target": 1, "Scheme": 0, "UserName": "bob"},
        {"Target": 0, "Scheme": 1, "UserName": "carol"},
    ]
    assert instance["CustomHeaders"] == f"X-Secret: {HEADER_SECRET}\r\n"  # to its owner
    for number, text in enumerate(outputs):
        _leaks(text, f"output {number}: {text[:200]}")

    # on disk: the store, its WAL, the log; then again once the daemon has stopped
    def files_hold_no_secret() -> None:
        files = [p for p in daemon.state_dir.iterdir() if p.is_file()]
        assert any(p.name.endswith("-wal") for p in files) or daemon.proc is None
        for path in files:
            data = path.read_bytes()
            _leaks(data, str(path))
            assert HEADER_SECRET.encode() not in data, f"the custom header is in {path}"

    files_hold_no_secret()
    assert daemon.log(), "the daemon's log was written"
    daemon.stop()
    files_hold_no_secret()
    # ...but sealed, they are there for the daemon
    store = SqliteStore(str(daemon.state_dir / "jobs.sqlite"))
    try:
        [loaded] = [j for j in store.load_jobs() if j.job_id == job_id]
    finally:
        store.close()
    assert loaded.credentials[(AuthTarget.SERVER, AuthScheme.BASIC)].password == Secret(CLI_PASSWORD)
    assert loaded.credentials[(AuthTarget.PROXY, AuthScheme.BASIC)].password == Secret(BITSADMIN_PASSWORD)
    assert loaded.custom_headers == f"X-Secret: {HEADER_SECRET}\r\n"


# -- custom headers: their owner's alone -------------------------------------------------------


NOBODY = pwd.getpwnam("nobody") if os.geteuid() == 0 else None


def _api(sock: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    conn = UnixHTTP(sock)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body).encode())
        resp = conn.getresponse()
        payload = resp.read()
    finally:
        conn.close()
    return resp.status, json.loads(payload) if payload else None


@pytest.fixture
def system_daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A root daemon whose socket every user may reach (in a world-reachable directory)."""
    shared = Path(tempfile.mkdtemp(prefix="openbits-identity-"))
    shared.chmod(0o755)
    d = Daemon(tmp_path / "state", config={"socket_mode": 0o666}, socket=str(shared / "openbits.sock"))
    d.start()
    try:
        yield d
    finally:
        d.stop()
        import shutil

        shutil.rmtree(shared, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_custom_headers_are_shown_to_their_owner_alone(system_daemon: Daemon) -> None:
    sock = system_daemon.socket
    where = f"{CLASS}?AllUsers=true"

    def nobody_sets_and_reads() -> dict[str, Any]:
        status, created = _api(sock, "POST", f"{CLASS}/CreateJob", {"DisplayName": "headers"})
        assert status == 200
        job = created["JobId"]
        _api(
            sock, "POST", f"{CLASS}/{job}/SetCustomHeaders", {"CustomHeaders": f"X-Key: {HEADER_SECRET}\r\n"}
        )
        return {"job": job, "own": _api(sock, "GET", f"{CLASS}/{job}")[1]}

    mine = as_nobody(nobody_sets_and_reads)
    job = mine["job"]
    assert mine["own"]["CustomHeaders"] == f"X-Key: {HEADER_SECRET}\r\n"  # the owner sees them
    # an administrator (root) reading nobody's job: never
    seen = [
        _api(sock, "GET", f"{CLASS}/{job}"),
        _api(sock, "GET", where),
        _api(sock, "GET", f"{where}&Where=JobId%20%3D%20'{job}'"),
    ]
    status, instance = seen[0]
    assert status == 200 and "CustomHeaders" not in instance
    for query in (
        "SELECT * FROM BitsClientJob",
        "SELECT CustomHeaders, JobId FROM BitsClientJob",
    ):
        status, rows = _api(sock, "POST", "/root/microsoft/bits/Query", {"Query": query, "AllUsers": True})
        assert status == 200 and [r["CustomHeaders"] for r in rows if r["JobId"] == job] == [None]
        seen.append((status, rows))
    status, rows = _api(
        sock,
        "POST",
        "/root/microsoft/bits/Query",
        {
            "Query": f"SELECT JobId FROM BitsClientJob WHERE CustomHeaders LIKE '%{HEADER_SECRET}%'",
            "AllUsers": True,
        },
    )
    assert (status, rows) == (200, []), "no condition finds them either"
    with Client(sock) as client:
        stream = client.events(last_event_id=0, timeout=2, all_users=True)
        events: list[Any] = []
        try:
            for event in stream:
                if isinstance(event.data, dict) and event.data.get("JobId") == job:
                    events.append(event.data)
        except TimeoutError:  # (every event there was is read)
            pass
        finally:
            stream.close()
    assert events, "the events of nobody's job were read"
    seen += events
    for text in (json.dumps(s) for s in seen):
        assert HEADER_SECRET not in text
    assert HEADER_SECRET not in system_daemon.cli("get", job, "--json").stdout


# -- backup and restore carry the key ------------------------------------------------------------


def test_backup_and_restore_carry_the_key_of_the_secrets(tmp_path: Path) -> None:
    state = tmp_path / "state"
    daemon = Daemon(state)
    daemon.start()
    try:
        job = daemon.client.create_job("kept").job_id
        daemon.client.set_credentials(job, AuthTarget.SERVER, AuthScheme.BASIC, "alice", API_PASSWORD)
        backup = tmp_path / "backup.sqlite"
        made = daemon.cli("store", "backup", str(backup), "--state-dir", str(state), check=True)
        assert f"with its key file {backup}.key" in made.stdout
        key = Path(f"{backup}.key")
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert key.read_bytes() == (state / "jobs.sqlite.key").read_bytes()
        again = daemon.cli(
            "store", "backup", str(tmp_path / "b2.sqlite"), "--state-dir", str(state), check=True
        )
        assert "key file" in again.stdout
        Path(tmp_path / "b2.sqlite").unlink()
        refused = daemon.cli("store", "backup", str(tmp_path / "b2.sqlite"), "--state-dir", str(state))
        assert refused.returncode == 1 and "b2.sqlite.key exists already" in refused.stderr
    finally:
        daemon.stop()

    def password() -> Secret | None:
        store = SqliteStore(str(state / "jobs.sqlite"))
        try:
            [loaded] = store.load_jobs()
        finally:
            store.close()
        return loaded.credentials[(AuthTarget.SERVER, AuthScheme.BASIC)].password

    # the store and its key are lost: the backup brings both back
    for path in state.glob("jobs.sqlite*"):
        path.unlink()
    restored = daemon.cli("store", "restore", str(backup), "--state-dir", str(state), "--json", check=True)
    assert json.loads(restored.stdout)["Restored"]["key_file"] == str(state / "jobs.sqlite.key")
    assert password() == Secret(API_PASSWORD)

    # a backup without its key file: the jobs come back, the secrets do not (a new key)
    os.unlink(f"{backup}.key")
    for path in state.glob("jobs.sqlite*"):
        path.unlink()
    keyless = daemon.cli("store", "restore", str(backup), "--state-dir", str(state), check=True)
    assert "the backup has no key file" in keyless.stdout
    assert password() is None
