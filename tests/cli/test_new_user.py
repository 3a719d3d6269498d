"""The `openbits` command line as a new user meets it, following only the README (issue 12,
item 8: the points the client core fixes): one name lookup for every command; a transfer
that cannot connect says why and when it tries again, and can fail fast; a transfer whose
daemon dies names its job and how to finish it; Complete says what it discarded; a failed
multi-file transfer names its URL, its progress shows the file; ``transfer URL`` saves
under the URL's name.  Each drives the CLI as a subprocess against a real daemon (on a
terminal where what is shown depends on one).
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from openbits.model import JobState
from tests.support.daemon import Daemon, reap, wait_until
from tests.support.fixtures import make_file, sha256_file
from tests.support.nginx import REFUSED_PORT, Nginx

E_INVALIDARG = 0x80070057


def run(
    daemon: Daemon, *args: str, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OPENBITS_SOCKET=daemon.socket)
    return subprocess.run(
        [sys.executable, "-m", "openbits", *args],
        input="",
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.args, result.returncode, result.stdout, result.stderr)
    return result.stdout


def spawn(daemon: Daemon, *args: str, **options: object) -> subprocess.Popen[str]:
    env = dict(os.environ, OPENBITS_SOCKET=daemon.socket)
    kwargs: dict[str, object] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    kwargs.update(options)
    return subprocess.Popen([sys.executable, "-m", "openbits", *args], env=env, **kwargs)  # type: ignore[call-overload,no-any-return]


def finished_job(daemon: Daemon, nginx: Nginx, dest: Path, name: str, file: str) -> str:
    """A job named ``name`` taken through the README's create … wait … complete."""
    make_file(nginx.www, f"newuser/{file}", 5_000, seed=len(file))
    job = ok(run(daemon, "create", name)).strip()
    ok(run(daemon, "add", job, f"{nginx.url}/newuser/{file}", str(dest / file)))
    ok(run(daemon, "resume", job))
    assert ok(run(daemon, "wait", name)).strip() == "TRANSFERRED"
    ok(run(daemon, "complete", name))
    return job


# -- a: one name lookup for every command -----------------------------------------------------


def test_wait_and_watch_find_a_name_as_every_command_does(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    """The README's nightly job run twice: the finished first one does not make the name
    ambiguous for wait, get --watch or watch --until-done; a finished name is unknown."""
    finished_job(daemon, nginx, dest, "nightly", "n1.bin")
    second = finished_job(daemon, nginx, dest, "nightly", "n2.bin")  # (wait nightly: not ambiguous)
    assert daemon.job(second)["State"] == JobState.ACKNOWLEDGED

    third = ok(run(daemon, "create", "nightly")).strip()
    ok(run(daemon, "add", third, f"{nginx.url}/newuser/n1.bin", str(dest / "n3.bin")))
    ok(run(daemon, "resume", third))
    daemon.wait_state(third, JobState.TRANSFERRED)
    ok(run(daemon, "watch", "--until-done", "nightly", timeout=30))

    watcher = spawn(daemon, "get", "--watch", "nightly")
    try:
        assert watcher.stdout is not None
        deadline = time.monotonic() + 20
        line = ""
        while not line and time.monotonic() < deadline:
            daemon.client.set_properties(third, Description=f"poke {time.monotonic()}")
            if select.select([watcher.stdout], [], [], 0.2)[0]:
                line = watcher.stdout.readline()
        assert third in line, (line, watcher.poll())
        ok(run(daemon, "complete", "nightly"))
        assert watcher.wait(timeout=20) == 0, watcher.communicate()
    finally:
        reap(watcher)

    finished_job(daemon, nginx, dest, "forgot", "f.bin")
    got = run(daemon, "get", "forgot")
    waited = run(daemon, "wait", "forgot")
    assert got.returncode == 1 and "no job forgot" in got.stderr, got.stderr
    assert (waited.returncode, waited.stdout) == (1, ""), (waited.stdout, waited.stderr)
    assert "no job forgot" in waited.stderr, waited.stderr


# -- b: a transfer that cannot connect; wait on a suspended job --------------------------------


def test_an_unreachable_server_is_said_and_can_fail_fast(daemon: Daemon, dest: Path) -> None:
    url = f"http://127.0.0.1:{REFUSED_PORT}/x.bin"
    started = time.monotonic()
    fast = run(daemon, "transfer", "--no-retry", url, str(dest / "x.bin"), timeout=30)
    assert fast.returncode == 1, (fast.stdout, fast.stderr)
    assert time.monotonic() - started < 20
    assert "TRANSIENT_ERROR" in fast.stderr and "Connection refused" in fast.stderr, fast.stderr
    assert "--no-retry" in fast.stderr and "cancelled" in fast.stderr, fast.stderr
    assert daemon.client.list_jobs() == []

    waited = run(daemon, "transfer", "--timeout", "4", url, str(dest / "x.bin"), timeout=30)
    assert waited.returncode == 1, (waited.stdout, waited.stderr)
    lines = waited.stderr.splitlines()
    assert any("Connection refused" in ln and "next try at" in ln for ln in lines), waited.stderr
    assert "timed out" in waited.stderr, waited.stderr
    assert daemon.client.list_jobs() == [] and list(dest.iterdir()) == []


def test_wait_on_a_suspended_job_says_it_waits_for_a_resume(daemon: Daemon) -> None:
    job = ok(run(daemon, "create", "parked")).strip()
    result = run(daemon, "wait", "parked", "--timeout", "2")
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert f"{job} is SUSPENDED" in result.stderr and f"openbits resume {job}" in result.stderr, result.stderr


# -- c: the daemon dies during a transfer ------------------------------------------------------


def test_a_transfer_whose_daemon_dies_names_its_job_and_how_to_finish(
    tmp_path: Path, nginx: Nginx, dest: Path
) -> None:
    slow = Daemon(tmp_path / "slow-state", config={"bandwidth_limit": "32k"})
    slow.start()
    try:
        make_file(nginx.www, "newuser/slow.bin", 2_000_000, seed=7)
        proc = spawn(slow, "transfer", "-p", "low", f"{nginx.url}/newuser/slow.bin", str(dest / "slow.bin"))
        try:
            jobs = wait_until(lambda: slow.client.list_jobs(), 20, "the transfer's job")
            assert [j.display_name for j in jobs] == ["slow.bin"]  # named after its file
            job = jobs[0].job_id
            slow.wait_state(job, JobState.TRANSFERRING)
            slow.kill()
            _, err = proc.communicate(timeout=90)
        finally:
            reap(proc)
        assert proc.returncode == 3, err
        assert f"openbits complete {job}" in err, err
    finally:
        if slow.proc is not None and slow.proc.poll() is None:
            slow.stop()


# -- d: complete of a job that is not transferred ------------------------------------------------


def test_a_partial_complete_names_what_it_discarded(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    make_file(nginx.www, "newuser/p.bin", 1_000, seed=3)
    job = ok(run(daemon, "create", "partial")).strip()
    ok(run(daemon, "add", job, f"{nginx.url}/newuser/p.bin", str(dest / "p.bin")))
    result = run(daemon, "complete", job)
    assert result.returncode == 0, result.stderr
    assert "BG_S_PARTIAL_COMPLETE" in result.stdout
    assert f"discarded (not transferred): {dest / 'p.bin'}" in result.stderr, result.stderr


# -- e: a failed multi-file transfer; its progress -------------------------------------------------


def test_a_failed_multi_file_transfer_names_the_url(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    make_file(nginx.www, "newuser/good.bin", 10_000, seed=5)
    missing = f"{nginx.url}/newuser/missing.bin"
    result = run(daemon, "transfer", f"{nginx.url}/newuser/good.bin", missing, str(dest))
    assert result.returncode == 1, result.stderr
    assert "BG_E_HTTP_ERROR_404" in result.stderr and missing in result.stderr, result.stderr
    assert daemon.client.list_jobs() == [] and list(dest.iterdir()) == []


def test_transfer_progress_shows_the_file_and_the_count_on_a_terminal(
    tmp_path: Path, nginx: Nginx, dest: Path
) -> None:
    slow = Daemon(tmp_path / "slow-state", config={"bandwidth_limit": "128k"})
    slow.start()
    try:
        for name in ("first.bin", "second.bin"):
            make_file(nginx.www, f"newuser/{name}", 150_000, seed=len(name))
        urls = [f"{nginx.url}/newuser/{n}" for n in ("first.bin", "second.bin")]
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
        proc = spawn(slow, "transfer", "-p", "low", *urls, str(dest), stderr=slave)
        os.close(slave)
        seen = b""
        try:
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline:
                if select.select([master], [], [], 0.2)[0]:
                    try:
                        seen += os.read(master, 65536)
                    except OSError:
                        break
            assert proc.wait(timeout=30) == 0, seen
        finally:
            os.close(master)
            reap(proc)
        assert b"TRANSFERRING    1/2 first.bin" in seen, seen[-2000:]  # the file, its count
        assert b"ACKNOWLEDGED    2 files" in seen, seen[-2000:]
    finally:
        slow.stop()


# -- f: transfer URL without DEST ------------------------------------------------------------------


def test_transfer_without_dest_saves_under_the_url_name(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    digest = make_file(nginx.www, "newuser/named.bin", 20_000, seed=9)
    ok(run(daemon, "transfer", f"{nginx.url}/newuser/named.bin?x=1", cwd=dest))
    assert sha256_file(dest / "named.bin") == digest

    nameless = run(daemon, "transfer", f"{nginx.url}/", cwd=dest)
    assert nameless.returncode == 2 and "no file name" in nameless.stderr, nameless.stderr
    assert sorted(p.name for p in dest.iterdir()) == ["named.bin"]
