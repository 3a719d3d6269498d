"""Bandwidth policy through the real daemon: run-time changes without restarting transfers."""

from __future__ import annotations

from pathlib import Path

from openbits.model import JobPriority, JobState
from tests.support.daemon import Daemon, wait_until
from tests.support.fixtures import make_file, sha256_file
from tests.support.nginx import Nginx

POLICY = "/root/microsoft/bits/BitsServicePolicy"
MiB = 1024 * 1024


def start(daemon: Daemon, url: str, local: Path, priority: JobPriority) -> str:
    job = daemon.client.create_job(local.name, priority=int(priority)).job_id
    daemon.client.add_file(job, url, str(local))
    daemon.client.resume(job)
    return job


def test_a_zero_limit_blocks_background_jobs_by_policy_until_it_lifts(
    daemon: Daemon, nginx: Nginx, dest: Path
) -> None:
    digest = make_file(nginx.www, "bw/f.bin", 4 * MiB, seed=90)
    status, policy = daemon.api("GET", POLICY)
    assert status == 200 and policy["MaxBandwidth"] is None and policy["ForegroundLimited"] is False
    status, policy = daemon.api("PATCH", POLICY, {"MaxBandwidth": 0})
    assert status == 200 and policy["CurrentBandwidthLimit"] == 0

    background = start(daemon, f"{nginx.url}/bw/f.bin", dest / "bg.bin", JobPriority.NORMAL)
    foreground = start(daemon, f"{nginx.url}/bw/f.bin", dest / "fg.bin", JobPriority.FOREGROUND)
    daemon.wait_state(foreground, JobState.TRANSFERRED)  # FOREGROUND ignores the limit
    daemon.wait_state(background, JobState.TRANSIENT_ERROR)
    err = daemon.client.get_error(background)
    assert (err.name, err.hresult) == ("BG_E_BLOCKED_BY_POLICY", 0x8020003E)
    assert daemon.job(background)["TransientErrorCount"] == 0, "a policy block is not the job's failure"

    status, policy = daemon.api("PATCH", POLICY, {"MaxBandwidth": None})
    assert status == 200 and policy["CurrentBandwidthLimit"] is None
    daemon.wait_state(background, JobState.TRANSFERRED)
    for job in (background, foreground):
        daemon.client.complete(job)
    assert sha256_file(dest / "bg.bin") == sha256_file(dest / "fg.bin") == digest


def test_lifting_a_limit_mid_transfer_keeps_the_same_transfer(
    daemon: Daemon, nginx: Nginx, dest: Path
) -> None:
    digest = make_file(nginx.www, "bw/lift.bin", 6 * MiB, seed=91)
    daemon.api("PATCH", POLICY, {"MaxBandwidth": "1M"})
    job = start(daemon, f"{nginx.url}/bw/lift.bin", dest / "lift.bin", JobPriority.NORMAL)
    wait_until(lambda: daemon.job(job)["BytesTransferred"] > 0, 10, "throttled progress")
    assert daemon.job(job)["State"] == JobState.TRANSFERRING
    daemon.api("PATCH", POLICY, {"MaxBandwidth": None})
    daemon.wait_state(job, JobState.TRANSFERRED, timeout=15)
    daemon.client.complete(job)
    assert sha256_file(dest / "lift.bin") == digest
    gets = [r for r in nginx.requests() if r["uri"] == "/bw/lift.bin"]
    assert len(gets) == 1, "the limit changed without restarting the transfer"


def test_policy_errors_and_persistence(daemon: Daemon) -> None:
    status, body = daemon.api("PATCH", POLICY, {"BandwidthSchedule": "Mon-08:00,1M Tue-99:00,off"})
    assert status == 400 and body["Name"] == "E_INVALIDARG" and "position" in body["Message"]
    status, body = daemon.api("PATCH", POLICY, {"CurrentBandwidthLimit": 1})
    assert status == 400 and body["Name"] == "BG_E_READ_ONLY_PROPERTY"
    status, body = daemon.api("PATCH", POLICY, {"BandwidthSchedule": "08:00,512k 18:00,off", "TimeSlice": 30})
    assert status == 200 and body["TimeSlice"] == 30.0
    daemon.stop()
    daemon.start()
    status, body = daemon.api("GET", POLICY)
    assert body["BandwidthSchedule"] and body["TimeSlice"] == 30.0, body
    wait_until(lambda: daemon.api("GET", POLICY)[0] == 200, 5, "the policy after a restart")


def test_a_job_raised_to_foreground_mid_file_is_no_longer_held_to_the_background_limit(
    daemon: Daemon, nginx: Nginx, dest: Path
) -> None:
    # (review19b) the priority was taken once per file: raised mid-file, still held to the limit
    digest = make_file(nginx.www, "bw/raise.bin", 16 * MiB, seed=92)
    daemon.api("PATCH", POLICY, {"MaxBandwidth": "256k"})  # (ForegroundLimited: False)
    job = start(daemon, f"{nginx.url}/bw/raise.bin", dest / "raise.bin", JobPriority.NORMAL)
    wait_until(lambda: daemon.job(job)["BytesTransferred"] > 0, 10, "throttled progress")
    assert daemon.job(job)["State"] == JobState.TRANSFERRING
    daemon.client.set_properties(job, priority=int(JobPriority.FOREGROUND))
    # at 256 KiB/s the 16 MiB take a minute; unlimited, a moment
    daemon.wait_state(job, JobState.TRANSFERRED, timeout=15)
    daemon.client.complete(job)
    assert sha256_file(dest / "raise.bin") == digest
