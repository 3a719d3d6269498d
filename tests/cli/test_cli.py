"""The `openbits` and `bitsadmin` command lines as subprocesses against a real daemon.

SPEC §4 and §6 (CLI): output shapes, exit codes (0 success, 1 BITS error with the
HRESULT and its name, 3 no daemon), `transfer`, relative paths, `wait`, `error`,
and bitsadmin's wording.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.daemon import CLASS, Daemon, wait_until
from tests.support.fixtures import make_file, sha256_file
from tests.support.nginx import Nginx

GUID = r"\{[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}\}"


def run(*args: str, socket_path: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI with OPENBITS_SOCKET set, optionally in another directory (daemon.cli has no cwd)."""
    env = dict(os.environ, OPENBITS_SOCKET=socket_path)
    return subprocess.run(
        [sys.executable, "-m", "openbits", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (
        f"{result.args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


def failed(result: subprocess.CompletedProcess[str], code: int, name: str | None) -> None:
    """Exit 1 with ``0x…`` and the name on stderr (SPEC §6); ``name`` None: any spelling."""
    where = f"{result.args[3:]}: rc={result.returncode}\nstdout={result.stdout}\nstderr={result.stderr}"
    assert result.returncode == 1, where
    assert f"0x{code:08x}" in result.stderr.lower(), where
    if name is not None:
        assert name in result.stderr, where


def api_jobs(daemon: Daemon) -> list[dict[str, Any]]:
    status, body = daemon.api("GET", CLASS)
    assert status == 200, body
    return list(body)


def temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".BIT"))


# -- openbits: output shapes -----------------------------------------------------------------


def test_create_prints_the_job_id_and_get_prints_instances(daemon: Daemon) -> None:
    out = ok(daemon.cli("create", "cli-job"))
    assert re.fullmatch(GUID + r"\n", out), repr(out)
    job = out.strip()
    other = ok(daemon.cli("create", "second job", "--description", "d", "--priority", "high")).strip()

    instance = json.loads(ok(daemon.cli("get", job, "--json")))
    status, expected = daemon.api("GET", f"{CLASS}/{job}")
    assert status == 200
    assert instance == expected
    assert (instance["DisplayName"], instance["State"]) == ("cli-job", 3)

    listed = json.loads(ok(daemon.cli("get", "--json")))
    assert isinstance(listed, list)
    assert {j["JobId"] for j in listed} == {job, other}
    assert {j["JobId"]: j for j in listed}[job] == expected
    second = {j["JobId"]: j for j in listed}[other]
    assert (second["DisplayName"], second["Description"], second["Priority"]) == ("second job", "d", 1)

    table = ok(daemon.cli("get"))
    line = next(line for line in table.splitlines() if job in line)
    assert "cli-job" in line and "SUSPENDED" in line
    assert "second job" in table

    by_name = json.loads(ok(daemon.cli("get", "cli-job", "--json")))  # JOB may be a unique display name
    assert by_name["JobId"] == job


def test_failures_print_the_hresult_and_its_name(daemon: Daemon) -> None:
    job = ok(daemon.cli("create", "failing")).strip()
    failed(daemon.cli("resume", job), 0x80200003, "BG_E_EMPTY")
    failed(daemon.cli("error", job), 0x8020000F, "BG_E_ERROR_INFORMATION_UNAVAILABLE")
    failed(daemon.cli("add", job, "ftp://127.0.0.1/x.bin", "/tmp/x.bin"), 0x80070057, "E_INVALIDARG")
    failed(daemon.cli("set", job, "--priority", "9"), 0x80004001, "E_NOTIMPL")
    failed(daemon.cli("create", "n" * 257), 0x80200021, "BG_E_STRING_TOO_LONG")
    failed(daemon.cli("get", "{00000000-0000-0000-0000-000000000000}"), 0x80200001, "BG_E_NOT_FOUND")
    assert [j["JobId"] for j in api_jobs(daemon)] == [job]

    ok(daemon.cli("complete", job))
    failed(daemon.cli("complete", job), 0x80200001, "BG_E_NOT_FOUND")
    failed(daemon.cli("cancel", job), 0x80200001, "BG_E_NOT_FOUND")


def test_without_a_daemon_every_command_exits_3(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere" / "openbits.sock")
    stale = str(tmp_path / "stale.sock")  # a socket file nobody listens on any more
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(stale)
    guid = "{00000000-0000-0000-0000-000000000000}"
    commands = [
        ("get",),
        ("get", "--json"),
        ("create", "x"),
        ("resume", guid),
        ("add", guid, "http://127.0.0.1:9/x", str(tmp_path / "x")),
        ("wait", guid),
        ("error", guid),
        ("transfer", "http://127.0.0.1:9/x", str(tmp_path / "x")),
    ]
    for path, args in [(missing, args) for args in commands] + [(stale, ("get",)), (stale, ("create", "x"))]:
        result = run(*args, socket_path=path)
        assert result.returncode == 3, (path, args, result.returncode, result.stdout, result.stderr)
        assert "openbits serve" in result.stderr, (args, result.stderr)
    assert not (tmp_path / "x").exists()


# -- openbits: transfers ---------------------------------------------------------------------


def test_transfer_one_file(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    digest = make_file(nginx.www, "cli/one.bin", 256 * 1024 + 11, seed=11)
    ok(daemon.cli("transfer", f"{nginx.url}/cli/one.bin", str(dest / "copy.bin")))
    assert sha256_file(dest / "copy.bin") == digest
    assert sorted(p.name for p in dest.iterdir()) == ["copy.bin"]
    assert api_jobs(daemon) == []


def test_transfer_several_files_into_a_directory(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    digests = {
        name: make_file(nginx.www, f"cli/many/{name}", 10_000 + i, seed=20 + i)
        for i, name in enumerate("abc")
    }
    urls = [f"{nginx.url}/cli/many/{name}" for name in digests]
    ok(daemon.cli("transfer", *urls, str(dest)))
    assert sorted(p.name for p in dest.iterdir()) == sorted(digests)
    for name, digest in digests.items():
        assert sha256_file(dest / name) == digest
    assert api_jobs(daemon) == []


def test_failed_transfer_cancels_its_job_and_leaves_nothing(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    result = daemon.cli("transfer", f"{nginx.url}/cli/does-not-exist.bin", str(dest / "nothing.bin"))
    failed(result, 0x80190194, "BG_E_HTTP_ERROR_404")
    assert not (dest / "nothing.bin").exists()
    assert temp_files(dest) == []
    assert list(dest.iterdir()) == []
    assert api_jobs(daemon) == []

    # A transfer refused at AddFile cancels its job too.
    failed(daemon.cli("transfer", "ftp://127.0.0.1/x.bin", str(dest / "x.bin")), 0x80070057, "E_INVALIDARG")
    failed(daemon.cli("transfer", f"{nginx.url}/cli/x.bin", str(dest / "no" / "x.bin")), 0x80070003, None)
    assert api_jobs(daemon) == []
    assert list(dest.iterdir()) == []


def test_add_resolves_relative_paths_then_resume_wait_complete(
    daemon: Daemon, nginx: Nginx, dest: Path
) -> None:
    digest = make_file(nginx.www, "cli/rel.bin", 100_000, seed=30)
    (dest / "sub").mkdir()
    job = ok(daemon.cli("create", "relative")).strip()
    ok(run("add", job, f"{nginx.url}/cli/rel.bin", "sub/rel.bin", socket_path=daemon.socket, cwd=dest))
    status, instance = daemon.api("GET", f"{CLASS}/{job}")
    assert status == 200
    assert [f["LocalFile"] for f in instance["Files"]] == [str(dest.resolve() / "sub" / "rel.bin")]

    ok(daemon.cli("resume", job))
    result = daemon.cli("wait", job)
    assert ok(result).strip() == "TRANSFERRED"
    ok(daemon.cli("complete", job))
    assert sha256_file(dest / "sub" / "rel.bin") == digest


def test_error_shows_the_error_of_a_failed_job(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    job = ok(daemon.cli("create", "broken", "--priority", "foreground")).strip()
    ok(daemon.cli("add", job, f"{nginx.url}/cli/missing.bin", str(dest / "missing.bin")))
    ok(daemon.cli("resume", job))
    waited = daemon.cli("wait", job)
    assert waited.returncode == 1, (waited.stdout, waited.stderr)
    assert waited.stdout.strip() == "ERROR"

    out = ok(daemon.cli("error", job))
    assert "0x80190194" in out.lower(), out
    assert "BG_E_HTTP_ERROR_404" in out, out
    assert re.search(r"context\D{0,20}\b5\b", out, re.IGNORECASE), out
    info = json.loads(ok(daemon.cli("error", job, "--json")))
    assert (info["ErrorCode"], info["ErrorContext"]) == (0x80190194, 5)


# -- bitsadmin ---------------------------------------------------------------------------------


def test_bitsadmin_basic_session(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    def bitsadmin(*args: str) -> subprocess.CompletedProcess[str]:
        return daemon.cli(*args, prog="bitsadmin")

    digest = make_file(nginx.www, "cli/bitsadmin.bin", 50_000, seed=40)
    out = ok(bitsadmin("/create", "admin job"))
    match = re.fullmatch(r"Created job (" + GUID + r")\.\n", out)
    assert match, repr(out)
    job = match.group(1)
    ok(bitsadmin("/addfile", job, f"{nginx.url}/cli/bitsadmin.bin", str(dest / "admin.bin")))
    assert ok(bitsadmin("/getstate", job)).strip() == "SUSPENDED"
    ok(bitsadmin("/resume", job))
    wait_until(lambda: ok(bitsadmin("/getstate", job)).strip() == "TRANSFERRED", 30, "/getstate TRANSFERRED")
    ok(bitsadmin("/complete", job))
    assert sha256_file(dest / "admin.bin") == digest
    assert api_jobs(daemon) == []

    bad = bitsadmin("/frobnicate", job)
    assert bad.returncode != 0
    assert "USAGE" in (bad.stdout + bad.stderr).upper(), (bad.stdout, bad.stderr)
