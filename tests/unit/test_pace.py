"""The Pacer (``transfer.pace``) follows the job: its priority as it is at each read (a change
mid-file takes or lets go of the BackgroundYield controller), and one controller per job and
host shared by the job's bodies (files, segments) there."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from openbits.transfer.pace import host_of, pacer
from openbits.transfer.throttle import Throttle
from openbits.transfer.yieldctl import DelayController

FOREGROUND, NORMAL = 0, 2


@pytest.fixture
def sock() -> Iterator[socket.socket]:
    """A connected socket with no TCP_INFO: the samples the tests feed are the only ones."""
    client, other = socket.socketpair()
    with client, other:
        yield client


def _backed_off(controller: DelayController) -> None:
    """10 MB/s arriving on a 10 ms path, then a standing queue: the pace is 5 MB/s."""
    controller.on_rtt(0.010, 0.0)
    controller.on_bytes(0, 0.0)
    controller.on_bytes(1_000_000, 0.1)
    for i in range(4):
        controller.on_rtt(0.500, 1.0 + i / 100)
    assert controller.rate_bps == pytest.approx(5_000_000)


def test_a_priority_raised_to_foreground_mid_body_stops_yielding_at_the_next_read(
    sock: socket.socket,
) -> None:
    throttle = Throttle()
    priority = [NORMAL]
    with pacer(throttle, lambda: priority[0], "job", 0, sock) as pace:
        _backed_off(next(iter(throttle.politeness.running.values())).controller)
        pace.arrived(0, 0.0)
        assert pace.limited() and pace.priority == NORMAL
        priority[0] = FOREGROUND  # SetPriority mid-file
        assert not pace.limited() and not throttle.politeness.running  # (the next read)


def test_a_priority_lowered_from_foreground_mid_body_starts_yielding(sock: socket.socket) -> None:
    throttle = Throttle()
    priority = [FOREGROUND]
    with pacer(throttle, lambda: priority[0], "job", 0, sock) as pace:
        assert not throttle.politeness.running
        priority[0] = NORMAL
        assert not pace.limited()  # the next read: the controller taken, not pacing yet
        (running,) = throttle.politeness.running.values()
        assert running.priority == NORMAL
        running.controller.resume()  # (forget the arrival window that read began on the real clock)
        _backed_off(running.controller)
        pace.arrived(0, 0.0)
        assert pace.limited()
    assert not throttle.politeness.running


def test_background_yield_turned_on_at_run_time_applies_to_a_running_body(sock: socket.socket) -> None:
    throttle = Throttle()
    throttle.politeness.configure({NORMAL: False})
    with pacer(throttle, NORMAL, "job", 0, sock) as pace:
        assert not throttle.politeness.running
        throttle.politeness.configure({NORMAL: True})
        pace.limited()  # (the next read)
        assert len(throttle.politeness.running) == 1


def test_the_bodies_of_a_job_on_a_host_share_its_controller_and_its_pace(sock: socket.socket) -> None:
    throttle = Throttle()
    with pacer(throttle, NORMAL, "job", 0, sock) as first:
        with pacer(throttle, NORMAL, "job", 0, sock) as second:  # a second segment
            (running,) = throttle.politeness.running.values()
            assert running.bodies == 2
            _backed_off(running.controller)
            first.arrived(0, 0.0)
            second.arrived(0, 0.0)
            # each has half of the job's 5 MB/s: slices of 50 ms at 2.5 MB/s
            assert first.slice_bytes() == second.slice_bytes() == 125_000
        first.arrived(0, 0.0)
        assert first.slice_bytes() == 250_000  # alone again: the whole pace
    assert not throttle.politeness.running
    with pacer(throttle, NORMAL, "job", 0, sock):  # the job's next file: the same controller
        assert next(iter(throttle.politeness.running.values())) is running
    throttle.politeness.forget("job")  # the job's transfer ended
    with pacer(throttle, NORMAL, "job", 0, sock):
        assert next(iter(throttle.politeness.running.values())) is not running


def test_bodies_sharing_a_controller_count_their_waits_as_one_readers_share(sock: socket.socket) -> None:
    """Two segments each waiting 30 ms for data in the same moment: the job waited 30 ms of
    it, not 60 (summed, the share of time spent waiting could pass 1, and the controller would
    take any dip of the rate for someone else's traffic)."""
    throttle = Throttle()
    with pacer(throttle, NORMAL, "job", 0, sock) as first, pacer(throttle, NORMAL, "job", 0, sock) as second:
        (running,) = throttle.politeness.running.values()
        first.arrived(0, 0.0)  # (opens the controller's arrival window)
        first.arrived(1000, 0.030)
        second.arrived(1000, 0.030)
        # (read inside the window, before it closes: the waits the controller was given)
        assert running.controller._window_wait_s == pytest.approx(0.030)


def test_the_host_is_the_peer_address() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    with client, accepted:
        assert host_of(client) == "127.0.0.1"
    assert host_of(None) == "" and host_of(client) == ""  # (closed: no peer)
