"""GetJob as a long poll (``WaitWhile`` / ``WaitTimeout``), through a real daemon.

A client that waits for a state change is answered at the change, not at its next poll.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from openbits.client import Client
from openbits.model import JobState
from tests.support.daemon import CLASS, Daemon

HRESULT_E_INVALIDARG = 0x80070057


def test_a_long_poll_answers_at_the_state_change(daemon: Daemon) -> None:
    job = daemon.client.create_job("long poll").job_id  # SUSPENDED
    answered = threading.Event()
    got: dict[str, Any] = {}

    def waiter() -> None:
        with Client(daemon.socket) as other:
            got["job"] = other.get_job(job, wait_while=[JobState.SUSPENDED], wait_timeout=30)
        answered.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    try:
        # the waiter is parked in the daemon: it has not answered before the change
        assert not answered.wait(0.3)
        daemon.client.cancel(job)
        assert answered.wait(10), "the long poll did not answer at the state change"
    finally:
        thread.join(30)
    assert got["job"].state is JobState.CANCELLED


def test_a_long_poll_answers_at_its_timeout_with_the_same_state(daemon: Daemon) -> None:
    job = daemon.client.create_job("long poll timeout").job_id
    started = time.monotonic()
    instance = daemon.client.get_job(job, wait_while=[JobState.SUSPENDED], wait_timeout=0.3)
    assert time.monotonic() - started >= 0.3
    assert instance.state is JobState.SUSPENDED


def test_a_job_already_out_of_the_states_is_answered_at_once(daemon: Daemon) -> None:
    job = daemon.client.create_job("no wait").job_id
    status, body = daemon.api("GET", f"{CLASS}/{job}?WaitWhile=QUEUED,TRANSFERRING&WaitTimeout=300")
    assert status == 200
    assert JobState(body["State"]) is JobState.SUSPENDED


def test_states_by_name_or_number_and_bad_parameters(daemon: Daemon) -> None:
    job = daemon.client.create_job("bad wait").job_id
    status, body = daemon.api("GET", f"{CLASS}/{job}?WaitWhile=suspended,4&WaitTimeout=0")
    assert (status, JobState(body["State"])) == (200, JobState.SUSPENDED)
    for query in (
        "WaitWhile=SLEEPING",
        "WaitWhile=SUSPENDED&WaitTimeout=soon",
        "WaitWhile=3&WaitTimeout=301",
    ):
        status, body = daemon.api("GET", f"{CLASS}/{job}?{query}")
        assert status == 400, query
        assert int(body["ErrorCode"], 16) == HRESULT_E_INVALIDARG, body


def test_a_daemon_stopping_answers_its_long_polls_at_once(tmp_path: Path) -> None:
    """SIGTERM with a long poll parked: the poll is answered (the job as it is) and the daemon
    exits without waiting out its WaitTimeout."""
    daemon = Daemon(tmp_path / "state")
    daemon.start()
    try:
        job = daemon.client.create_job("stopping").job_id
        answered = threading.Event()
        got: dict[str, Any] = {}

        def waiter() -> None:
            with Client(daemon.socket) as other:
                got["job"] = other.get_job(job, wait_while=[JobState.SUSPENDED], wait_timeout=60)
            answered.set()

        thread = threading.Thread(target=waiter)
        thread.start()
        assert not answered.wait(0.3)  # (parked in the daemon)
        started = time.monotonic()
        assert daemon.stop() == 0
        stopped_s = time.monotonic() - started
        assert answered.wait(10), "the long poll was not answered"
        thread.join(10)
    finally:
        daemon.stop()
    assert stopped_s < 20, f"the daemon waited {stopped_s:.1f} s for its long poll"
    assert got["job"].state is JobState.SUSPENDED
