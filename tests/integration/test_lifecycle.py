"""The BITS job lifecycle end to end: real nginx, real daemon process."""

from __future__ import annotations

from pathlib import Path

from openbits.model import JobState
from tests.support.daemon import Daemon
from tests.support.fixtures import make_file, sha256_file
from tests.support.nginx import Nginx


def test_lifecycle_create_add_resume_transferred_complete(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    digest = make_file(nginx.www, "life/one.bin", 3 * 1024 * 1024 + 17, seed=1)
    client = daemon.client
    job = client.create_job(DisplayName="life")
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
