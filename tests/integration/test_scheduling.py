"""Scheduling seen through the API's State values, with rate-limited transfers from nginx.

nginx's /slow/ location sends 1 MB/s, so who transfers and who waits can be watched.
"""

from __future__ import annotations

from pathlib import Path

from openbits.model import JobPriority, JobState
from tests.support.daemon import Daemon, wait_until
from tests.support.fixtures import make_file, sha256_file
from tests.support.nginx import Nginx

MiB = 1024 * 1024
S = JobState


def start(daemon: Daemon, url: str, local: Path, priority: JobPriority = JobPriority.NORMAL) -> str:
    client = daemon.client
    job = client.create_job(local.name, priority=int(priority)).job_id
    client.add_file(job, url, str(local))
    client.resume(job)
    return job


def states(daemon: Daemon, *jobs: str) -> tuple[JobState, ...]:
    return tuple(JobState(daemon.job(j)["State"]) for j in jobs)


def test_a_higher_priority_job_preempts_and_finishes_first(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    big = make_file(nginx.www, "sched/big.bin", 4 * MiB, seed=41)
    small = make_file(nginx.www, "sched/small.bin", MiB + MiB // 2, seed=42)
    low = start(daemon, f"{nginx.url}/slow/sched/big.bin", dest / "big.bin", JobPriority.LOW)
    daemon.wait_state(low, S.TRANSFERRING)
    high = start(daemon, f"{nginx.url}/slow/sched/small.bin", dest / "small.bin", JobPriority.HIGH)
    # within a second the HIGH job runs and the LOW one waits in QUEUED
    wait_until(lambda: states(daemon, high, low) == (S.TRANSFERRING, S.QUEUED), 3, "HIGH pre-empts LOW")
    daemon.wait_state(high, S.TRANSFERRED, timeout=20)
    assert JobState(daemon.job(low)["State"]) in (S.QUEUED, S.CONNECTING, S.TRANSFERRING)
    daemon.wait_state(low, S.TRANSFERRED, timeout=30)
    assert daemon.job(high)["JobCompletionTime"] < daemon.job(low)["JobCompletionTime"]
    for job in (high, low):
        daemon.client.complete(job)
    assert sha256_file(dest / "big.bin") == big
    assert sha256_file(dest / "small.bin") == small
    resumed = [r for r in nginx.requests() if r["uri"] == "/slow/sched/big.bin" and r["range"]]
    assert resumed, "the pre-empted job resumed from its checkpoint"


def test_round_robin_within_one_priority(tmp_path: Path, nginx: Nginx, dest: Path) -> None:
    digests = [make_file(nginx.www, f"rr/{i}.bin", 5 * MiB, seed=50 + i) for i in range(2)]
    # (a slice long enough that B is seen QUEUED before A's first one ends, and short
    # enough that neither 5 MiB file at 1 MiB/s is done before it gives way twice)
    daemon = Daemon(tmp_path / "state-rr", config={"time_slice_s": 2.5})
    daemon.start()
    try:
        a = start(daemon, f"{nginx.url}/slow/rr/0.bin", dest / "0.bin")
        daemon.wait_state(a, S.TRANSFERRING)
        b = start(daemon, f"{nginx.url}/slow/rr/1.bin", dest / "1.bin")
        assert JobState(daemon.job(b)["State"]) is S.QUEUED, "one background job at a time"
        wait_until(lambda: states(daemon, a, b) == (S.QUEUED, S.TRANSFERRING), 10, "B's turn")
        wait_until(lambda: states(daemon, a, b) == (S.TRANSFERRING, S.QUEUED), 10, "A's turn again")
        for job in (a, b):
            daemon.wait_state(job, S.TRANSFERRED, timeout=40)
            daemon.client.complete(job)
        assert [sha256_file(dest / f"{i}.bin") for i in range(2)] == digests
    finally:
        daemon.stop()


def test_foreground_jobs_run_together_beside_the_background_slot(
    daemon: Daemon, nginx: Nginx, dest: Path
) -> None:
    for i in range(3):
        make_file(nginx.www, f"fg/{i}.bin", 3 * MiB, seed=60 + i)
    bg = [start(daemon, f"{nginx.url}/slow/fg/{i}.bin", dest / f"bg{i}.bin") for i in range(2)]
    fg = [
        start(daemon, f"{nginx.url}/slow/fg/{i}.bin", dest / f"fg{i}.bin", JobPriority.FOREGROUND)
        for i in range(2)
    ]
    wait_until(
        lambda: states(daemon, *fg, *bg).count(S.TRANSFERRING) == 3 and S.QUEUED in states(daemon, *bg),
        5,
        "both foreground jobs and one background job transferring",
    )
    for job in fg + bg:
        daemon.client.cancel(job)


def test_maximum_download_time_ends_in_error(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    make_file(nginx.www, "maxdl/f.bin", 6 * MiB, seed=70)
    client = daemon.client
    job = client.create_job("maxdl").job_id
    client.invoke(job, "SetMaximumDownloadTime", MaximumDownloadTime=1)
    assert daemon.job(job)["MaximumDownloadTime"] == 1
    client.add_file(job, f"{nginx.url}/slow/maxdl/f.bin", str(dest / "f.bin"))
    client.resume(job)
    daemon.wait_state(job, S.ERROR, timeout=10)
    err = client.get_error(job)
    assert err.hresult == 0x80200054  # BG_E_MAXDOWNLOAD_TIMEOUT
    assert err.name == "BG_E_MAXDOWNLOAD_TIMEOUT"
    client.invoke(job, "SetMaximumDownloadTime", MaximumDownloadTime=None)  # null: the default again
    assert daemon.job(job)["MaximumDownloadTime"] == 7_776_000
    client.resume(job)  # Resume restarts the clock and continues from the checkpoint
    daemon.wait_state(job, S.TRANSFERRED, timeout=20)


def test_an_inactive_job_is_cancelled_with_its_files(tmp_path: Path, nginx: Nginx, dest: Path) -> None:
    make_file(nginx.www, "idle/f.bin", 3 * MiB, seed=71)
    daemon = Daemon(tmp_path / "state-idle", config={"job_inactivity_timeout_s": 2})
    daemon.start()
    try:
        job = start(daemon, f"{nginx.url}/slow/idle/f.bin", dest / "f.bin")
        wait_until(lambda: daemon.job(job)["BytesTransferred"] > 0, 10, "progress")
        daemon.client.suspend(job)
        assert any(p.name.startswith(".BIT") for p in dest.iterdir())
        daemon.wait_state(job, S.CANCELLED, timeout=10)
        assert not list(dest.iterdir()), "the inactive job's temporary file is gone"
    finally:
        daemon.stop()


def test_jobs_preempted_before_their_task_ran_start_again(tmp_path: Path, nginx: Nginx, dest: Path) -> None:
    """A time slice so short that a job is pre-empted in the tick right after the one that
    started it, before its task first ran: its task must still let go of it (it used to stay
    in the scheduler's running set, and the job in QUEUED for ever)."""
    digest = make_file(nginx.www, "sched/slice.bin", 2 * MiB, seed=44)
    daemon = Daemon(tmp_path / "state", config={"time_slice_s": 0.001, "max_concurrent_background_jobs": 1})
    daemon.start()
    try:
        jobs = [start(daemon, f"{nginx.url}/slow/sched/slice.bin", dest / f"slice-{i}.bin") for i in range(3)]
        for job in jobs:
            daemon.wait_state(job, S.TRANSFERRED, timeout=90)
            assert daemon.client.complete(job) == 0
    finally:
        daemon.stop()
    for i in range(3):
        assert sha256_file(dest / f"slice-{i}.bin") == digest
