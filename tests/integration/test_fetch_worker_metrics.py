"""The fetch worker (``transfer/offload.py``) as ``GET /metrics`` shows it, end to end against
the paced nginx of ``test_fetch_worker.py``: a job's small files counted as the worker's, a
worker running with no lane open once the job is TRANSFERRED; one killed mid-job counted
lost; and one idle for ``fetch_worker_idle_s`` exits (not counted lost, not cooled down: the
next job starts a new one)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import test_fetch_worker as base
from tests.integration.test_fetch_worker import (
    alive,
    assert_transferred,
    daemon_pid,
    files_job,
    paced_midway,
    workers,
)
from tests.integration.test_metrics import scrape
from tests.support.daemon import Daemon, wait_until
from tests.support.nginx import Nginx

KiB = 1024
#: the idle time of the daemon of the idle-out test
IDLE_S = 1.0

pytestmark = pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="the daemon starts no fetch worker on one CPU"
)

#: the fixtures of test_fetch_worker.py: its paced nginx (one for this module) and a daemon
#: that takes jobs of thousands of files
nginx = base.nginx
daemon = base.daemon


def worker_metrics(daemon: Daemon) -> dict[str, float]:
    """The ``openbits_fetch_worker_*`` samples, by name less that prefix."""
    _, samples = scrape(daemon)
    prefix = "openbits_fetch_worker_"
    return {name[len(prefix) :]: value for name, value in samples.items() if name.startswith(prefix)}


def test_metrics_count_the_workers_files_and_show_it_running_with_no_lane_after_the_job(
    daemon: Daemon, nginx: Nginx, dest: Path
) -> None:
    before = worker_metrics(daemon)
    assert before == {
        "running": 0,
        "lanes": 0,
        "files_total": 0,
        "handed_back_total": 0,
        "starts_total": 0,
        "lost_total": 0,
    }
    count, size = 300, 16 * KiB
    job, digests = files_job(daemon, nginx, dest, "fwm-files", count, size)
    daemon.client.resume(job)
    assert_transferred(daemon, job, dest, digests, size)
    after = worker_metrics(daemon)
    assert 0 < after["files_total"] < count, after
    assert (after["running"], after["lanes"], after["starts_total"]) == (1, 0, 1), after
    assert (after["handed_back_total"], after["lost_total"]) == (0, 0), after


def test_metrics_show_a_lane_open_mid_job_and_a_worker_killed_in_it_lost(
    daemon: Daemon, nginx: Nginx, dest: Path
) -> None:
    size = 4 * KiB
    job, digests, pid = paced_midway(daemon, nginx, dest, "fwm-kill")
    during = worker_metrics(daemon)
    assert (during["running"], during["lanes"]) == (1, 1), during
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: worker_metrics(daemon)["lost_total"] == 1, 10, "the worker counted lost")
    assert_transferred(daemon, job, dest, digests, size)
    after = worker_metrics(daemon)
    assert (after["running"], after["lanes"], after["starts_total"]) == (0, 0, 1), after


@pytest.fixture
def idle_daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A daemon whose fetch worker exits after ``IDLE_S`` without a lane."""
    d = Daemon(tmp_path / "state-idle", config={"max_files_per_job": 5000, "fetch_worker_idle_s": IDLE_S})
    d.start()
    try:
        yield d
    finally:
        d.stop()


def test_an_idle_worker_exits_and_the_next_job_starts_a_new_one(
    idle_daemon: Daemon, nginx: Nginx, tmp_path: Path
) -> None:
    d = idle_daemon
    count, size = 300, 16 * KiB
    first_dest, second_dest = tmp_path / "first", tmp_path / "second"
    first_dest.mkdir()
    second_dest.mkdir()
    job, digests = files_job(d, nginx, first_dest, "fwm-idle-1", count, size)
    d.client.resume(job)
    first = wait_until(lambda: workers(daemon_pid(d)), 10, "a fetch worker")[0]
    assert_transferred(d, job, first_dest, digests, size)
    wait_until(lambda: not alive(first), 10 * IDLE_S, "the idle worker gone")
    wait_until(lambda: worker_metrics(d)["running"] == 0, 5, "no worker running")
    idle = worker_metrics(d)
    assert (idle["starts_total"], idle["lost_total"]) == (1, 0), "an idle-out is no loss"
    assert "ended with" not in d.log(), "the worker left with no lane open"

    job, digests = files_job(d, nginx, second_dest, "fwm-idle-2", count, size)
    d.client.resume(job)
    second = wait_until(lambda: workers(daemon_pid(d)), 10, "a new fetch worker (no cool-down)")[0]
    assert second != first
    assert_transferred(d, job, second_dest, digests, size)
    after = worker_metrics(d)
    assert after["starts_total"] == 2 and after["files_total"] > idle["files_total"], after
