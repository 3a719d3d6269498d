"""RTT samples from TCP_INFO (``transfer.rttsample``) on a real loopback connection, and the
Pacer (``transfer.pace``) fed by them: a quiet path leaves the transfer unpaced."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from openbits.transfer import h1body
from openbits.transfer.h1body import _pump
from openbits.transfer.pace import Pacer, pacer
from openbits.transfer.rttsample import (
    MIN_CLAMP_BYTES,
    MIN_RCVBUF_BYTES,
    RttSampler,
    bound_receive_buffer,
    clamp_window,
    tcp_rtt_s,
)
from openbits.transfer.throttle import Throttle
from openbits.transfer.yieldctl import DelayController, Running


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    with client, accepted:
        yield client, accepted


def _receive(client: socket.socket, sender: socket.socket, total: int) -> None:
    sender.setblocking(False)
    got = 0
    data = b"x" * 65536
    while got < total:
        with contextlib.suppress(BlockingIOError):
            sender.send(data)
        got += len(client.recv(1 << 20))


def test_loopback_rtt_is_small_and_positive(pair: tuple[socket.socket, socket.socket]) -> None:
    client, accepted = pair
    _receive(client, accepted, 4 << 20)
    rtt = tcp_rtt_s(client)
    assert rtt is not None and 0 < rtt < 0.05


def test_not_a_tcp_socket_gives_none() -> None:
    a, b = socket.socketpair()
    with a, b:
        assert tcp_rtt_s(a) is None


def test_sampler_reads_at_most_once_per_interval(pair: tuple[socket.socket, socket.socket]) -> None:
    client, accepted = pair
    _receive(client, accepted, 1 << 20)
    controller = DelayController()
    sampler = RttSampler(client, controller, interval_s=0.05)
    now = time.monotonic()
    for i in range(100):  # 100 chunks within 40 ms: one getsockopt
        sampler.poll(now + i * 0.0004)
    assert sampler.samples == 1
    sampler.poll(now + 0.06)
    assert sampler.samples == 2
    assert controller.base_delay_s is not None and controller.base_delay_s < 0.05


def test_pacer_on_loopback_stays_unpaced(pair: tuple[socket.socket, socket.socket]) -> None:
    client, accepted = pair
    throttle = Throttle()
    with pacer(throttle, 2, "job", 0, client) as pace:
        assert len(throttle.politeness.running) == 1
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            _receive(client, accepted, 256 << 10)
            pace.arrived(256 << 10, 0.0)
        running = next(iter(throttle.politeness.running.values()))
        assert running.controller.base_delay_s is not None
        # the target on a 1 ms path is 2 ms (yieldctl.TARGET_FLOOR_MS): this single-threaded
        # send/recv loop on a loaded machine can itself queue that much; only then is it paced
        if running.controller.backoffs == 0:
            assert not pace.limited() and running.controller.rate_bps is None
            asyncio.run(pace.acquire(1 << 20))  # returns at once
    assert not throttle.politeness.running
    with pacer(throttle, 0, "job", 0, client):  # FOREGROUND never yields
        assert not throttle.politeness.running


def test_pacer_paces_at_the_controller_rate() -> None:
    # a socket with no TCP_INFO: the samples below are the only ones the controller sees
    client, other = socket.socketpair()
    throttle = Throttle()
    with client, other, pacer(throttle, 3, "job", 0, client) as pace:
        controller = next(iter(throttle.politeness.running.values())).controller
        controller.on_rtt(0.010, 0.0)
        controller.on_bytes(0, 0.0)
        controller.on_bytes(1_000_000, 0.1)  # 10 MB/s arriving
        controller.on_rtt(0.500, 1.0)  # then a standing queue
        controller.on_rtt(0.500, 1.01)
        controller.on_rtt(0.500, 1.02)
        controller.on_rtt(0.500, 1.03)
        assert controller.rate_bps == pytest.approx(5_000_000)
        pace.arrived(0, 0.0)
        assert pace.limited() and pace.slice_bytes() == 250_000

        async def timed() -> float:
            start = time.monotonic()
            for _ in range(4):
                await pace.acquire(250_000)
            return time.monotonic() - start

        # 1 MB at 5 MB/s (the bucket starts empty): ~0.2 s
        assert 0.15 < asyncio.run(timed()) < 1.0


def test_a_pausing_sender_is_not_taken_for_a_queue(pair: tuple[socket.socket, socket.socket]) -> None:
    """A server that sends in bursts (its own rate limit) makes the kernel's receiver RTT grow
    toward its pauses: those samples are dropped, and the transfer is not paced."""
    client, accepted = pair

    def bursts() -> None:
        for _ in range(12):
            accepted.sendall(b"x" * 200_000)
            time.sleep(0.1)  # the sender's own pause: the scenario, not a synchronisation
        accepted.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=bursts)
    sender.start()
    throttle = Throttle()
    throttle.politeness.configure(target_delay_ms=20)
    with pacer(throttle, 2, "job", 0, client) as pace:
        controller = next(iter(throttle.politeness.running.values())).controller
        seen: list[float] = []
        while True:
            asked = time.monotonic()
            data = client.recv(1 << 20)
            if not data:
                break
            pace.arrived(len(data), time.monotonic() - asked)
            seen.append(tcp_rtt_s(client) or 0.0)
    sender.join()
    assert max(seen) > 0.040, "the kernel's estimate did grow well past the target"
    assert controller.ignored > 0 and controller.backoffs == 0 and not pace.limited()


def test_the_window_clamp_is_set_and_lifted(pair: tuple[socket.socket, socket.socket]) -> None:
    client, _ = pair
    clamp_window(client, 200_000)
    assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_WINDOW_CLAMP) == 200_000
    clamp_window(client, 10)  # never below a useful window
    assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_WINDOW_CLAMP) == MIN_CLAMP_BYTES
    clamp_window(client, None)
    assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_WINDOW_CLAMP) >= 1 << 30


def test_the_receive_buffer_is_bounded_and_let_go(pair: tuple[socket.socket, socket.socket]) -> None:
    """A paced socket's buffer is cut to ~100 ms of its pace (the kernel doubles what it is
    given), never below a useful size, and made large again once unpaced."""
    client, _ = pair
    bound_receive_buffer(client, 200_000)
    assert client.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * 200_000
    bound_receive_buffer(client, 10)
    assert client.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * MIN_RCVBUF_BYTES
    bound_receive_buffer(client, None)
    assert client.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) > 2 * 200_000


def test_a_backoff_forgives_the_read_debt() -> None:
    """A slice read at the old, fast pace is not paid back at the new, slow one: the next
    wait is about one slice at the new pace, not seconds."""
    client, other = socket.socketpair()
    throttle = Throttle()
    with client, other, pacer(throttle, 3, "job", 0, client) as pace:
        controller = next(iter(throttle.politeness.running.values())).controller
        controller.on_rtt(0.010, 0.0)
        controller.on_bytes(0, 0.0)
        controller.on_bytes(2_000_000, 0.1)  # 20 MB/s arriving
        for i in range(4):  # a standing queue: paced at 10 MB/s
            controller.on_rtt(0.500, 1.0 + i * 0.01)
        pace.arrived(0, 0.0)
        assert pace.limited() and controller.rate_bps == pytest.approx(10_000_000)
        asyncio.run(pace.acquire(1 << 20))  # a 1 MiB slice at 10 MB/s: ~0.1 s of debt
        for i in range(4):  # then it backs off further: 1/8 of that and below
            controller.on_rtt(0.050, 1.1 + i * 0.1)
        pace.arrived(0, 0.0)
        slow = controller.rate_bps
        assert slow is not None and slow < 2_000_000

        async def timed() -> float:
            start = time.monotonic()
            await pace.acquire(1 << 20)  # asked at the old pace: charged one slice at most
            return time.monotonic() - start

        assert asyncio.run(timed()) < 0.5


def test_a_let_go_receive_buffer_can_grow_as_autotuning_would(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    client, _ = pair
    with open("/proc/sys/net/ipv4/tcp_rmem") as f:
        autotuned_max = int(f.read().split()[2])
    bound_receive_buffer(client, 200_000)  # paced (a slowdown, a backoff)
    bound_receive_buffer(client, None)  # unpaced again: the path is quiet
    assert client.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= autotuned_max


def test_without_cap_net_admin_a_let_go_buffer_is_rmem_max() -> None:
    """SO_RCVBUFFORCE needs CAP_NET_ADMIN: without it (a daemon not run as root) the buffer
    let go is as large as SO_RCVBUF may make it (``net.core.rmem_max``), no error."""
    setpriv = shutil.which("setpriv")
    if setpriv is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv (util-linux) to drop CAP_NET_ADMIN")
    with open("/proc/sys/net/ipv4/tcp_rmem") as f:
        autotuned_max = int(f.read().split()[2])
    with open("/proc/sys/net/core/rmem_max") as f:
        rmem_max = int(f.read())
    script = (
        "import socket\n"
        "from openbits.transfer.rttsample import bound_receive_buffer\n"
        "s = socket.socket()\n"
        "try:\n"
        "    s.setsockopt(socket.SOL_SOCKET, 33, 1 << 20)\n"
        "    print('forced')\n"
        "except PermissionError:\n"
        "    bound_receive_buffer(s, 200_000)\n"
        "    bound_receive_buffer(s, None)\n"
        "    print(s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))\n"
    )
    out = subprocess.run(
        [setpriv, "--bounding-set=-net_admin", "--inh-caps=-net_admin", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    assert out == str(2 * min(autotuned_max // 2, rmem_max))


def test_a_window_or_buffer_past_int_max_is_capped(pair: tuple[socket.socket, socket.socket]) -> None:
    """A pace times a delay can exceed a C int (a fast path, a long target): capped, not a
    TypeError escaping the best-effort setters."""
    client, _ = pair
    clamp_window(client, 1 << 40)
    assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_WINDOW_CLAMP) >= 1 << 30
    bound_receive_buffer(client, 1 << 40)
    assert client.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) > 2 * MIN_RCVBUF_BYTES


class _RecordingController(DelayController):
    """A controller that keeps the ``idle_s`` each RTT sample came with."""

    def __init__(self) -> None:
        super().__init__()
        self.idles_s: list[float] = []

    def on_rtt(self, rtt_s: float, now: float, idle_s: float = 0.0) -> float | None:
        self.idles_s.append(idle_s)
        return super().on_rtt(rtt_s, now, idle_s)


def test_a_splice_passes_its_longest_single_wait_as_the_idle_time(
    pair: tuple[socket.socket, socket.socket], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sender pausing ~1 ms between 16 KiB writes makes several waits in one ``_pump`` call
    (a ~10 ms budget): the controller is told the longest of them, not their sum, so a 10 ms
    path's RTT samples are kept (with the sum, everything under ~20 ms was dropped as "the
    sender paused")."""
    client, accepted = pair
    client.setblocking(False)
    piece, pieces = 16 * 1024, 300
    # (waits of up to 4 ms, not 2: a sender late from its 1 ms sleep on a loaded machine does
    # not end a call at its first wait; still under the 5 ms that would drop a 10 ms sample)
    monkeypatch.setattr(h1body, "_PUMP_WAIT_MS", 4)

    def paced_sender() -> None:
        for _ in range(pieces):
            accepted.sendall(b"x" * piece)
            time.sleep(0.001)  # the sender's own pause: the scenario, not a synchronisation
        accepted.shutdown(socket.SHUT_WR)

    controller = _RecordingController()
    pace = Pacer(Throttle(), 2, Running("job", 0, 2, controller), client)
    pipe = os.pipe()
    fd = os.open(tmp_path / "body", os.O_WRONLY | os.O_CREAT, 0o600)
    sender = threading.Thread(target=paced_sender)
    sender.start()
    totals_s: list[float] = []
    longest_s: list[float] = []
    offset = 0
    try:
        while True:
            done, waited = [0], [0.0, 0.0]
            end = _pump(client.fileno(), pipe, fd, offset, 1 << 30, done, waited)
            offset += done[0]
            if done[0]:
                totals_s.append(waited[0])
                longest_s.append(waited[1])
                pace.arrived(done[0], waited[0], waited[1])
            if end:
                break
    finally:
        sender.join()
        os.close(fd)
        os.close(pipe[0])
        os.close(pipe[1])
    assert offset == piece * pieces
    assert all(0.0 <= one <= total for one, total in zip(longest_s, totals_s, strict=True))
    several = sum(1 for one, total in zip(longest_s, totals_s, strict=True) if one < total / 2)
    assert several >= 10, f"several waits a call in only {several} of {len(totals_s)} calls"
    assert len(controller.idles_s) >= 10
    assert max(controller.idles_s) <= max(longest_s)
    # a 10 ms path's samples, taken with those idle figures, are kept (nearly all of them)
    path = DelayController()
    for i, idle_s in enumerate(controller.idles_s):
        path.on_rtt(0.010, i * 0.01, idle_s)
    assert path.ignored <= len(controller.idles_s) // 5
