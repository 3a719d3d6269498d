"""The BITS job lifecycle end to end: real nginx, real daemon process."""

from __future__ import annotations

from pathlib import Path

from openbits.model import JobState
from tests.support.daemon import CLASS, Daemon
from tests.support.fixtures import make_file, sha256_file
from tests.support.nginx import Nginx


def test_lifecycle_create_add_resume_transferred_complete(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    digest = make_file(nginx.www, "life/one.bin", 3 * 1024 * 1024 + 17, seed=1)
    client = daemon.client
    job = client.create_job("life").job_id
    assert daemon.job(job)["State"] == JobState.SUSPENDED
    local = dest / "one.bin"
    client.add_file(job, f"{nginx.url}/life/one.bin", str(local))
    client.resume(job)
    done = daemon.wait_state(job, JobState.TRANSFERRED)
    assert not local.exists(), "LocalFile must not exist before Complete"
    assert done["BytesTransferred"] == done["BytesTotal"] == 3 * 1024 * 1024 + 17
    assert done["FilesTransferred"] == done["FilesTotal"] == 1
    assert done["JobCompletionTime"] > 0
    assert client.complete(job) == 0
    assert sha256_file(local) == digest
    assert daemon.job(job)["State"] == JobState.ACKNOWLEDGED
    assert not [p for p in dest.iterdir() if p.name.startswith(".BIT")]


def test_complete_that_cannot_publish_keeps_the_job_and_can_be_retried(
    daemon: Daemon, nginx: Nginx, dest: Path
) -> None:
    digest = make_file(nginx.www, "life/two.bin", 70_000, seed=2)
    client = daemon.client
    job = client.create_job("blocked").job_id
    local = dest / "two.bin"
    client.add_file(job, f"{nginx.url}/life/two.bin", str(local))
    client.resume(job)
    daemon.wait_state(job, JobState.TRANSFERRED)
    local.mkdir()  # something now stands where the file must go
    (local / "keep").write_text("x")
    status, body = daemon.api("POST", f"{CLASS}/{job}/SetJobState", {"JobState": 1})
    assert status >= 400 and body["ErrorCode"].startswith("0x8007"), body
    assert daemon.job(job)["State"] == JobState.TRANSFERRED, "a failed Complete changes nothing"
    (local / "keep").unlink()
    local.rmdir()
    assert client.complete(job) == 0
    assert sha256_file(local) == digest
