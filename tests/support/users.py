"""Two real Unix users on one root (system) daemon: the fixture and the ways to act as them.

``site`` (or ``open_site`` for a daemon of another configuration) creates two users
(``useradd`` with homes in a temporary directory; ``userdel`` at the end) and an
administrators' group, and runs a root daemon with a 0666 socket.  A test acts as each user
from forked children that take the user's ids (``as_user``: the daemon learns who calls
from SO_PEERCRED) or through the CLI under ``setpriv``.  Used by
tests/integration/test_isolation.py and test_cert_isolation.py.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import CLASS, Daemon, UnixHTTP

#: what a test module of two real users is marked with
NEEDS_TWO_USERS = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None,
    reason="needs root and useradd to create two real Unix users",
)


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: Path


def run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


def run_as(uid: int, gid: int, groups: list[int], fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a forked child with these ids and groups; its JSON-able result."""
    reader, writer = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            writer.sendall(json.dumps({"ok": fn()}).encode())
        except BaseException as e:  # report everything to the parent
            writer.sendall(json.dumps({"error": repr(e)}).encode())
        finally:
            os._exit(0)
    writer.close()
    chunks = []
    while data := reader.recv(65536):
        chunks.append(data)
    reader.close()
    os.waitpid(pid, 0)
    result = json.loads(b"".join(chunks))
    if "error" in result:
        raise AssertionError(f"child failed: {result['error']}")
    return result["ok"]


def as_user(user: User, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a forked child with ``user``'s ids and groups; its JSON-able result."""
    return run_as(user.uid, user.gid, os.getgrouplist(user.name, user.gid), fn)


def as_nobody(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a forked child as ``nobody`` (no supplementary groups)."""
    nobody = pwd.getpwnam("nobody")
    return run_as(nobody.pw_uid, nobody.pw_gid, [], fn)


def setpriv(user: User) -> list[str]:
    return ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups"]


def api(sock: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    conn = UnixHTTP(sock)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body).encode())
        resp = conn.getresponse()
        payload = resp.read()
    finally:
        conn.close()
    return resp.status, json.loads(payload) if payload else None


@dataclass
class Site:
    daemon: Daemon
    alice: User
    bob: User
    admins: str
    scratch: Path

    @property
    def sock(self) -> str:
        return self.daemon.socket

    def call(self, user: User, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        sock = self.sock
        return tuple(as_user(user, lambda: list(api(sock, method, path, body))))  # type: ignore[return-value]

    def new_job(self, user: User, remote: str | None = None, local: Path | None = None) -> str:
        """A job of ``user``, with one file (not resumed) when given."""
        status, body = self.call(user, "POST", f"{CLASS}/CreateJob", {"DisplayName": "iso"})
        assert status == 200, body
        job = str(body["JobId"])
        if remote is not None and local is not None:
            status, body = self.add(user, job, remote, local)
            assert status == 200, body
        return job

    def add(self, user: User, job: str, remote: str, local: Path) -> tuple[int, Any]:
        return self.call(
            user, "POST", f"{CLASS}/{job}/AddFile", {"RemoteUrl": remote, "LocalFile": str(local)}
        )

    def resume(self, user: User, job: str) -> None:
        status, body = self.call(user, "POST", f"{CLASS}/{job}/SetJobState", {"JobState": 2})
        assert status == 200, body

    def error_of(self, job: str) -> tuple[int, int]:
        err = self.daemon.client.get_error(job)
        return err.hresult, int(err.context)


#: the uids and gids of the users and groups the tests make: a range for each pytest-xdist
#: worker (``free_id``).  Left to choose, useradd and groupadd take the highest id in use plus
#: one: the id of a user another worker's test has just deleted (test_isolation removes bob
#: while his helper runs), whose "vanished" owner would then exist again as someone else.
ID_BASE = 200_000
IDS_PER_WORKER = 10_000


def free_id() -> int:
    """An id that no user and no group has, from this worker's range; drawn at random, so
    that one an earlier test of the worker freed is not handed out again at once."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    low = ID_BASE + (int(worker) if worker.isdigit() else 0) * IDS_PER_WORKER
    for _ in range(100):
        n = low + secrets.randbelow(IDS_PER_WORKER)
        if not _id_taken(n):
            return n
    raise RuntimeError(f"no free uid and gid in {low}..{low + IDS_PER_WORKER - 1}")


def _id_taken(n: int) -> bool:
    try:
        pwd.getpwuid(n)
    except KeyError:
        pass
    else:
        return True
    try:
        grp.getgrgid(n)
    except KeyError:
        return False
    return True


def make_user(name: str, homes: Path) -> User:
    """A user ``name`` with a group of the same name and id (``free_id``), his home in
    ``homes``."""
    home = homes / name
    n = free_id()
    run("groupadd", "--gid", str(n), name)
    try:
        run(
            "useradd",
            "--create-home",
            "--home-dir",
            str(home),
            "--shell",
            "/usr/sbin/nologin",
            "--uid",
            str(n),
            "--gid",
            name,
            name,
        )
    except BaseException:
        subprocess.run(["groupdel", name], capture_output=True, check=False)
        raise
    pw = pwd.getpwnam(name)
    home.chmod(0o755)  # (others may reach it; only its owner may write)
    return User(name, pw.pw_uid, pw.pw_gid, home)


@contextlib.contextmanager
def open_site(
    state_dir: Path, config: dict[str, Any] | None = None, env: dict[str, str] | None = None
) -> Iterator[Site]:
    """Two new users, an administrators' group and a root daemon (``config`` and ``env``
    added to its own), all removed at the end."""
    scratch = Path(tempfile.mkdtemp(prefix="openbits-iso-", dir="/tmp"))
    scratch.chmod(0o755)
    tag = secrets.token_hex(3)
    names = [f"obiso{tag}a", f"obiso{tag}b"]
    admins = f"obiso{tag}adm"
    made: list[str] = []
    daemon: Daemon | None = None
    try:
        run("groupadd", "--gid", str(free_id()), admins)
        users = []
        for name in names:
            users.append(make_user(name, scratch))
            made.append(name)
        sockets = scratch / "run"
        sockets.mkdir(mode=0o755)
        daemon = Daemon(
            state_dir,
            config={"socket_mode": 0o666, "admin_group": admins, **(config or {})},
            socket=str(sockets / "openbits.sock"),
            env=env,
        )
        daemon.start()
        yield Site(daemon, users[0], users[1], admins, scratch)
    finally:
        try:
            if daemon is not None:
                daemon.stop()
        finally:  # (the users go even when the daemon would not stop)
            remove_users(made, admins, scratch)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    with open_site(tmp_path / "state") as opened:
        yield opened


def remove_users(made: list[str], admins: str, scratch: Path) -> None:
    """userdel and the users' groups, the administrators' group, the homes."""
    for name in made:
        subprocess.run(["userdel", "--force", name], capture_output=True, check=False)
        subprocess.run(["groupdel", name], capture_output=True, check=False)  # (if userdel left it)
    subprocess.run(["groupdel", admins], capture_output=True, check=False)
    shutil.rmtree(scratch, ignore_errors=True)
