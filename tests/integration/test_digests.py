"""Expected digests through the real daemon, with nginx (SPEC §9 "Expected digests"):
a right digest reaches TRANSFERRED and the published file; a wrong one is ERROR
BG_E_VALIDATION_FAILED with no temporary and no published file; a file killed mid-body
(SIGKILL) and resumed is still verified over all its bytes; a local source, AddFileSet
entries, CreateJob's file and the CLI's ``--digest`` too."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from openbits.errors import BitsError
from openbits.model import ErrorContext, JobPriority, JobState
from tests.support.daemon import Daemon, wait_until
from tests.support.faults import FaultServer, Serve
from tests.support.fixtures import make_file, sha256_file
from tests.support.nginx import Nginx

MiB = 1024 * 1024
WRONG = "sha256:" + "00" * 32


def temp_files(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.startswith(".BIT") and p.name.endswith(".tmp")]


def canonical(hex_digest: str) -> str:
    return f"sha-256=:{base64.b64encode(bytes.fromhex(hex_digest)).decode()}:"


def start(daemon: Daemon, url: str, local: Path, digest: str) -> str:
    client = daemon.client
    job = client.create_job(local.name, priority=JobPriority.FOREGROUND).job_id  # (run side by side)
    client.add_file(job, url, str(local), digest=digest)
    client.resume(job)
    return job


def assert_validation_failed(daemon: Daemon, job: str, dest: Path, local: Path) -> None:
    daemon.wait_state(job, JobState.ERROR, timeout=30)
    err = daemon.client.get_error(job)
    assert err.hresult == 0x80200053 and err.name == "BG_E_VALIDATION_FAILED"
    assert err.context is ErrorContext.REMOTE_FILE
    assert not temp_files(dest), "the temporary file of a mismatch is removed"
    assert not local.exists()
    assert daemon.job(job)["Files"][0]["BytesTransferred"] == 0
    # Complete keeps only whole files (BG_S_PARTIAL_COMPLETE): the mismatched one is never published
    assert daemon.client.complete(job) != 0
    assert not local.exists() and not temp_files(dest)


def test_the_right_digest_transfers_and_shows_in_the_file(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    hex_digest = make_file(nginx.www, "dg/right.bin", 3 * MiB + 5, seed=3)
    local = dest / "right.bin"
    job = start(daemon, f"{nginx.url}/dg/right.bin", local, f"sha256:{hex_digest}")
    daemon.wait_state(job, JobState.TRANSFERRED, timeout=30)
    assert daemon.job(job)["Files"][0]["Digest"] == canonical(hex_digest)
    assert daemon.client.complete(job) == 0
    assert sha256_file(local) == hex_digest


def test_a_wrong_digest_is_validation_failed_with_no_file(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    make_file(nginx.www, "dg/wrong.bin", 2 * MiB, seed=4)
    local = dest / "wrong.bin"
    job = start(daemon, f"{nginx.url}/dg/wrong.bin", local, WRONG)
    assert_validation_failed(daemon, job, dest, local)


def test_a_bad_digest_is_refused_at_the_call(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    client = daemon.client
    job = client.create_job("bad").job_id
    with pytest.raises(BitsError) as e:
        client.add_file(job, f"{nginx.url}/x", str(dest / "x"), digest="sha256:nothex")
    assert e.value.hresult == 0x80070057  # E_INVALIDARG
    assert daemon.job(job)["Files"] == []


def test_sigkill_mid_file_then_resume_is_still_verified(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    hex_digest = make_file(nginx.www, "dg/kill.bin", 5 * MiB + 77, seed=5)
    make_file(nginx.www, "dg/kill2.bin", 5 * MiB + 77, seed=5)
    right_local, wrong_local = dest / "kill.bin", dest / "kill2.bin"
    right = start(daemon, f"{nginx.url}/slow/dg/kill.bin", right_local, f"sha256:{hex_digest}")
    bad = start(daemon, f"{nginx.url}/slow/dg/kill2.bin", wrong_local, "sha512:" + "11" * 64)
    for job in (right, bad):
        wait_until(lambda j=job: daemon.job(j)["BytesTransferred"] >= MiB, 30, "1 MiB checkpointed")
    daemon.kill()
    daemon.start()
    daemon.wait_state(right, JobState.TRANSFERRED, timeout=60)
    ranges = [r for r in nginx.requests() if r["uri"] == "/slow/dg/kill.bin" and r["range"]]
    assert ranges and ranges[-1]["status"] == 206, "the file resumed (its prefix hashed from disk)"
    assert daemon.client.complete(right) == 0
    assert sha256_file(right_local) == hex_digest
    assert_validation_failed(daemon, bad, dest, wrong_local)


def test_local_source_and_file_set_and_create_job(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    a = make_file(nginx.www, "dg/a.bin", MiB + 1, seed=6)
    b = make_file(nginx.www, "dg/b.bin", 70_000, seed=7)
    client = daemon.client
    job = client.create_job("set").job_id
    client.add_file_set(
        job,
        [
            (f"{nginx.url}/dg/a.bin", str(dest / "a.bin"), f"sha256:{a}"),
            ("file://" + str(nginx.www / "dg/b.bin"), str(dest / "b.bin"), canonical(b)),
        ],
    )
    client.resume(job)
    daemon.wait_state(job, JobState.TRANSFERRED, timeout=30)
    assert client.complete(job) == 0
    assert sha256_file(dest / "b.bin") == b
    local = dest / "c.bin"
    created = client.create_job("c", "file://" + str(nginx.www / "dg/b.bin"), str(local), digest=WRONG)
    client.resume(created.job_id)
    assert_validation_failed(daemon, created.job_id, dest, local)


def test_the_cli_transfer_digest(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    hex_digest = make_file(nginx.www, "dg/cli.bin", 100_000, seed=8)
    cli = [sys.executable, "-m", "openbits", "--socket", str(daemon.socket), "transfer", "-q"]
    ok = subprocess.run(
        [*cli, "--digest", f"sha256:{hex_digest}", f"{nginx.url}/dg/cli.bin", str(dest / "cli.bin")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert sha256_file(dest / "cli.bin") == hex_digest
    bad = subprocess.run(
        [*cli, "--no-retry", "--digest", WRONG, f"{nginx.url}/dg/cli.bin", str(dest / "cli2.bin")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "BG_E_VALIDATION_FAILED" in bad.stderr, bad.stderr
    assert not (dest / "cli2.bin").exists() and not temp_files(dest)


def test_ranges_are_verified_over_the_bytes_the_job_writes(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    make_file(nginx.www, "dg/ranges.bin", 3 * MiB, seed=9)
    content = (nginx.www / "dg/ranges.bin").read_bytes()
    ranges = [(0, 1000), (2 * MiB, MiB)]
    written = hashlib.sha256(b"".join(content[o : o + n] for o, n in ranges)).hexdigest()
    client = daemon.client
    outcomes = {}
    for name, digest in (
        ("good", f"sha256:{written}"),
        ("bad", f"sha256:{hashlib.sha256(content).hexdigest()}"),
    ):
        job = client.create_job(name, priority=JobPriority.FOREGROUND).job_id
        client.add_file_with_ranges(
            job, f"{nginx.url}/dg/ranges.bin", str(dest / name), ranges, digest=digest
        )
        client.resume(job)
        outcomes[name] = job
    daemon.wait_state(outcomes["good"], JobState.TRANSFERRED, timeout=30)
    assert client.complete(outcomes["good"]) == 0
    assert sha256_file(dest / "good") == written
    assert_validation_failed(daemon, outcomes["bad"], dest, dest / "bad")


def test_a_server_sending_a_wrong_repr_digest_is_validation_failed(
    daemon: Daemon, fault_server: FaultServer, dest: Path
) -> None:
    data = bytes(range(256)) * 4096
    sf = base64.b64encode(hashlib.sha256(data).digest()).decode()
    fault_server.routes["/good"] = Serve(data, headers={"Repr-Digest": f"sha-256=:{sf}:, md5=:AAAA:"})
    fault_server.routes["/bad"] = Serve(data, headers={"Repr-Digest": f"sha-256=:{sf[:-2]}A=:"})
    client = daemon.client
    jobs = {}
    for name in ("good", "bad"):
        job = client.create_job(name, priority=JobPriority.FOREGROUND).job_id
        client.add_file(job, f"{fault_server.url}/{name}", str(dest / name))  # (no Digest of its own)
        client.resume(job)
        jobs[name] = job
    daemon.wait_state(jobs["good"], JobState.TRANSFERRED, timeout=30)
    assert client.complete(jobs["good"]) == 0
    assert (dest / "good").read_bytes() == data
    daemon.wait_state(jobs["bad"], JobState.ERROR, timeout=30)
    assert "Repr-Digest" in client.get_error(jobs["bad"]).error_description
    assert_validation_failed(daemon, jobs["bad"], dest, dest / "bad")


def test_the_cli_add_digest_and_add_set_column(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    hex_digest = make_file(nginx.www, "dg/add.bin", 10_000, seed=10)
    job = daemon.client.create_job("cli-add").job_id
    cli = [sys.executable, "-m", "openbits", "--socket", str(daemon.socket)]

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *args], input=stdin, capture_output=True, text=True, timeout=60)

    bad = run("add", job, f"{nginx.url}/dg/add.bin", str(dest / "a.bin"), "--digest", "sha256:zz")
    assert bad.returncode != 0 and "E_INVALIDARG" in bad.stderr, bad.stderr
    ok = run("add", job, f"{nginx.url}/dg/add.bin", str(dest / "a.bin"), "--digest", f"sha256:{hex_digest}")
    assert ok.returncode == 0, ok.stderr
    listed = run(
        "add-set", job, "-", stdin=f"{nginx.url}/dg/add.bin {dest / 'b.bin'} {canonical(hex_digest)}\n"
    )
    assert listed.returncode == 0, listed.stderr
    assert [f.get("Digest") for f in daemon.job(job)["Files"]] == [canonical(hex_digest)] * 2
    # what a person reads: `openbits files` has a DIGEST column, `openbits get JOB` says it per file
    table = run("files", job)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split()[-1] == "DIGEST"
    assert table.stdout.count(canonical(hex_digest)) == 2
    shown = run("get", job)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count(f"expected {canonical(hex_digest)}") == 2
