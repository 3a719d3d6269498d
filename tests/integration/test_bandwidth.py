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
    job = daemon.client.create_job(DisplayName=local.name, Priority=int(priority))
    daemon.client.add_file(job, url, str(local))
    daemon.client.resume(job)
    return job


def test_a_paused_limit_holds_background_jobs_and_lifting_it_continues_the_same_transfer(
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
    assert daemon.job(background)["BytesTransferred"] == 0, "the paused background job moved nothing"

    status, policy = daemon.api("PATCH", POLICY, {"MaxBandwidth": None})
    assert status == 200 and policy["CurrentBandwidthLimit"] is None
    daemon.wait_state(background, JobState.TRANSFERRED)
    for job in (background, foreground):
        daemon.client.complete(job)
    assert sha256_file(dest / "bg.bin") == sha256_file(dest / "fg.bin") == digest
    gets = [r for r in nginx.requests() if r["uri"] == "/bw/f.bin"]
    assert len(gets) == 2, "the limit changed without restarting the transfer"


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
