"""A destination on a small tmpfs mounted by the test: a full disk is transient, never a
corrupt or partial LocalFile, and the job recovers when space is freed. Needs root."""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from openbits.model import JobState
from tests.support.daemon import Daemon
from tests.support.faults import FaultServer, Serve
from tests.support.fixtures import make_file, sha256_file, tmpfs
from tests.support.nginx import Nginx

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
MiB = 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "small", "size=8m") as mount:
        yield mount


def start(daemon: Daemon, url: str, local: Path) -> str:
    job = daemon.client.create_job(local.name).job_id
    daemon.client.add_file(job, url, str(local))
    daemon.client.resume(job)
    return job


def test_a_file_too_big_for_the_disk_is_refused_before_writing(
    daemon: Daemon, nginx: Nginx, small_disk: Path
) -> None:
    digest = make_file(nginx.www, "disk/big.bin", 10 * MiB, seed=80)
    local = small_disk / "big.bin"
    job = start(daemon, f"{nginx.url}/disk/big.bin", local)
    daemon.wait_state(job, JobState.TRANSIENT_ERROR)
    err = daemon.client.get_error(job)
    assert (err.hresult, err.context) == (0x80070070, 4)  # disk full, LOCAL_FILE
    assert daemon.job(job)["TransientErrorCount"] == 1
    assert not local.exists()
    assert sum(p.stat().st_size for p in small_disk.iterdir()) == 0, "nothing was written"
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)
    daemon.client.resume(job)  # Resume retries at once
    daemon.wait_state(job, JobState.TRANSFERRED)
    daemon.client.complete(job)
    assert sha256_file(local) == digest


def test_disk_filling_up_mid_transfer_is_transient_and_recovers(
    daemon: Daemon, fault_server: FaultServer, small_disk: Path
) -> None:
    data = random.Random(81).randbytes(4 * MiB)
    fault_server.routes["/f"] = Serve(data, content_length=False)  # size unknown until the end
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (6 * MiB))
    local = small_disk / "f.bin"
    job = start(daemon, f"{fault_server.url}/f", local)
    daemon.wait_state(job, JobState.TRANSIENT_ERROR)
    err = daemon.client.get_error(job)
    assert (err.hresult, err.context) == (0x80070070, 4)
    assert not local.exists(), "never a partial LocalFile"
    filler.unlink()
    daemon.client.resume(job)
    daemon.wait_state(job, JobState.TRANSFERRED)
    daemon.client.complete(job)
    assert local.read_bytes() == data
