"""The whole `openbits` command line (issue 4, item 6): every verb, `--json` everywhere,
`watch`, shell completion and the man-page help, as subprocesses against a real daemon and
a real nginx.

SPEC §4 (the CLI verbs) and §6 (exit codes: 0, 1 with the HRESULT and its name, 2 usage,
3 no daemon, 130 interrupted); bits-spec §7.1/§7.2 (bitsadmin's file-set and range syntax,
the BitsTransfer cmdlets).
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import pytest

from openbits.cli.openbits import cli
from openbits.model import JobState
from tests.support.daemon import CLASS, Daemon, reap, wait_until
from tests.support.fixtures import make_file, sha256_file
from tests.support.nginx import Nginx

E_NOTIMPL = 0x80004001
E_INVALIDARG = 0x80070057


def run(
    daemon: Daemon | None,
    *args: str,
    stdin: str | None = None,
    cwd: Path | None = None,
    socket_path: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """``python -m openbits ARGS`` with OPENBITS_SOCKET set, optional stdin and directory."""
    env = dict(os.environ)
    env["OPENBITS_SOCKET"] = socket_path or (daemon.socket if daemon else "/nonexistent/openbits.sock")
    return subprocess.run(
        [sys.executable, "-m", "openbits", *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (
        f"{result.args[3:]} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result))


def exits(result: subprocess.CompletedProcess[str], code: int) -> subprocess.CompletedProcess[str]:
    assert result.returncode == code, (
        f"{result.args[3:]}: expected exit {code}, got {result.returncode}\n{result.stdout}\n{result.stderr}"
    )
    return result


def failed(result: subprocess.CompletedProcess[str], hresult: int, name: str) -> None:
    exits(result, 1)
    assert f"0x{hresult:08x}" in result.stderr.lower(), result.stderr
    assert name in result.stderr, result.stderr


def spawn(daemon: Daemon, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
    env = dict(os.environ, OPENBITS_SOCKET=daemon.socket)
    env.update(kwargs.pop("env", {}))
    options: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    options.update(kwargs)
    return subprocess.Popen([sys.executable, "-m", "openbits", *args], env=env, **options)


def first_line_while(proc: subprocess.Popen[str], poke: Callable[[], None], timeout: float = 20) -> str:
    """Poke the daemon until the subprocess prints its first line (it is subscribed then)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        poke()
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            return proc.stdout.readline()
    proc.kill()
    raise AssertionError(f"no output from {proc.args}: {proc.communicate()}")


def new_job(daemon: Daemon, name: str) -> str:
    return str(ok_json(run(daemon, "create", name, "--json"))["JobId"])


def job_files(daemon: Daemon, job: str) -> list[dict[str, Any]]:
    listed = ok_json(run(daemon, "files", job, "--json"))
    assert isinstance(listed, list)
    return listed


# -- help, usage, completion, version -----------------------------------------------------------------


def test_help_reads_like_a_man_page() -> None:
    out = ok(run(None, "--help"))
    for section in (
        "JOB COMMANDS",
        "FILE COMMANDS",
        "TRANSFER COMMANDS",
        "WATCH AND QUERY",
        "DAEMON AND SHELL",
        "EXIT STATUS",
        "ENVIRONMENT",
        "FILES",
        "EXAMPLES",
        "SEE ALSO",
    ):
        assert f"\n{section}\n" in out, section
    for variable in ("OPENBITS_SOCKET", "XDG_RUNTIME_DIR", "XDG_STATE_HOME"):
        assert variable in out
    exit_status = out.split("\nEXIT STATUS\n")[1].split("\n\n")[0]
    for code in ("0", "1", "2", "3", "130"):
        assert f"\n  {code} " in "\n" + exit_status, exit_status
    for name in cli.list_commands(click.Context(cli)):  # every command is listed
        assert f"\n  {name} " in out, name
    assert ok(run(None, "-h")) == out

    # each command: a one-line summary, a paragraph, an example
    root = click.Context(cli, info_name="openbits")
    for name in cli.list_commands(root):
        command = cli.get_command(root, name)
        assert command is not None
        text = command.get_help(click.Context(command, info_name=name, parent=root))
        summary = command.get_short_help_str(limit=200)
        assert summary and not summary.endswith("..."), (name, summary)
        assert "Example" in text and f"openbits {name.split()[0]}" in text, (name, text)
        paragraphs = [p for p in text.split("\n\n") if p.strip()]
        assert len(paragraphs) >= 4, (name, text)  # usage, summary, paragraph, example (+ options)


def test_bad_usage_exits_2(daemon: Daemon) -> None:
    result = exits(run(daemon, "frobnicate"), 2)
    assert "No such command" in result.stderr
    exits(run(daemon, "get", "--no-such-option"), 2)
    exits(run(daemon, "add"), 2)
    job = new_job(daemon, "usage")
    exits(run(daemon, "add-ranges", job, "http://127.0.0.1:9/x", "/tmp/x", "10-20"), 2)
    exits(run(daemon, "add-ranges", job, "http://127.0.0.1:9/x", "/tmp/x", "-1:5"), 2)
    exits(run(daemon, "add-set", job, "-", stdin="http://127.0.0.1:9/x\n"), 2)  # no DEST
    exits(run(daemon, "add-set", job, "-", stdin="# nothing but a comment\n"), 2)
    exits(run(daemon, "add-set", job, "/nonexistent/list.txt"), 2)
    exits(run(daemon, "proxy", job, "no-proxy", "--list", "http://p:3128"), 2)
    exits(run(daemon, "proxy", job, "sideways"), 2)
    exits(run(daemon, "cert", job), 2)
    exits(run(daemon, "cert", job, "--hash", "zz"), 2)
    exits(run(daemon, "policy", "set", "MaxBandwidth"), 2)
    exits(run(daemon, "completion", "tcsh"), 2)
    exits(run(daemon, "set", job), 2)
    assert job_files(daemon, job) == []  # nothing reached the job


def test_new_commands_without_a_daemon_exit_3(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere.sock")
    guid = "{00000000-0000-0000-0000-000000000000}"
    for args in (
        ("files", guid),
        ("headers", guid, "--file", "/tmp/x"),
        ("policy",),
        ("policy", "set", "MaxBandwidth=1M"),
        ("watch",),
        ("add-set", guid, "-"),
        ("replace-prefix", guid, "http://a/", "http://b/"),
        ("take-ownership", guid),
        ("query", "SELECT * FROM BitsClientJob"),
        ("upload", "/tmp/x", "http://h/x"),
        ("reply", guid),
        ("reply", guid, "--data"),
    ):
        result = run(None, *args, socket_path=missing, stdin="http://h/x /tmp/x\n")
        exits(result, 3)
        assert "openbits serve" in result.stderr, (args, result.stderr)
    # --socket after the command wins over OPENBITS_SOCKET
    exits(run(None, "files", guid, "--socket", missing), 3)


def test_completion_scripts_and_completing_jobs(daemon: Daemon) -> None:
    bash = ok(run(None, "completion", "bash"))
    assert "_OPENBITS_COMPLETE" in bash and "complete " in bash
    assert "_OPENBITS_COMPLETE" in ok(run(None, "completion", "zsh"))
    assert "_OPENBITS_COMPLETE" in ok(run(None, "completion", "fish"))

    def complete(words: str) -> list[str]:
        env = dict(
            os.environ,
            OPENBITS_SOCKET=daemon.socket,
            _OPENBITS_COMPLETE="bash_complete",
            COMP_WORDS=words,
            COMP_CWORD=str(len(words.split()) - (0 if words.endswith(" ") else 1)),
        )
        out = subprocess.run(
            [sys.executable, "-m", "openbits"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        return [line.split(",", 1)[1] for line in out.splitlines()]

    assert {"add", "add-set", "add-ranges"} <= set(complete("openbits add"))
    assert "--all-users" in complete("openbits watch --")
    assert set(complete("openbits proxy JOB ")) == {"preconfig", "no-proxy", "override", "autodetect"}
    job = new_job(daemon, "nightly-completed")
    assert complete("openbits resume night") == ["nightly-completed"]
    assert job in complete("openbits files {")


def test_version(daemon: Daemon) -> None:
    assert ok(run(None, "version")).strip() == "openbits 0.1.0 (no daemon answers)"
    assert ok_json(run(None, "version", "--json")) == {"Version": "0.1.0", "DaemonVersion": None}
    assert ok(run(daemon, "version")).strip() == "openbits 0.1.0 (daemon 0.1.0)"
    assert ok_json(run(daemon, "version", "--json")) == {"Version": "0.1.0", "DaemonVersion": "0.1.0"}
    assert ok(run(None, "--version")).strip() == "openbits 0.1.0"


# -- jobs and their answers as JSON ------------------------------------------------------------------


def test_state_commands_answer_json(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    make_file(nginx.www, "verbs/state.bin", 20_000, seed=601)
    created = ok_json(run(daemon, "create", "states", "--json"))
    job = created["JobId"]
    assert created["ReturnValue"] == 0
    assert ok(run(daemon, "create", "plain")).strip().startswith("{")  # without --json: the JobId alone

    assert ok_json(
        run(daemon, "add", job, f"{nginx.url}/verbs/state.bin", str(dest / "s.bin"), "--json")
    ) == {"ReturnValue": 0}
    assert ok(run(daemon, "add", "states", f"{nginx.url}/verbs/state.bin", str(dest / "t.bin"))) == ""
    assert ok_json(run(daemon, "suspend", job, "--json")) == {"ReturnValue": 0}
    assert ok_json(run(daemon, "resume", job, "--json")) == {"ReturnValue": 0}
    final = ok_json(run(daemon, "wait", job, "--json"))
    assert (final["JobId"], final["State"]) == (job, 6)
    assert ok_json(run(daemon, "complete", job, "--json")) == {"ReturnValue": 0}
    assert (dest / "s.bin").exists() and (dest / "t.bin").exists()

    other = new_job(daemon, "to cancel")
    assert ok_json(run(daemon, "cancel", other, "--json")) == {"ReturnValue": 0}
    failed(run(daemon, "cancel", other, "--json"), 0x80200001, "BG_E_NOT_FOUND")

    listed = ok_json(run(daemon, "get", "--json", "--where", "DisplayName = 'plain'"))
    assert [j["DisplayName"] for j in listed] == ["plain"]
    rows = ok_json(run(daemon, "query", "SELECT DisplayName FROM BitsClientJob", "--json"))
    assert [r["DisplayName"] for r in rows] == ["plain"]


def test_transfer_json_prints_the_final_instance(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    digest = make_file(nginx.www, "verbs/transfer.bin", 70_000, seed=602)
    final = ok_json(run(daemon, "transfer", f"{nginx.url}/verbs/transfer.bin", str(dest / "x.bin"), "--json"))
    assert final["State"] == JobState.ACKNOWLEDGED and final["BytesTransferred"] == 70_000
    assert sha256_file(dest / "x.bin") == digest
    started = ok_json(
        run(daemon, "transfer", "--async", "--json", f"{nginx.url}/verbs/transfer.bin", str(dest / "y.bin"))
    )
    daemon.wait_state(started["JobId"], JobState.TRANSFERRED)
    ok(run(daemon, "complete", started["JobId"]))


# -- files ----------------------------------------------------------------------------------------


def test_add_set_from_a_file_and_from_stdin(daemon: Daemon, nginx: Nginx, dest: Path, tmp_path: Path) -> None:
    digests = {
        n: make_file(nginx.www, f"verbs/set/{n}.bin", 5_000 + i, seed=610 + i) for i, n in enumerate("abcd")
    }
    (dest / "sub dir").mkdir()
    listing = tmp_path / "files.txt"
    listing.write_text(
        "# a bitsadmin /addfileset list: URL DEST a line\n"
        "\n"
        f"{nginx.url}/verbs/set/a.bin a.bin\n"
        f"   {nginx.url}/verbs/set/b.bin   'sub dir/b.bin'   \n"
    )
    job = new_job(daemon, "file set")
    assert ok_json(run(daemon, "add-set", job, str(listing), "--json", cwd=dest)) == {"ReturnValue": 0}
    stdin = f"{nginx.url}/verbs/set/c.bin {dest}/c.bin\n{nginx.url}/verbs/set/d.bin {dest}/d.bin\n"
    assert ok(run(daemon, "add-set", "file set", "-", stdin=stdin)) == ""
    assert [f["LocalFile"] for f in job_files(daemon, job)] == [
        str(dest.resolve() / "a.bin"),
        str(dest.resolve() / "sub dir" / "b.bin"),
        str(dest / "c.bin"),
        str(dest / "d.bin"),
    ]

    # all or none: a refused file adds nothing, nor does a malformed line
    bad = f"{nginx.url}/verbs/set/a.bin {dest}/e.bin\nftp://127.0.0.1/x.bin {dest}/f.bin\n"
    failed(run(daemon, "add-set", job, "-", stdin=bad), E_INVALIDARG, "E_INVALIDARG")
    exits(run(daemon, "add-set", job, "-", stdin=f"{nginx.url}/verbs/set/a.bin {dest}/e.bin\njunk\n"), 2)
    assert len(job_files(daemon, job)) == 4

    table = ok(run(daemon, "files", job))
    header, *rows = table.splitlines()
    assert header.split()[:3] == ["#", "DONE", "BYTES"] and "REMOTE URL" in header and "LOCAL FILE" in header
    assert len(rows) == 4 and f"{nginx.url}/verbs/set/a.bin" in rows[0] and "sub dir/b.bin" in rows[1]

    ok(run(daemon, "resume", job))
    assert ok(run(daemon, "wait", job)).strip() == "TRANSFERRED"
    assert all(f["Completed"] for f in job_files(daemon, job))
    assert all(row.split()[1] == "done" for row in ok(run(daemon, "files", job)).splitlines()[1:])
    ok(run(daemon, "complete", job))
    for name, where in (("a", dest), ("b", dest / "sub dir"), ("c", dest), ("d", dest)):
        assert sha256_file(where / f"{name}.bin") == digests[name]


def test_add_ranges(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    make_file(nginx.www, "verbs/ranges.bin", 300_000, seed=620)
    data = (nginx.www / "verbs" / "ranges.bin").read_bytes()
    job = new_job(daemon, "ranges")
    answer = ok_json(
        run(
            daemon,
            "add-ranges",
            job,
            f"{nginx.url}/verbs/ranges.bin",
            str(dest / "r.bin"),
            "0:100,1000:500,250000:eof",
            "--json",
        )
    )
    assert answer == {"ReturnValue": 0}
    (listed,) = job_files(daemon, job)
    assert listed["Ranges"] == [
        {"InitialOffset": 0, "Length": 100},
        {"InitialOffset": 1000, "Length": 500},
        {"InitialOffset": 250000, "Length": 0xFFFFFFFFFFFFFFFF},
    ]
    assert "[0:100,1000:500,250000:eof]" in ok(run(daemon, "files", job))
    overlapping = run(
        daemon, "add-ranges", job, f"{nginx.url}/verbs/ranges.bin", str(dest / "o.bin"), "0:100,50:10"
    )
    exits(overlapping, 1)
    assert "BG_E_OVERLAPPING_RANGES" in overlapping.stderr
    ok(run(daemon, "resume", job))
    assert ok(run(daemon, "wait", job)).strip() == "TRANSFERRED"
    ok(run(daemon, "complete", job))
    assert (dest / "r.bin").read_bytes() == data[:100] + data[1000:1500] + data[250000:]


def test_error_then_set_remote_name_and_replace_prefix(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    digests = {
        n: make_file(nginx.www, f"verbs/moved/{n}.bin", 9_000 + i, seed=630 + i) for i, n in enumerate("xyz")
    }
    job = new_job(daemon, "moved")
    ok(run(daemon, "set", job, "--no-progress-timeout", "0", "--priority", "foreground"))
    for n in "xyz":
        ok(run(daemon, "add", job, f"{nginx.url}/old/place/{n}.bin", str(dest / f"{n}.bin")))
    ok(run(daemon, "resume", job))
    exits(run(daemon, "wait", job), 1)
    info = ok_json(run(daemon, "error", job, "--json"))
    assert (info["ErrorCode"], info["ErrorContext"]) == (0x80190194, 5)
    assert "BG_E_HTTP_ERROR_404" in ok(run(daemon, "error", job))

    # one file by its local name (relative to the current directory)...
    answer = run(
        daemon, "set-remote-name", job, "x.bin", f"{nginx.url}/verbs/moved/x.bin", "--json", cwd=dest
    )
    assert ok_json(answer) == {"ReturnValue": 0}
    # ... the others by their prefix
    changed = ok_json(
        run(daemon, "replace-prefix", job, f"{nginx.url}/old/place/", f"{nginx.url}/verbs/moved/", "--json")
    )
    assert changed == {"ReturnValue": 0, "FilesChanged": 2}
    assert (
        ok(run(daemon, "replace-prefix", job, f"{nginx.url}/old/", f"{nginx.url}/new/")).strip()
        == "0 files changed"
    )
    assert [f["RemoteUrl"] for f in job_files(daemon, job)] == [
        f"{nginx.url}/verbs/moved/{n}.bin" for n in "xyz"
    ]
    failed(
        run(daemon, "set-remote-name", job, str(dest / "nope.bin"), f"{nginx.url}/a"),
        0x80200029,
        "BG_E_FILE_NOT_FOUND",
    )

    ok(run(daemon, "resume", job))
    assert ok(run(daemon, "wait", job)).strip() == "TRANSFERRED"
    ok(run(daemon, "complete", job))
    for n, digest in digests.items():
        assert sha256_file(dest / f"{n}.bin") == digest


def test_headers_of_a_file(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    make_file(nginx.www, "verbs/headers.bin", 12_345, seed=640)
    job = new_job(daemon, "headers")
    ok(run(daemon, "add", job, f"{nginx.url}/verbs/headers.bin", str(dest / "h.bin")))
    assert ok(run(daemon, "headers", job)) == "no response received yet\n"
    ok(run(daemon, "resume", job))
    assert ok(run(daemon, "wait", job)).strip() == "TRANSFERRED"
    text = ok(run(daemon, "headers", job))
    lines = {line.split(":", 1)[0].lower(): line.split(":", 1)[1].strip() for line in text.splitlines()}
    assert lines["content-length"] == "12345" and "etag" in lines, text
    answer = ok_json(run(daemon, "headers", job, "--file", str(dest / "h.bin"), "--json"))
    assert answer["ReturnValue"] == 0 and "12345" in answer["ResponseHeaders"]
    two = new_job(daemon, "two files")
    for name in ("1.bin", "2.bin"):
        ok(run(daemon, "add", two, f"{nginx.url}/verbs/headers.bin", str(dest / name)))
    exits(run(daemon, "headers", two), 2)  # which file?
    failed(run(daemon, "headers", two, "--file", str(dest / "3.bin")), 0x80200029, "BG_E_FILE_NOT_FOUND")
    ok(run(daemon, "complete", job))


# -- the service policy, and the methods the daemon does not have yet -----------------------------


def test_policy_show_and_set(daemon: Daemon) -> None:
    shown = ok_json(run(daemon, "policy", "--json"))
    assert {"MaxBandwidth", "BandwidthSchedule", "TimeSlice", "CurrentBandwidthLimit"} <= set(shown)
    text = ok(run(daemon, "policy"))
    assert any(line.split()[0] == "MaxBandwidth" for line in text.splitlines()), text

    changed = ok_json(
        run(
            daemon,
            "policy",
            "set",
            "MaxBandwidth=10M",
            "MaxConcurrentBackgroundJobs=2",
            "ForegroundLimited=true",
            "--json",
        )
    )
    assert shown["MaxBandwidth"] is None and changed["MaxBandwidth"] == 10 * 1024 * 1024
    assert (changed["MaxConcurrentBackgroundJobs"], changed["ForegroundLimited"]) == (2, True)
    assert ok_json(run(daemon, "policy", "--json")) == changed  # it stays
    text = ok(
        run(daemon, "policy", "set", "MaxBandwidth=null", "BandwidthSchedule=Mon-08:00,1M Mon-18:00,off")
    )
    assert "unlimited" in next(line for line in text.splitlines() if line.startswith("MaxBandwidth"))
    after = ok_json(run(daemon, "policy", "--json"))
    assert after["MaxBandwidth"] is None and after["BandwidthSchedule"]

    # all or none
    failed(run(daemon, "policy", "set", "TimeSlice=30", "NoSuchSetting=1"), E_INVALIDARG, "E_INVALIDARG")
    read_only = run(daemon, "policy", "set", "CurrentBandwidthLimit=5")
    exits(read_only, 1)
    assert "BG_E_READ_ONLY_PROPERTY" in read_only.stderr
    assert ok_json(run(daemon, "policy", "--json")) == after


def test_credentials_and_proxy_commands_set_what_the_instance_shows(daemon: Daemon) -> None:
    job = new_job(daemon, "identity")
    secret = "correct horse battery staple"
    result = run(
        daemon, "credentials", "set", job, "--user", "alice", "--password-stdin", stdin=secret + "\n"
    )
    ok(result)
    assert secret not in result.stdout + result.stderr  # never echoed
    answer = ok_json(
        run(daemon, "credentials", "set", job, "--target", "proxy", "--scheme", "negotiate", "--json")
    )  # the default credentials: no password asked for
    assert answer == {"ReturnValue": 0}
    ok(
        run(
            daemon,
            "credentials",
            "set",
            job,
            "--scheme",
            "DIGEST",
            "--user",
            "bob",
            "--password-stdin",
            stdin="x\n",
        )
    )
    assert daemon.job(job)["Credentials"] == [
        {"Target": 0, "Scheme": 0, "UserName": "alice"},
        {"Target": 1, "Scheme": 3, "UserName": None},
        {"Target": 0, "Scheme": 1, "UserName": "bob"},
    ]
    shown = ok(run(daemon, "get", job))
    assert "server basic alice, proxy negotiate (default credentials), server digest bob" in shown
    assert (
        ok_json(run(daemon, "credentials", "remove", job, "--scheme", "digest", "--json"))["ReturnValue"] == 0
    )
    said = ok(run(daemon, "credentials", "remove", job, "--scheme", "digest"))
    assert said == "the job has no server digest credentials\n"  # S_FALSE
    # no password on argv, and none without a terminal unless --password-stdin says so
    exits(run(daemon, "credentials", "set", job, "--user", "alice", "--password", secret), 2)
    exits(run(daemon, "credentials", "set", job, "--user", "alice", stdin=secret + "\n"), 2)
    exits(run(daemon, "credentials", "set", job, "--password-stdin"), 2)
    exits(run(daemon, "credentials", "remove", job, "--user", "bob"), 2)
    failed(
        run(daemon, "credentials", "set", job, "--scheme", "passport", "--user", "a", "--password-stdin"),
        E_NOTIMPL,
        "E_NOTIMPL",
    )

    ok(
        run(
            daemon,
            "proxy",
            job,
            "override",
            "--list",
            "http://proxy:3128,http://other:8080",
            "--bypass",
            "<local>",
        )
    )
    assert "OVERRIDE ProxyList=http://proxy:3128 http://other:8080 ProxyBypassList=<local>" in ok(
        run(daemon, "get", job)
    )
    instance = daemon.job(job)
    assert (instance["ProxyUsage"], instance["ProxyList"], instance["ProxyBypassList"]) == (
        2,
        "http://proxy:3128 http://other:8080",
        "<local>",
    )
    failed(run(daemon, "proxy", job, "override", "--list", "ftp://proxy:21"), E_INVALIDARG, "E_INVALIDARG")
    ok(run(daemon, "proxy", job, "AUTODETECT"))
    instance = daemon.job(job)
    assert (instance["ProxyUsage"], instance["ProxyList"], instance["ProxyBypassList"]) == (3, None, None)

    # client certificates are built (tests/integration/test_client_certs.py): looked for at once
    store = f"no-such-store-{os.getpid()}"
    for args in (
        ("cert", job, "--store", store, "--subject", "CN=client"),
        ("cert", job, "--store-location", "local-machine", "--store", store, "--by-id", "01" * 20),
    ):
        failed(run(daemon, *args), 0x80092004, "CRYPT_E_NOT_FOUND")
    assert ok_json(run(daemon, "cert", job, "--remove", "--json"))["ReturnValue"] == 1  # none: S_FALSE
    # TakeOwnership: the tests' caller (root) is an administrator; the credentials go with it
    assert ok_json(run(daemon, "take-ownership", job, "--json"))["ReturnValue"] == 0
    assert daemon.job(job)["Credentials"] == []


# -- watch ------------------------------------------------------------------------------------------


def test_watch_prints_a_line_per_change_until_the_job_is_done(
    daemon: Daemon, nginx: Nginx, dest: Path
) -> None:
    make_file(nginx.www, "verbs/watched.bin", 600 * 1024, seed=650)
    job = new_job(daemon, "watched")
    ok(run(daemon, "add", job, f"{nginx.url}/slow/verbs/watched.bin", str(dest / "w.bin")))
    ok(run(daemon, "set", job, "--priority", "foreground"))
    watcher = spawn(daemon, "watch", "--until-done", "watched")
    try:
        count = 0

        def poke() -> None:
            nonlocal count
            count += 1
            daemon.client.set_properties(job, Description=f"poke {count}")

        lines = [first_line_while(watcher, poke)]
        ok(run(daemon, "resume", job))
        out, err = watcher.communicate(timeout=60)
    finally:
        reap(watcher)
    assert watcher.returncode == 0, err
    lines += out.splitlines()
    assert all(job in line and "'watched'" in line for line in lines), lines
    assert "JobModification" in lines[0] and "SUSPENDED" in lines[0]
    states = [line.split()[5] for line in lines]
    assert "TRANSFERRING" in states and states[-1] == "TRANSFERRED", lines
    assert "600.0 KiB / 600.0 KiB" in lines[-1]

    # --json: one event object a line; a job already done ends it at once (exit as wait)
    done = ok(run(daemon, "watch", "--until-done", job, "--json"))
    assert done == ""
    ok(run(daemon, "complete", job))
    failed_job = new_job(daemon, "watched failing")
    ok(run(daemon, "cancel", failed_job))
    exits(run(daemon, "watch", "--until-done", failed_job), 1)


def test_watch_json_lines_and_ctrl_c_exits_130_quietly(daemon: Daemon) -> None:
    job = new_job(daemon, "watch json")
    watcher = spawn(daemon, "watch", "--json")
    try:
        first = json.loads(
            first_line_while(watcher, lambda: daemon.client.set_properties(job, Description="poke"))
        )
        assert set(first) == {"id", "event", "data"} and first["data"]["JobId"] == job
        ok(run(daemon, "cancel", job))
        assert watcher.stdout is not None
        while True:
            line = json.loads(watcher.stdout.readline())
            if line["event"] == "JobCancelled":
                break
        watcher.send_signal(signal.SIGINT)
        _out, err = watcher.communicate(timeout=20)
    finally:
        reap(watcher)
    assert watcher.returncode == 130
    assert err == ""


def test_watch_draws_a_live_table_on_a_terminal(daemon: Daemon) -> None:
    job = new_job(daemon, "on a terminal")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    watcher = spawn(daemon, "watch", stdout=slave, stderr=subprocess.PIPE, env={"TERM": "xterm"})
    os.close(slave)
    seen = b""

    def drawn(text: bytes) -> bool:
        """Reads what the table drew so far; whether ``text`` is in it."""
        nonlocal seen
        while True:
            ready, _, _ = select.select([master], [], [], 0.1)
            if not ready:
                return text in seen
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return text in seen
            seen += chunk
            if text in seen:
                return True

    try:
        wait_until(lambda: drawn(b"on a terminal"), 20, "the job in the live table")
        assert job.encode() in seen and b"SUSPENDED" in seen
        daemon.client.set_properties(job, DisplayName="renamed live")
        wait_until(lambda: drawn(b"renamed live"), 20, "the table redrawn after a change")
        watcher.send_signal(signal.SIGINT)
        watcher.wait(timeout=20)
        assert watcher.stderr is not None
        err = watcher.stderr.read()
    finally:
        reap(watcher)
        os.close(master)
    assert watcher.returncode == 130
    assert err == ""


@pytest.mark.parametrize("command", ["get", "files", "error", "headers"])
def test_job_commands_take_a_display_name(daemon: Daemon, command: str) -> None:
    job = new_job(daemon, f"by name {command}")
    result = run(daemon, command, f"by name {command}", "--json")
    if command == "error":
        failed(result, 0x8020000F, "BG_E_ERROR_INFORMATION_UNAVAILABLE")
    elif command == "headers":
        exits(result, 2)  # no file to name
    else:
        json.loads(ok(result))
    status, _ = daemon.api("GET", f"{CLASS}/{job}")
    assert status == 200


def test_credentials_set_asks_for_the_password_on_the_terminal_without_echo(daemon: Daemon) -> None:
    job = new_job(daemon, "prompted")
    secret = "typed-Pa55-0f9e"
    pid, master = pty.fork()  # (the child's controlling terminal is the pty, as a user's is)
    if pid == 0:  # pragma: no cover - child
        os.environ["OPENBITS_SOCKET"] = daemon.socket
        os.execv(
            sys.executable, [sys.executable, "-m", "openbits", "credentials", "set", job, "--user", "eve"]
        )
    seen = b""

    def read() -> bool:
        """Reads what the terminal shows; whether there was anything."""
        nonlocal seen
        ready, _, _ = select.select([master], [], [], 0.1)
        if not ready:
            return False
        try:
            chunk = os.read(master, 65536)
        except OSError:  # (the child has gone: EIO)
            return False
        seen += chunk
        return bool(chunk)

    try:
        wait_until(lambda: read() is not None and b"Password for eve:" in seen, 20, "the password prompt")
        os.write(master, secret.encode() + b"\n")
        _, status = os.waitpid(pid, 0)
        while read():
            pass
    finally:
        os.close(master)
    assert os.waitstatus_to_exitcode(status) == 0, seen
    assert secret.encode() not in seen, "the password was echoed"
    assert daemon.job(job)["Credentials"] == [{"Target": 0, "Scheme": 0, "UserName": "eve"}]
