"""The CLIs as a new user meets them (issue 12, item 8): what they print, as subprocesses
against a real daemon, on a pipe or a terminal as each point needs.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, start_listening
from tests.support.fixtures import make_file
from tests.support.nginx import Nginx

ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


def on_tty(daemon: Daemon, *args: str, columns: int = 100, timeout: float = 60.0) -> tuple[int, str]:
    """``openbits ARGS`` on a pseudo-terminal ``columns`` wide: its exit status and what the
    screen received, escape sequences removed."""
    env = dict(os.environ, OPENBITS_SOCKET=daemon.socket, COLUMNS=str(columns), LINES="40", TERM="xterm")
    pid, fd = pty.fork()
    if pid == 0:
        os.execvpe(sys.executable, [sys.executable, "-m", "openbits", *args], env)
    screen = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the command ended and closed the terminal
                break
            if not chunk:
                break
            screen += chunk
        else:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    return os.waitstatus_to_exitcode(status), ANSI.sub(b"", screen).decode(errors="replace")


def run_into_closed_pipe(daemon: Daemon, module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``… | head -0``, deterministically: stdout is a pipe whose reader has already gone."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", module, *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, OPENBITS_SOCKET=daemon.socket),
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)


# -- a closed stdout is not a daemon failure ---------------------------------------------------


def test_a_reader_that_went_away_ends_the_command_quietly(daemon: Daemon) -> None:
    daemon.cli("create", "piped", check=True)
    for module, args in (
        ("openbits", ("get",)),
        ("openbits", ("get", "piped")),
        ("openbits", ("get", "--json")),
        ("openbits.cli.bitsadmin", ("/list",)),
    ):
        result = run_into_closed_pipe(daemon, module, *args)
        # as `cat | head` ends: SIGPIPE's status for the shell, and not a word on stderr
        assert (result.returncode, result.stderr) == (141, ""), (module, args, result)


# -- bash completion keeps a display name one word ---------------------------------------------


class Terminal:
    """An interactive bash on a pseudo-terminal: what a user types, what the screen shows."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.screen = b""

    def type(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def read_until(self, marker: bytes, timeout: float = 15.0) -> bytes:
        """Everything shown until ``marker`` (from the last read on); fail after ``timeout`` s."""
        start = len(self.screen)
        deadline = time.monotonic() + timeout
        while marker not in self.screen[start:]:
            if time.monotonic() >= deadline:
                raise AssertionError(f"no {marker!r} on the terminal: {self.screen[start:]!r}")
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if ready:
                self.screen += os.read(self.fd, 4096)
        return self.screen[start:]


@contextmanager
def interactive_bash(daemon: Daemon) -> Iterator[Terminal]:
    bin_dir = os.path.dirname(sys.executable)
    env = dict(
        os.environ,
        OPENBITS_SOCKET=daemon.socket,
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        PS1="$ ",
        TERM="dumb",
        INPUTRC=os.devnull,
    )
    pid, fd = pty.fork()
    if pid == 0:  # the child: a fresh bash, no start-up files
        os.execvpe("bash", ["bash", "--norc", "--noprofile", "-i"], env)
    try:
        yield Terminal(fd)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(fd)


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
@pytest.mark.parametrize("typed", ["my", "my\\ j", '"my', "'my"])
def test_bash_completion_keeps_a_name_with_a_space_one_word(daemon: Daemon, typed: str) -> None:
    daemon.cli("create", "my job", check=True)
    daemon.cli("create", "other", check=True)
    with interactive_bash(daemon) as term:
        term.type('eval "$(openbits completion bash)"; echo READY\n')
        term.read_until(b"READY\r\n$ ")
        term.type(f"openbits get {typed}\t")  # Tab completes the name...
        term.read_until(b"job")
        # ...then, at the start of the line, a printf shows the words the shell would pass
        term.type("\x01printf '[%s]' \n")
        shown = term.read_until(b"]$ ")
    assert b"[openbits][get][my job]" in shown, shown


# -- one unit (IEC) and one label a concept ---------------------------------------------------


def test_transfer_get_and_policy_speak_one_unit_and_one_label(daemon: Daemon, tmp_path: Path) -> None:
    make_file(tmp_path, "src.bin", 3_300_000)
    source = tmp_path / "src.bin"
    code, screen = on_tty(daemon, "transfer", str(source), str(tmp_path / "copy.bin"))
    assert code == 0, screen
    assert "3.1/3.1 MiB" in screen and " MB" not in screen, screen

    job = daemon.cli("create", "labels", check=True).stdout.strip()
    daemon.cli("add", job, str(source), str(tmp_path / "second.bin"), check=True)
    shown = daemon.cli("get", job, check=True).stdout
    assert re.search(r"^Priority +NORMAL$", shown, re.M), shown  # as the list prints it
    assert re.search(r"^Bytes +0 B of \?$", shown, re.M), shown
    listed = daemon.cli("get", check=True).stdout
    assert "NORMAL" in listed and "0 B / ?" in listed, listed

    policy = daemon.cli("policy", check=True).stdout
    assert "CurrentBandwidthLimit " in policy and "CurrentBandwidthLimitText" not in policy, policy
    assert "B/s (" not in policy, policy  # one unit for a rate too
    assert json.loads(daemon.cli("policy", "--json", check=True).stdout)["CurrentBandwidthLimitText"] == "off"


# -- WQL: a state by its name, a literal of the wrong type refused ------------------------------


def test_query_takes_state_names_and_refuses_a_literal_of_the_wrong_type(daemon: Daemon) -> None:
    job = daemon.cli("create", "suspended one", check=True).stdout.strip()
    found = daemon.cli(
        "query", "SELECT JobId FROM BitsClientJob WHERE State = 'SUSPENDED' AND Priority = 'normal'", "--json"
    )
    assert (found.returncode, json.loads(found.stdout)) == (0, [{"JobId": job}]), found

    for condition in ("State = 'SUSPENDD'", "BytesTotal > 'big'", "DisplayName = 5"):
        refused = daemon.cli("query", f"SELECT JobId FROM BitsClientJob WHERE {condition}")
        assert refused.returncode == 1 and refused.stdout == "", (condition, refused)
        assert "0x80070057 E_INVALIDARG" in refused.stderr, (condition, refused)


# -- an empty answer says so ------------------------------------------------------------------


def test_empty_answers_say_so_and_json_stays_parseable(tmp_path: Path) -> None:
    daemon, _ = start_listening(tmp_path / "state")
    try:
        assert daemon.cli("get", check=True).stdout == "no jobs\n"
        assert daemon.cli("get", "--where", "DisplayName = 'x'", check=True).stdout == "no jobs match\n"
        assert json.loads(daemon.cli("get", "--json", check=True).stdout) == []
        assert (
            daemon.cli("query", "SELECT JobId FROM BitsClientJob", check=True).stdout
            == "no instances match\n"
        )

        job = daemon.cli("create", "fresh", check=True).stdout.strip()
        daemon.cli("add", job, str(tmp_path / "nowhere.bin"), str(tmp_path / "copy.bin"), check=True)
        assert daemon.cli("headers", job, check=True).stdout == "no response received yet\n"
        assert json.loads(daemon.cli("headers", job, "--json", check=True).stdout)["ResponseHeaders"] is None

        assert daemon.cli("token", "list", check=True).stdout == "no tokens\n"
        daemon.cli("token", "create", "--description", "backup server", check=True)
        header, row = daemon.cli("token", "list", check=True).stdout.splitlines()
        assert header.split() == ["TOKENID", "OWNER", "SCOPE", "CREATED", "EXPIRES", "DESCRIPTION"], header
        assert row.endswith("backup server"), row
    finally:
        daemon.stop()


# -- bitsadmin's spellings, and a bandwidth that is no bandwidth ------------------------------


def test_proxy_takes_bitsadmin_spellings(daemon: Daemon) -> None:
    job = daemon.cli("create", "proxied", check=True).stdout.strip()
    for args in (
        ("NO_PROXY",),
        ("PreConfig",),
        ("AUTODETECT",),
        ("OVERRIDE", "--list", "http://proxy:3128"),
        ("no-proxy",),
    ):
        result = daemon.cli("proxy", job, *args)
        # handed to the daemon (which may not have SetProxySettings yet), not refused as usage
        assert result.returncode != 2 and "Invalid value" not in result.stderr, (args, result)
    assert daemon.cli("proxy", job, "NO_PROXYX").returncode == 2
    cert = daemon.cli("cert", job, "--store-location", "LOCAL_MACHINE", "--subject", "me")
    assert cert.returncode != 2 and "Invalid value" not in cert.stderr, cert


def test_a_bandwidth_that_is_no_bandwidth_is_called_so(daemon: Daemon) -> None:
    result = daemon.cli("policy", "set", "MaxBandwidth=banana")
    assert result.returncode == 1 and "0x80070057" in result.stderr, result
    assert "'banana' is not a bandwidth" in result.stderr and "timetable" not in result.stderr, result
    assert "512K, 10M or 1.5G" in result.stderr, result  # the forms it takes
    assert "timetable" in daemon.cli("policy", "set", "BandwidthSchedule=banana").stderr  # that one is


# -- the docs say what the commands do ---------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


def test_help_and_readmes_say_what_the_commands_do(daemon: Daemon) -> None:
    usage = daemon.cli("get", "--help", check=True).stdout.splitlines()[0]
    assert usage == "Usage: openbits get [OPTIONS] [JOB]", usage  # JOB is optional: a list

    # query prints exactly what was selected, and its help says so
    query_help = daemon.cli("query", "--help", check=True).stdout
    assert "JobId always comes along" not in query_help and "Exactly the selected" in query_help
    daemon.cli("create", "documented", check=True)
    rows = json.loads(
        daemon.cli("query", "SELECT DisplayName FROM BitsClientJob", "--json", check=True).stdout
    )
    assert rows == [{"DisplayName": "documented"}]

    # take-ownership works: neither its help nor the README says E_NOTIMPL of it
    assert "E_NOTIMPL" not in daemon.cli("take-ownership", "--help", check=True).stdout
    readme = (ROOT / "README.md").read_text()
    # credentials, proxy and cert are built too: no sentence says any of them answers E_NOTIMPL
    not_built = [s for s in re.split(r"(?<=\.)\s", readme) if "E_NOTIMPL" in s]
    for command in ("take-ownership", "`proxy`", "`credentials", "`cert`"):
        assert all(command not in s for s in not_built), not_built

    # bench/README's table lists every script in bench/, and counts them right
    bench = (ROOT / "bench" / "README.md").read_text()
    scripts = sorted(p.name for p in (ROOT / "bench").glob("*.py") if p.name != "common.py")
    listed = sorted(re.findall(r"^\| `([a-z_0-9]+\.py)` \|", bench, re.M))
    assert listed == scripts
    words = {3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}
    words |= {10: "ten", 11: "eleven", 12: "twelve", 13: "thirteen", 14: "fourteen"}
    assert f"All {words[len(scripts)]} run" in bench


# -- watch: readable at 80 and 120 columns, with a rate and a time left ------------------------

RATE_AND_ETA = re.compile(r"\d+(\.\d)? [KM]iB/s +\d+(s|m\d\ds)\s*$", re.M)


def watch_frame(daemon: Daemon, columns: int) -> list[str]:
    """The last table `openbits watch` drew on a terminal ``columns`` wide, once a job shows
    a rate and a time left (then Ctrl-C), as lines without escape sequences."""
    env = dict(os.environ, OPENBITS_SOCKET=daemon.socket, COLUMNS=str(columns), LINES="40", TERM="xterm")
    pid, fd = pty.fork()
    if pid == 0:
        os.execvpe(sys.executable, [sys.executable, "-m", "openbits", "watch"], env)
    term = Terminal(fd)
    try:
        deadline = time.monotonic() + 30
        while not RATE_AND_ETA.search(ANSI.sub(b"", term.screen).decode(errors="replace")):
            assert time.monotonic() < deadline, ANSI.sub(b"", term.screen).decode(errors="replace")[-3000:]
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                term.screen += os.read(fd, 65536)
        os.kill(pid, signal.SIGINT)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 130
    finally:
        os.close(fd)
    screen = ANSI.sub(b"", term.screen).decode(errors="replace").replace("\r", "")
    return screen.rsplit("openbits watch  ", 1)[1].splitlines()[1:]


def test_watch_is_readable_at_80_and_120_columns(daemon: Daemon, nginx: Nginx, tmp_path: Path) -> None:
    make_file(nginx.www, "watched.bin", 16 * 1024 * 1024)
    others = [daemon.cli("create", f"queued {i}", check=True).stdout.strip() for i in range(3)]
    job = daemon.cli("create", "weekly backup", check=True).stdout.strip()
    daemon.cli("add", job, f"{nginx.url}/slow/watched.bin", str(tmp_path / "watched.copy"), check=True)
    daemon.cli("resume", job, check=True)
    try:
        for columns in (80, 120):
            lines = watch_frame(daemon, columns)
            assert all(len(line) <= columns for line in lines), "\n".join(lines)
            header = lines[0].split()
            expected = ["ID", "NAME", "STATE", "PRIORITY", "FILES", "BYTES", "RATE", "ETA"]
            assert [h for h in header if h != "PROGRESS"] == expected, lines[0]
            assert ("PROGRESS" in header) is (columns >= 110), lines[0]
            row = next(line for line in lines if "weekly backup" in line)
            short = job.strip("{}")[:8]
            assert row.startswith(short + " ") and job not in row, row  # a short id, unique
            assert re.search(r"TRANSFERRING +NORMAL +0/1 ", row), row
            assert re.search(r"\d+\.\d/16\.0 MiB", row) and RATE_AND_ETA.search(row), row
            for other in others:
                assert any(line.startswith(other.strip("{}")[:8]) for line in lines), (other, lines)
    finally:
        daemon.cli("cancel", job)
