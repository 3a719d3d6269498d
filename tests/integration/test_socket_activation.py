"""Socket activation: the daemon serves the listening socket systemd passes (LISTEN_FDS),
as the contrib/systemd/openbits.socket unit sets it up; ``systemd-socket-activate`` plays
systemd."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from openbits.client import Client
from tests.support.daemon import reap, wait_until

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None, reason="needs systemd-socket-activate"
)


def test_the_daemon_serves_the_socket_it_is_given(tmp_path: Path) -> None:
    sock = tmp_path / "activated.sock"
    own = tmp_path / "never.sock"  # where it would listen on its own
    log = open(tmp_path / "daemon.log", "wb")  # noqa: SIM115 - closed below
    serve = [sys.executable, "-m", "openbits", "serve", "--state-dir", str(tmp_path / "state")]
    proc = subprocess.Popen(
        ["systemd-socket-activate", "-l", str(sock), *serve, "--socket", str(own)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, OPENBITS_LOG_LEVEL="DEBUG"),
    )
    log.close()
    try:
        wait_until(lambda: _answers(sock), 10, "the activation socket")  # (bound before it listens)
        with Client(str(sock)) as client:  # (the first connection starts the daemon)
            job = client.create_job("activated")
            assert [j.job_id for j in client.list_jobs()] == [job.job_id]
        assert not own.exists(), "it listens only on the socket it was given"
        assert "LISTEN_FDS" in (tmp_path / "daemon.log").read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        reap(proc)


def _answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True
