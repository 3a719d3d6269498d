"""The composition root owns what it opens: a start that fails half way, and a shutdown,
leave no file descriptor, thread, lock or socket behind (daemon.serve's exit stack)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from openbits.config import Config
from openbits.daemon import DaemonError, lock_state_dir, serve
from tests.support.daemon import reap


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def config_for(tmp_path: Path, **changes: object) -> Config:
    state = tmp_path / "state"
    return Config(state_dir=str(state), socket=str(state / "openbits.sock"), **changes)  # type: ignore[arg-type]


async def test_a_start_that_fails_after_the_store_opened_closes_everything(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    config = config_for(tmp_path, listen=f"127.0.0.1:{taken.getsockname()[1]}")
    await asyncio.sleep(0)  # the loop's own descriptors exist before the count
    fds, threads = open_fds(), threading.active_count()
    try:
        with pytest.raises(DaemonError, match="cannot listen"):
            await serve(config)
    finally:
        taken.close()
    assert Path(config.db_path).exists(), "the store was opened before the listener failed"
    assert open_fds() - fds == set(), "the store, the HTTP clients and the lock are closed"
    assert threading.active_count() == threads
    assert not Path(config.socket).exists(), "the socket this daemon created is removed"
    os.close(lock_state_dir(config.state_dir))  # the state directory's lock was let go


async def run_until_ready_then_stop(config: Config) -> None:
    ready = asyncio.Event()
    serving = asyncio.create_task(serve(config, ready=ready))
    async with asyncio.timeout(30):
        await ready.wait()
    assert Path(config.socket).exists()
    os.kill(os.getpid(), signal.SIGTERM)  # the daemon's own handler, installed on this loop
    async with asyncio.timeout(30):
        await serving


async def test_a_store_it_cannot_read_half_way_through_the_start_is_refused_and_closed(
    tmp_path: Path,
) -> None:
    """The tokens are read after the jobs, the event log and the HTTP clients were set up:
    a store whose tokens table is gone is refused with the recovery path, and all of those
    are closed again."""
    config = config_for(tmp_path)
    await run_until_ready_then_stop(config)
    with sqlite3.connect(config.db_path) as db:
        db.execute("DROP TABLE tokens")
    db.close()
    fds, threads = open_fds(), threading.active_count()
    with pytest.raises(DaemonError, match="tokens it cannot read"):
        await serve(config)
    assert open_fds() - fds == set()
    assert threading.active_count() == threads
    assert not Path(config.socket).exists()
    os.close(lock_state_dir(config.state_dir))


async def test_a_daemon_stopped_by_a_signal_closes_everything(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    await asyncio.sleep(0)
    fds = open_fds()
    await run_until_ready_then_stop(config)
    assert open_fds() - fds == set()
    assert not Path(config.socket).exists()
    os.close(lock_state_dir(config.state_dir))


async def test_the_socket_answers_only_once_every_listener_is_up(tmp_path: Path) -> None:
    """Clients (and the tests' own Daemon) wait for the Unix socket: by the time its file
    exists the TCP listener takes connections too (it was opened second once, and a client
    let in by the socket was refused on the port)."""
    port_probe = socket.socket()
    port_probe.bind(("127.0.0.1", 0))
    port = port_probe.getsockname()[1]
    port_probe.close()
    config = config_for(tmp_path, listen=f"127.0.0.1:{port}")
    ready = asyncio.Event()
    serving = asyncio.create_task(serve(config, ready=ready))
    async with asyncio.timeout(30):
        while not Path(config.socket).exists():  # each turn of the loop: the first moment it exists
            assert not serving.done(), serving
            await asyncio.sleep(0)
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass  # refused here when the port opens after the socket
    async with asyncio.timeout(30):
        await ready.wait()
    os.kill(os.getpid(), signal.SIGTERM)
    async with asyncio.timeout(30):
        await serving


def test_a_notify_unit_hears_ready_once_the_socket_answers_and_stopping_at_sigterm(tmp_path: Path) -> None:
    """``Type=notify`` (contrib/systemd): READY=1 only once the socket takes calls, so
    ``systemctl start`` returns when clients can connect; STOPPING=1 at SIGTERM."""
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(str(tmp_path / "notify.sock"))
    manager.settimeout(20)
    sock = tmp_path / "ob.sock"
    serve = [sys.executable, "-m", "openbits", "serve", "--state-dir", str(tmp_path / "state")]
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify.sock"))
    proc = subprocess.Popen([*serve, "--socket", str(sock)], env=env, stderr=subprocess.DEVNULL)
    try:
        ready = manager.recv(4096).decode()  # (nothing else waits for the daemon here)
        assert ready.splitlines()[0] == "READY=1", ready
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.connect(str(sock))  # refused if READY came first
        proc.send_signal(signal.SIGTERM)
        assert manager.recv(4096) == b"STOPPING=1"
        assert proc.wait(20) == 0
    finally:
        reap(proc)
        manager.close()


async def test_a_file_in_the_sockets_place_is_refused_and_kept(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    Path(config.socket).parent.mkdir(parents=True)
    Path(config.socket).write_text("not a socket")
    with pytest.raises(DaemonError, match="exists and is not a socket"):
        await serve(config)
    assert Path(config.socket).read_text() == "not a socket"


async def test_a_daemon_removes_only_its_own_socket(tmp_path: Path) -> None:
    """Another socket put in its place while it ran (a daemon started since) is left."""
    config = config_for(tmp_path)
    ready = asyncio.Event()
    serving = asyncio.create_task(serve(config, ready=ready))
    async with asyncio.timeout(30):
        await ready.wait()
    os.unlink(config.socket)
    newcomer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        newcomer.bind(config.socket)
        os.kill(os.getpid(), signal.SIGTERM)
        async with asyncio.timeout(30):
            await serving
        assert Path(config.socket).exists(), "the newcomer's socket was removed"
    finally:
        newcomer.close()
    await run_until_ready_then_stop(config)  # (a socket that refuses calls is stale: replaced)
    assert not Path(config.socket).exists(), "its own socket is removed"
